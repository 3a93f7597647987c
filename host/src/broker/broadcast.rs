//! Broadcast messaging: what monitoring events (`celeryev`) and remote control
//! (`celery.pidbox`) travel on. A message published to a broadcast exchange reaches every
//! queue bound to it at that moment and nobody else; nothing is acked or kept.
//!
//! The transports map it as kombu does (celery-protocol.md §3.7 and §4):
//! * Redis: `PUBLISH` and `PSUBSCRIBE` on `<global_keyprefix>/<db>.<exchange>[/<key>]`;
//! * AMQP: a real exchange of [`ExchangeKind`], and for a subscription a transient queue of
//!   its own, consumed without acks.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Delivery;

/// The AMQP type of a broadcast exchange (Redis broadcasts by PUB/SUB whatever the type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Every bound queue gets every message (`celery.pidbox`).
    Fanout,
    /// Queues get the messages whose routing key matches their binding (`celeryev`).
    Topic,
}

/// A broadcast exchange, declared with exactly the flags Celery declares it with (any
/// difference makes RabbitMQ refuse the other side's declaration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastExchange {
    /// Its name.
    pub name: String,
    /// Its AMQP type.
    pub kind: ExchangeKind,
    /// Whether it survives a broker restart.
    pub durable: bool,
}

/// A queue of one's own bound to a broadcast exchange, as kombu declares a pidbox queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastQueue {
    /// The exchange to hear.
    pub exchange: BroadcastExchange,
    /// The queue's name (AMQP; Redis subscribes without a queue).
    pub queue: String,
    /// The binding key (`""` for a fanout exchange; `#` and `*` are topic wildcards).
    pub binding_key: String,
    /// `x-message-ttl`: how long a message waits in the queue before it is dropped.
    pub message_ttl: Option<Duration>,
    /// `x-expires`: how long the queue outlives its last consumer.
    pub expires: Option<Duration>,
}

/// Messages heard on a [`BroadcastQueue`]. Dropping it unsubscribes.
pub struct Subscription {
    /// Fed by the transport's listener.
    receiver: mpsc::UnboundedReceiver<Delivery>,
    /// Ends the listener (and closes its connection) when the subscription is dropped.
    _listener: ListenerGuard,
}

/// Aborts a transport's listening task on drop.
struct ListenerGuard(tokio::task::JoinHandle<()>);

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Subscription {
    /// A subscription fed through `receiver` by `listener`, which is aborted when the
    /// subscription is dropped.
    pub fn new(
        receiver: mpsc::UnboundedReceiver<Delivery>,
        listener: tokio::task::JoinHandle<()>,
    ) -> Self {
        Subscription {
            receiver,
            _listener: ListenerGuard(listener),
        }
    }

    /// The next message; `None` once the subscription is lost (its connection dropped):
    /// subscribe again.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.receiver.recv().await
    }
}
