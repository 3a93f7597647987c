//! The worker loop against a real Redis: messages published as a Celery client does, run
//! by `worker::run` in-process with WAT guests, results read back from the Redis backend.
//!
//! The server URL comes from `CELERIAC_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379/0`); an unreachable server fails the tests, naming the URL.
//! Each test uses its own `celeriac-test-<uuid>:` key prefix and uuid queue and task ids,
//! and never flushes the database.

#[path = "../support/mod.rs"]
mod support;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use celeriac::backend::{
    BackendError, RedisBackend, RedisBackendConfig, ResultBackend, StoreOutcome, TaskMeta,
};
use celeriac::broker::{Broker, Outgoing, RedisBroker, RedisOptions};
use celeriac::protocol::{OutgoingTask, Timestamp};
use celeriac::registry::Registry;
use celeriac::worker::{
    self, Revoked, RunningTasks, StateDb, WorkerConfig, WorkerError, WorkerHandle,
};
use redis::aio::MultiplexedConnection;
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use support::guests;

fn redis_url() -> String {
    std::env::var("CELERIAC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// `WorkerHandle::revoke` of a worker whose backend type the test does not name.
type RevokeFn =
    Box<dyn Fn(Vec<String>, bool) -> Pin<Box<dyn Future<Output = Revoked> + Send>> + Send + Sync>;

/// `WorkerHandle::set_rate_limit` of such a worker.
type SetRateLimitFn = Box<dyn Fn(&str, Option<&str>) + Send + Sync>;

/// A worker running in-process on a fresh queue, and what the test needs to look at it.
struct TestWorker {
    broker: Arc<RedisBroker>,
    backend: Arc<RedisBackend>,
    raw: MultiplexedConnection,
    queue: String,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), WorkerError>>>,
    running: Arc<RunningTasks>,
    revoke: RevokeFn,
    set_rate_limit: SetRateLimitFn,
    _tasks: tempfile::TempDir,
}

impl TestWorker {
    async fn start(components: Vec<Vec<u8>>, tweak: impl FnOnce(&mut WorkerConfig)) -> Self {
        Self::launch(components, tweak, |_| {}, |backend| backend).await
    }

    /// Starts a worker that keeps its revoked ids in the state db at `statedb`.
    async fn start_with_statedb(components: Vec<Vec<u8>>, statedb: PathBuf) -> Self {
        Self::launch_with(components, |_| {}, |_| {}, |backend| backend, Some(statedb)).await
    }

    /// Starts a worker that stores through `wrap(the Redis backend)`; the test reads
    /// results from the Redis backend itself.
    async fn start_with_backend<R: ResultBackend + 'static>(
        components: Vec<Vec<u8>>,
        tweak: impl FnOnce(&mut WorkerConfig),
        wrap: impl FnOnce(Arc<RedisBackend>) -> Arc<R>,
    ) -> Self {
        Self::launch(components, tweak, |_| {}, wrap).await
    }

    /// Starts a worker whose broker has `broker_options` applied to the test defaults.
    async fn start_with_broker_options(
        components: Vec<Vec<u8>>,
        broker_options: impl FnOnce(&mut RedisOptions),
    ) -> Self {
        Self::launch(components, |_| {}, broker_options, |backend| backend).await
    }

    async fn launch<R: ResultBackend + 'static>(
        components: Vec<Vec<u8>>,
        tweak: impl FnOnce(&mut WorkerConfig),
        broker_options: impl FnOnce(&mut RedisOptions),
        wrap: impl FnOnce(Arc<RedisBackend>) -> Arc<R>,
    ) -> Self {
        Self::launch_with(components, tweak, broker_options, wrap, None).await
    }

    async fn launch_with<R: ResultBackend + 'static>(
        components: Vec<Vec<u8>>,
        tweak: impl FnOnce(&mut WorkerConfig),
        broker_options: impl FnOnce(&mut RedisOptions),
        wrap: impl FnOnce(Arc<RedisBackend>) -> Arc<R>,
        statedb: Option<PathBuf>,
    ) -> Self {
        let url = redis_url();
        let dir = tempfile::tempdir().expect("temp dir");
        for (i, bytes) in components.iter().enumerate() {
            std::fs::write(dir.path().join(format!("guest{i}.wasm")), bytes).expect("write guest");
        }
        let sandbox = support::harness::sandbox();
        let registry = Arc::new(
            Registry::load_dir(&sandbox, dir.path(), None)
                .await
                .expect("guests load"),
        );
        let mut options = RedisOptions {
            global_keyprefix: format!("celeriac-test-{}:", uuid::Uuid::new_v4()),
            polling_interval: Duration::from_millis(100),
            ..RedisOptions::default()
        };
        broker_options(&mut options);
        let broker = Arc::new(
            RedisBroker::connect_with(&url, options)
                .await
                .unwrap_or_else(|e| panic!("Redis at {url} is unreachable: {e}")),
        );
        let backend = Arc::new(
            RedisBackend::connect(RedisBackendConfig::new(url.clone()))
                .await
                .unwrap_or_else(|e| panic!("Redis at {url} is unreachable: {e}")),
        );
        let raw = redis::Client::open(url.as_str())
            .unwrap_or_else(|e| panic!("bad Redis URL {url}: {e}"))
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("Redis at {url} is unreachable: {e}"));
        let queue = format!("q-{}", uuid::Uuid::new_v4());
        let mut config = WorkerConfig::new(vec![queue.clone()], 2, "celery@test");
        config.drain_timeout = Duration::from_millis(500);
        config.shutdown_timeout = Duration::from_secs(10);
        tweak(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let stores_through = wrap(Arc::clone(&backend));
        let control = match statedb {
            Some(path) => {
                WorkerHandle::with_statedb(stores_through, StateDb::new(path))
                    .expect("state db loads")
                    .0
            }
            None => WorkerHandle::new(stores_through),
        };
        let running = Arc::clone(control.running());
        let limiter = control.clone();
        let set_rate_limit: SetRateLimitFn = Box::new(move |task, rate| {
            limiter.set_rate_limit(task, rate).expect("valid rate");
        });
        let revoker = control.clone();
        let revoke: RevokeFn = Box::new(move |ids, terminate| {
            let revoker = revoker.clone();
            Box::pin(async move {
                revoker
                    .revoke(&ids, terminate, None)
                    .await
                    .expect("SIGTERM is known")
            })
        });
        let handle = tokio::spawn(worker::run_with(
            config,
            sandbox,
            registry,
            Arc::clone(&broker),
            control,
            async move {
                let _ = stopped.await;
            },
        ));
        TestWorker {
            broker,
            backend,
            raw,
            queue,
            stop: Some(stop),
            handle: Some(handle),
            running,
            revoke,
            set_rate_limit,
            _tasks: dir,
        }
    }

    async fn publish(&self, task: &OutgoingTask) {
        self.publish_raw(&Outgoing::from(task.encode())).await;
    }

    async fn publish_raw(&self, message: &Outgoing) {
        self.broker
            .publish("", &self.queue, message)
            .await
            .expect("publish");
    }

    /// Sends a task named `name` with `args` and returns its id.
    async fn send(&self, name: &str, args: Value) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let Value::Array(args) = args else {
            panic!("args must be an array")
        };
        self.publish(&OutgoingTask::new(id.clone(), name, args, Map::new()))
            .await;
        id
    }

    async fn meta(&self, id: &str) -> Option<Value> {
        self.backend
            .get(id)
            .await
            .expect("backend get")
            .map(|text| serde_json::from_str(&text).expect("stored meta is JSON"))
    }

    /// Waits (up to 15 s) for the stored status of `id` to be `status`.
    async fn wait_for(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let meta = self.meta(id).await;
            if let Some(meta) = &meta
                && meta["status"] == status
            {
                return meta.clone();
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never reached {status}; last stored: {meta:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn queue_len(&self) -> usize {
        let mut total = 0;
        for priority in [0, 3, 6, 9] {
            let n: usize = redis::cmd("LLEN")
                .arg(self.broker.queue_key(&self.queue, priority))
                .query_async(&mut self.raw.clone())
                .await
                .expect("LLEN");
            total += n;
        }
        total
    }

    async fn unacked_len(&self) -> usize {
        let n: usize = redis::cmd("HLEN")
            .arg(self.broker.key("unacked"))
            .query_async(&mut self.raw.clone())
            .await
            .expect("HLEN");
        let m: usize = redis::cmd("ZCARD")
            .arg(self.broker.key("unacked_index"))
            .query_async(&mut self.raw.clone())
            .await
            .expect("ZCARD");
        n + m
    }

    /// Waits (up to 5 s) until the queue and `unacked` are both empty.
    async fn assert_drained(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (queued, unacked) = (self.queue_len().await, self.unacked_len().await);
            if queued == 0 && unacked == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{queued} message(s) left in the queue, {unacked} unacked entries"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Warm shutdown; panics if the worker fails or takes more than 10 s.
    async fn stop(&mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
        let handle = self.handle.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("warm shutdown finishes")
            .expect("worker task")
            .expect("worker ends cleanly");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn success_is_stored_and_the_message_acked() {
    let mut w = TestWorker::start(vec![guests::ok_guest("tasks.add", "5")], |_| {}).await;
    let id = w.send("tasks.add", json!([2, 3])).await;
    let meta = w.wait_for(&id, "SUCCESS").await;
    assert_eq!(meta["result"], json!(5));
    assert_eq!(meta["task_id"], json!(id));
    w.assert_drained().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_receives_the_message_args() {
    let mut w = TestWorker::start(vec![guests::echo_args_guest("tasks.echo")], |_| {}).await;
    let id = w.send("tasks.echo", json!([1, "two", {"x": null}])).await;
    let meta = w.wait_for(&id, "SUCCESS").await;
    assert_eq!(meta["result"], json!([1, "two", {"x": null}]));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_late_success_is_stored_and_acked() {
    let mut w = TestWorker::start(vec![guests::ok_guest("tasks.ok", "\"fine\"")], |c| {
        c.acks_late = true;
        c.result_extended = true;
    })
    .await;
    let id = w.send("tasks.ok", json!([7])).await;
    let meta = w.wait_for(&id, "SUCCESS").await;
    assert_eq!(meta["result"], json!("fine"));
    assert_eq!(meta["name"], json!("tasks.ok"));
    assert_eq!(meta["args"], json!([7]));
    assert_eq!(meta["worker"], json!("celery@test"));
    assert_eq!(meta["queue"], json!(w.queue));
    w.assert_drained().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exception_is_stored_as_failure() {
    let mut w = TestWorker::start(
        vec![guests::raising_guest(
            "tasks.fail",
            "ValueError",
            "builtins",
            "bad input",
        )],
        |_| {},
    )
    .await;
    let id = w.send("tasks.fail", json!([])).await;
    let meta = w.wait_for(&id, "FAILURE").await;
    assert_eq!(meta["result"]["exc_type"], json!("ValueError"));
    assert_eq!(meta["result"]["exc_module"], json!("builtins"));
    assert_eq!(meta["result"]["exc_message"], json!(["bad input"]));
    w.assert_drained().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_task_is_rejected_with_not_registered() {
    let mut w = TestWorker::start(vec![guests::ok_guest("tasks.known", "1")], |_| {}).await;
    let id = w.send("tasks.unknown", json!([])).await;
    let meta = w.wait_for(&id, "FAILURE").await;
    assert_eq!(meta["result"]["exc_type"], json!("NotRegistered"));
    assert_eq!(meta["result"]["exc_module"], json!("celery.exceptions"));
    assert_eq!(meta["result"]["exc_message"], json!(["tasks.unknown"]));
    w.assert_drained().await;
    // The worker keeps serving.
    let ok = w.send("tasks.known", json!([])).await;
    w.wait_for(&ok, "SUCCESS").await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_is_republished_and_ends_in_max_retries_exceeded() {
    let mut w = TestWorker::start(
        vec![guests::retrying_guest("tasks.flaky", Some(1.0), Some(1))],
        |_| {},
    )
    .await;
    let id = w.send("tasks.flaky", json!([])).await;
    let retry = w.wait_for(&id, "RETRY").await;
    assert_eq!(retry["result"], Value::Null);
    let meta = w.wait_for(&id, "FAILURE").await;
    assert_eq!(meta["result"]["exc_type"], json!("MaxRetriesExceededError"));
    assert_eq!(meta["result"]["exc_module"], json!("celery.exceptions"));
    let message = meta["result"]["exc_message"][0]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        message,
        format!("Can't retry tasks.flaky[{id}] args:() kwargs:{{}}")
    );
    assert_eq!(retry["children"], json!([[[id, null], null]]));
    w.assert_drained().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_message_is_dropped_and_the_worker_carries_on() {
    let mut w = TestWorker::start(vec![guests::ok_guest("tasks.ok", "1")], |_| {}).await;
    let bad_id = uuid::Uuid::new_v4().to_string();
    let mut bad =
        Outgoing::from(OutgoingTask::new(bad_id.clone(), "tasks.ok", vec![], Map::new()).encode());
    bad.body = b"{not json".to_vec();
    w.publish_raw(&bad).await;
    let id = w.send("tasks.ok", json!([])).await;
    w.wait_for(&id, "SUCCESS").await;
    assert_eq!(w.meta(&bad_id).await, None, "nothing is stored for it");
    w.assert_drained().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn update_state_is_stored_and_ignore_result_skips_success() {
    let mut w = TestWorker::start(
        vec![
            guests::logging_guest("tasks.progress", "working"),
            guests::ok_guest("tasks.ok", "1"),
        ],
        |_| {},
    )
    .await;
    let id = uuid::Uuid::new_v4().to_string();
    let mut task = OutgoingTask::new(id.clone(), "tasks.progress", vec![], Map::new());
    task.ignore_result = Some(true);
    w.publish(&task).await;
    let meta = w.wait_for(&id, "PROGRESS").await;
    assert_eq!(meta["result"], json!({"n": 1}));

    let ignored = uuid::Uuid::new_v4().to_string();
    let mut task = OutgoingTask::new(ignored.clone(), "tasks.ok", vec![], Map::new());
    task.ignore_result = Some(true);
    w.publish(&task).await;
    let ok = w.send("tasks.ok", json!([])).await;
    w.wait_for(&ok, "SUCCESS").await;
    w.assert_drained().await;
    assert_eq!(w.meta(&ignored).await, None);
    assert_eq!(
        w.meta(&id).await.expect("PROGRESS kept")["status"],
        "PROGRESS"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_eta_message_waits_for_its_time() {
    let mut w = TestWorker::start(vec![guests::ok_guest("tasks.ok", "1")], |_| {}).await;
    let id = uuid::Uuid::new_v4().to_string();
    let mut task = OutgoingTask::new(id.clone(), "tasks.ok", vec![], Map::new());
    let now = worker::now_micros();
    task.eta = Some(Timestamp::from_unix_micros(now + 1_000_000));
    let sent = Instant::now();
    w.publish(&task).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.meta(&id).await, None, "ran before its eta");
    assert_eq!(w.unacked_len().await, 2, "held unacked until its eta");
    w.wait_for(&id, "SUCCESS").await;
    assert!(sent.elapsed() >= Duration::from_millis(900));
    w.assert_drained().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_shutdown_gives_back_held_messages() {
    let mut w = TestWorker::start(vec![guests::ok_guest("tasks.ok", "1")], |_| {}).await;
    let done = w.send("tasks.ok", json!([])).await;
    w.wait_for(&done, "SUCCESS").await;
    let held = uuid::Uuid::new_v4().to_string();
    let mut task = OutgoingTask::new(held.clone(), "tasks.ok", vec![], Map::new());
    let now = worker::now_micros();
    task.eta = Some(Timestamp::from_unix_micros(now + 600_000_000));
    w.publish(&task).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.queue_len().await > 0 {
        assert!(Instant::now() < deadline, "the worker never fetched it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.stop().await;
    assert_eq!(w.unacked_len().await, 0, "nothing left unacked");
    assert_eq!(
        w.queue_len().await,
        1,
        "the held message is back in its queue"
    );
    assert_eq!(w.meta(&held).await, None);
    // Leave nothing behind on the shared server.
    for priority in [0, 3, 6, 9] {
        let _: i64 = redis::cmd("DEL")
            .arg(w.broker.queue_key(&w.queue, priority))
            .query_async(&mut w.raw.clone())
            .await
            .expect("DEL");
    }
}

/// A task message for `name` with no arguments, due `eta_secs` and expiring `expires_secs`
/// from now (negative: in the past).
fn timed_task(name: &str, eta_secs: Option<f64>, expires_secs: Option<f64>) -> OutgoingTask {
    let at = |secs: f64| Timestamp::from_unix_micros(worker::now_micros() + (secs * 1e6) as i64);
    let mut task = OutgoingTask::new(uuid::Uuid::new_v4().to_string(), name, vec![], Map::new());
    task.eta = eta_secs.map(at);
    task.expires = expires_secs.map(at);
    task
}

fn revoked_because(reason: &str) -> Value {
    json!({
        "exc_type": "TaskRevokedError",
        "exc_message": [reason],
        "exc_module": "celery.exceptions",
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_message_is_revoked_without_running() {
    let mut w = TestWorker::start(vec![guests::ok_guest("tasks.ok", "1")], |_| {}).await;
    let task = timed_task("tasks.ok", None, Some(-1.0));
    w.publish(&task).await;
    let meta = w.wait_for(&task.id, "REVOKED").await;
    assert_eq!(meta["result"], revoked_because("expired"));
    assert!(meta["date_done"].is_string(), "REVOKED is a ready state");
    w.assert_drained().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_expires_before_its_eta_is_revoked_at_its_eta() {
    let mut w = TestWorker::start(vec![guests::ok_guest("tasks.ok", "1")], |_| {}).await;
    let task = timed_task("tasks.ok", Some(1.0), Some(0.5));
    w.publish(&task).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.meta(&task.id).await, None, "not discarded before its eta");
    let meta = w.wait_for(&task.id, "REVOKED").await;
    assert_eq!(meta["result"], revoked_because("expired"));
    w.assert_drained().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_eta_held_message_does_not_use_up_the_prefetch() {
    let mut w = TestWorker::start(vec![guests::ok_guest("tasks.ok", "1")], |config| {
        config.concurrency = 1;
        config.prefetch_multiplier = 1;
    })
    .await;
    let later = timed_task("tasks.ok", Some(3.0), None);
    w.publish(&later).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    let due = w.send("tasks.ok", json!([])).await;
    w.wait_for(&due, "SUCCESS").await;
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "the task due now waited for the ETA-held one: {:?}",
        sent.elapsed()
    );
    assert_eq!(w.meta(&later.id).await, None, "ran before its eta");
    w.wait_for(&later.id, "SUCCESS").await;
    w.assert_drained().await;
    w.stop().await;
}

/// Loses the connection on the first SUCCESS it is asked to store.
struct LosesFirstSuccess {
    inner: Arc<RedisBackend>,
    lost: AtomicBool,
}

impl ResultBackend for LosesFirstSuccess {
    async fn store(&self, meta: &TaskMeta) -> Result<StoreOutcome, BackendError> {
        if meta.state().as_str() == "SUCCESS" && !self.lost.swap(true, Ordering::SeqCst) {
            let lost = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "test: lost");
            return Err(BackendError::Command {
                op: "store",
                task_id: meta.task_id().to_owned(),
                source: redis::RedisError::from(lost),
            });
        }
        self.inner.store(meta).await
    }

    async fn get(&self, task_id: &str) -> Result<Option<String>, BackendError> {
        self.inner.get(task_id).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_late_requeues_a_task_whose_result_could_not_be_stored() {
    let mut w = TestWorker::start_with_backend(
        vec![guests::ok_guest("tasks.ok", "1")],
        |config| config.acks_late = true,
        |inner| {
            Arc::new(LosesFirstSuccess {
                inner,
                lost: AtomicBool::new(false),
            })
        },
    )
    .await;
    let id = w.send("tasks.ok", json!([])).await;
    let meta = w.wait_for(&id, "SUCCESS").await;
    assert_eq!(meta["result"], json!(1), "the requeued message ran again");
    w.assert_drained().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_sweep_leaves_a_message_held_past_the_visibility_timeout_alone() {
    let mut w =
        TestWorker::start_with_broker_options(vec![guests::ok_guest("tasks.ok", "1")], |options| {
            options.visibility_timeout = Duration::from_secs(2)
        })
        .await;
    let task = timed_task("tasks.ok", Some(4.5), None);
    w.publish(&task).await;
    // Another worker's sweeps (same keys, same rules) while the ETA is far off.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let restored = w.broker.restore_visible().await.expect("restore");
        assert_eq!(restored, 0, "a held message was restored to the queue");
    }
    let meta = w.wait_for(&task.id, "SUCCESS").await;
    assert_eq!(meta["result"], json!(1));
    w.assert_drained().await;
    w.stop().await;
}

/// Waits (up to 10 s) until `id` runs on the worker.
async fn wait_running(w: &TestWorker, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w.running.ids().iter().any(|running| running == id) {
        assert!(Instant::now() < deadline, "task {id} never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_revoked_before_it_arrives_is_discarded_and_never_run() {
    let mut w = TestWorker::start(vec![guests::ok_guest("tasks.ok", "1")], |config| {
        config.concurrency = 1;
    })
    .await;
    let task = timed_task("tasks.ok", None, None);
    let revoked = (w.revoke)(vec![task.id.clone()], false).await;
    assert_eq!(revoked.terminated, None);
    let meta = w.wait_for(&task.id, "REVOKED").await;
    assert_eq!(meta["result"], revoked_because("revoked"));

    w.publish(&task).await;
    let after = w.send("tasks.ok", json!([])).await;
    w.wait_for(&after, "SUCCESS").await;
    // A run would have stored SUCCESS over REVOKED.
    let meta = w.meta(&task.id).await.expect("stored");
    assert_eq!(meta["status"], "REVOKED");
    assert_eq!(meta["result"], revoked_because("revoked"));
    w.assert_drained().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn terminate_stops_a_running_task_at_once_and_the_worker_carries_on() {
    let mut w = TestWorker::start(
        vec![
            guests::infinite_loop_guest("tasks.spin"),
            guests::ok_guest("tasks.ok", "1"),
        ],
        |config| config.acks_late = true,
    )
    .await;
    let id = w.send("tasks.spin", json!([])).await;
    wait_running(&w, &id).await;
    let asked = Instant::now();
    let revoked = (w.revoke)(vec![id.clone(), "not-here".into()], true).await;
    assert_eq!(revoked.terminated, Some(vec![id.clone()]));
    assert_eq!(revoked.reply_text(), format!("terminate: {id}"));
    // REVOKED ("terminated") is stored before the task leaves the running set.
    let deadline = Instant::now() + Duration::from_secs(2);
    while w.running.ids().contains(&id) {
        assert!(Instant::now() < deadline, "the task still runs");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "stopped {:?} after the revoke",
        asked.elapsed()
    );
    let meta = w.wait_for(&id, "REVOKED").await;
    assert_eq!(meta["result"], revoked_because("terminated"));
    let ok = w.send("tasks.ok", json!([])).await;
    w.wait_for(&ok, "SUCCESS").await;
    w.assert_drained().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_ids_in_the_statedb_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let statedb = dir.path().join("worker.state");
    let mut first =
        TestWorker::start_with_statedb(vec![guests::ok_guest("tasks.ok", "1")], statedb.clone())
            .await;
    let task = timed_task("tasks.ok", None, None);
    (first.revoke)(vec![task.id.clone()], false).await;
    first.stop().await;

    let mut second =
        TestWorker::start_with_statedb(vec![guests::ok_guest("tasks.ok", "1")], statedb).await;
    second.publish(&task).await;
    let after = second.send("tasks.ok", json!([])).await;
    second.wait_for(&after, "SUCCESS").await;
    second.assert_drained().await;
    let meta = second.meta(&task.id).await.expect("stored");
    assert_eq!(
        meta["status"], "REVOKED",
        "the restarted worker ran it: {meta}"
    );
    second.stop().await;
}

/// When `meta` was stored, in seconds since the epoch.
fn done_at(meta: &Value) -> f64 {
    let text = meta["date_done"].as_str().expect("date_done");
    let at = Timestamp::parse(text).unwrap_or_else(|| panic!("bad date_done {text}"));
    at.unix_micros() as f64 / 1e6
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_task_starts_at_its_rate_and_waiting_messages_stay_unacked() {
    let mut w = TestWorker::start(vec![guests::ok_guest("tasks.ok", "1")], |config| {
        config.concurrency = 4;
    })
    .await;
    (w.set_rate_limit)("tasks.ok", Some("5/s"));
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(w.send("tasks.ok", json!([])).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.meta(&ids[5]).await, None, "the sixth waits for its token");
    assert!(w.unacked_len().await > 0, "waiting messages are not acked");
    let mut done = Vec::new();
    for id in &ids {
        done.push(done_at(&w.wait_for(id, "SUCCESS").await));
    }
    done.sort_by(f64::total_cmp);
    // One token at once, then one every 0.2 s.
    assert!(done[5] - done[0] >= 5.0 * 0.2 * 0.9, "{done:?}");
    w.assert_drained().await;
    w.stop().await;
}
