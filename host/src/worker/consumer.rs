//! The consumer loop: fetches deliveries, decodes them, runs each task in the sandbox and
//! stores its state, acking or rejecting as Celery does.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::backend::{ExceptionInfo, ExtendedFields, ResultBackend, TaskMeta};
use crate::broker::{Broker, Consumer, Delivery, Outgoing};
use crate::protocol::{self, Disposition, OutgoingTask, TaskMessage, Timestamp};
use crate::registry::Registry;
use crate::sandbox::{
    DeliveryInfo, Invocation, LogLevel, Request, Sandbox, SandboxLimits, TaskEvents, TaskOptions,
};

use super::{CeleryException, HeaderTimeLimits, TaskState, TracingTaskEvents, resolve_limits};

/// Longest result text written in a `succeeded` log line.
const MAX_LOGGED_RESULT: usize = 1024;

/// How the worker loop runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Queues to consume, first queue first.
    pub queues: Vec<String>,
    /// Tasks running at once.
    pub concurrency: usize,
    /// Unacked deliveries held per running slot (prefetch = concurrency × this).
    pub prefetch_multiplier: u32,
    /// The node name (`celery@host`), the `hostname` of every request.
    pub nodename: String,
    /// Ack after the result is stored rather than when the task starts.
    pub acks_late: bool,
    /// Write the `result_extended` fields into stored results.
    pub result_extended: bool,
    /// Limits every task runs with, refined per task by options and headers.
    pub limits: SandboxLimits,
    /// How long a warm shutdown waits for running tasks.
    pub shutdown_timeout: Duration,
    /// How long the final fetch at shutdown may take; at least the broker's fetch wait.
    pub drain_timeout: Duration,
}

impl WorkerConfig {
    /// Celery's defaults on `queues` with `concurrency` slots: prefetch multiplier 4, early
    /// acks, default limits, 60 s warm-shutdown timeout.
    pub fn new(queues: Vec<String>, concurrency: usize, nodename: impl Into<String>) -> Self {
        WorkerConfig {
            queues,
            concurrency,
            prefetch_multiplier: 4,
            nodename: nodename.into(),
            acks_late: false,
            result_extended: false,
            limits: SandboxLimits::new(),
            shutdown_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(2),
        }
    }
}

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The configuration cannot work.
    #[error("invalid worker configuration: {0}")]
    Config(String),
}

/// What every delivery handler shares.
struct Shared<B: Broker, R: ResultBackend> {
    config: WorkerConfig,
    sandbox: Sandbox,
    registry: Arc<Registry>,
    consumer: Arc<Consumer<B>>,
    backend: Arc<R>,
    slots: Arc<Semaphore>,
    stopping: watch::Receiver<bool>,
}

/// Consumes `config.queues` until `shutdown` resolves, then shuts down warmly: stops
/// fetching, gives back every delivery that has not started, and waits for running tasks
/// up to `config.shutdown_timeout`.
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
    if config.concurrency == 0 {
        return Err(WorkerError::Config("concurrency must be at least 1".into()));
    }
    if config.queues.is_empty() {
        return Err(WorkerError::Config("no queue to consume".into()));
    }
    let prefetch = u32::try_from(config.concurrency)
        .unwrap_or(u32::MAX)
        .saturating_mul(config.prefetch_multiplier);
    let consumer = Arc::new(Consumer::new(broker, config.queues.clone(), prefetch));
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        slots: Arc::new(Semaphore::new(config.concurrency)),
        config,
        sandbox,
        registry,
        consumer: Arc::clone(&consumer),
        backend,
        stopping: stop_rx,
    });

    let mut tasks = JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            next = consumer.next() => match next {
                Ok(delivery) => {
                    backoff = Duration::from_millis(100);
                    tasks.spawn(handle(Arc::clone(&shared), delivery));
                }
                Err(err) => {
                    tracing::error!("consumer: {err}; retrying in {:.1}s", backoff.as_secs_f64());
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }

    tracing::info!("worker: warm shutdown: no new tasks; waiting for running tasks");
    let _ = stop_tx.send(true);
    // A fetch cancelled by the shutdown may still land a delivery: give it back.
    if let Ok(Ok(delivery)) =
        tokio::time::timeout(shared.config.drain_timeout, consumer.next()).await
    {
        give_back(&consumer, &delivery).await;
    }
    let drained = tokio::time::timeout(shared.config.shutdown_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "worker: {} task(s) still running after {:.1}s; abandoning them (their messages \
             return after the visibility timeout when acked late)",
            tasks.len(),
            shared.config.shutdown_timeout.as_secs_f64()
        );
        tasks.shutdown().await;
    }
    Ok(())
}

