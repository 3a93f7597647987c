//! Monitoring events (celery-worker-behaviour.md §2): building each event with the fields
//! every event carries, the task-event switch `-E` and `enable_events` turn, and the
//! publisher that sends them to `celeryev` in order, off the task path.
//!
//! Worker events (`worker-*`) are always sent; task events only while switched on. An
//! event is queued without waiting and published by one task of its own, so a slow broker
//! never holds up a running task, and events go out in the order they happened.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::broker::{BroadcastExchange, Broker, BrokerError, ExchangeKind, Outgoing};

use super::identity::{LamportClock, SW_IDENT, SW_VER, sw_sys};

/// The events exchange (`event_exchange`).
pub const EVENT_EXCHANGE: &str = "celeryev";

/// `celeryev` as Celery declares it on RabbitMQ: a durable topic exchange (Redis
/// broadcasts it by PUB/SUB).
pub fn event_exchange() -> BroadcastExchange {
    BroadcastExchange {
        name: EVENT_EXCHANGE.to_owned(),
        kind: ExchangeKind::Topic,
        durable: true,
    }
}

/// One event ready to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// `task.succeeded`, `worker.heartbeat`, ...
    pub routing_key: String,
    /// The event object.
    pub body: Map<String, Value>,
}

/// Who sends the events: the fields every event carries besides its own.
#[derive(Debug)]
pub struct Sender {
    /// The nodename (`hostname` field and header).
    pub hostname: String,
    /// The worker's pid.
    pub pid: u32,
    /// Hours west of UTC (`control::identity::utcoffset`).
    pub utcoffset: i64,
    /// The worker's Lamport clock.
    pub clock: LamportClock,
}

impl Sender {
    /// The event `kind` (`task-succeeded`) with `fields`, plus `hostname`, `utcoffset`,
    /// `pid` and `timestamp` (now); its `clock` is set when it is sent.
    pub fn event(&self, kind: &str, fields: Map<String, Value>) -> Event {
        let mut body = fields;
        body.insert("hostname".into(), Value::from(self.hostname.as_str()));
        body.insert("utcoffset".into(), Value::from(self.utcoffset));
        body.insert("pid".into(), Value::from(self.pid));
        body.insert("timestamp".into(), Value::from(now_seconds()));
        body.insert("type".into(), Value::from(kind));
        Event {
            routing_key: kind.replace('-', "."),
            body,
        }
    }

    /// The message that carries `event`: JSON, header `hostname`, transient, with the
    /// clock moved on. The one publisher calls it in sending order, so clocks go out in
    /// order even when tasks on several threads make events at once (a Python worker
    /// moves its clock under the dispatcher's lock as it publishes).
    pub fn outgoing(&self, event: &Event) -> Outgoing {
        let mut headers = Map::new();
        headers.insert("hostname".into(), Value::from(self.hostname.as_str()));
        let mut body = event.body.clone();
        body.insert("clock".into(), Value::from(self.clock.forward()));
        Outgoing::json(Value::Object(body).to_string().into_bytes(), headers)
    }
}

/// The fields of worker-online, worker-heartbeat and worker-offline.
pub fn worker_fields(
    freq: f64,
    active: usize,
    processed: u64,
    loadavg: [f64; 3],
) -> Map<String, Value> {
    let mut fields = software_fields(freq);
    fields.insert("active".into(), Value::from(active));
    fields.insert("processed".into(), Value::from(processed));
    fields.insert("loadavg".into(), json!(loadavg));
    fields
}

/// `freq` and the software identity: what the heartbeat a `heartbeat` command asks for
/// carries.
pub fn software_fields(freq: f64) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("freq".into(), Value::from(freq));
    fields.insert("sw_ident".into(), Value::from(SW_IDENT));
    fields.insert("sw_ver".into(), Value::from(SW_VER));
    fields.insert("sw_sys".into(), Value::from(sw_sys()));
    fields
}

/// Whether task events are sent, and how `enable_events` / `disable_events` answer
/// (§3.6): a worker started with `-E` sends every group and answers "already" to both.
#[derive(Debug)]
pub struct TaskEventSwitch {
    /// Started with `-E`: every group is on for good.
    all_groups: bool,
    /// The `task` group, turned on and off by remote command.
    task_group: AtomicBool,
}

impl TaskEventSwitch {
    /// On for good with `-E` (`all_groups`), else off until enabled.
    pub fn new(all_groups: bool) -> Self {
        TaskEventSwitch {
            all_groups,
            task_group: AtomicBool::new(false),
        }
    }

    /// Whether task events are sent now.
    pub fn is_on(&self) -> bool {
        self.all_groups || self.task_group.load(Ordering::Relaxed)
    }

    /// `enable_events`: the reply text; logs when it turned them on.
    pub fn enable(&self) -> &'static str {
        if self.all_groups || self.task_group.swap(true, Ordering::Relaxed) {
            return "task events already enabled";
        }
        tracing::info!("Events of group {{task}} enabled by remote.");
        "task events enabled"
    }

    /// `disable_events`: the reply text; logs when it turned them off.
    pub fn disable(&self) -> &'static str {
        if self.all_groups || !self.task_group.swap(false, Ordering::Relaxed) {
            return "task events already disabled";
        }
        tracing::info!("Events of group {{task}} disabled by remote.");
        "task events disabled"
    }
}

