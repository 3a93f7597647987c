//! Broker transports: fetching task messages from queues, acking and rejecting them, and
//! publishing new ones, behind one small [`Broker`] trait.
//!
//! `broker` owns the transport framing (kombu's Redis envelope, AMQP properties) and the
//! behaviour shared by every transport: prefetch accounting, cancel-safe fetching and
//! queue fan-in order, all in [`Consumer`]. It does not parse task messages (that is
//! [`crate::protocol`], fed through [`Delivery::raw`]) and does not decide what to ack or
//! when (that is the worker).
//!
//! * [`redis`]: kombu's Redis transport, wire-compatible with Python Celery workers.
//! * [`amqp`]: RabbitMQ (AMQP 0-9-1) through lapin, declaring what Celery declares.

pub mod amqp;
pub mod broadcast;
pub mod redis;

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::protocol::{EncodedMessage, Headers, RawMessage, Timestamp};

pub use self::amqp::{AmqpBroker, AmqpOptions};
pub use self::broadcast::{BroadcastExchange, BroadcastQueue, ExchangeKind, Subscription};
pub use self::redis::{RedisBroker, RedisOptions};

/// What went wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker URL could not be used.
    #[error("invalid {transport} broker URL {url}: {reason}")]
    InvalidUrl {
        /// The transport that refused it.
        transport: &'static str,
        /// The URL, with any password replaced by `***`.
        url: String,
        /// Why.
        reason: String,
    },
    /// A Redis command failed.
    #[error("redis {op} on {key:?} failed: {source}")]
    Redis {
        /// The operation (`BRPOP`, `ack`, `restore`, ...).
        op: &'static str,
        /// The key, queue or delivery tag the operation was about.
        key: String,
        /// The client's error.
        #[source]
        source: ::redis::RedisError,
    },
    /// A message popped from a queue is not a kombu envelope. It has been removed from the
    /// queue and is not tracked as unacked: there is no delivery tag to ack it by.
    #[error("malformed envelope on queue {queue} (delivery tag {delivery_tag:?}): {reason}")]
    MalformedEnvelope {
        /// The queue it was popped from.
        queue: String,
        /// Its delivery tag, when it had one.
        delivery_tag: Option<String>,
        /// What is wrong with it.
        reason: String,
    },
    /// An AMQP operation failed.
    #[error("amqp {op} on {target:?} failed: {source}")]
    Amqp {
        /// The operation (`connect`, `queue.declare`, `basic.ack`, ...).
        op: &'static str,
        /// The queue, exchange, delivery tag or URL the operation was about.
        target: String,
        /// The client's error.
        #[source]
        source: ::lapin::Error,
    },
    /// The server stopped delivering from a queue: it cancelled the consumer (the queue
    /// was deleted) or closed the channel. Every unacked delivery of that channel goes
    /// back to its queue, as after a dropped connection.
    #[error("amqp consumer of queue {queue} lost: {reason}")]
    ConsumerLost {
        /// The queue that was being consumed.
        queue: String,
        /// What ended it.
        reason: String,
    },
    /// An AMQP operation got no answer in time: a connection whose handshake stalls (a
    /// server still booting, or something else listening on the port), or a frame for a
    /// channel that closed meanwhile, which lapin never settles. Treated as a lost
    /// connection.
    #[error("amqp {op} on {target:?} got no answer within {}s", after.as_secs_f64())]
    TimedOut {
        /// The operation (`connect`, `basic.ack`, ...).
        op: &'static str,
        /// The queue or URL the operation was about.
        target: String,
        /// How long it was given.
        after: std::time::Duration,
    },
    /// The server refused a published message (`basic.nack` under publisher confirms).
    #[error(
        "amqp publish to exchange {exchange:?} with routing key {routing_key:?} was not confirmed"
    )]
    NotConfirmed {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// A name or property does not fit the field AMQP carries it in (a short string holds
    /// at most 255 bytes).
    #[error("amqp {what} is {len} bytes long; the most AMQP carries is {max}")]
    TooLong {
        /// What it is (`queue name`, `header name`, `correlation_id`, ...).
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The longest allowed.
        max: usize,
    },
    /// The transport cannot do this ([`Capabilities`] says so up front).
    #[error("{op} is not supported by the {transport} transport")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The transport.
        transport: &'static str,
    },
}

