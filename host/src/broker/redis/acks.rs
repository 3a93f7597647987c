//! Acks grouped into one round trip ([`crate::redis_batch`]): every ack (and reject
//! without requeue) waiting when a flush starts goes out in a single `MULTI; ZREM
//! unacked_index t1..tN; HDEL unacked t1..tN; EXEC`, so under load the bookkeeping costs
//! Redis four commands per batch instead of four per task.

use redis::RedisError;
use redis::aio::ConnectionManager;

use crate::redis_batch::Batcher;

/// The most tags one flush removes.
const MAX_ACK_BATCH: usize = 512;

/// Removes acked tags' bookkeeping, in batches.
pub(super) struct AckBatcher {
    batcher: Batcher<String, ()>,
}

impl AckBatcher {
    /// Starts the flushing task on the current tokio runtime, removing tags from the
    /// `index` sorted set and the `unacked` hash.
    pub(super) fn start(manager: ConnectionManager, index: String, unacked: String) -> Self {
        let batcher = Batcher::start("broker's ack", MAX_ACK_BATCH, move |tags: Vec<String>| {
            let mut manager = manager.clone();
            let removal = redis::pipe()
                .atomic()
                .cmd("ZREM")
                .arg(&index)
                .arg(&tags)
                .ignore()
                .cmd("HDEL")
                .arg(&unacked)
                .arg(&tags)
                .ignore()
                .clone();
            async move {
                removal.exec_async(&mut manager).await?;
                Ok(vec![(); tags.len()])
            }
        });
        AckBatcher { batcher }
    }

    /// Removes `tag`'s bookkeeping, together with every other tag queued meanwhile.
    pub(super) async fn remove(&self, tag: &str) -> Result<(), RedisError> {
        self.batcher.submit(tag.to_owned()).await
    }
}