async fn give_back<B: Broker>(consumer: &Consumer<B>, delivery: &Delivery) {
    if let Err(err) = consumer.reject(delivery.delivery_tag(), true).await {
        tracing::error!(
            "cannot give back delivery {}: {err}",
            delivery.delivery_tag()
        );
    }
}

async fn settle<B: Broker>(consumer: &Consumer<B>, delivery: &Delivery, ack: bool) {
    let tag = delivery.delivery_tag();
    let result = if ack {
        consumer.ack(tag).await
    } else {
        consumer.reject(tag, false).await
    };
    if let Err(err) = result {
        tracing::error!("cannot settle delivery {tag}: {err}");
    }
}

async fn store<R: ResultBackend>(backend: &R, meta: &TaskMeta) {
    if let Err(err) = backend.store(meta).await {
        tracing::error!(
            "cannot store {} for task {}: {err}",
            meta.state().as_str(),
            meta.task_id()
        );
    }
}

/// One delivery, from decoding to its final ack or reject.
async fn handle<B: Broker, R: ResultBackend + 'static>(
    shared: Arc<Shared<B, R>>,
    delivery: Delivery,
) {
    let consumer = &shared.consumer;
    let message = match protocol::decode(&delivery.raw()) {
        Ok(message) => message,
        Err(err) => {
            tracing::error!(
                "{err} (delivery tag {}, queue {})",
                delivery.delivery_tag(),
                delivery.queue
            );
            let ack = err.disposition() == Disposition::AckAndDrop;
            settle(consumer, &delivery, ack).await;
            return;
        }
    };
    let Some(component) = shared.registry.resolve(&message.task).cloned() else {
        tracing::error!(
            "Received unregistered task of type '{}' (id {}). The message has been rejected.",
            message.task,
            message.id
        );
        let args = [Value::from(message.task.clone())];
        let meta = TaskMeta::failure(
            &message.id,
            ExceptionInfo {
                exc_type: "NotRegistered",
                exc_module: "celery.exceptions",
                exc_message: &args,
            },
            None,
        );
        store(&*shared.backend, &meta).await;
        settle(consumer, &delivery, false).await;
        return;
    };
    let options = component
        .task(&message.task)
        .map(|info| info.options.clone())
        .unwrap_or_default();
    tracing::info!("Task {}[{}] received", message.task, message.id);

    // Wait for the eta and a free slot, unless the worker stops first.
    let mut stopping = shared.stopping.clone();
    let wait = async {
        if let Some(eta) = &message.eta {
            let delay = micros_until(eta.unix_micros());
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        Arc::clone(&shared.slots).acquire_owned().await
    };
    let permit = tokio::select! {
        biased;
        _ = stopping.wait_for(|stop| *stop) => None,
        permit = wait => permit.ok(),
    };
    let Some(_permit) = permit else {
        give_back(consumer, &delivery).await;
        return;
    };
    if *shared.stopping.borrow() {
        give_back(consumer, &delivery).await;
        return;
    }

    let acks_late = shared.config.acks_late || options.acks_late == Some(true);
    if !acks_late {
        settle(consumer, &delivery, true).await;
    }
    let ignore_result = message
        .ignore_result
        .unwrap_or(options.ignore_result == Some(true));
    let run = TaskRun {
        shared: &shared,
        message: &message,
        delivery: &delivery,
        options: &options,
        ignore_result,
    };
    if options.track_started == Some(true) && !ignore_result {
        run.store(TaskMeta::started(
            &message.id,
            std::process::id(),
            &shared.config.nodename,
        ))
        .await;
    }
    let keep_message = run.execute(&component.prepared).await;
    if acks_late {
        match keep_message {
            Settle::Ack => settle(consumer, &delivery, true).await,
            Settle::Reject { requeue } => reject(consumer, &delivery, requeue).await,
        }
    } else if let Settle::Reject { requeue: true } = keep_message {
        tracing::warn!(
            "Task {}[{}] asked to be requeued, but its message was acked when it started",
            message.task,
            message.id
        );
    }
}

async fn reject<B: Broker>(consumer: &Consumer<B>, delivery: &Delivery, requeue: bool) {
    if let Err(err) = consumer.reject(delivery.delivery_tag(), requeue).await {
        tracing::error!("cannot reject delivery {}: {err}", delivery.delivery_tag());
    }
}

/// What to do with a late-acked message once its task ended.
enum Settle {
    Ack,
    Reject { requeue: bool },
}

struct TaskRun<'a, B: Broker, R: ResultBackend> {
    shared: &'a Shared<B, R>,
    message: &'a TaskMessage,
    delivery: &'a Delivery,
    options: &'a TaskOptions,
    ignore_result: bool,
}

