//! Monitoring and remote control: what makes celeriac visible and steerable with Celery's
//! own tools (`celery inspect`/`control`/`events`, Flower). Wire facts:
//! celery-worker-behaviour.md §1–§3.
//!
//! * [`Monitor`]: the worker reports each task's arrival, start and end into it; it holds
//!   what `active`/`reserved`/`scheduled` show and sends the task events.
//! * [`events`]: event fields, the task-event switch, the in-order publisher;
//! * [`pidbox`]: control requests: decoding, node matching, replies;
//! * `commands`: each command and its reply (`revoke` and `rate_limit` act through the
//!   worker's [`WorkerHandle`]);
//! * `metrics` and `http`: Prometheus metrics, `/healthz` and `/readyz` on
//!   `--metrics-addr`;
//! * [`deploy`]: fleet deploy: components sent through the broker, installed by each worker;
//! * `listen`: hearing a broadcast queue, subscribing again when it is lost;
//! * [`Control`]: the tasks that run beside the worker loop (never behind its task slots):
//!   event publisher, heartbeat, pidbox consumer, deploy listener, metrics endpoint.

mod commands;
pub mod deploy;
pub mod events;
mod http;
mod identity;
mod listen;
mod metrics;
mod monitor;
pub mod pidbox;
mod repr;
mod state;

use crate::worker::WorkerHandle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::backend::ResultBackend;
use crate::broker::{Broker, Consumer, Delivery};
use crate::registry::Registry;
use crate::worker::{RevokedTasks, WorkerConfig};

pub use self::events::EventQueue;
pub use self::monitor::{Monitor, TrackedTask};
pub use self::state::{LimitOverrides, Phase, TaskRecord};

/// Celery's heartbeat interval (`Heart(interval or 2.0)`).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);

/// The `freq` of the heartbeat the `heartbeat` command asks for.
const HEARTBEAT_COMMAND_FREQ: f64 = 5.0;

