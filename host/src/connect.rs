//! Brokers and result backends from Celery URLs: which implementation a URL names, the
//! default result backend of a broker, connecting, and the [`AnyBroker`] and
//! [`AnyBackend`] enums through which the worker (generic over one broker and one backend
//! type) runs on any of them.
//!
//! | URL | implementation |
//! | --- | --- |
//! | `redis://`, `rediss://` (broker) | [`RedisBroker`] |
//! | `amqp://`, `amqps://`, `pyamqp://` (broker) | [`AmqpBroker`] |
//! | `redis://`, `rediss://`, `redis+unix://` (backend) | [`RedisBackend`] |
//! | `rpc://` (backend, with an AMQP broker) | [`RpcBackend`] |
//!
//! Without a result backend URL, a Redis broker stores results on itself and an AMQP
//! broker sends them with `rpc://` (Celery itself stores nothing by default).

use std::time::Duration;

use crate::backend::{
    BackendError, ChordClaim, ChordPart, PartReturn, RedisBackend, RedisBackendConfig,
    ResultBackend, RpcBackend, StoreOutcome, TaskMeta,
};
use crate::broker::{
    AmqpBroker, AmqpOptions, BroadcastExchange, BroadcastQueue, Broker, BrokerError, Capabilities,
    Delivery, Outgoing, RedisBroker, RedisOptions, Subscription,
};
use crate::url::redact_password;

/// The rpc:// backend's URL.
pub const RPC_BACKEND: &str = "rpc://";

/// Why a broker or backend could not be had from a URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No broker implementation serves this URL's scheme.
    #[error("unsupported broker URL {url} (redis://, rediss://, amqp://, amqps://)")]
    UnsupportedBroker {
        /// The URL, password redacted.
        url: String,
    },
    /// No result backend serves this URL's scheme.
    #[error("unsupported result backend {url} (redis://, rediss://, redis+unix://, rpc://)")]
    UnsupportedBackend {
        /// The URL, password redacted.
        url: String,
    },
    /// `rpc://` sends results over the broker, which must then be RabbitMQ.
    #[error("the rpc:// result backend needs an amqp:// broker, not a {broker} one")]
    RpcNeedsAmqp {
        /// The broker's transport (`redis`).
        broker: &'static str,
    },
    /// Connecting to the broker failed.
    #[error("broker {url}: {source}")]
    Broker {
        /// The URL, password redacted.
        url: String,
        /// What failed (boxed: it is large).
        #[source]
        source: Box<BrokerError>,
    },
    /// Connecting to the result backend failed.
    #[error("result backend {url}: {source}")]
    Backend {
        /// The URL, password redacted.
        url: String,
        /// What failed (boxed: it is large).
        #[source]
        source: Box<BackendError>,
    },
}

/// The broker implementations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// kombu's Redis transport.
    Redis,
    /// RabbitMQ.
    Amqp,
}

/// The result backend implementations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Celery's Redis backend.
    Redis,
    /// Celery's RPC backend.
    Rpc,
}

/// The scheme of `url`, lower-cased (`""` without `://`).
fn scheme(url: &str) -> String {
    url.split_once("://")
        .map_or("", |(scheme, _)| scheme)
        .to_ascii_lowercase()
}

/// Which broker `url` names.
pub fn broker_kind(url: &str) -> Result<BrokerKind, ConnectError> {
    match scheme(url).as_str() {
        "redis" | "rediss" => Ok(BrokerKind::Redis),
        "amqp" | "amqps" | "pyamqp" | "pyamqps" => Ok(BrokerKind::Amqp),
        _ => Err(ConnectError::UnsupportedBroker {
            url: redact_password(url),
        }),
    }
}

/// Which result backend `url` names.
pub fn backend_kind(url: &str) -> Result<BackendKind, ConnectError> {
    match scheme(url).as_str() {
        "redis" | "rediss" | "redis+unix" => Ok(BackendKind::Redis),
        "rpc" => Ok(BackendKind::Rpc),
        _ => Err(ConnectError::UnsupportedBackend {
            url: redact_password(url),
        }),
    }
}

/// The result backend URL to use: `given`, else the broker's default (a Redis broker's
/// own URL, `rpc://` for an AMQP broker). Checks that the pair works together.
pub fn backend_url(broker: &str, given: Option<&str>) -> Result<String, ConnectError> {
    let broker_kind = broker_kind(broker)?;
    let url = match (given, broker_kind) {
        (Some(url), _) => url.to_owned(),
        (None, BrokerKind::Redis) => broker.to_owned(),
        (None, BrokerKind::Amqp) => RPC_BACKEND.to_owned(),
    };
    if backend_kind(&url)? == BackendKind::Rpc && broker_kind != BrokerKind::Amqp {
        return Err(ConnectError::RpcNeedsAmqp { broker: "redis" });
    }
    Ok(url)
}

