//! Where the `rpc://` result backend sends a task's states: the `reply_to` queue and
//! `correlation_id` of the message that carried the task (Celery's
//! `RPCBackend.destination_for`), remembered when the message is delivered.
//!
//! The worker hands a result backend only the task id, so the broker keeps the route of
//! each delivered task until its final state is sent. Routes are kept only once an rpc
//! backend asked for them, and at most [`MAX_ROUTES`] of them: a task whose result is
//! ignored never sends a final state, so the oldest routes make way.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use crate::broker::{BrokerError, Delivery};

use super::fields::{PERSISTENT, TRANSIENT, short};
use super::link::Link;

/// The most routes kept: far more tasks than a worker holds at once (prefetched, waiting
/// for an ETA or running), few enough to stay small.
pub const MAX_ROUTES: usize = 100_000;

/// Where the states of one task go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyRoute {
    /// The queue the client consumes its results from (the message's `reply_to`).
    pub reply_to: String,
    /// What the result messages carry as `correlation_id`: the message's own, else the
    /// task id.
    pub correlation_id: String,
}

/// The routes of delivered tasks, by task id.
#[derive(Default)]
pub(super) struct ReplyRoutes {
    /// Whether to keep routes at all: set when an rpc backend is made for this broker.
    enabled: AtomicBool,
    /// The routes. std `Mutex`: short critical sections, no `.await` inside.
    table: Mutex<RouteTable>,
}

/// Routes with their insertion order, so the oldest can be dropped first.
#[derive(Default)]
struct RouteTable {
    /// Task id → (sequence number of the insertion, route).
    by_task: HashMap<String, (u64, ReplyRoute)>,
    /// (sequence number, task id) in insertion order; an entry whose number no longer
    /// matches `by_task` was replaced or forgotten and is skipped.
    order: VecDeque<(u64, String)>,
    /// The next sequence number.
    next: u64,
}

impl ReplyRoutes {
    /// Starts keeping routes.
    pub(super) fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Keeps the route of `delivery`, when routes are kept and it has a `reply_to`. The
    /// task id is the `id` header (protocol 2), else the `correlation_id`.
    pub(super) fn record(&self, delivery: &Delivery) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let props = &delivery.properties;
        let Some(reply_to) = props.reply_to.as_deref().filter(|r| !r.is_empty()) else {
            return;
        };
        let task_id = delivery
            .headers
            .get("id")
            .and_then(Value::as_str)
            .or(props.correlation_id.as_deref());
        let Some(task_id) = task_id else {
            return;
        };
        let route = ReplyRoute {
            reply_to: reply_to.to_owned(),
            correlation_id: props
                .correlation_id
                .as_deref()
                .unwrap_or(task_id)
                .to_owned(),
        };
        self.lock().insert(task_id, route);
    }

    fn get(&self, task_id: &str) -> Option<ReplyRoute> {
        self.lock()
            .by_task
            .get(task_id)
            .map(|(_, route)| route.clone())
    }

    fn forget(&self, task_id: &str) {
        self.lock().by_task.remove(task_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RouteTable {
    fn insert(&mut self, task_id: &str, route: ReplyRoute) {
        let seq = self.next;
        self.next += 1;
        self.by_task.insert(task_id.to_owned(), (seq, route));
        self.order.push_back((seq, task_id.to_owned()));
        while self.order.len() > MAX_ROUTES {
            let Some((old, id)) = self.order.pop_front() else {
                break;
            };
            if self.by_task.get(&id).is_some_and(|(s, _)| *s == old) {
                self.by_task.remove(&id);
            }
        }
    }
}

/// What the `rpc://` result backend needs from an [`super::AmqpBroker`]: the route of
/// each delivered task, and publishing on the broker's connection. Cheap to clone.
#[derive(Clone)]
pub struct ReplySender {
    /// The broker's publishing connection.
    pub(super) link: Arc<Link>,
    /// The broker's routes.
    pub(super) routes: Arc<ReplyRoutes>,
}

impl ReplySender {
    /// Where the states of `task_id` go, if it was delivered with a `reply_to`.
    pub fn route(&self, task_id: &str) -> Option<ReplyRoute> {
        self.routes.get(task_id)
    }

    /// Drops the route of `task_id` (its final state was sent).
    pub fn forget(&self, task_id: &str) {
        self.routes.forget(task_id);
    }

    /// Publishes `body` (a JSON task meta document) to the default exchange with the
    /// route's `reply_to` as routing key and its `correlation_id`, as Celery's rpc
    /// backend does: no queue is declared (the client declared its reply queue; a reply
    /// to a queue that is gone is dropped by RabbitMQ), `delivery_mode` 2 when
    /// `persistent` (`result_persistent`), else 1.
    pub async fn send(
        &self,
        route: &ReplyRoute,
        body: &[u8],
        persistent: bool,
    ) -> Result<(), BrokerError> {
        let properties = lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_correlation_id(short("correlation_id", &route.correlation_id)?)
            .with_delivery_mode(if persistent { PERSISTENT } else { TRANSIENT });
        self.link
            .publish("", &route.reply_to, None, body, properties)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(n: usize) -> ReplyRoute {
        ReplyRoute {
            reply_to: format!("r{n}"),
            correlation_id: format!("c{n}"),
        }
    }

    #[test]
    fn oldest_routes_make_way_and_replacements_survive() {
        let mut table = RouteTable::default();
        table.insert("kept", route(0));
        for n in 0..MAX_ROUTES {
            table.insert(&format!("t{n}"), route(n));
        }
        assert!(!table.by_task.contains_key("kept"), "the oldest went");
        table.insert("t0", route(7));
        table.insert("new", route(1));
        assert_eq!(
            table.by_task.get("t0").map(|(_, r)| r),
            Some(&route(7)),
            "a replaced route is not dropped by its old entry"
        );
        assert!(!table.by_task.contains_key("t1"));
        assert!(table.order.len() <= MAX_ROUTES);
    }
}
