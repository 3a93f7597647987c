//! An implementation of `Broker` for RabbitMQ (AMQP 0-9-1), on lapin.
//!
//! Declares, consumes and publishes as a Python Celery worker on kombu's `pyamqp`
//! transport does (spec §4), so Python clients and workers share queues with celeriac.
//!
//! # Features
//!
//! * Type: native (AMQP 0-9-1; tested with RabbitMQ 3.10)
//! * Supports direct: yes (the default exchange `""`, and named exchanges that exist)
//! * Supports topic, fanout: for broadcast only (`amqp/broadcast.rs`): events on `celeryev`,
//!   remote control on `celery.pidbox` with a subscription connection of its own
//! * Supports priority: yes, **higher first**, on queues declared with `x-max-priority`
//!   ([`AmqpOptions::queue_max_priority`], Celery's `task_queue_max_priority`)
//! * Supports TTL: yes, `expiration` is set from a task's `expires` (RabbitMQ drops it then)
//! * Acks: native, coalesced: acks that pile up while one is written go out as one
//!   `basic.ack` with `multiple` where no unsettled delivery lies below them
//!   (`amqp/acks.rs`). Unacked deliveries return to their queue when the connection (or its
//!   channel) closes, marked redelivered; there is no visibility timeout.
//! * Prefetch: `basic.qos` with the consumer's prefetch count (`global`, as Celery sets it
//!   for RabbitMQ 3.x), raised and lowered with ETA holds before the next ack or fetch,
//!   so the server never pushes more than the worker can hold.
//! * Quorum queues: consumed as they are (declared by the client or an operator). RabbitMQ
//!   refuses their consumers on a channel with global QoS, so once one shows up the
//!   consumer reconnects with per-consumer QoS, as Celery does. The server then applies a
//!   changed prefetch count only to consumers created later, so ETA holds no longer raise
//!   it (Celery has the same limit and uses RabbitMQ's delayed delivery instead, which
//!   celeriac does not implement yet). lapin does not expose the server's version, so
//!   RabbitMQ 4 with classic queues keeps the global QoS (still accepted there).
//! * Publishing: a connection of its own, publisher confirms on every message.
//! * Reconnection: a fetch that finds its connection gone fails with an error whose
//!   [`BrokerError::is_connection`] is true; the next fetch connects again, declares its
//!   queues and consumes again. The publishing connection reopens on the next publish.
//!
//! # Entities (Celery's defaults, spec §4.1)
//!
//! Each consumed queue, and each queue published to through the default exchange, is
//! declared once per connection with its exchange and binding: exchange `<queue>`
//! (`direct`, durable), queue `<queue>` (durable, not exclusive, not auto-delete,
//! `x-max-priority` only when set), bound with routing key `<queue>`. The default queue is
//! `celery`. A queue that already exists with other settings (a quorum queue, another
//! `x-max-priority`) is used as it is, with a warning, rather than refused.
//!
//! # Connection string
//!
//! `amqp://user:password@host:port/vhost` as kombu reads it: `guest:guest@localhost:5672`
//! by default, `//` or `/%2F` for the vhost `/` (so is no path), `pyamqp://` as a synonym,
//! `?heartbeat=S` (default: the server's proposal, 60 s on RabbitMQ), `?connect_timeout=S`
//! (default 4 s, Celery's `broker_connection_timeout`: a connection attempt, handshake
//! included, that takes longer fails and is retried), `?frame_max=N` (default 32 KiB: lapin
//! keeps 64 frames of buffer per connection).
//!
//! `amqps://` (and `pyamqps://`, port 5671) connects over TLS with rustls, trusting the
//! system's root certificates. Celery's `broker_use_ssl` keys are read as query options
//! with an `ssl_` prefix, as on `rediss://` ([`crate::url::SslOptions`]):
//!
//! * `ssl_ca_certs=/ca.pem`: CA certificates (PEM) trusted beside the system's roots, for a
//!   server with a private CA;
//! * `ssl_certfile=/cert.pem&ssl_keyfile=/key.pem`: a client certificate and its key (PEM),
//!   presented when the server asks for one;
//! * `ssl_cert_reqs=required` (or `optional`, the same for a client): the default.
//!   `none`/`CERT_NONE` is refused ([`UriError::CertNone`]): lapin's rustls connector
//!   always verifies the server, and silently verifying anyway would hide that.
//!
//! The files are read and checked when the URL is parsed, so a missing or non-PEM file is
//! named before any connection is tried; a later reconnect uses what was read then. Every
//! connection (consuming, publishing and `rpc://` replies, broadcast subscriptions) uses the
//! same settings. On a plain `amqp://` URL an `ssl_*` option is an error
//! ([`UriError::SslWithoutTls`]): the connection would be in clear text.
//!
//! # Options ([`AmqpOptions`])
//!
//! * `polling_interval` (how long one fetch waits): 1 s
//! * `queue_max_priority`: none
//! * `connection_name`: `celeriac`
//! * `consumer_timeout`: 30 min, the server's; a message held for an ETA further away is
//!   republished and acked before then (see `worker::delivery`), so RabbitMQ never closes
//!   the channel over it (Celery #6760)