/// How long starting waits for the pidbox and deploy subscriptions: requests sent before
/// them are not heard (PUB/SUB is at most once), so the worker says it is ready only after.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// How long `/readyz` waits for the result backend to answer.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long stopping waits for the queued events (worker-offline last) to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Events and remote control settings.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Send task events from the start (`-E`). Default off (`enable_events` turns them
    /// on).
    pub task_events: bool,
    /// The heartbeat interval; `None` sends no worker events at all
    /// (`--without-heartbeat`). Default 2 s.
    pub heartbeat: Option<Duration>,
    /// Listen for remote control commands. Default on.
    pub remote_control: bool,
    /// Install components sent by `celeriac deploy` (only with remote control). Default on.
    pub deploy: bool,
    /// The broker URL, password removed, for `stats.broker`. Default empty.
    pub broker_url: String,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`. Default: nowhere.
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            task_events: false,
            heartbeat: Some(DEFAULT_HEARTBEAT),
            remote_control: true,
            deploy: true,
            broker_url: String::new(),
            metrics_addr: None,
        }
    }
}

impl ControlConfig {
    /// `stats.broker`: kombu's connection info, never with a password.
    fn broker_info(&self, transport: &str) -> Value {
        let parsed = url::Url::parse(&self.broker_url).ok();
        let host = parsed
            .as_ref()
            .and_then(|u| u.host_str().map(str::to_owned));
        let port = parsed.as_ref().and_then(url::Url::port_or_known_default);
        let user = parsed
            .as_ref()
            .map(|u| u.username().to_owned())
            .filter(|u| !u.is_empty());
        let vhost = parsed
            .as_ref()
            .map(|u| u.path().trim_start_matches('/').to_owned())
            .unwrap_or_default();
        let ssl = parsed
            .as_ref()
            .is_some_and(|u| matches!(u.scheme(), "rediss" | "amqps"));
        json!({
            "hostname": host, "userid": user, "virtual_host": vhost, "port": port,
            "insist": false, "ssl": ssl, "transport": transport, "connect_timeout": 4,
            "transport_options": {}, "login_method": null, "uri_prefix": null,
            "heartbeat": 120.0, "failover_strategy": "round-robin", "alternates": [],
            "credential_provider": null,
        })
    }
}

/// What remote control acts on.
pub struct ControlContext<B: Broker, R: ResultBackend> {
    /// The monitor the worker reports into.
    pub monitor: Arc<Monitor>,
    /// The worker's consumer (queues to add and cancel, the broker).
    pub consumer: Arc<Consumer<B>>,
    /// Where REVOKED goes.
    pub backend: Arc<R>,
    /// The worker's revoke (with terminate) and run-time rate limits.
    pub worker: WorkerHandle<R>,
    /// The worker's revoked ids.
    pub revoked: Arc<RevokedTasks>,
    /// The tasks served.
    pub registry: Arc<Registry>,
    /// The worker's task slots (pool_grow, pool_shrink).
    pub slots: Arc<Semaphore>,
    /// Slots now: the configured concurrency, grown and shrunk by remote command.
    pub concurrency: AtomicUsize,
    /// The most slots pool_grow may reach: the sandbox's room for running tasks.
    pub max_concurrency: usize,
    /// The worker's configuration.
    pub config: WorkerConfig,
    /// Events and control settings.
    pub settings: ControlConfig,
    /// Set by the `shutdown` command.
    pub remote_shutdown: watch::Sender<bool>,
}

/// The control tasks running beside a worker.
pub struct Control {
    monitor: Arc<Monitor>,
    events: EventQueue,
    publisher: JoinHandle<()>,
    heart: Option<JoinHandle<()>>,
    pidbox: Option<JoinHandle<()>>,
    deploy: Option<JoinHandle<()>>,
    metrics: Option<JoinHandle<()>>,
    remote_shutdown: watch::Receiver<bool>,
    heartbeat_fields: Option<f64>,
}

impl Control {
    /// Starts the event publisher, the heartbeat (worker-online first), the pidbox
    /// consumer, the deploy listener and the metrics endpoint, as the settings ask, and
    /// waits (briefly) until the pidbox and deploy queues are subscribed. `queued` is the receiving end of the monitor's event
    /// queue `events`. Fails only when the metrics address cannot be bound.
    pub async fn start<B: Broker, R: ResultBackend + 'static>(
        ctx: Arc<ControlContext<B, R>>,
        events: EventQueue,
        queued: mpsc::UnboundedReceiver<events::Queued>,
    ) -> std::io::Result<Control> {
        ctx.monitor.metrics.components_loaded(&ctx.registry);
        let metrics = match ctx.settings.metrics_addr {
            Some(addr) => Some(http::serve(addr, Arc::clone(&ctx)).await?),
            None => None,
        };
        let publisher = {
            let ctx = Arc::clone(&ctx);
            tokio::spawn(async move {
                events::publish_events(&**ctx.consumer.broker(), &ctx.monitor.sender, queued).await;
            })
        };
        let freq = ctx.settings.heartbeat.map(|every| every.as_secs_f64());
        let heart = ctx.settings.heartbeat.map(|every| {
            let monitor = Arc::clone(&ctx.monitor);
            tokio::spawn(heartbeat(monitor, every))
        });
        let (subscribed, first_attempt) = oneshot::channel();
        let pidbox = ctx
            .settings
            .remote_control
            .then(|| tokio::spawn(consume_pidbox(Arc::clone(&ctx), subscribed)));
        let (deploy_subscribed, deploy_first_attempt) = oneshot::channel();
        let deploy = (ctx.settings.remote_control && ctx.settings.deploy).then(|| {
            tokio::spawn(deploy::serve(
                Arc::clone(ctx.consumer.broker()),
                Arc::clone(&ctx.registry),
                ctx.monitor.sender.hostname.clone(),
                deploy_subscribed,
            ))
        });
        // A dropped sender (listener not started) ends its wait at once.
        let _ = tokio::time::timeout(SUBSCRIBE_WAIT, async {
            let _ = first_attempt.await;
            let _ = deploy_first_attempt.await;
        })
        .await;
        Ok(Control {
            monitor: Arc::clone(&ctx.monitor),
            events,
            publisher,
            heart,
            pidbox,
            deploy,
            metrics,
            remote_shutdown: ctx.remote_shutdown.subscribe(),
            heartbeat_fields: freq,
        })
    }

    /// Resolves when a `shutdown` command arrived (never, without remote control).
    pub async fn shutdown_requested(&self) {
        let mut requested = self.remote_shutdown.clone();
        if requested.wait_for(|asked| *asked).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Stops listening, sends worker-offline, and waits (briefly) for the queued events
    /// to go out.
    pub async fn stop(self) {
        for listener in [self.pidbox, self.deploy].into_iter().flatten() {
            listener.abort();
        }
        if let Some(heart) = self.heart {
            heart.abort();
        }
        if let Some(metrics) = self.metrics {
            metrics.abort();
        }
        if let Some(freq) = self.heartbeat_fields {
            self.monitor
                .send_worker_event("worker-offline", worker_fields(&self.monitor, freq));
        }
        if tokio::time::timeout(FLUSH_TIMEOUT, self.events.flush())
            .await
            .is_err()
        {
            tracing::warn!("events: the last events could not be sent in time");
            self.publisher.abort();
        }
    }
}

fn worker_fields(monitor: &Monitor, freq: f64) -> serde_json::Map<String, Value> {
    events::worker_fields(
        freq,
        monitor.tasks.active_count(),
        monitor.tasks.processed(),
        identity::loadavg(),
    )
}

/// worker-online, then a worker-heartbeat every `every`.
async fn heartbeat(monitor: Arc<Monitor>, every: Duration) {
    let freq = every.as_secs_f64();
    monitor.send_worker_event("worker-online", worker_fields(&monitor, freq));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        monitor.send_worker_event("worker-heartbeat", worker_fields(&monitor, freq));
    }
}

/// Listens on `<nodename>.celery.pidbox` and answers each request, subscribing again
/// (with backoff) when the subscription is lost.
/// `subscribed` is told once the first attempt is over, whatever its outcome.
async fn consume_pidbox<B: Broker, R: ResultBackend + 'static>(
    ctx: Arc<ControlContext<B, R>>,
    subscribed: oneshot::Sender<()>,
) {
    let queue = pidbox::pidbox_queue(&ctx.monitor.sender.hostname);
    let connected = |up| ctx.monitor.broker_connected.store(up, Ordering::Relaxed);
    listen::listen(
        &**ctx.consumer.broker(),
        &queue,
        "pidbox",
        subscribed,
        connected,
        |delivery| {
            let ctx = Arc::clone(&ctx);
            async move { handle_request(&ctx, &delivery).await }
        },
    )
    .await;
}

impl<B: Broker, R: ResultBackend + 'static> http::Endpoints for ControlContext<B, R> {
    fn metrics(&self) -> String {
        let tasks = &self.monitor.tasks;
        let active = tasks.active_count();
        let held = tasks.select(|_| true).len();
        self.monitor
            .metrics
            .render(active, held.saturating_sub(active))
    }

    /// Ready when the pidbox's broker connection is up (when remote control runs) and the
    /// result backend answers a read.
    async fn ready(&self) -> Result<(), String> {
        if self.settings.remote_control && !self.monitor.broker_connected.load(Ordering::Relaxed) {
            return Err("broker: not connected".to_owned());
        }
        match tokio::time::timeout(
            READY_PROBE_TIMEOUT,
            self.backend.get("celeriac-readyz-probe"),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(format!("result backend: {err}")),
            Err(_) => Err("result backend: no answer in time".to_owned()),
        }
    }
}

/// kombu's `Node.handle_message` and `dispatch`: decode, filter, run, reply.
async fn handle_request<B: Broker, R: ResultBackend + 'static>(
    ctx: &ControlContext<B, R>,
    delivery: &Delivery,
) {
    let request = match pidbox::Request::decode(delivery) {
        Ok(request) => request,
        Err(err) => {
            tracing::warn!("{err}");
            return;
        }
    };
    let nodename = &ctx.monitor.sender.hostname;
    if !request.is_for(nodename) {
        return;
    }
    ctx.monitor.sender.clock.forward();
    tracing::debug!("pidbox received method {}", request.method);
    let reply = commands::dispatch(ctx, &request.method, &request.arguments).await;
    let (Some(reply), Some(reply_to)) = (reply, request.reply_to) else {
        return;
    };
    let clock = request.clock.unwrap_or(0) + 1;
    let message = pidbox::reply_message(nodename, reply, &reply_to.ticket, clock);
    if let Err(err) = ctx
        .consumer
        .broker()
        .publish(&reply_to.exchange, &reply_to.routing_key, &message)
        .await
    {
        tracing::error!("pidbox: cannot reply to {}: {err}", request.method);
    }
}