/// What a task reports while it runs, in order.
enum Event {
    State { state: String, meta_json: String },
    Done(oneshot::Sender<()>),
}

/// Forwards `update_state` to the storing task and logs the rest.
struct ChannelEvents {
    log: TracingTaskEvents,
    states: mpsc::UnboundedSender<Event>,
}

impl TaskEvents for ChannelEvents {
    fn log(&self, level: LogLevel, message: &str) {
        self.log.log(level, message);
    }

    fn update_state(&self, state: &str, meta_json: &str) {
        let _ = self.states.send(Event::State {
            state: state.to_owned(),
            meta_json: meta_json.to_owned(),
        });
    }
}

impl<B: Broker, R: ResultBackend + 'static> TaskRun<'_, B, R> {
    async fn store(&self, meta: TaskMeta) {
        let meta = if self.shared.config.result_extended {
            meta.with_extended(self.extended())
        } else {
            meta
        };
        store(&*self.shared.backend, &meta).await;
    }

    fn extended(&self) -> ExtendedFields {
        ExtendedFields {
            name: self.message.task.clone(),
            args: Value::Array(self.message.args.clone()),
            kwargs: Value::Object(self.message.kwargs.clone()),
            worker: self.shared.config.nodename.clone(),
            retries: self.message.retries,
            queue: routing_key(self.delivery).to_owned(),
        }
    }