impl BrokerError {
    /// True when the connection (not this one operation) failed: the caller should
    /// reconnect, and every unacked delivery will come back (kombu's
    /// `connection_errors`). False means "this operation failed; carry on".
    pub fn is_connection(&self) -> bool {
        match self {
            BrokerError::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || source.is_timeout()
                    || source.is_unrecoverable_error()
            }
            BrokerError::Amqp { source, .. } => amqp::is_connection_error(source),
            BrokerError::ConsumerLost { .. } | BrokerError::TimedOut { .. } => true,
            BrokerError::InvalidUrl { .. }
            | BrokerError::MalformedEnvelope { .. }
            | BrokerError::NotConfirmed { .. }
            | BrokerError::TooLong { .. }
            | BrokerError::Unsupported { .. } => false,
        }
    }
}

/// How a transport orders priorities, if it has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriorityOrder {
    /// Priorities are ignored.
    Unsupported,
    /// Lower numbers are delivered first (kombu's Redis transport: 0 is the highest).
    LowerFirst,
    /// Higher numbers are delivered first (RabbitMQ with `x-max-priority`).
    HigherFirst,
}

/// What a transport can do, so the worker (and the conformance tests) can ask rather than
/// find out by failing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The transport's name in messages (`redis`, `amqp`).
    pub transport: &'static str,
    /// Message priorities, and which way they sort.
    pub priority: PriorityOrder,
    /// Fanout (broadcast) exchanges.
    pub fanout: bool,
    /// Unacked messages return after this long even if the consumer's connection is
    /// alive (Redis); `None` when they return only when the connection drops (AMQP).
    pub visibility_timeout: Option<Duration>,
    /// The broker can hold a message until a time (RabbitMQ delayed exchange).
    pub delayed_delivery: bool,
    /// A delivery left unacked this long makes the server close the consumer's channel
    /// (RabbitMQ's `consumer_timeout`), so a message held for a later ETA must be handed
    /// back before then; `None` when the server never does that.
    pub unacked_limit: Option<Duration>,
}

/// `delivery_info`: where a message was published to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// The exchange, `""` for the default (anonymous) exchange.
    pub exchange: String,
    /// The routing key (the queue name on the default exchange).
    pub routing_key: String,
}

/// The message properties of a delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    /// The task id, for task messages.
    pub correlation_id: Option<String>,
    /// The queue replies go to (RPC backend, pidbox).
    pub reply_to: Option<String>,
    /// The message priority as published (0..=9 on Redis).
    pub priority: Option<u8>,
    /// The handle to [`Broker::ack`] or [`Broker::reject`] it by.
    pub delivery_tag: String,
    /// Where it was published to.
    pub delivery_info: DeliveryInfo,
}

/// One message as a transport delivers it, framing removed.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// The queue it came from.
    pub queue: String,
    /// The body, transport encoding (base64 on Redis) already removed; still compressed if
    /// the `compression` header says so.
    pub body: Vec<u8>,
    /// e.g. `application/json`.
    pub content_type: String,
    /// e.g. `utf-8`.
    pub content_encoding: String,
    /// The message headers (Celery's task headers).
    pub headers: Headers,
    /// The message properties.
    pub properties: Properties,
    /// The message was delivered before and not acked (restored or requeued).
    pub redelivered: bool,
}

impl Delivery {
    /// The delivery as [`crate::protocol::decode`] takes it.
    pub fn raw(&self) -> RawMessage<'_> {
        RawMessage {
            body: &self.body,
            content_type: &self.content_type,
            content_encoding: &self.content_encoding,
            headers: &self.headers,
            correlation_id: self.properties.correlation_id.as_deref(),
            reply_to: self.properties.reply_to.as_deref(),
            priority: self.properties.priority,
        }
    }

    /// The delivery tag, the handle for ack and reject.
    pub fn delivery_tag(&self) -> &str {
        &self.properties.delivery_tag
    }
}