mod acks;
mod broadcast;
mod fields;
mod link;
mod replies;
mod session;
mod topology;
mod uri;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use lapin::options::BasicQosOptions;
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind};
use tokio::sync::Notify;

use crate::url::redact_password;

use super::{
    BroadcastExchange, BroadcastQueue, Broker, BrokerError, Capabilities, Delivery, Outgoing,
    PriorityOrder, Subscription,
};

use self::link::Link;
use self::replies::ReplyRoutes;
use self::session::{Consumed, Incoming, Session};

pub use self::replies::{ReplyRoute, ReplySender};
pub use self::topology::{Declared, queue_arguments};
pub use self::uri::{AmqpUrl, UriError};

/// Reads a Celery `amqp://` URL as kombu does (see the module docs) into lapin's
/// connection parameters and TLS settings.
pub fn parse_url(url: &str) -> Result<AmqpUrl, UriError> {
    uri::parse(url)
}

const TRANSPORT: &str = "amqp";

/// Options of an [`AmqpBroker`]. [`AmqpOptions::default`] is kombu's and Celery's
/// defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpOptions {
    /// How long one [`Broker::fetch`] waits for a first message. Default 1 s.
    pub polling_interval: Duration,
    /// Celery's `task_queue_max_priority`: the `x-max-priority` every declared queue gets.
    /// Default `None` (no argument, so no priorities).
    pub queue_max_priority: Option<u8>,
    /// The name RabbitMQ lists the connections under (`rabbitmqctl list_connections
    /// client_properties`), followed by ` consumer` or ` publisher`. Default `celeriac`.
    pub connection_name: String,
    /// The server's `consumer_timeout`: how long a delivery may stay unacked before
    /// RabbitMQ closes the channel. Messages held for a later ETA are handed back before
    /// then. Default 30 min (RabbitMQ's default); `None` for a server without one.
    pub consumer_timeout: Option<Duration>,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        AmqpOptions {
            polling_interval: Duration::from_secs(1),
            queue_max_priority: None,
            connection_name: "celeriac".to_owned(),
            consumer_timeout: Some(Duration::from_secs(1800)),
        }
    }
}

/// Celery's RabbitMQ transport.
pub struct AmqpBroker {
    /// The options, fixed at connect time.
    options: AmqpOptions,
    /// Where to connect, and with which TLS settings.
    target: AmqpUrl,
    /// The URL without its password, for errors.
    url: String,
    /// The publishing connection, shared with the rpc:// backend.
    link: Arc<Link>,
    /// Reply routes of delivered tasks, for the rpc:// backend.
    routes: Arc<ReplyRoutes>,
    /// The consuming connection, opened by the first fetch. tokio `Mutex`: held across a
    /// fetch's wait (one fetch at a time, as [`super::Consumer`] does).
    session: tokio::sync::Mutex<Option<Session>>,
    /// Numbers the sessions, for their delivery tags.
    sessions: AtomicU64,
    /// The prefetch count the consumer asks for, and what the server was told.
    qos: Qos,
    /// Deliveries handed out and not settled, and the acks and rejects settling them.
    ledger: acks::Ledger,
}

/// The consumer's prefetch count and its `basic.qos`.
#[derive(Default)]
struct Qos {
    /// What [`Broker::set_prefetch_limit`] last asked for (0: no limit).
    wanted: AtomicU32,
    /// The count applies to each consumer rather than to the channel: set once a quorum
    /// queue is consumed, as RabbitMQ refuses their consumers on a channel with global QoS.
    per_consumer: AtomicBool,
    /// Wakes a waiting fetch to pass a raised limit on at once.
    changed: Notify,
    /// The consuming channel and the count last applied to it. tokio `Mutex`: held across
    /// `basic.qos`, so two changes reach the server in order.
    applied: tokio::sync::Mutex<Applied>,
}

