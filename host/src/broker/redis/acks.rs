//! Acks grouped into one round trip: every ack (and reject without requeue) waiting when a
//! flush starts goes out in a single `MULTI; ZREM unacked_index t1..tN; HDEL unacked
//! t1..tN; EXEC`, so under load the bookkeeping costs Redis four commands per batch instead
//! of four per task. An ack arriving while a flush is in flight waits for the next one; an
//! idle worker's ack goes out at once, as before.

use redis::RedisError;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

/// The most tags one flush removes.
const MAX_ACK_BATCH: usize = 512;

/// One ack waiting for its flush.
struct PendingAck {
    tag: String,
    done: oneshot::Sender<Result<(), RedisError>>,
}

/// Hands acks to the flushing task of one broker. The task ends when this is dropped.
pub(super) struct AckBatcher {
    pending: mpsc::UnboundedSender<PendingAck>,
}

impl AckBatcher {
    /// Starts the flushing task on the current tokio runtime, removing tags from the
    /// `index` sorted set and the `unacked` hash.
    pub(super) fn start(manager: ConnectionManager, index: String, unacked: String) -> Self {
        let (pending, queued) = mpsc::unbounded_channel();
        tokio::spawn(flush_forever(queued, manager, index, unacked));
        AckBatcher { pending }
    }

    /// Removes `tag`'s bookkeeping, together with every other tag queued meanwhile.
    pub(super) async fn remove(&self, tag: &str) -> Result<(), RedisError> {
        let (done, flushed) = oneshot::channel();
        let ack = PendingAck {
            tag: tag.to_owned(),
            done,
        };
        if self.pending.send(ack).is_err() {
            return Err(stopped());
        }
        flushed.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn flush_forever(
    mut queued: mpsc::UnboundedReceiver<PendingAck>,
    mut manager: ConnectionManager,
    index: String,
    unacked: String,
) {
    while let Some(first) = queued.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_ACK_BATCH {
            match queued.try_recv() {
                Ok(ack) => batch.push(ack),
                Err(_) => break,
            }
        }
        let tags: Vec<&str> = batch.iter().map(|ack| ack.tag.as_str()).collect();
        let flushed = redis::pipe()
            .atomic()
            .cmd("ZREM")
            .arg(&index)
            .arg(&tags)
            .ignore()
            .cmd("HDEL")
            .arg(&unacked)
            .arg(&tags)
            .ignore()
            .exec_async(&mut manager)
            .await;
        for ack in batch {
            let _ = ack.done.send(flushed.clone());
        }
    }
}

/// The error of an ack made while the broker is being dropped.
fn stopped() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the broker's ack task has stopped",
    ))
}
