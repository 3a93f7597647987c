//! What only the Redis backend promises: TTLs, SET vs SETEX, PUBLISH, key names.

use std::sync::mpsc;
use std::time::Duration;

use celeriac::backend::{
    BackendError, RedisBackend, RedisBackendConfig, ResultBackend, StoreOutcome, TaskMeta,
};

use crate::conformance::{Harness, task_id};

crate::backend_suite!(conformance, super::RedisHarness);

/// The Redis server of the tests.
pub fn redis_url() -> String {
    std::env::var("CELERIAC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// A backend on the test server with `config`'s options; panics naming the URL if the
/// server cannot be reached.
pub async fn connect(config: RedisBackendConfig) -> RedisBackend {
    RedisBackend::connect(config)
        .await
        .unwrap_or_else(|err| panic!("Redis at {} is unreachable: {err}", redis_url()))
}

/// A plain connection to the test server, for looking behind the backend.
async fn raw() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).unwrap_or_else(|e| panic!("{url}: {e}"));
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is unreachable: {e}"))
}

async fn ttl(key: &str) -> i64 {
    redis::cmd("TTL")
        .arg(key)
        .query_async(&mut raw().await)
        .await
        .expect("TTL")
}

/// The Redis backend with default options.
pub struct RedisHarness;

impl Harness for RedisHarness {
    type Backend = RedisBackend;
    async fn backend() -> RedisBackend {
        connect(RedisBackendConfig::new(redis_url())).await
    }
}