/// The QoS state of the consuming channel.
#[derive(Default)]
struct Applied {
    /// The consuming channel, once a session is open.
    channel: Option<Channel>,
    /// The count the server has, `None` until told.
    count: Option<u32>,
}

impl AmqpBroker {
    /// Connects to `url` with the default options.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::connect_with(url, AmqpOptions::default()).await
    }

    /// Connects the publishing connection to `url` now (so a bad URL or an unreachable
    /// server fails here); the consuming one opens with the first fetch.
    pub async fn connect_with(url: &str, options: AmqpOptions) -> Result<Self, BrokerError> {
        let redacted = redact_password(url);
        let target = uri::parse(url).map_err(|err| BrokerError::InvalidUrl {
            transport: TRANSPORT,
            url: redacted.clone(),
            reason: err.to_string(),
        })?;
        let name = format!("{} publisher", options.connection_name);
        let link = Link::connect(target.clone(), redacted.clone(), name).await?;
        Ok(AmqpBroker {
            options,
            target,
            url: redacted,
            link: Arc::new(link),
            routes: Arc::default(),
            session: tokio::sync::Mutex::new(None),
            sessions: AtomicU64::new(1),
            qos: Qos::default(),
            ledger: acks::Ledger::default(),
        })
    }

    /// The options in use.
    pub fn options(&self) -> &AmqpOptions {
        &self.options
    }

    /// Declares `queue` as Celery does (exchange, queue, binding; see the module docs) on
    /// the publishing connection, and says whether it was declared as asked or found
    /// with other settings.
    pub async fn declare_queue(&self, queue: &str) -> Result<Declared, BrokerError> {
        self.link
            .declare(queue, self.options.queue_max_priority)
            .await
    }

    /// Deletes `queue` with its messages, on the publishing connection (tests and tools;
    /// a worker never deletes queues). Returns how many messages it held.
    pub async fn delete_queue(&self, queue: &str) -> Result<u32, BrokerError> {
        self.link.delete(queue).await
    }

    /// What the rpc:// result backend needs; from now on the reply route of every
    /// delivered task is kept for it.
    pub fn reply_sender(&self) -> ReplySender {
        self.routes.enable();
        ReplySender {
            link: Arc::clone(&self.link),
            routes: Arc::clone(&self.routes),
        }
    }

    /// Whether `delivery_tag` was handed out by this broker and not yet acked or rejected.
    pub fn is_unacked(&self, delivery_tag: &str) -> bool {
        self.ledger.contains(delivery_tag)
    }

    /// Closes both connections; unacked deliveries go back to their queues. A later call
    /// connects again.
    pub async fn close(&self) {
        if let Some(session) = self.session.lock().await.take() {
            self.forget_session().await;
            session.close().await;
        }
        self.link.close().await;
    }

    /// The session consuming exactly `queues`, opened (and its QoS set) if there is none.
    /// A session whose connection closed is an error, so the worker learns that its
    /// unacked deliveries went back; the next call opens a new one.
    async fn ready_session<'a>(
        &self,
        slot: &'a mut Option<Session>,
        queues: &[String],
    ) -> Result<&'a mut Session, BrokerError> {
        if slot.as_ref().is_some_and(|session| !session.is_open()) {
            return Err(BrokerError::ConsumerLost {
                queue: queues.join(","),
                reason: "the consuming connection closed".to_owned(),
            });
        }
        loop {
            if slot.is_none() {
                let id = self.sessions.fetch_add(1, Ordering::Relaxed);
                let name = format!("{} consumer", self.options.connection_name);
                let session = Session::open(id, &self.target, &self.url, &name).await?;
                *self.qos.applied.lock().await = Applied {
                    channel: Some(session.channel.clone()),
                    count: None,
                };
                *slot = Some(session);
            }
            let session = slot.as_mut().expect("a session was opened just above");
            // QoS before the consumers, so the server never sends them more than it allows.
            self.sync_qos().await?;
            let per_consumer = self.qos.per_consumer.load(Ordering::Relaxed);
            match session
                .consume(queues, self.options.queue_max_priority, per_consumer)
                .await?
            {
                Consumed::All => break,
                Consumed::QuorumQueue(queue) => {
                    // Celery's worker_detect_quorum_queues: per-consumer prefetch from now
                    // on, on a fresh channel (a global limit cannot be taken back).
                    tracing::info!(
                        queue,
                        "consuming a quorum queue: switching to per-consumer prefetch, as Celery does"
                    );
                    self.qos.per_consumer.store(true, Ordering::Relaxed);
                    if let Some(session) = slot.take() {
                        self.forget_session().await;
                        session.close().await;
                    }
                }
            }
        }
        Ok(slot.as_mut().expect("the loop ends with a session"))
    }

    /// Forgets what belonged to a session that ended: its unacked deliveries (the server
    /// requeued them) and its channel's QoS.
    async fn forget_session(&self) {
        self.ledger.clear();
        *self.qos.applied.lock().await = Applied::default();
    }

    /// Tells the server the consumer's current prefetch count, if it changed. Called
    /// before every fetch and ack, so a lowered limit is in place before the server could
    /// use the slot an ack frees.
    async fn sync_qos(&self) -> Result<(), BrokerError> {
        let mut applied = self.qos.applied.lock().await;
        let wanted = self.qos.wanted.load(Ordering::Relaxed);
        let Some(channel) = applied.channel.clone() else {
            return Ok(());
        };
        if applied.count == Some(wanted) {
            return Ok(());
        }
        let count = u16::try_from(wanted).unwrap_or(u16::MAX);
        let global = !self.qos.per_consumer.load(Ordering::Relaxed);
        channel
            .basic_qos(count, BasicQosOptions { global })
            .await
            .map_err(amqp_error("basic.qos", &self.url))?;
        applied.count = Some(wanted);
        Ok(())
    }

    /// Waits up to the polling interval for a first delivery, then takes whatever else
    /// already arrived, up to `max`.
    async fn receive(
        &self,
        session: &mut Session,
        max: usize,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let deadline = tokio::time::Instant::now() + self.options.polling_interval;
        let mut next = loop {
            tokio::select! {
                incoming = session.receiver.recv() => break incoming,
                () = self.qos.changed.notified() => self.sync_qos().await?,
                () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        };
        let mut deliveries = Vec::new();
        loop {
            match next {
                Some(Incoming::Message { queue, delivery }) => {
                    deliveries.push(self.hand_out(session.id, queue, *delivery));
                }
                Some(Incoming::Lost { queue, reason }) if session.consumes(&queue) => {
                    return Err(BrokerError::ConsumerLost {
                        queue: queue.to_string(),
                        reason,
                    });
                }
                Some(Incoming::Lost { .. }) => {} // a consumer we cancelled
                None => {
                    return Err(BrokerError::ConsumerLost {
                        queue: String::new(),
                        reason: "every consumer ended".to_owned(),
                    });
                }
            }
            if deliveries.len() >= max {
                break;
            }
            match session.receiver.try_recv() {
                Ok(incoming) => next = Some(incoming),
                Err(_) => break,
            }
        }
        Ok(deliveries)
    }

    /// Records a delivery as unacked (and its reply route) and converts it.
    fn hand_out(
        &self,
        session: u64,
        queue: Arc<str>,
        message: lapin::message::Delivery,
    ) -> Delivery {
        let delivery_tag = message.delivery_tag;
        let acker = message.acker.clone();
        let delivery = fields::delivery(&queue[..], acks::tag(session, delivery_tag), message);
        self.routes.record(&delivery);
        self.ledger.record(session, queue, delivery_tag, acker);
        delivery
    }

    /// Closes the session after an error that ended it, so the next fetch opens a new one;
    /// returns the error.
    async fn end_session_on(&self, err: BrokerError, slot: &mut Option<Session>) -> BrokerError {
        let ended = err.is_connection() || !slot.as_ref().is_some_and(Session::is_open);
        if ended && let Some(session) = slot.take() {
            self.forget_session().await;
            session.close().await;
        }
        err
    }
}

