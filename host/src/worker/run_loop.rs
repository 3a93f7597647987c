//! The worker loop: fetches deliveries through the [`Consumer`], hands each to its own
//! task, reconnects with backoff when the broker goes away, and shuts down warmly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::AtomicUsize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::backend::ResultBackend;
use crate::broker::{Broker, Consumer};
use crate::control::{Control, ControlContext, EventQueue, Monitor};
use crate::registry::Registry;
use crate::sandbox::Sandbox;

use super::delivery::{finish, handle};
use super::execution::Settle;
use super::rate_limit::RateLimits;
use super::{RevokedTasks, RunningTasks, WorkerConfig, WorkerError, WorkerHandle};

/// The first and the longest wait before fetching again after a broker error.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What every delivery handler shares.
pub struct WorkerContext<B: Broker, R: ResultBackend> {
    /// How the worker runs.
    pub config: WorkerConfig,
    /// Where tasks run.
    pub sandbox: Sandbox,
    /// Task name → component.
    pub registry: Arc<Registry>,
    /// Deliveries in, acks and rejects out.
    pub consumer: Arc<Consumer<B>>,
    /// Where states go.
    pub backend: Arc<R>,
    /// One permit per running task.
    pub slots: Arc<Semaphore>,
    /// Ids of tasks not to run.
    pub revoked: Arc<RevokedTasks>,
    /// Tasks running now, for a revoke with terminate.
    pub running: Arc<RunningTasks>,
    /// Token buckets of rate-limited tasks.
    pub rate_limits: Arc<RateLimits>,
    /// Turns true when the worker begins to stop.
    pub stopping: watch::Receiver<bool>,
    /// What the worker reports its tasks into (events, inspect).
    pub monitor: Arc<Monitor>,
}

/// Consumes `config.queues` until `shutdown` resolves, then shuts down warmly: stops
/// fetching, gives back every delivery that has not started, and waits for running tasks
/// up to `config.shutdown_timeout`. Revokes live in memory only; see [`run_with`].
pub async fn run<B, R>(
    config: WorkerConfig,
    sandbox: Sandbox,
    registry: Arc<Registry>,
    broker: Arc<B>,
    backend: Arc<R>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError>
where
    B: Broker,
    R: ResultBackend + 'static,
{
    let worker_handle = WorkerHandle::new(backend);
    run_with(config, sandbox, registry, broker, worker_handle, shutdown).await
}

/// Like [`run`], storing states through `worker_handle`'s backend and consulting its
/// revoked ids and running tasks, so a clone of it can revoke (and terminate) while the
/// worker runs. The revoked ids are saved to its state db, if any, when the loop ends.
pub async fn run_with<B, R>(
    config: WorkerConfig,
    sandbox: Sandbox,
    registry: Arc<Registry>,
    broker: Arc<B>,
    worker_handle: WorkerHandle<R>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError>
where
    B: Broker,
    R: ResultBackend + 'static,
{
    config.validate()?;
    let consumer = Arc::new(Consumer::new(
        broker,
        config.queues.clone(),
        config.prefetch(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (events, queued) = EventQueue::new();
    let monitor = Arc::new(Monitor::new(
        &config.nodename,
        config.control.task_events,
        events.clone(),
    ));
    let worker = Arc::new(WorkerContext {
        slots: Arc::new(Semaphore::new(config.concurrency)),
        config,
        sandbox,
        registry,
        consumer: Arc::clone(&consumer),
        backend: Arc::clone(worker_handle.backend()),
        revoked: Arc::clone(worker_handle.revoked()),
        running: Arc::clone(worker_handle.running()),
        rate_limits: Arc::clone(worker_handle.rate_limits()),
        stopping: stop_rx,
        monitor,
    });
    let control = Control::start(
        Arc::new(ControlContext {
            monitor: Arc::clone(&worker.monitor),
            consumer: Arc::clone(&consumer),
            backend: Arc::clone(&worker.backend),
            worker: worker_handle.clone(),
            revoked: Arc::clone(&worker.revoked),
            registry: Arc::clone(&worker.registry),
            slots: Arc::clone(&worker.slots),
            concurrency: AtomicUsize::new(worker.config.concurrency),
            max_concurrency: worker.sandbox.max_running_tasks(),
            config: worker.config.clone(),
            settings: worker.config.control.clone(),
            remote_shutdown: watch::channel(false).0,
        }),
        events,
        queued,
    )
    .await
    .map_err(|err| {
        WorkerError::Config(format!(
            "cannot serve metrics on {:?}: {err}",
            worker.config.control.metrics_addr
        ))
    })?;
    tracing::info!("{} ready.", worker.config.nodename);

    let mut tasks = JoinSet::new();
    let mut backoff = FIRST_BACKOFF;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            () = control.shutdown_requested() => break,
            next = consumer.next() => match next {
                Ok(delivery) => {
                    if backoff > FIRST_BACKOFF {
                        tracing::info!("consumer: connected again; consuming");
                    }
                    backoff = FIRST_BACKOFF;
                    tasks.spawn(handle(Arc::clone(&worker), delivery));
                    // Reaped here rather than awaited in this select: waking the loop for
                    // every finished task costs a thread wake-up per task.
                    while tasks.try_join_next().is_some() {}
                }
                Err(err) => {
                    tracing::error!("consumer: {err}; retrying in {:.1}s", backoff.as_secs_f64());
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            },
        }
    }

    tracing::info!("worker: warm shutdown: no new tasks; waiting for running tasks");
    let _ = stop_tx.send(true);
    // Fetched but not handed out, or landed by a fetch the shutdown cancelled: give back.
    for delivery in consumer.take_unstarted(worker.config.drain_timeout).await {
        finish(&consumer, &delivery, Settle::GiveBack).await;
    }
    let drained = tokio::time::timeout(worker.config.shutdown_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "worker: {} task(s) still running after {:.1}s; abandoning them (their messages \
             return after the visibility timeout when acked late)",
            tasks.len(),
            worker.config.shutdown_timeout.as_secs_f64()
        );
        tasks.shutdown().await;
    }
    worker_handle.persist().await;
    control.stop().await;
    Ok(())
}