/// Transport options, each used only by its own transport.
#[derive(Clone, Debug, Default)]
pub struct BrokerOptions {
    /// For a Redis broker.
    pub redis: RedisOptions,
    /// For an AMQP broker.
    pub amqp: AmqpOptions,
}

/// Connects to the broker at `url`.
pub async fn connect_broker(url: &str, options: BrokerOptions) -> Result<AnyBroker, ConnectError> {
    let failed = |source| ConnectError::Broker {
        url: redact_password(url),
        source: Box::new(source),
    };
    match broker_kind(url)? {
        BrokerKind::Redis => RedisBroker::connect_with(url, options.redis)
            .await
            .map(|redis| AnyBroker::Redis(Box::new(redis)))
            .map_err(failed),
        BrokerKind::Amqp => AmqpBroker::connect_with(url, options.amqp)
            .await
            .map(|amqp| AnyBroker::Amqp(Box::new(amqp)))
            .map_err(failed),
    }
}

/// Result backend options, each used only by the backends it concerns.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Redis: Celery's `result_chord_ordered` transport option (default true).
    pub result_chord_ordered: bool,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            result_chord_ordered: true,
        }
    }
}

/// Connects to the result backend at `url`; `rpc://` rides on `broker`'s connection.
pub async fn connect_backend(
    url: &str,
    broker: &AnyBroker,
    options: &BackendOptions,
) -> Result<AnyBackend, ConnectError> {
    match backend_kind(url)? {
        BackendKind::Redis => RedisBackend::connect(
            RedisBackendConfig::new(url).result_chord_ordered(options.result_chord_ordered),
        )
        .await
        .map(AnyBackend::Redis)
        .map_err(|source| ConnectError::Backend {
            url: redact_password(url),
            source: Box::new(source),
        }),
        BackendKind::Rpc => match broker {
            AnyBroker::Amqp(amqp) => Ok(AnyBackend::Rpc(RpcBackend::new(amqp))),
            other => Err(ConnectError::RpcNeedsAmqp {
                broker: other.capabilities().transport,
            }),
        },
    }
}

/// One of the brokers, chosen by URL at run time. Each is boxed: they are large and of
/// very different sizes.
pub enum AnyBroker {
    /// kombu's Redis transport.
    Redis(Box<RedisBroker>),
    /// RabbitMQ.
    Amqp(Box<AmqpBroker>),
}

/// Runs `$body` with `$inner` bound to the broker inside `$any`, whichever it is.
macro_rules! each_broker {
    ($any:expr, $inner:ident => $body:expr) => {
        match $any {
            AnyBroker::Redis($inner) => $body,
            AnyBroker::Amqp($inner) => $body,
        }
    };
}

impl AnyBroker {
    /// The Redis broker, if it is one (for its visibility-timeout sweep).
    pub fn as_redis(&self) -> Option<&RedisBroker> {
        match self {
            AnyBroker::Redis(redis) => Some(redis.as_ref()),
            AnyBroker::Amqp(_) => None,
        }
    }

    /// How long one fetch waits for messages.
    pub fn polling_interval(&self) -> Duration {
        match self {
            AnyBroker::Redis(redis) => redis.options().polling_interval,
            AnyBroker::Amqp(amqp) => amqp.options().polling_interval,
        }
    }
}

impl Broker for AnyBroker {
    fn capabilities(&self) -> Capabilities {
        each_broker!(self, broker => broker.capabilities())
    }

    fn set_prefetch_limit(&self, limit: u32) {
        each_broker!(self, broker => broker.set_prefetch_limit(limit))
    }

    async fn fetch(&self, queues: &[String], max: usize) -> Result<Vec<Delivery>, BrokerError> {
        each_broker!(self, broker => broker.fetch(queues, max).await)
    }

    async fn ack(&self, delivery_tag: &str) -> Result<(), BrokerError> {
        each_broker!(self, broker => broker.ack(delivery_tag).await)
    }

    async fn reject(&self, delivery_tag: &str, requeue: bool) -> Result<(), BrokerError> {
        each_broker!(self, broker => broker.reject(delivery_tag, requeue).await)
    }

    async fn extend_visibility(&self, delivery_tag: &str) -> Result<(), BrokerError> {
        each_broker!(self, broker => broker.extend_visibility(delivery_tag).await)
    }