impl Broker for AmqpBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            transport: TRANSPORT,
            priority: PriorityOrder::HigherFirst,
            fanout: true,
            visibility_timeout: None,
            delayed_delivery: false,
            unacked_limit: self.options.consumer_timeout,
        }
    }

    fn set_prefetch_limit(&self, limit: u32) {
        if self.qos.wanted.swap(limit, Ordering::Relaxed) != limit {
            self.qos.changed.notify_one();
        }
    }

    async fn fetch(&self, queues: &[String], max: usize) -> Result<Vec<Delivery>, BrokerError> {
        if queues.is_empty() {
            tokio::time::sleep(self.options.polling_interval).await;
            return Ok(Vec::new());
        }
        let mut slot = self.session.lock().await;
        let session = match self.ready_session(&mut slot, queues).await {
            Ok(session) => session,
            Err(err) => return Err(self.end_session_on(err, &mut slot).await),
        };
        match self.receive(session, max.max(1)).await {
            Ok(deliveries) => Ok(deliveries),
            Err(err) => Err(self.end_session_on(err, &mut slot).await),
        }
    }

    async fn ack(&self, delivery_tag: &str) -> Result<(), BrokerError> {
        // A lowered limit must be in place before the server could use the slot an ack frees.
        self.sync_qos().await?;
        self.ledger.ack(delivery_tag).await
    }

    async fn reject(&self, delivery_tag: &str, requeue: bool) -> Result<(), BrokerError> {
        self.sync_qos().await?;
        self.ledger.reject(delivery_tag, requeue).await
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Outgoing,
    ) -> Result<(), BrokerError> {
        let properties = fields::properties(message, fields::PERSISTENT)?;
        // Through the default exchange the routing key is the queue: declare it first,
        // as a Celery client does, so the message is not dropped as unroutable.
        let declare = exchange
            .is_empty()
            .then_some((routing_key, self.options.queue_max_priority));
        self.link
            .publish(exchange, routing_key, declare, &message.body, properties)
            .await
    }

    async fn publish_broadcast(
        &self,
        exchange: &BroadcastExchange,
        routing_key: &str,
        message: &Outgoing,
    ) -> Result<(), BrokerError> {
        let properties = fields::properties(message, fields::TRANSIENT)?;
        self.link.declare_exchange(exchange).await?;
        self.link
            .publish(&exchange.name, routing_key, None, &message.body, properties)
            .await
    }

    async fn subscribe_broadcast(
        &self,
        queue: &BroadcastQueue,
    ) -> Result<Subscription, BrokerError> {
        let name = format!("{} control", self.options.connection_name);
        broadcast::subscribe(&self.target, &self.url, &name, queue).await
    }
}

