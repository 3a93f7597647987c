//! Broadcast over Redis PUB/SUB as kombu's `_put_fanout` and `_subscribe` do it
//! (celery-protocol.md §3.7): channel `<global_keyprefix>/<db>.<exchange>`, with
//! `/<routing key>` after it when the key is not empty (`fanout_patterns`), and a
//! subscription `PSUBSCRIBE`s the same name with the binding key's `#` turned into `*`.

use futures_util::StreamExt;
use redis::Client;
use tokio::sync::mpsc;

use crate::broker::{BroadcastQueue, BrokerError, Subscription};

use super::{parse_envelope, redis_error};

/// The PUB/SUB channel a message to `exchange` with `routing_key` is published on.
pub(super) fn publish_channel(
    keyprefix: &str,
    db: i64,
    exchange: &str,
    routing_key: &str,
) -> String {
    if routing_key.is_empty() {
        format!("{keyprefix}/{db}.{exchange}")
    } else {
        format!("{keyprefix}/{db}.{exchange}/{routing_key}")
    }
}

/// The PUB/SUB pattern a queue bound to `exchange` with `binding_key` subscribes to.
pub(super) fn subscribe_pattern(
    keyprefix: &str,
    db: i64,
    exchange: &str,
    binding_key: &str,
) -> String {
    publish_channel(keyprefix, db, exchange, &binding_key.replace('#', "*"))
}

/// Subscribes on a connection of its own (a subscribed Redis connection can do nothing
/// else) and forwards every envelope heard, parsed, until the connection drops.
pub(super) async fn subscribe(
    client: &Client,
    pattern: String,
    queue: &BroadcastQueue,
) -> Result<Subscription, BrokerError> {
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .map_err(redis_error("connect", "PUB/SUB connection"))?;
    pubsub
        .psubscribe(&pattern)
        .await
        .map_err(redis_error("PSUBSCRIBE", &pattern))?;
    let (sender, receiver) = mpsc::unbounded_channel();
    let name = queue.queue.clone();
    let listener = tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let text = String::from_utf8_lossy(message.get_payload_bytes());
            match parse_envelope(&name, &text) {
                Ok(delivery) => {
                    if sender.send(delivery).is_err() {
                        return;
                    }
                }
                Err(err) => tracing::warn!("{err}; broadcast message ignored"),
            }
        }
        // Stream ended: the connection dropped. Dropping the sender tells the subscriber.
    });
    Ok(Subscription::new(receiver, listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_follow_kombu() {
        assert_eq!(
            publish_channel("", 0, "celeryev", "worker.heartbeat"),
            "/0.celeryev/worker.heartbeat"
        );
        assert_eq!(
            publish_channel("", 3, "celery.pidbox", ""),
            "/3.celery.pidbox"
        );
        assert_eq!(
            publish_channel("app:", 0, "celery.pidbox", ""),
            "app:/0.celery.pidbox"
        );
        assert_eq!(
            subscribe_pattern("", 0, "celeryev", "worker.#"),
            "/0.celeryev/worker.*"
        );
    }
}