/// A message to publish: what goes into a transport's envelope.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outgoing {
    /// The body, serialized (and compressed) but not transport-encoded.
    pub body: Vec<u8>,
    /// e.g. `application/json`.
    pub content_type: String,
    /// e.g. `utf-8`.
    pub content_encoding: String,
    /// The message headers.
    pub headers: Map<String, Value>,
    /// The task id, for task messages.
    pub correlation_id: Option<String>,
    /// The reply queue, if any.
    pub reply_to: Option<String>,
    /// The priority (clamped to 0..=9); `None` is 0.
    pub priority: Option<u8>,
    /// How long the broker keeps the message before dropping it (AMQP `expiration`;
    /// Celery sets it from `expires`). Transports without message TTLs ignore it.
    pub expiration: Option<Duration>,
}

impl Outgoing {
    /// A JSON message (`application/json`, `utf-8`) with `headers`: what events, control
    /// replies and deploy replies carry.
    pub fn json(body: Vec<u8>, headers: Map<String, Value>) -> Self {
        Outgoing {
            body,
            content_type: "application/json".to_owned(),
            content_encoding: "utf-8".to_owned(),
            headers,
            ..Outgoing::default()
        }
    }

    /// The same message again, as it was delivered: body, headers and properties
    /// unchanged, its expiration counted from now.
    pub fn copy_of(delivery: &Delivery) -> Self {
        Outgoing {
            body: delivery.body.clone(),
            content_type: delivery.content_type.clone(),
            content_encoding: delivery.content_encoding.clone(),
            headers: delivery.headers.to_map(),
            correlation_id: delivery.properties.correlation_id.clone(),
            reply_to: delivery.properties.reply_to.clone(),
            priority: delivery.properties.priority,
            expiration: expiration_of(delivery.headers.get("expires")),
        }
    }
}

impl From<EncodedMessage> for Outgoing {
    fn from(message: EncodedMessage) -> Self {
        let EncodedMessage {
            headers,
            properties,
            body,
        } = message;
        Outgoing {
            body,
            content_type: properties.content_type.to_owned(),
            content_encoding: properties.content_encoding.to_owned(),
            correlation_id: Some(properties.correlation_id),
            reply_to: properties.reply_to,
            priority: Some(properties.priority),
            expiration: expiration_of(headers.get("expires")),
            headers,
        }
    }
}

/// The time left until the `expires` header, as Celery's `send_task` turns it into the
/// `expiration` property: from now, and 0 when already past.
fn expiration_of(expires: Option<&Value>) -> Option<Duration> {
    let expires = Timestamp::parse(expires?.as_str()?)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    let left = expires.unix_micros().saturating_sub(now).max(0);
    Some(Duration::from_micros(u64::try_from(left).unwrap_or(0)))
}