/// Opens a connection named `name` (as RabbitMQ lists it) on the current tokio runtime,
/// with the URL's TLS settings, within its `connect_timeout`: every connection of the
/// broker (consuming, publishing, broadcast) goes through here. lapin has no handshake
/// timeout of its own, so a server that accepts the TCP connection and never answers would
/// otherwise hold the worker forever.
async fn connect(target: &AmqpUrl, url: &str, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime().map_err(amqp_error("connect", url))?;
    let handshake = Connection::connect_uri_with_config(
        target.uri.clone(),
        properties,
        target.tls_config(),
        runtime,
    );
    match tokio::time::timeout(target.connect_timeout, handshake).await {
        Ok(connected) => connected.map_err(amqp_error("connect", url)),
        Err(_) => Err(BrokerError::TimedOut {
            op: "connect",
            target: url.to_owned(),
            after: target.connect_timeout,
        }),
    }
}

/// Turns a lapin error into a [`BrokerError::Amqp`] about `op` on `target`.
fn amqp_error(op: &'static str, target: &str) -> impl Fn(lapin::Error) -> BrokerError {
    let target = target.to_owned();
    move |source| BrokerError::Amqp {
        op,
        target: target.clone(),
        source,
    }
}

/// RabbitMQ refused a declaration because the entity exists with other settings.
fn is_precondition_failed(err: &lapin::Error) -> bool {
    matches!(err.kind(), ErrorKind::ProtocolError(e) if e.get_id() == 406)
}

/// Whether a lapin error means the connection or channel is gone (reconnect; unacked
/// deliveries come back) rather than this one operation being refused: I/O errors, a
/// missed heartbeat, a closed connection or channel, and connection-level (hard) AMQP
/// errors such as `CONNECTION_FORCED` when RabbitMQ stops. A channel-level (soft) error
/// such as `NOT_FOUND` or `PRECONDITION_FAILED` is about the request.
pub(super) fn is_connection_error(err: &lapin::Error) -> bool {
    match err.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::RuntimeShutdownError(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidChannel(_) => true,
        ErrorKind::ProtocolError(_) => err.is_amqp_hard_error(),
        _ => false,
    }
}
