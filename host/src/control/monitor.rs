//! The [`Monitor`]: what the worker reports into as a task moves from arrival to end, and
//! what remote control and heartbeats read. It keeps the held tasks ([`Tasks`]) and sends
//! the task events (§2.4) while task events are on.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::broker::Delivery;
use crate::protocol::TaskMessage;
use crate::sandbox::RunReport;
use crate::worker::CeleryException;

use super::events::{EventQueue, Sender, TaskEventSwitch, now_seconds};
use super::identity;
use super::metrics::Metrics;
use super::repr::result_repr;
use super::state::{
    LimitOverrides, Phase, RecordedDelivery, TaskRecord, Tasks, args_repr, kwargs_repr,
};
use crate::protocol::python_repr::exception_repr;

/// What the worker and remote control share.
#[derive(Debug)]
pub struct Monitor {
    /// The fields every event carries, and the clock.
    pub sender: Sender,
    /// Where events go.
    events: EventQueue,
    /// Whether task events are sent.
    pub task_events: TaskEventSwitch,
    /// The tasks held, and the counters.
    pub tasks: Tasks,
    /// Limits changed by remote command.
    pub overrides: LimitOverrides,
    /// When the worker started, for `stats.uptime`.
    pub started: Instant,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Whether the pidbox subscription (a broker connection of its own) is up.
    pub broker_connected: AtomicBool,
}

impl Monitor {
    /// A monitor for `nodename`, sending task events from the start with `task_events`
    /// (`-E`), with the queue events go to.
    pub fn new(nodename: &str, task_events: bool, events: EventQueue) -> Self {
        Monitor {
            sender: Sender {
                hostname: nodename.to_owned(),
                pid: std::process::id(),
                utcoffset: identity::utcoffset(),
                clock: identity::LamportClock::default(),
            },
            events,
            task_events: TaskEventSwitch::new(task_events),
            tasks: Tasks::default(),
            overrides: LimitOverrides::default(),
            started: Instant::now(),
            metrics: Metrics::default(),
            broker_connected: AtomicBool::new(false),
        }
    }

    /// Sends a worker event (always).
    pub fn send_worker_event(&self, kind: &str, fields: Map<String, Value>) {
        self.events.push(self.sender.event(kind, fields));
    }

    /// Sends a task event about `task_id`, if task events are on. The fields are built
    /// only then: with events off (the default) a task's way costs no repr of its
    /// arguments or result.
    fn send_task_event(
        &self,
        kind: &str,
        task_id: &str,
        fields: impl FnOnce() -> Map<String, Value>,
    ) {
        if !self.task_events.is_on() {
            return;
        }
        let mut fields = fields();
        fields.insert("uuid".into(), Value::from(task_id));
        self.events.push(self.sender.event(kind, fields));
    }

    /// A task was accepted (after the revoked check): holds it as reserved, or scheduled
    /// when its ETA is ahead, and sends task-received. The returned handle follows it and
    /// forgets it when dropped.
    pub fn task_received(
        self: &Arc<Self>,
        message: &Arc<TaskMessage>,
        delivery: &Delivery,
    ) -> TrackedTask {
        let eta_ahead = message
            .eta
            .as_ref()
            .filter(|eta| eta.unix_micros() > crate::worker::now_micros());
        let phase = match eta_ahead {
            Some(eta) => Phase::Scheduled(eta.as_str().to_owned()),
            None => Phase::Reserved,
        };
        let info = &delivery.properties.delivery_info;
        let routing_key = if info.routing_key.is_empty() {
            &delivery.queue
        } else {
            &info.routing_key
        };
        let record = TaskRecord {
            message: Arc::clone(message),
            delivery: RecordedDelivery {
                exchange: info.exchange.clone(),
                routing_key: routing_key.clone(),
                priority: delivery.properties.priority.unwrap_or(0),
                redelivered: delivery.redelivered,
            },
            acknowledged: false,
            phase,
        };
        let key = self.tasks.hold(record);
        self.send_task_event("task-received", &message.id, || {
            let mut fields = Map::new();
            fields.insert("name".into(), Value::from(message.task.as_str()));
            fields.insert("args".into(), Value::from(args_repr(message)));
            fields.insert("kwargs".into(), Value::from(kwargs_repr(message)));
            fields.insert("root_id".into(), json!(message.root_id));
            fields.insert("parent_id".into(), json!(message.parent_id));
            fields.insert("retries".into(), Value::from(message.retries));
            fields.insert(
                "eta".into(),
                json!(message.eta.as_ref().map(|t| t.as_str())),
            );
            fields.insert(
                "expires".into(),
                json!(message.expires.as_ref().map(|t| t.as_str())),
            );
            fields
        });
        TrackedTask {
            monitor: Arc::clone(self),
            key,
            task_id: message.id.clone(),
            received: Instant::now(),
        }
    }

    /// One run of a task of `name` in the sandbox ended (whatever its outcome), `runtime`
    /// after it was handed to the sandbox.
    pub fn task_ran(&self, name: &str, runtime: Duration, report: &RunReport) {
        self.metrics
            .task_ran(name, runtime, report.peak_memory_bytes, report.instantiate);
    }