#[tokio::test]
async fn unreachable_server_fails_with_url_as_connection_error() {
    let url = "redis://:hunter2@127.0.0.1:1/0";
    let err = RedisBackend::connect(RedisBackendConfig::new(url))
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(err, BackendError::Connect { .. }), "{err}");
    assert!(err.is_connection(), "{err}");
    let message = err.to_string();
    assert!(message.contains("redis://:***@127.0.0.1:1/0"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[tokio::test]
async fn success_expires_after_one_day_by_default() {
    let backend = connect(RedisBackendConfig::new(redis_url())).await;
    let id = task_id();
    backend
        .store(&TaskMeta::success(&id, "4").expect("JSON"))
        .await
        .expect("store");
    let ttl = ttl(&format!("celery-task-meta-{id}")).await;
    assert!((86_390..=86_400).contains(&ttl), "TTL {ttl}");
}

#[tokio::test]
async fn no_expiry_stores_without_ttl() {
    for expires in [None, Some(0)] {
        let config = RedisBackendConfig::new(redis_url()).result_expires(expires);
        let backend = connect(config).await;
        let id = task_id();
        backend
            .store(&TaskMeta::success(&id, "4").expect("JSON"))
            .await
            .expect("store");
        let key = format!("celery-task-meta-{id}");
        assert_eq!(ttl(&key).await, -1, "result_expires {expires:?}");
        // Not left behind by a test that asked for no expiry.
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut raw().await)
            .await
            .expect("DEL");
    }
}

#[tokio::test]
async fn failure_expires_applies_to_failure_only() {
    let config = RedisBackendConfig::new(redis_url()).result_failure_expires(Some(60));
    let backend = connect(config).await;
    let (ok, bad) = (task_id(), task_id());
    backend
        .store(&TaskMeta::success(&ok, "1").expect("JSON"))
        .await
        .expect("store");
    let args = [serde_json::json!("x")];
    let exc = celeriac::backend::ExceptionInfo {
        exc_type: "KeyError",
        exc_module: "builtins",
        exc_message: &args,
    };
    backend
        .store(&TaskMeta::failure(&bad, exc, None))
        .await
        .expect("store");
    assert!(ttl(&format!("celery-task-meta-{ok}")).await > 86_000);
    let failure_ttl = ttl(&format!("celery-task-meta-{bad}")).await;
    assert!((50..=60).contains(&failure_ttl), "TTL {failure_ttl}");
}

/// Subscribes to `channel` on a blocking connection in a thread; returns once subscribed,
/// with a receiver of the first message's payload.
fn subscribe(channel: String) -> mpsc::Receiver<String> {
    let url = redis_url();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (msg_tx, msg_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let client = redis::Client::open(url.as_str()).expect("valid URL");
        let mut conn = client
            .get_connection()
            .unwrap_or_else(|e| panic!("Redis at {url} is unreachable: {e}"));
        let mut pubsub = conn.as_pubsub();
        pubsub.subscribe(&channel).expect("SUBSCRIBE");
        pubsub
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        ready_tx.send(()).expect("test waits for the subscription");
        if let Ok(msg) = pubsub.get_message() {
            let payload: String = msg.get_payload().expect("a text payload");
            let _ = msg_tx.send(payload);
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("subscribed within 5 s");
    msg_rx
}

#[tokio::test]
async fn store_publishes_same_document_on_key_channel() {
    let backend = connect(RedisBackendConfig::new(redis_url())).await;
    let id = task_id();
    let messages = subscribe(format!("celery-task-meta-{id}"));
    let meta = TaskMeta::success(&id, "[1, 2]").expect("JSON");
    backend.store(&meta).await.expect("store");
    let published =
        tokio::task::spawn_blocking(move || messages.recv_timeout(Duration::from_secs(5)))
            .await
            .expect("the waiting thread")
            .expect("a message on the key's channel");
    assert_eq!(published, meta.to_json());
    assert_eq!(backend.get(&id).await.expect("get"), Some(published));
}

#[tokio::test]
async fn kept_success_publishes_nothing() {
    let backend = connect(RedisBackendConfig::new(redis_url())).await;
    let id = task_id();
    backend
        .store(&TaskMeta::success(&id, "1").expect("JSON"))
        .await
        .expect("store");
    let messages = subscribe(format!("celery-task-meta-{id}"));
    let outcome = backend
        .store(&TaskMeta::started(&id, 1, "w@h"))
        .await
        .expect("store");
    assert_eq!(outcome, StoreOutcome::KeptSuccess);
    let received =
        tokio::task::spawn_blocking(move || messages.recv_timeout(Duration::from_millis(300)))
            .await
            .expect("the waiting thread");
    assert!(received.is_err(), "published {received:?}");
}

#[tokio::test]
async fn global_keyprefix_prefixes_key_and_channel() {
    let prefix = format!("t{}", task_id().replace('-', ""));
    let config = RedisBackendConfig::new(redis_url()).global_keyprefix(&prefix);
    let backend = connect(config).await;
    let id = task_id();
    let key = format!("{prefix}_celery-task-meta-{id}");
    let messages = subscribe(key.clone());
    backend
        .store(&TaskMeta::success(&id, "7").expect("JSON"))
        .await
        .expect("store");
    let published =
        tokio::task::spawn_blocking(move || messages.recv_timeout(Duration::from_secs(5)))
            .await
            .expect("the waiting thread")
            .expect("a message on the prefixed channel");
    let stored: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut raw().await)
        .await
        .expect("GET");
    assert_eq!(stored, Some(published));
    let unprefixed: Option<String> = redis::cmd("GET")
        .arg(format!("celery-task-meta-{id}"))
        .query_async(&mut raw().await)
        .await
        .expect("GET");
    assert_eq!(unprefixed, None);
}

#[tokio::test]
async fn a_success_written_by_python_is_kept_even_when_lua_cannot_parse_it() {
    let backend = RedisHarness::backend().await;
    for document in [
        // kombu JSON with NaN, as a Python worker writes float('nan').
        r#"{"status": "SUCCESS", "result": NaN, "traceback": null, "children": [], "date_done": null, "task_id": "x"}"#,
        // Not JSON at all, but a SUCCESS document to anyone reading it as text.
        r#"{"status": "SUCCESS", "result": 1,,}"#,
    ] {
        let id = task_id();
        let key = format!("celery-task-meta-{id}");
        let () = redis::cmd("SETEX")
            .arg(&key)
            .arg(60)
            .arg(document)
            .query_async(&mut raw().await)
            .await
            .expect("SETEX");
        let failure = TaskMeta::custom(&id, "FAILURE", "{}").expect("meta");
        let outcome = backend.store(&failure).await.expect("store");
        assert_eq!(outcome, StoreOutcome::KeptSuccess, "{document}");
        let stored = backend.get(&id).await.expect("get");
        assert_eq!(stored.as_deref(), Some(document));
    }
}