/// What differs between transports. Everything shared (prefetch, fan-in order,
/// cancel-safety) is in [`Consumer`], which is what a worker uses to consume.
pub trait Broker: Send + Sync + 'static {
    /// What this transport supports.
    fn capabilities(&self) -> Capabilities;

    /// The most unacked deliveries the consumer holds from now on (0: no limit). A
    /// transport whose server pushes messages (AMQP `basic.qos`) passes it on, so the
    /// server never sends more than the consumer can take; transports the consumer pulls
    /// from need nothing (the default). [`Consumer`] calls it when it starts and whenever
    /// an ETA hold changes its limit, under its bookkeeping lock: an implementation records
    /// the limit and returns, and tells the server from its own async calls.
    fn set_prefetch_limit(&self, limit: u32) {
        let _ = limit;
    }

    /// Waits a short, transport-defined time (Redis: the BRPOP timeout) for messages from
    /// `queues`, tried in the given order within each priority, and returns at most `max`
    /// (at least one is asked for) of those waiting; empty if none came. A returned
    /// delivery is unacked until [`Broker::ack`] or [`Broker::reject`]. A message that
    /// cannot be delivered (a malformed envelope) is logged and dropped, not returned.
    fn fetch(
        &self,
        queues: &[String],
        max: usize,
    ) -> impl Future<Output = Result<Vec<Delivery>, BrokerError>> + Send;

    /// Acknowledges a delivery: it is done and never comes back. Acking an unknown tag is
    /// not an error (it was acked or restored already).
    fn ack(&self, delivery_tag: &str) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Rejects a delivery: with `requeue` it goes back to the end of its queue, marked
    /// redelivered; without, it is dropped.
    fn reject(
        &self,
        delivery_tag: &str,
        requeue: bool,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Keeps an unacked delivery from being restored for another visibility timeout (see
    /// [`Capabilities::visibility_timeout`]), while it waits for its ETA or runs with a
    /// late ack. Transports without a visibility timeout have nothing to do.
    fn extend_visibility(
        &self,
        delivery_tag: &str,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        let _ = delivery_tag;
        async { Ok(()) }
    }

    /// Returns a delivery the worker took but will not run (it is stopping), where the next
    /// consumer takes it first: kombu's `restore_unacked` pushes it to the head of a Redis
    /// queue, while a reject with requeue sends it behind everything waiting. Default: reject
    /// with requeue (AMQP puts it back in its place anyway).
    fn give_back(
        &self,
        delivery_tag: &str,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        self.reject(delivery_tag, true)
    }

    /// Publishes a message to `exchange` (`""`: the default exchange, where the routing
    /// key is the queue name) with `routing_key`.
    fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Outgoing,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Publishes a transient message to a broadcast exchange (events, see [`broadcast`]);
    /// it reaches whoever listens now. Transports without broadcast refuse
    /// ([`BrokerError::Unsupported`], the default).
    fn publish_broadcast(
        &self,
        exchange: &BroadcastExchange,
        routing_key: &str,
        message: &Outgoing,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        let _ = (exchange, routing_key, message);
        let transport = self.capabilities().transport;
        async move {
            Err(BrokerError::Unsupported {
                op: "broadcast publish",
                transport,
            })
        }
    }

    /// Starts hearing a broadcast exchange through `queue` (remote control, see
    /// [`broadcast`]). Transports without broadcast refuse (the default).
    fn subscribe_broadcast(
        &self,
        queue: &BroadcastQueue,
    ) -> impl Future<Output = Result<Subscription, BrokerError>> + Send {
        let _ = queue;
        let transport = self.capabilities().transport;
        async move {
            Err(BrokerError::Unsupported {
                op: "broadcast subscribe",
                transport,
            })
        }
    }
}

/// The most messages one fetch asks for: enough to amortise a round trip over many tasks,
/// few enough that one consumer does not empty a queue other workers share.
pub const FETCH_BATCH_MAX: usize = 64;

/// A fetch in progress, kept across cancelled [`Consumer::next`] calls so a message the
/// server already handed out is never dropped on the floor; it holds the prefetch slots
/// reserved for it.
type PendingFetch = JoinHandle<(
    Result<Vec<Delivery>, BrokerError>,
    Option<Vec<OwnedSemaphorePermit>>,
)>;

/// What [`Consumer::next`] keeps between calls.
#[derive(Default)]
struct Pending {
    /// The fetch in progress, if a `next()` was cancelled while it ran.
    fetch: Option<PendingFetch>,
    /// Deliveries fetched and not handed out yet (they are in flight already).
    ready: std::collections::VecDeque<Delivery>,
}

/// Deliveries handed out by a [`Consumer`] and not yet settled.
#[derive(Debug, Default)]
struct InFlight {
    /// Their delivery tags.
    tags: HashSet<String>,
    /// Prefetch permits lent by ended ETA holds that were in use when the hold ended; each
    /// settled delivery pays one back instead of freeing its own.
    owed_permits: usize,
    /// ETA holds not yet dropped: each raises the limit told to the transport by one.
    eta_holds: u32,
}

/// One extra prefetch slot lent while a delivery waits for its ETA; see
/// [`Consumer::hold_for_eta`].
#[must_use = "the extra prefetch slot is taken back when the hold is dropped"]
pub struct EtaHold<'a, B: Broker> {
    consumer: &'a Consumer<B>,
}

impl<B: Broker> Drop for EtaHold<'_, B> {
    fn drop(&mut self) {
        self.consumer.end_eta_hold();
    }
}

/// Consumes from a list of queues through a [`Broker`], holding at most `prefetch`
/// unacked deliveries (kombu's virtual QoS `can_consume`) and rotating the queue order
/// after each delivery (kombu's `round_robin` strategy).
pub struct Consumer<B: Broker> {
    /// The transport; shared with the spawned fetch task.
    broker: Arc<B>,
    /// The queues in their current fan-in order. std `Mutex`: held only to rotate or copy,
    /// never across an `.await`.
    queues: Mutex<Vec<String>>,
    /// One permit per delivery that may be outstanding; `None` for no limit (prefetch 0).
    prefetch: Option<Arc<Semaphore>>,
    /// The prefetch asked for at construction, before ETA holds (0: no limit).
    base_prefetch: u32,
    /// Delivery tags handed out and not yet settled, so each returns its permit once, and
    /// the permits still owed by ended ETA holds. std `Mutex`: short critical sections, no
    /// `.await` inside.
    in_flight: Mutex<InFlight>,
    /// The fetch in progress and the deliveries not handed out yet. tokio `Mutex`: held
    /// across the fetch, which also makes concurrent `next()` calls take turns.
    pending: tokio::sync::Mutex<Pending>,
}

