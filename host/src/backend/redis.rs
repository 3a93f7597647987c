//! An implementation of `ResultBackend` for Redis.
//!
//! Writes what Celery's Redis result backend writes, so a Python client's
//! `AsyncResult.get()` works unchanged (spec §5.1, §5.4).
//!
//! # Features
//!
//! * One key per task, `celery-task-meta-<task_id>`, holding the JSON task meta document.
//! * Every write is published on a channel named like the key, so clients waiting on
//!   `SUBSCRIBE` wake up at once (the PUBLISH is what they listen to).
//! * A stored SUCCESS is never overwritten (a redelivered duplicate cannot clobber it).
//! * The write is one script (read, `SETEX`, `PUBLISH`), and the writes of tasks ending
//!   together share one round trip (`redis/batch.rs`).
//! * Reconnects by itself ([`ConnectionManager`]); errors say whether they were the
//!   connection's ([`BackendError::is_connection`]).
//!
//! * The chord join of Celery 5.7 ([`super::chord`]).
//!
//! Not supported yet: group meta (§5.6), `result_compression`,
//! Sentinel and cluster URLs.
//!
//! # URL
//!
//! `redis://[[username]:password@]host[:port][/db]`, as Celery's `result_backend`
//! (port 6379 and DB 0 by default); `redis+unix:///path/to/socket[?db=N]` for a Unix
//! socket; `rediss://` for TLS, with Celery's `ssl_*` query options ([`crate::redis_url`]).
//!
//! # Options and defaults
//!
//! | option | default | meaning |
//! | --- | --- | --- |
//! | `result_expires` | 86400 s | TTL of each document (`SETEX`); `None` or 0: no expiry (`SET`) |
//! | `result_failure_expires` | `None` | TTL of FAILURE documents instead of `result_expires` (5.7) |
//! | `global_keyprefix` | `None` | prefix of every key and channel; `_` is appended unless it ends in `:`, `_`, `-` or `.` |
//! | `result_chord_ordered` | true | a chord's header results kept in header order (sorted set), else in arrival order (list) |
//! | `connect_timeout` | 5 s | limit on each connection attempt |

use std::time::Duration;

mod batch;

use ::redis::RedisError;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::redis_url;
use crate::url::redact_password;

use self::batch::StoreBatcher;
use super::chord::{ChordClaim, ChordPart, PartReturn, RedisChords};
use super::{BackendError, ResultBackend, ResultState, StoreOutcome, TaskMeta};

/// Celery's default `result_expires`: one day.
pub const DEFAULT_RESULT_EXPIRES: u64 = 86_400;

/// Celery's key prefix of task meta documents.
pub const TASK_KEY_PREFIX: &str = "celery-task-meta-";

/// Options of a [`RedisBackend`]; see the module docs for their meaning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisBackendConfig {
    /// The server URL (`redis://…`).
    url: String,
    /// TTL in seconds; `None` means no expiry.
    result_expires: Option<u64>,
    /// TTL in seconds of FAILURE documents, when it differs from `result_expires`.
    result_failure_expires: Option<u64>,
    /// The normalized key prefix (`_` already appended), or empty.
    global_keyprefix: String,
    /// Limit on each connection attempt.
    connect_timeout: Duration,
    /// Celery's `result_chord_ordered` transport option.
    result_chord_ordered: bool,
}

impl RedisBackendConfig {
    /// Options for the server at `url`, with these defaults: `result_expires` 86400 s,
    /// no `result_failure_expires`, no `global_keyprefix`, `connect_timeout` 5 s, chord
    /// results in header order.
    pub fn new(url: impl Into<String>) -> RedisBackendConfig {
        RedisBackendConfig {
            url: url.into(),
            result_expires: Some(DEFAULT_RESULT_EXPIRES),
            result_failure_expires: None,
            global_keyprefix: String::new(),
            connect_timeout: Duration::from_secs(5),
            result_chord_ordered: true,
        }
    }

    /// Sets the TTL in seconds; `None` or `Some(0)` stores without expiry.
    pub fn result_expires(mut self, seconds: Option<u64>) -> RedisBackendConfig {
        self.result_expires = seconds.filter(|&s| s > 0);
        self
    }

    /// Sets the TTL in seconds of FAILURE documents (Celery 5.7's
    /// `result_failure_expires`); `None` uses `result_expires`, `Some(0)` means no expiry.
    pub fn result_failure_expires(mut self, seconds: Option<u64>) -> RedisBackendConfig {
        self.result_failure_expires = seconds;
        self
    }

    /// Sets Celery's `global_keyprefix` transport option.
    pub fn global_keyprefix(mut self, prefix: &str) -> RedisBackendConfig {
        self.global_keyprefix = normalize_prefix(prefix);
        self
    }

    /// Sets Celery's `result_chord_ordered` transport option: false keeps the results of
    /// the chords this worker starts in a list, in arrival order, as Celery then does.
    pub fn result_chord_ordered(mut self, ordered: bool) -> RedisBackendConfig {
        self.result_chord_ordered = ordered;
        self
    }

    /// Sets the limit on each connection attempt.
    pub fn connect_timeout(mut self, timeout: Duration) -> RedisBackendConfig {
        self.connect_timeout = timeout;
        self
    }

    /// The key (and channel) of `task_id`'s document.
    pub fn task_key(&self, task_id: &str) -> String {
        format!("{}{TASK_KEY_PREFIX}{task_id}", self.global_keyprefix)
    }

    /// The TTL for a document in `state`, `None` for no expiry.
    fn expiry_for(&self, state: &ResultState) -> Option<u64> {
        match (state, self.result_failure_expires) {
            (ResultState::Failure, Some(seconds)) => Some(seconds).filter(|&s| s > 0),
            _ => self.result_expires,
        }
    }
}