    /// Runs the task, stores what it reported, and says what to do with its message.
    async fn execute(&self, prepared: &crate::sandbox::Prepared) -> Settle {
        let message = self.message;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let backend = Arc::clone(&self.shared.backend);
        let task_id = message.id.clone();
        let extended = self.shared.config.result_extended.then(|| self.extended());
        let storer = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                match event {
                    Event::State { state, meta_json } => {
                        match TaskMeta::custom(&task_id, &state, &meta_json) {
                            Ok(meta) => {
                                let meta = match &extended {
                                    Some(fields) => meta.with_extended(fields.clone()),
                                    None => meta,
                                };
                                store(&*backend, &meta).await;
                            }
                            Err(err) => {
                                tracing::warn!("update_state of task {task_id} ignored: {err}");
                            }
                        }
                    }
                    Event::Done(done) => {
                        let _ = done.send(());
                        break;
                    }
                }
            }
        });
        let events = Arc::new(ChannelEvents {
            log: TracingTaskEvents {
                task_name: message.task.clone(),
                task_id: message.id.clone(),
            },
            states: tx.clone(),
        });
        let limits = resolve_limits(
            &self.shared.config.limits,
            self.options,
            HeaderTimeLimits {
                hard: message.timelimit.hard,
                soft: message.timelimit.soft,
            },
        );
        let invocation = Invocation {
            request: self.request(),
            args_json: message.args_json.clone(),
            kwargs_json: message.kwargs_json.clone(),
            limits,
            events,
        };
        let started = Instant::now();
        let report = self.shared.sandbox.run(prepared, invocation).await;
        let elapsed = started.elapsed().as_secs_f64();
        let (done_tx, done_rx) = oneshot::channel();
        if tx.send(Event::Done(done_tx)).is_ok() {
            let _ = done_rx.await;
        }
        drop(storer);

        let report = match report {
            Ok(report) => report,
            Err(err) => {
                tracing::error!("Task {}[{}] could not run: {err}", message.task, message.id);
                let args = [Value::from(err.to_string())];
                self.store_failure(&CeleryException {
                    exc_type: "WorkerLostError".into(),
                    exc_module: "billiard.exceptions".into(),
                    exc_message: args.to_vec(),
                    message: err.to_string(),
                    traceback: None,
                })
                .await;
                return Settle::Ack;
            }
        };
        match super::task_state(&report.outcome) {
            TaskState::Success(result) => {
                tracing::info!(
                    "Task {}[{}] succeeded in {elapsed}s: {}",
                    message.task,
                    message.id,
                    truncate(&result, MAX_LOGGED_RESULT)
                );
                if !self.ignore_result {
                    match TaskMeta::success(&message.id, &result) {
                        Ok(meta) => self.store(meta).await,
                        Err(err) => {
                            tracing::error!(
                                "Task {}[{}] returned an unstorable result: {err}",
                                message.task,
                                message.id
                            );
                        }
                    }
                }
                Settle::Ack
            }
            TaskState::Failure(exception) => {
                self.store_failure(&exception).await;
                Settle::Ack
            }
            TaskState::Retry(retry) => {
                let max_retries = retry.max_retries.or(self.options.max_retries).unwrap_or(3);
                if !self.options.retry_forever && message.retries >= max_retries {
                    let exception = CeleryException::max_retries_exceeded(
                        &message.task,
                        &message.id,
                        max_retries,
                    );
                    self.store_failure(&exception).await;
                    return Settle::Ack;
                }
                let eta = retry
                    .eta
                    .as_deref()
                    .and_then(Timestamp::parse)
                    .unwrap_or_else(|| {
                        let seconds = retry
                            .countdown
                            .or(self.options.default_retry_delay)
                            .filter(|s| s.is_finite() && *s >= 0.0)
                            .unwrap_or(180.0);
                        Timestamp::from_unix_micros(now_micros() + (seconds * 1e6) as i64)
                    });
                let outgoing = self.retry_message(eta.clone());
                let info = &self.delivery.properties.delivery_info;
                let published = self
                    .shared
                    .consumer
                    .broker()
                    .publish(&info.exchange, routing_key(self.delivery), &outgoing)
                    .await;
                if let Err(err) = published {
                    tracing::error!(
                        "Task {}[{}] retry could not be published: {err}",
                        message.task,
                        message.id
                    );
                    return Settle::Reject { requeue: true };
                }
                let exc = retry.exc.as_ref().map(|exc| {
                    let args = match serde_json::from_str::<Value>(&exc.exc_args) {
                        Ok(Value::Array(args)) => args,
                        _ => vec![Value::from(exc.message.clone())],
                    };
                    (exc, args)
                });
                tracing::info!(
                    "Task {}[{}] retry: Retry in {}",
                    message.task,
                    message.id,
                    eta
                );
                if !self.ignore_result {
                    let meta = match &exc {
                        Some((exc, args)) => TaskMeta::retry(
                            &message.id,
                            Some(ExceptionInfo {
                                exc_type: &exc.exc_type,
                                exc_module: &exc.exc_module,
                                exc_message: args,
                            }),
                            exc.traceback.as_deref(),
                        ),
                        None => TaskMeta::retry(&message.id, None, None),
                    };
                    self.store(meta).await;
                }
                Settle::Ack
            }
            TaskState::Rejected(reject) => {
                tracing::warn!(
                    "Task {}[{}] rejected (requeue={}): {}",
                    message.task,
                    message.id,
                    reject.requeue,
                    reject.reason.as_deref().unwrap_or("no reason given")
                );
                if !reject.requeue && !self.ignore_result {
                    let args = [
                        reject.reason.clone().map_or(Value::Null, Value::from),
                        Value::from(false),
                    ];
                    let meta = TaskMeta::failure(
                        &message.id,
                        ExceptionInfo {
                            exc_type: "Reject",
                            exc_module: "celery.exceptions",
                            exc_message: &args,
                        },
                        None,
                    );
                    self.store(meta).await;
                }
                Settle::Reject {
                    requeue: reject.requeue,
                }
            }
            TaskState::Ignored => Settle::Ack,
        }
    }

    async fn store_failure(&self, exception: &CeleryException) {
        tracing::error!(
            "Task {}[{}] raised unexpected: {}({})",
            self.message.task,
            self.message.id,
            exception.exc_type,
            python_args(&exception.exc_message)
        );
        if !self.ignore_result {
            let meta = TaskMeta::failure(
                &self.message.id,
                ExceptionInfo {
                    exc_type: &exception.exc_type,
                    exc_module: &exception.exc_module,
                    exc_message: &exception.exc_message,
                },
                exception.traceback.as_deref(),
            );
            self.store(meta).await;
        }
    }

    /// The copy of the message that a retry publishes.
    fn retry_message(&self, eta: Timestamp) -> Outgoing {
        let m = self.message;
        let task = OutgoingTask {
            id: m.id.clone(),
            task: m.task.clone(),
            args: m.args.clone(),
            kwargs: m.kwargs.clone(),
            eta: Some(eta),
            expires: m.expires.clone(),
            retries: m.retries + 1,
            timelimit: m.timelimit,
            root_id: m.root_id.clone(),
            parent_id: m.parent_id.clone(),
            group: m.group.clone(),
            group_index: m.group_index,
            shadow: m.shadow.clone(),
            origin: Some(self.shared.config.nodename.clone()),
            ignore_result: m.ignore_result,
            replaced_task_nesting: m.replaced_task_nesting,
            stamped_headers: m.stamped_headers.clone(),
            stamps: m.stamps.clone(),
            embed: m.embed.clone(),
            reply_to: m.reply_to.clone(),
            priority: m.priority,
            extra_headers: m.extra_headers.clone(),
        };
        Outgoing::from(task.encode())
    }

    fn request(&self) -> Request {
        let m = self.message;
        let info = &self.delivery.properties.delivery_info;
        Request {
            id: m.id.clone(),
            task: m.task.clone(),
            retries: m.retries,
            root_id: m.root_id.clone(),
            parent_id: m.parent_id.clone(),
            group: m.group.clone(),
            group_index: m.group_index.and_then(|i| u32::try_from(i).ok()),
            eta: m.eta.as_ref().map(|t| t.as_str().to_owned()),
            expires: m.expires.as_ref().map(|t| t.as_str().to_owned()),
            hostname: self.shared.config.nodename.clone(),
            origin: m.origin.clone(),
            correlation_id: m.correlation_id.clone(),
            reply_to: m.reply_to.clone(),
            delivery_info: DeliveryInfo {
                exchange: info.exchange.clone(),
                routing_key: routing_key(self.delivery).to_owned(),
                priority: self.delivery.properties.priority,
                redelivered: self.delivery.redelivered,
            },
            is_eager: false,
        }
    }
}

/// The routing key of a delivery, else the queue it came from.
fn routing_key(delivery: &Delivery) -> &str {
    let key = &delivery.properties.delivery_info.routing_key;
    if key.is_empty() { &delivery.queue } else { key }
}

fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

fn micros_until(unix_micros: i64) -> Duration {
    let delta = unix_micros.saturating_sub(now_micros());
    Duration::from_micros(u64::try_from(delta).unwrap_or(0))
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// `exc.args` roughly as Python's repr writes them inside `Type(...)`.
fn python_args(args: &[Value]) -> String {
    args.iter()
        .map(|arg| match arg {
            Value::String(text) => format!("'{}'", text.replace('\'', "\\'")),
            Value::Null => "None".to_owned(),
            Value::Bool(true) => "True".to_owned(),
            Value::Bool(false) => "False".to_owned(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