impl<B: Broker> Consumer<B> {
    /// Consumes `queues` (first queue first within a priority) with at most `prefetch`
    /// unacked deliveries; `prefetch` 0 means no limit, as in AMQP.
    pub fn new(broker: Arc<B>, queues: Vec<String>, prefetch: u32) -> Self {
        broker.set_prefetch_limit(prefetch);
        let base_prefetch = prefetch;
        let prefetch = (prefetch > 0).then(|| Arc::new(Semaphore::new(prefetch as usize)));
        Consumer {
            broker,
            queues: Mutex::new(queues),
            prefetch,
            base_prefetch,
            in_flight: Mutex::default(),
            pending: tokio::sync::Mutex::default(),
        }
    }

    /// The transport.
    pub fn broker(&self) -> &Arc<B> {
        &self.broker
    }

    /// Waits for the next delivery, first for a free prefetch slot, then for a message.
    /// Fetches as many messages at once as there are free prefetch slots (at most
    /// [`FETCH_BATCH_MAX`]) and hands them out one by one. Cancel-safe: messages fetched
    /// after the caller gave up are returned by the next calls.
    pub async fn next(&self) -> Result<Delivery, BrokerError> {
        let mut pending = self.pending.lock().await;
        loop {
            if let Some(delivery) = pending.ready.pop_front() {
                return Ok(delivery);
            }
            let handle = match pending.fetch.as_mut() {
                Some(handle) => handle,
                None => {
                    let permits = self.reserve_slots().await;
                    let max = permits.as_ref().map_or(FETCH_BATCH_MAX, Vec::len);
                    let queues = self.fan_in_order();
                    let broker = Arc::clone(&self.broker);
                    pending.fetch.insert(tokio::spawn(async move {
                        (broker.fetch(&queues, max).await, permits)
                    }))
                }
            };
            let joined = handle.await;
            pending.fetch = None;
            let (result, permits) = match joined {
                Ok(pair) => pair,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => continue, // cancelled: only at runtime shutdown; fetch again
            };
            let deliveries = result?;
            self.mark_in_flight(&deliveries, permits);
            if let Some(last) = deliveries.last() {
                self.rotate_after(&last.queue);
            }
            pending.ready.extend(deliveries);
        }
    }

    /// Deliveries fetched but not handed out yet, after waiting up to `wait` for a fetch in
    /// progress: what a stopping worker gives back.
    pub async fn take_unstarted(&self, wait: Duration) -> Vec<Delivery> {
        let mut pending = self.pending.lock().await;
        if let Some(handle) = pending.fetch.take()
            && let Ok(Ok((Ok(deliveries), permits))) = tokio::time::timeout(wait, handle).await
        {
            self.mark_in_flight(&deliveries, permits);
            pending.ready.extend(deliveries);
        }
        pending.ready.drain(..).collect()
    }

    /// Records fetched deliveries as in flight, each keeping one of the prefetch slots
    /// reserved for its fetch; the unused slots go back when `permits` is dropped.
    fn mark_in_flight(&self, deliveries: &[Delivery], permits: Option<Vec<OwnedSemaphorePermit>>) {
        for permit in permits.into_iter().flatten().take(deliveries.len()) {
            permit.forget();
        }
        let mut in_flight = self.lock_in_flight();
        for delivery in deliveries {
            in_flight.tags.insert(delivery.delivery_tag().to_owned());
        }
    }

