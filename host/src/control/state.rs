//! What the worker tells remote control about its tasks: which are reserved (waiting for a
//! slot), scheduled (waiting for their ETA) and active (running), how many have started
//! since boot by name, and the limits changed by remote command since.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

use crate::protocol::TaskMessage;
use crate::protocol::python_repr::{python_repr, python_tuple};

/// Where a task is between arrival and end.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Received, waiting for a free slot (`reserved`).
    Reserved,
    /// Waiting for its ETA (`scheduled`), an ISO 8601 timestamp.
    Scheduled(String),
    /// Running since `time_start` (Unix seconds) (`active`).
    Active(f64),
}

/// A task the worker holds, with what `Request.info()` shows of it.
///
/// It shares the decoded message with the task's run, and builds the reprs and JSON that
/// remote control shows only when asked: most tasks come and go without anyone asking.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRecord {
    /// The message, as decoded.
    pub message: Arc<TaskMessage>,
    /// Where its message came from.
    pub delivery: RecordedDelivery,
    /// Whether its message was acked.
    pub acknowledged: bool,
    /// Where it is.
    pub phase: Phase,
}

/// The `delivery_info` that `Request.info()` shows.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedDelivery {
    /// The exchange it was published to, `""` for the default one.
    pub exchange: String,
    /// Its routing key; the queue's name when the transport gives none.
    pub routing_key: String,
    /// Its priority, 0 when it has none.
    pub priority: u8,
    /// Whether it was delivered before.
    pub redelivered: bool,
}

impl TaskRecord {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.message.id
    }

    /// `Request.info(safe)` (celery-worker-behaviour.md §3.7).
    pub fn info(&self, hostname: &str, pid: u32, safe: bool) -> Value {
        let message = &self.message;
        let (args, kwargs) = if safe {
            (
                Value::from(args_repr(message)),
                Value::from(kwargs_repr(message)),
            )
        } else {
            (
                Value::Array(message.args.clone()),
                Value::Object(message.kwargs.clone()),
            )
        };
        let (time_start, worker_pid) = match self.phase {
            Phase::Active(start) => (Value::from(start), Value::from(pid)),
            _ => (Value::Null, Value::Null),
        };
        let delivery = &self.delivery;
        json!({
            "id": message.id,
            "name": message.shadow.as_deref().unwrap_or(&message.task),
            "args": args,
            "kwargs": kwargs,
            "type": message.task,
            "hostname": hostname,
            "time_start": time_start,
            "acknowledged": self.acknowledged,
            "delivery_info": {
                "exchange": delivery.exchange,
                "routing_key": delivery.routing_key,
                "priority": delivery.priority,
                "redelivered": delivery.redelivered,
            },
            "worker_pid": worker_pid,
        })
    }

    /// The state `query_task` reports.
    pub fn query_state(&self) -> &'static str {
        match self.phase {
            Phase::Active(_) => "active",
            Phase::Reserved | Phase::Scheduled(_) => "reserved",
        }
    }
}

/// `argsrepr` as the client sent it, else the Python repr of the arguments.
pub fn args_repr(message: &TaskMessage) -> String {
    message
        .argsrepr
        .clone()
        .unwrap_or_else(|| python_tuple(&message.args))
}

/// `kwargsrepr` as the client sent it, else the Python repr of the keyword arguments.
pub fn kwargs_repr(message: &TaskMessage) -> String {
    message
        .kwargsrepr
        .clone()
        .unwrap_or_else(|| python_repr(&Value::Object(message.kwargs.clone())))
}

/// The tasks a worker holds, and its counters.
#[derive(Debug, Default)]
pub struct Tasks {
    /// Held tasks by a key of their own (an id may be held twice: a redelivery). std
    /// `Mutex`: short critical sections, no `.await` inside.
    records: Mutex<HashMap<u64, TaskRecord>>,
    /// The next key.
    next: AtomicU64,
    /// Tasks started since boot.
    processed: AtomicU64,
    /// Tasks started since boot, by name (`stats.total`).
    totals: Mutex<BTreeMap<String, u64>>,
}

impl Tasks {
    /// Holds `record`; returns its key.
    pub fn hold(&self, record: TaskRecord) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.records).insert(key, record);
        key
    }

    /// Changes the record held under `key`.
    pub fn update(&self, key: u64, change: impl FnOnce(&mut TaskRecord)) {
        if let Some(record) = lock(&self.records).get_mut(&key) {
            change(record);
        }
    }

    /// Marks the task under `key` running since `time_start`, and counts it.
    pub fn start(&self, key: u64, time_start: f64) {
        let mut started = None;
        self.update(key, |record| {
            record.phase = Phase::Active(time_start);
            started = Some(Arc::clone(&record.message));
        });
        if let Some(message) = started {
            self.processed.fetch_add(1, Ordering::Relaxed);
            let mut totals = lock(&self.totals);
            match totals.get_mut(&message.task) {
                Some(count) => *count += 1,
                None => {
                    totals.insert(message.task.clone(), 1);
                }
            }
        }
    }

    /// Forgets the task under `key`.
    pub fn release(&self, key: u64) {
        lock(&self.records).remove(&key);
    }

    /// Tasks started since boot.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Tasks started since boot, by name.
    pub fn totals(&self) -> Map<String, Value> {
        lock(&self.totals)
            .iter()
            .map(|(name, n)| (name.clone(), Value::from(*n)))
            .collect()
    }

    /// How many tasks run now.
    pub fn active_count(&self) -> usize {
        lock(&self.records)
            .values()
            .filter(|r| matches!(r.phase, Phase::Active(_)))
            .count()
    }

    /// The held tasks `keep` selects, oldest first.
    pub fn select(&self, keep: impl Fn(&TaskRecord) -> bool) -> Vec<TaskRecord> {
        let records = lock(&self.records);
        let mut selected: Vec<(&u64, &TaskRecord)> =
            records.iter().filter(|(_, r)| keep(r)).collect();
        selected.sort_by_key(|(key, _)| **key);
        selected.into_iter().map(|(_, r)| r.clone()).collect()
    }
}