    async fn give_back(&self, delivery_tag: &str) -> Result<(), BrokerError> {
        each_broker!(self, broker => broker.give_back(delivery_tag).await)
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Outgoing,
    ) -> Result<(), BrokerError> {
        each_broker!(self, broker => broker.publish(exchange, routing_key, message).await)
    }

    async fn publish_broadcast(
        &self,
        exchange: &BroadcastExchange,
        routing_key: &str,
        message: &Outgoing,
    ) -> Result<(), BrokerError> {
        each_broker!(self, broker => broker.publish_broadcast(exchange, routing_key, message).await)
    }

    async fn subscribe_broadcast(
        &self,
        queue: &BroadcastQueue,
    ) -> Result<Subscription, BrokerError> {
        each_broker!(self, broker => broker.subscribe_broadcast(queue).await)
    }
}

/// One of the result backends, chosen by URL at run time.
pub enum AnyBackend {
    /// Celery's Redis backend.
    Redis(RedisBackend),
    /// Celery's RPC backend.
    Rpc(RpcBackend),
}

impl ResultBackend for AnyBackend {
    async fn store(&self, meta: &TaskMeta) -> Result<StoreOutcome, BackendError> {
        match self {
            AnyBackend::Redis(backend) => backend.store(meta).await,
            AnyBackend::Rpc(backend) => backend.store(meta).await,
        }
    }

    async fn get(&self, task_id: &str) -> Result<Option<String>, BackendError> {
        match self {
            AnyBackend::Redis(backend) => backend.get(task_id).await,
            AnyBackend::Rpc(backend) => backend.get(task_id).await,
        }
    }

    async fn chord_part_return(&self, part: &ChordPart<'_>) -> Result<PartReturn, BackendError> {
        match self {
            AnyBackend::Redis(backend) => backend.chord_part_return(part).await,
            AnyBackend::Rpc(backend) => backend.chord_part_return(part).await,
        }
    }

    async fn chord_claim_extend(&self, claim: &ChordClaim) -> Result<bool, BackendError> {
        match self {
            AnyBackend::Redis(backend) => backend.chord_claim_extend(claim).await,
            AnyBackend::Rpc(backend) => backend.chord_claim_extend(claim).await,
        }
    }

    async fn chord_cleanup(&self, claim: &ChordClaim) -> Result<(), BackendError> {
        match self {
            AnyBackend::Redis(backend) => backend.chord_cleanup(claim).await,
            AnyBackend::Rpc(backend) => backend.chord_cleanup(claim).await,
        }
    }

    async fn set_chord_size(&self, group_id: &str, size: u64) -> Result<(), BackendError> {
        match self {
            AnyBackend::Redis(backend) => backend.set_chord_size(group_id, size).await,
            AnyBackend::Rpc(backend) => backend.set_chord_size(group_id, size).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_name_their_implementations() {
        assert_eq!(broker_kind("redis://h/0").ok(), Some(BrokerKind::Redis));
        assert_eq!(broker_kind("rediss://h/0").ok(), Some(BrokerKind::Redis));
        assert_eq!(broker_kind("amqp://g:g@h//").ok(), Some(BrokerKind::Amqp));
        assert_eq!(broker_kind("pyamqp://h").ok(), Some(BrokerKind::Amqp));
        assert!(broker_kind("sqs://").is_err());
        assert_eq!(backend_kind("rpc://").ok(), Some(BackendKind::Rpc));
        assert_eq!(
            backend_kind("redis+unix:///tmp/r.sock").ok(),
            Some(BackendKind::Redis)
        );
        let err = backend_kind("db+sqlite://:pw@x").expect_err("unsupported");
        assert!(!err.to_string().contains("pw"), "{err}");
    }

    #[test]
    fn default_backend_follows_the_broker() {
        let redis = "redis://127.0.0.1:6379/0";
        let amqp = "amqp://guest:guest@127.0.0.1:5672//";
        assert_eq!(backend_url(redis, None).ok().as_deref(), Some(redis));
        assert_eq!(backend_url(amqp, None).ok().as_deref(), Some("rpc://"));
        assert_eq!(backend_url(amqp, Some(redis)).ok().as_deref(), Some(redis));
        assert!(matches!(
            backend_url(redis, Some("rpc://")),
            Err(ConnectError::RpcNeedsAmqp { .. })
        ));
        assert!(matches!(
            backend_url("kafka://h", None),
            Err(ConnectError::UnsupportedBroker { .. })
        ));
    }
}
