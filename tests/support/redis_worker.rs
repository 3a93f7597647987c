//! A real `celeriac worker` process on the test Redis, fed with task messages published the
//! way a Celery client publishes them, and results read back from Celery's Redis keys.
//!
//! The server URL comes from `CELERIAC_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/0`).
//! Each worker consumes a queue of its own; task ids are uuids; nothing is flushed.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use celeriac::broker::{Broker, Outgoing, RedisBroker};
use celeriac::protocol::OutgoingTask;
use redis::aio::MultiplexedConnection;
use serde_json::{Map, Value};

use super::celeriac_cli::{command, path_str};

/// The test Redis.
pub fn redis_url() -> String {
    std::env::var("CELERIAC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// A `celeriac worker` subprocess whose output goes to a log file.
pub struct WorkerProcess {
    child: Child,
    log: PathBuf,
    /// The queue it consumes.
    pub queue: String,
}

impl WorkerProcess {
    /// Starts `celeriac worker --tasks TASKS -Q <fresh queue> -c CONCURRENCY -l info` (plus
    /// `extra`) on the test Redis, logging to `log`, and waits until it is ready (up to
    /// 600 s: compiling the Python example for the first time is slow on a busy machine).
    pub async fn start(tasks: &Path, concurrency: usize, log: &Path, extra: &[&str]) -> Self {
        Self::start_on(&redis_url(), tasks, concurrency, log, extra).await
    }

    /// Like [`WorkerProcess::start`], on the broker at `broker`.
    pub async fn start_on(
        broker: &str,
        tasks: &Path,
        concurrency: usize,
        log: &Path,
        extra: &[&str],
    ) -> Self {
        let queue = format!("hotswap-{}", uuid::Uuid::new_v4());
        let concurrency = concurrency.to_string();
        let mut args = vec![
            "worker",
            "-b",
            broker,
            "--tasks",
            path_str(tasks),
            "-Q",
            &queue,
            "-c",
            &concurrency,
            "-l",
            "info",
        ];
        args.extend_from_slice(extra);
        let file = std::fs::File::create(log).expect("log file");
        let child = command(&args)
            .stdout(file.try_clone().expect("log file handle"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("celeriac worker starts");
        let worker = WorkerProcess {
            child,
            log: log.to_path_buf(),
            queue,
        };
        worker
            .wait_log(Duration::from_secs(600), |log| log.contains(" ready."))
            .await;
        worker
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `done(log)` holds; panics with the log after `timeout`.
    pub async fn wait_log(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if done(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the worker's log never showed what was awaited:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Warm shutdown through SIGTERM; returns its exit code.
    pub fn stop(mut self) -> Option<i32> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().ok().and_then(|status| status.code())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // Only a worker that was not stopped is still running here.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes tasks to a queue and reads their results, as a Celery client would.
pub struct Client {
    broker: RedisBroker,
    raw: MultiplexedConnection,
}

impl Client {
    /// Connects to the test Redis.
    pub async fn connect() -> Self {
        let url = redis_url();
        let broker = RedisBroker::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("Redis at {url} is unreachable: {e}"));
        let raw = redis::Client::open(url.as_str())
            .unwrap_or_else(|e| panic!("bad Redis URL {url}: {e}"))
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("Redis at {url} is unreachable: {e}"));
        Client { broker, raw }
    }

    /// Sends `name(*args)` to `queue`; returns the task id.
    pub async fn send(&self, queue: &str, name: &str, args: Vec<Value>) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let message =
            Outgoing::from(OutgoingTask::new(id.clone(), name, args, Map::new()).encode());
        self.broker
            .publish("", queue, &message)
            .await
            .expect("publish");
        id
    }

    /// The stored result documents of `ids` (`None` where none is stored yet).
    pub async fn metas(&self, ids: &[String]) -> Vec<Option<Value>> {
        let mut metas = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|id| format!("celery-task-meta-{id}"))
                .collect();
            let texts: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut self.raw.clone())
                .await
                .expect("MGET");
            metas.extend(texts.into_iter().map(|text| {
                text.map(|text| serde_json::from_str(&text).expect("stored meta is JSON"))
            }));
        }
        metas
    }

    /// Waits (up to `timeout`) until every one of `ids` has a result stored; returns them
    /// in the same order.
    pub async fn wait_all(&self, ids: &[String], timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let metas = self.metas(ids).await;
            let missing = metas.iter().filter(|meta| meta.is_none()).count();
            if missing == 0 {
                return metas.into_iter().flatten().collect();
            }
            assert!(
                Instant::now() < deadline,
                "{missing} of {} task(s) have no result after {timeout:?}",
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to `timeout`) for one result.
    pub async fn wait_one(&self, id: &str, timeout: Duration) -> Value {
        self.wait_all(&[id.to_owned()], timeout).await.remove(0)
    }
}