/// Soft and hard time limits in seconds, each optional.
pub type TimeLimits = (Option<f64>, Option<f64>);

/// Limits set by remote command (`rate_limit`, `time_limit`), by task name. They apply
/// from the next task of that name on.
#[derive(Debug, Default)]
pub struct LimitOverrides {
    /// Task name → rate limit text (`"10/m"`); `None` means disabled by remote.
    rate: Mutex<HashMap<String, Option<String>>>,
    /// Task name → (soft, hard) seconds.
    time: Mutex<HashMap<String, TimeLimits>>,
}

impl LimitOverrides {
    /// Records a rate limit (`None`: disabled).
    pub fn set_rate(&self, task: &str, rate: Option<String>) {
        lock(&self.rate).insert(task.to_owned(), rate);
    }

    /// The rate limit set by remote command for `task`: `None` if never set,
    /// `Some(None)` if disabled.
    pub fn rate(&self, task: &str) -> Option<Option<String>> {
        lock(&self.rate).get(task).cloned()
    }

    /// Records time limits.
    pub fn set_time(&self, task: &str, soft: Option<f64>, hard: Option<f64>) {
        lock(&self.time).insert(task.to_owned(), (soft, hard));
    }

    /// The (soft, hard) time limits set by remote command for `task`, if any.
    pub fn time(&self, task: &str) -> Option<TimeLimits> {
        lock(&self.time).get(task).copied()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::OutgoingTask;

    fn record(id: &str, phase: Phase) -> TaskRecord {
        let args = vec![json!(2), json!(3)];
        let mut message = OutgoingTask::new(id, "tasks.add", args, Map::new())
            .encode()
            .decoded();
        // As from a client that sends no reprs (protocol 1): the worker writes them.
        message.argsrepr = None;
        message.kwargsrepr = None;
        TaskRecord {
            message: Arc::new(message),
            delivery: RecordedDelivery {
                exchange: String::new(),
                routing_key: "celery".into(),
                priority: 0,
                redelivered: false,
            },
            acknowledged: false,
            phase,
        }
    }

    #[test]
    fn info_has_celerys_shape() {
        let info = record("a", Phase::Active(12.5)).info("w1@vm", 7, false);
        assert_eq!(info["args"], json!([2, 3]));
        assert_eq!(info["type"], "tasks.add");
        assert_eq!(info["time_start"], 12.5);
        assert_eq!(info["worker_pid"], 7);
        assert_eq!(info["hostname"], "w1@vm");
        assert_eq!(info["name"], "tasks.add");
        assert_eq!(
            info["delivery_info"],
            json!({"exchange": "", "routing_key": "celery", "priority": 0, "redelivered": false})
        );
        let safe = record("a", Phase::Reserved).info("w1@vm", 7, true);
        assert_eq!(safe["args"], "(2, 3)");
        assert_eq!(safe["kwargs"], "{}");
        let mut sent_with_repr = record("a", Phase::Reserved);
        Arc::make_mut(&mut sent_with_repr.message).argsrepr = Some("'<hidden>'".into());
        assert_eq!(sent_with_repr.info("w1@vm", 7, true)["args"], "'<hidden>'");
        assert_eq!(safe["time_start"], Value::Null);
        assert_eq!(safe["worker_pid"], Value::Null);
    }

    #[test]
    fn starting_counts_and_release_forgets() {
        let tasks = Tasks::default();
        let a = tasks.hold(record("a", Phase::Reserved));
        let b = tasks.hold(record("b", Phase::Reserved));
        tasks.start(a, 1.0);
        assert_eq!(tasks.active_count(), 1);
        assert_eq!(tasks.processed(), 1);
        assert_eq!(tasks.totals()["tasks.add"], 1);
        let reserved = tasks.select(|r| r.phase == Phase::Reserved);
        assert_eq!(reserved.len(), 1);
        assert_eq!(reserved[0].id(), "b");
        tasks.release(a);
        tasks.release(b);
        assert_eq!(tasks.active_count(), 0);
        assert_eq!(tasks.processed(), 1, "processed counts tasks ever started");
    }
}