    /// task-revoked: discarded because revoked, expired or terminated.
    pub fn task_revoked(&self, task_id: &str, name: &str, expired: bool, terminated: Option<i32>) {
        self.metrics.task_ended(name, "REVOKED");
        self.send_task_event("task-revoked", task_id, || {
            let mut fields = Map::new();
            fields.insert("terminated".into(), Value::from(terminated.is_some()));
            fields.insert("signum".into(), json!(terminated));
            fields.insert("expired".into(), Value::from(expired));
            fields
        });
    }

    /// task-succeeded with the result's repr and the run time.
    pub fn task_succeeded(&self, task_id: &str, name: &str, result_json: &str, runtime: Duration) {
        self.metrics.task_ended(name, "SUCCESS");
        self.send_task_event("task-succeeded", task_id, || {
            let mut fields = Map::new();
            fields.insert("result".into(), Value::from(result_repr(result_json)));
            fields.insert("runtime".into(), Value::from(runtime.as_secs_f64()));
            fields
        });
    }

    /// task-failed with the exception's repr and traceback.
    pub fn task_failed(&self, task_id: &str, name: &str, exception: &CeleryException) {
        self.metrics.task_ended(name, "FAILURE");
        self.send_task_event("task-failed", task_id, || exception_fields(exception));
    }

    /// task-retried with the original exception (when the task gave one), its traceback
    /// ending as Celery's does: `celery.exceptions.Retry: Retry in <when>: <exc repr>`.
    pub fn task_retried(
        &self,
        task_id: &str,
        name: &str,
        exception: Option<&CeleryException>,
        when: &str,
    ) {
        self.metrics.task_ended(name, "RETRY");
        let (repr, mut traceback) = match exception {
            Some(exception) => (
                exception_repr(&exception.exc_type, &exception.exc_message),
                exception.traceback.clone().unwrap_or_default(),
            ),
            None => ("Retry()".to_owned(), String::new()),
        };
        let retry_line = match exception {
            Some(_) => format!("celery.exceptions.Retry: Retry in {when}: {repr}\n"),
            None => format!("celery.exceptions.Retry: Retry in {when}\n"),
        };
        traceback.push_str(&retry_line);
        self.send_task_event("task-retried", task_id, || {
            let mut fields = Map::new();
            fields.insert("exception".into(), Value::from(repr));
            fields.insert("traceback".into(), Value::from(traceback));
            fields
        });
    }

    /// task-failed for a task name nobody serves: only `exception`, as Celery sends it.
    pub fn task_unregistered(&self, task_id: &str, task_name: &str) {
        self.metrics.task_ended(task_name, "FAILURE");
        self.send_task_event("task-failed", task_id, || {
            let mut fields = Map::new();
            fields.insert(
                "exception".into(),
                Value::from(exception_repr("NotRegistered", &[Value::from(task_name)])),
            );
            fields
        });
    }

    /// task-rejected: an un-acked message was rejected.
    pub fn task_rejected(&self, task_id: &str, name: &str, requeue: bool) {
        self.metrics.task_ended(name, "REJECTED");
        self.send_task_event("task-rejected", task_id, || {
            let mut fields = Map::new();
            fields.insert("requeue".into(), Value::from(requeue));
            fields
        });
    }

    /// The ids of the tasks running now.
    pub fn active_ids(&self) -> Vec<String> {
        self.tasks
            .select(|r| matches!(r.phase, Phase::Active(_)))
            .into_iter()
            .map(|r| r.id().to_owned())
            .collect()
    }
}

/// `exception` and `traceback` as task-failed and task-retried carry them.
fn exception_fields(exception: &CeleryException) -> Map<String, Value> {
    let repr = exception_repr(&exception.exc_type, &exception.exc_message);
    let traceback = exception
        .traceback
        .clone()
        .unwrap_or_else(|| format!("{}\n", exception.summary()));
    let mut fields = Map::new();
    fields.insert("exception".into(), Value::from(repr));
    fields.insert("traceback".into(), Value::from(traceback));
    fields
}

/// A task the monitor holds, from arrival until this handle is dropped.
#[derive(Debug)]
pub struct TrackedTask {
    monitor: Arc<Monitor>,
    key: u64,
    task_id: String,
    received: Instant,
}

impl TrackedTask {
    /// Its message was acked.
    pub fn acknowledged(&self) {
        self.monitor
            .tasks
            .update(self.key, |record| record.acknowledged = true);
    }

    /// It got a slot and starts now: counted, shown as active, task-started sent.
    pub fn started(&self) {
        self.monitor.tasks.start(self.key, now_seconds());
        self.monitor.metrics.task_waited(self.received.elapsed());
        self.monitor
            .send_task_event("task-started", &self.task_id, Map::new);
    }

    /// It waits for a slot (its ETA has come).
    pub fn due(&self) {
        self.monitor.tasks.update(self.key, |record| {
            if matches!(record.phase, Phase::Scheduled(_)) {
                record.phase = Phase::Reserved;
            }
        });
    }
}

impl Drop for TrackedTask {
    fn drop(&mut self) {
        self.monitor.tasks.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_tuples_print_as_python_does() {}

    #[test]
    fn failure_fields_have_repr_and_traceback() {
        let exc = CeleryException {
            exc_type: "ValueError".into(),
            exc_module: "builtins".into(),
            exc_message: vec![json!("boom")],
            message: "boom".into(),
            traceback: None,
        };
        let fields = exception_fields(&exc);
        assert_eq!(fields["exception"], "ValueError('boom')");
        assert_eq!(fields["traceback"], "ValueError: boom\n");
    }
}
