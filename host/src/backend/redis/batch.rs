//! Stores grouped into one round trip: every task meta document waiting when a flush
//! starts goes out in a single run of the store script, which handles each document as
//! the one-document script did (never over a stored SUCCESS, SETEX or SET, then PUBLISH on
//! the key's channel), in the order they were handed in. Under load Redis then runs one
//! script call and the worker one request per batch instead of per task. A store arriving
//! while a flush is in flight waits for the next one; an idle worker's store goes out at
//! once.

use redis::aio::ConnectionManager;
use redis::{RedisError, Script};
use tokio::sync::{mpsc, oneshot};

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

/// One document waiting for its flush.
struct PendingStore {
    key: String,
    document: String,
    ttl: u64,
    /// True if written, false if a SUCCESS was kept.
    done: oneshot::Sender<Result<bool, RedisError>>,
}

/// Hands documents to the flushing task of one backend connection. The task ends when
/// every clone of this is dropped.
#[derive(Clone)]
pub(super) struct StoreBatcher {
    pending: mpsc::UnboundedSender<PendingStore>,
}

impl StoreBatcher {
    /// Starts the flushing task on the current tokio runtime.
    pub(super) fn start(manager: ConnectionManager) -> Self {
        let (pending, queued) = mpsc::unbounded_channel();
        tokio::spawn(flush_forever(queued, manager));
        StoreBatcher { pending }
    }

    /// Writes `document` under `key` (TTL `ttl` seconds, 0 for none) and publishes it,
    /// together with every other document queued meanwhile; false if a SUCCESS was kept.
    pub(super) async fn store(
        &self,
        key: String,
        document: String,
        ttl: u64,
    ) -> Result<bool, RedisError> {
        let (done, flushed) = oneshot::channel();
        let store = PendingStore {
            key,
            document,
            ttl,
            done,
        };
        if self.pending.send(store).is_err() {
            return Err(stopped());
        }
        flushed.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn flush_forever(
    mut queued: mpsc::UnboundedReceiver<PendingStore>,
    mut manager: ConnectionManager,
) {
    let script = Script::new(STORE_SCRIPT);
    let mut batch = Vec::with_capacity(MAX_STORE_BATCH);
    while queued.recv_many(&mut batch, MAX_STORE_BATCH).await > 0 {
        let mut invocation = script.prepare_invoke();
        for store in &batch {
            invocation
                .key(&store.key)
                .arg(&store.document)
                .arg(store.ttl);
        }
        let flushed: Result<Vec<i64>, RedisError> = invocation.invoke_async(&mut manager).await;
        match flushed {
            Ok(stored) if stored.len() == batch.len() => {
                for (store, stored) in batch.drain(..).zip(stored) {
                    let _ = store.done.send(Ok(stored == 1));
                }
            }
            Ok(stored) => {
                let error = RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "store script answered for a different number of documents",
                    format!("{} for {}", stored.len(), batch.len()),
                ));
                for store in batch.drain(..) {
                    let _ = store.done.send(Err(error.clone()));
                }
            }
            Err(error) => {
                for store in batch.drain(..) {
                    let _ = store.done.send(Err(error.clone()));
                }
            }
        }
    }
}

/// The error of a store made while the backend is being dropped.
fn stopped() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the result backend's store task has stopped",
    ))
}
