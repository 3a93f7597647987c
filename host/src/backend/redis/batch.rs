//! Stores grouped into one round trip ([`crate::redis_batch`]): every task meta document
//! waiting when a flush starts goes out in a single run of the store script, which handles
//! each document as the one-document script did (never over a stored SUCCESS, SETEX or
//! SET, then PUBLISH on the key's channel), in the order they were handed in. Under load
//! Redis then runs one script call per batch instead of one per task.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::{RedisError, Script};

use crate::redis_batch::Batcher;

/// The most documents one flush writes.
const MAX_STORE_BATCH: usize = 128;

/// Writes each document unless a SUCCESS one is stored already under its key, and
/// publishes it on the channel named like the key; each key on its own is one atomic step
/// (Celery's `_store_result` reads then writes, which two workers running a redelivered
/// task can interleave), and so is the whole batch. KEYS: the meta keys (also the
/// channels). ARGV: for each key in turn, its document and its TTL in seconds (0: none).
/// Returns, per key, 1 if stored and 0 if a SUCCESS was kept.
const STORE_SCRIPT: &str = r#"
local stored = {}
for i = 1, #KEYS do
  local key, document, ttl = KEYS[i], ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  local keep = false
  local current = redis.call('GET', key)
  if current then
    local ok, decoded = pcall(cjson.decode, current)
    if ok and type(decoded) == 'table' then
      keep = decoded.status == 'SUCCESS'
    else
      keep = string.find(current, '"status": "SUCCESS"', 1, true) ~= nil
    end
  end
  if keep then
    stored[i] = 0
  else
    if ttl > 0 then
      redis.call('SETEX', key, ttl, document)
    else
      redis.call('SET', key, document)
    end
    redis.call('PUBLISH', key, document)
    stored[i] = 1
  end
end
return stored
"#;

/// One document to store.
struct Store {
    key: String,
    document: String,
    ttl: u64,
}

/// Stores documents for one backend connection, in batches. The flushing task ends when
/// every clone of this is dropped.
#[derive(Clone)]
pub(super) struct StoreBatcher {
    /// True per document if written, false if a SUCCESS was kept.
    batcher: Batcher<Store, bool>,
}

impl StoreBatcher {
    /// Starts the flushing task on the current tokio runtime.
    pub(super) fn start(manager: ConnectionManager) -> Self {
        let script = Arc::new(Script::new(STORE_SCRIPT));
        let flush = move |stores: Vec<Store>| {
            let mut manager = manager.clone();
            let script = Arc::clone(&script);
            async move {
                let mut invocation = script.prepare_invoke();
                for store in &stores {
                    invocation
                        .key(&store.key)
                        .arg(&store.document)
                        .arg(store.ttl);
                }
                let stored: Vec<i64> = invocation.invoke_async(&mut manager).await?;
                Ok(stored.into_iter().map(|stored| stored == 1).collect())
            }
        };
        let batcher = Batcher::start("result backend's store", MAX_STORE_BATCH, flush);
        StoreBatcher { batcher }
    }

    /// Writes `document` under `key` (TTL `ttl` seconds, 0 for none) and publishes it,
    /// together with every other document queued meanwhile; false if a SUCCESS was kept.
    pub(super) async fn store(
        &self,
        key: String,
        document: String,
        ttl: u64,
    ) -> Result<bool, RedisError> {
        self.batcher.submit(Store { key, document, ttl }).await
    }
}