/// Celery's result backend on a Redis server.
///
/// Cheap to clone: clones share one multiplexed connection.
#[derive(Clone)]
pub struct RedisBackend {
    /// The options, read on every store.
    config: RedisBackendConfig,
    /// The connection: multiplexed (clones pipeline over one socket) and re-established
    /// by the manager after it drops.
    conn: ConnectionManager,
    /// Writes task meta documents, grouped.
    stores: StoreBatcher,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &redact_password(&self.config.url))
            .field("result_expires", &self.config.result_expires)
            .field("global_keyprefix", &self.config.global_keyprefix)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to the server of `config`; fails if it cannot be reached now.
    pub async fn connect(config: RedisBackendConfig) -> Result<RedisBackend, BackendError> {
        let url = redact_password(&config.url);
        let client = redis_url::client(&config.url).map_err(|err| BackendError::InvalidUrl {
            url: url.clone(),
            reason: err.to_string(),
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, manager_config)
            .await
            .map_err(|source| BackendError::Connect { url, source })?;
        Ok(RedisBackend {
            config,
            stores: StoreBatcher::start(conn.clone()),
            conn,
        })
    }

    /// The options in use.
    pub fn config(&self) -> &RedisBackendConfig {
        &self.config
    }

    /// The chord join on this backend's connection; chord keys expire with results.
    fn chords(&self) -> RedisChords<'_> {
        RedisChords {
            conn: self.conn.clone(),
            prefix: &self.config.global_keyprefix,
            expires: self.config.result_expires.unwrap_or(0),
            ordered: self.config.result_chord_ordered,
        }
    }

    /// The stored document bytes of `key`.
    async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>, RedisError> {
        let mut conn = self.conn.clone();
        ::redis::cmd("GET").arg(key).query_async(&mut conn).await
    }
}

impl ResultBackend for RedisBackend {
    async fn store(&self, meta: &TaskMeta) -> Result<StoreOutcome, BackendError> {
        let task_id = meta.task_id();
        let command_error = |source| BackendError::Command {
            op: "store",
            task_id: task_id.to_owned(),
            source,
        };
        let key = self.config.task_key(task_id);
        let document = meta.to_json();
        let expiry = self.config.expiry_for(meta.state()).unwrap_or(0);
        let stored = self
            .stores
            .store(key, document, expiry)
            .await
            .map_err(command_error)?;
        Ok(if stored {
            StoreOutcome::Stored
        } else {
            StoreOutcome::KeptSuccess
        })
    }

    async fn get(&self, task_id: &str) -> Result<Option<String>, BackendError> {
        let key = self.config.task_key(task_id);
        let bytes = self
            .get_raw(&key)
            .await
            .map_err(|source| BackendError::Command {
                op: "get",
                task_id: task_id.to_owned(),
                source,
            })?;
        bytes
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|_| BackendError::NotUtf8 {
                    task_id: task_id.to_owned(),
                })
            })
            .transpose()
    }

    async fn chord_part_return(&self, part: &ChordPart<'_>) -> Result<PartReturn, BackendError> {
        self.chords().part_return(part).await
    }

    async fn chord_claim_extend(&self, claim: &ChordClaim) -> Result<bool, BackendError> {
        self.chords().claim_extend(claim).await
    }

    async fn chord_cleanup(&self, claim: &ChordClaim) -> Result<(), BackendError> {
        self.chords().cleanup(claim).await
    }

    async fn set_chord_size(&self, group_id: &str, size: u64) -> Result<(), BackendError> {
        self.chords().set_size(group_id, size).await
    }
}

/// Celery's `global_keyprefix` rule: `_` appended unless the prefix ends in `:_-.`.
fn normalize_prefix(prefix: &str) -> String {
    match prefix.chars().last() {
        None => String::new(),
        Some(':' | '_' | '-' | '.') => prefix.to_owned(),
        Some(_) => format!("{prefix}_"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_gets_underscore_unless_it_ends_in_a_separator() {
        let key = |p: &str| {
            RedisBackendConfig::new("redis://x")
                .global_keyprefix(p)
                .task_key("t")
        };
        assert_eq!(key(""), "celery-task-meta-t");
        assert_eq!(key("p"), "p_celery-task-meta-t");
        for sep in [":", "_", "-", "."] {
            assert_eq!(key(&format!("p{sep}")), format!("p{sep}celery-task-meta-t"));
        }
    }

    #[test]
    fn expiry_zero_means_none_and_failure_expiry_applies_to_failure_only() {
        let config = RedisBackendConfig::new("redis://x");
        assert_eq!(config.expiry_for(&ResultState::Success), Some(86_400));
        let config = config.result_expires(Some(0));
        assert_eq!(config.expiry_for(&ResultState::Success), None);
        let config = config.result_failure_expires(Some(60));
        assert_eq!(config.expiry_for(&ResultState::Failure), Some(60));
        assert_eq!(config.expiry_for(&ResultState::Started), None);
    }

    #[tokio::test]
    async fn an_unreadable_ca_file_is_an_invalid_url_without_the_password() {
        let url = "rediss://:pw@h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/no/such/ca.pem";
        let err = RedisBackend::connect(RedisBackendConfig::new(url))
            .await
            .expect_err("the CA file is missing");
        assert!(matches!(err, BackendError::InvalidUrl { .. }), "{err}");
        assert!(err.to_string().contains("rediss://:***@h:6380/0"), "{err}");
        assert!(!err.is_connection());
    }
}