    /// Waits for one free prefetch slot, then takes every other free one up to
    /// [`FETCH_BATCH_MAX`]; `None` without a prefetch limit.
    async fn reserve_slots(&self) -> Option<Vec<OwnedSemaphorePermit>> {
        let semaphore = self.prefetch.as_ref()?;
        let first = Arc::clone(semaphore)
            .acquire_owned()
            .await
            .expect("the prefetch semaphore is never closed");
        let mut permits = vec![first];
        while permits.len() < FETCH_BATCH_MAX {
            match Arc::clone(semaphore).try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        Some(permits)
    }

    /// Acks a delivery and frees its prefetch slot, even when the broker call fails: a
    /// message the broker did not hear about stays unacked there and comes back by itself
    /// (reconnect, visibility timeout), so holding its slot would only shrink the worker.
    pub async fn ack(&self, delivery_tag: &str) -> Result<(), BrokerError> {
        let acked = self.broker.ack(delivery_tag).await;
        self.settle(delivery_tag);
        acked
    }

    /// Rejects a delivery (see [`Broker::reject`]) and frees its prefetch slot, even when
    /// the broker call fails (as [`Consumer::ack`]).
    pub async fn reject(&self, delivery_tag: &str, requeue: bool) -> Result<(), BrokerError> {
        let rejected = self.broker.reject(delivery_tag, requeue).await;
        self.settle(delivery_tag);
        rejected
    }

    /// Returns a delivery the worker will not run ([`Broker::give_back`]) and frees its slot.
    pub async fn give_back(&self, delivery_tag: &str) -> Result<(), BrokerError> {
        let given = self.broker.give_back(delivery_tag).await;
        self.settle(delivery_tag);
        given
    }

    /// The queues consumed now.
    pub fn queues(&self) -> Vec<String> {
        self.fan_in_order()
    }

    /// Starts consuming `queue` from the next fetch on; false if it already was.
    pub fn add_queue(&self, queue: &str) -> bool {
        let mut queues = self.lock_queues();
        if queues.iter().any(|q| q == queue) {
            return false;
        }
        queues.push(queue.to_owned());
        true
    }

    /// Stops consuming `queue` from the next fetch on; false if it was not consumed.
    pub fn remove_queue(&self, queue: &str) -> bool {
        let mut queues = self.lock_queues();
        let before = queues.len();
        queues.retain(|q| q != queue);
        queues.len() != before
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Delivery tags handed out and not yet acked or rejected.
    pub fn in_flight(&self) -> Vec<String> {
        self.lock_in_flight().tags.iter().cloned().collect()
    }

    /// Lets one more delivery be prefetched while a delivery waits for its ETA, until the
    /// returned hold is dropped: Celery raises the prefetch count for every ETA-held task,
    /// so a queue full of countdowns does not starve the tasks due now.
    pub fn hold_for_eta(&self) -> EtaHold<'_, B> {
        if let Some(semaphore) = &self.prefetch {
            let mut in_flight = self.lock_in_flight();
            in_flight.eta_holds += 1;
            // Under the lock, so concurrent holds tell the transport their limits in order.
            self.broker
                .set_prefetch_limit(self.base_prefetch.saturating_add(in_flight.eta_holds));
            drop(in_flight);
            semaphore.add_permits(1);
        }
        EtaHold { consumer: self }
    }

    /// Takes back the permit an ETA hold lent, now if it is free, else from the next
    /// settled delivery.
    fn end_eta_hold(&self) {
        let Some(semaphore) = &self.prefetch else {
            return;
        };
        let mut in_flight = self.lock_in_flight();
        in_flight.eta_holds = in_flight.eta_holds.saturating_sub(1);
        match semaphore.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => in_flight.owed_permits += 1,
        }
        self.broker
            .set_prefetch_limit(self.base_prefetch.saturating_add(in_flight.eta_holds));
    }

    fn settle(&self, delivery_tag: &str) {
        let mut in_flight = self.lock_in_flight();
        if !in_flight.tags.remove(delivery_tag) {
            return;
        }
        if in_flight.owed_permits > 0 {
            in_flight.owed_permits -= 1;
        } else if let Some(semaphore) = &self.prefetch {
            semaphore.add_permits(1);
        }
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fan_in_order(&self) -> Vec<String> {
        self.lock_queues().clone()
    }

    /// Moves `queue` to the end, so the others are tried first next time.
    fn rotate_after(&self, queue: &str) {
        let mut queues = self.lock_queues();
        if let Some(index) = queues.iter().position(|q| q == queue) {
            let q = queues.remove(index);
            queues.push(q);
        }
    }
}