/// What the publisher is handed.
#[derive(Debug)]
pub enum Queued {
    /// An event to publish.
    Event(Event),
    /// Everything queued before has been published: say so and stop.
    Flush(oneshot::Sender<()>),
}

/// Queues events for the publisher.
#[derive(Clone, Debug)]
pub struct EventQueue(mpsc::UnboundedSender<Queued>);

impl EventQueue {
    /// A queue and the receiver [`publish_events`] drains.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Queued>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (EventQueue(sender), receiver)
    }

    /// Queues `event`; dropped silently once the publisher has stopped.
    pub fn push(&self, event: Event) {
        let _ = self.0.send(Queued::Event(event));
    }

    /// Resolves once every event queued before has been published (or the publisher is
    /// gone); the publisher stops then.
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.0.send(Queued::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

/// Publishes queued events in order until a flush. A transport without broadcast is
/// reported once and its events dropped; a failed publish is logged and the event lost
/// (events are at most once, as on a Python worker).
pub async fn publish_events<B: Broker>(
    broker: &B,
    sender: &Sender,
    mut queued: mpsc::UnboundedReceiver<Queued>,
) {
    let exchange = event_exchange();
    let mut unsupported = false;
    let mut failing = false;
    while let Some(next) = queued.recv().await {
        let event = match next {
            Queued::Event(event) => event,
            Queued::Flush(done) => {
                let _ = done.send(());
                return;
            }
        };
        if unsupported {
            continue;
        }
        let message = sender.outgoing(&event);
        match broker
            .publish_broadcast(&exchange, &event.routing_key, &message)
            .await
        {
            Ok(()) => failing = false,
            Err(BrokerError::Unsupported { transport, .. }) => {
                tracing::warn!("events: the {transport} transport cannot broadcast; no events");
                unsupported = true;
            }
            Err(err) if !failing => {
                tracing::warn!("events: cannot send {}: {err}", event.routing_key);
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Unix time in seconds, as Python's `time.time()`.
pub fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> Sender {
        Sender {
            hostname: "w1@vm".into(),
            pid: 42,
            utcoffset: -1,
            clock: LamportClock::default(),
        }
    }

    #[test]
    fn every_event_carries_the_standard_fields_with_python_types() {
        let sender = sender();
        let event = sender.event(
            "worker-heartbeat",
            worker_fields(2.0, 1, 7, [0.5, 0.0, 0.0]),
        );
        assert_eq!(event.routing_key, "worker.heartbeat");
        let body = &event.body;
        assert_eq!(body["type"], "worker-heartbeat");
        assert_eq!(body["hostname"], "w1@vm");
        assert!(body["utcoffset"].is_i64());
        assert!(body["pid"].is_u64());
        assert!(body["timestamp"].is_f64());
        assert!(body["freq"].is_f64());
        assert_eq!(body["active"], 1);
        assert_eq!(body["processed"], 7);
        assert_eq!(body["loadavg"], json!([0.5, 0.0, 0.0]));
        assert_eq!(body["sw_ident"], "celeriac");
    }

    #[test]
    fn the_message_is_json_with_the_hostname_header() {
        let sender = sender();
        let event = sender.event("worker-online", worker_fields(2.0, 0, 0, [0.0; 3]));
        let out = sender.outgoing(&event);
        assert_eq!(out.content_type, "application/json");
        assert_eq!(out.headers["hostname"], "w1@vm");
        let body: Value = serde_json::from_slice(&out.body).expect("json");
        assert_eq!(body["type"], "worker-online");
        assert_eq!(body["clock"], 1);
    }

    #[test]
    fn the_clock_moves_on_in_sending_order() {
        let sender = sender();
        let made_first = sender.event("task-started", Map::new());
        let made_second = sender.event("task-started", Map::new());
        let clock = |event: &Event| {
            let body: Value = serde_json::from_slice(&sender.outgoing(event).body).expect("json");
            body["clock"].as_u64()
        };
        assert_eq!(clock(&made_second), Some(1), "sent first");
        assert_eq!(clock(&made_first), Some(2));
    }

    #[test]
    fn the_switch_answers_as_celery() {
        let remote = TaskEventSwitch::new(false);
        assert!(!remote.is_on());
        assert_eq!(remote.enable(), "task events enabled");
        assert_eq!(remote.enable(), "task events already enabled");
        assert!(remote.is_on());
        assert_eq!(remote.disable(), "task events disabled");
        assert_eq!(remote.disable(), "task events already disabled");
        let with_e = TaskEventSwitch::new(true);
        assert_eq!(with_e.enable(), "task events already enabled");
        assert_eq!(with_e.disable(), "task events already disabled");
        assert!(with_e.is_on(), "-E keeps sending task events");
    }
}
