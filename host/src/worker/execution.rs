//! Running one accepted task: the sandbox call, the Celery state its outcome leads to, the
//! stored result, and what should happen to its message afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backend::{BackendError, ExceptionInfo, ExtendedFields, ResultBackend, TaskMeta};
use crate::broker::{Broker, Delivery};
use crate::protocol::TaskMessage;
use crate::sandbox::{Invocation, Prepared, Request, TaskOptions};

use super::log_format::{python_args, truncate};
use super::reconnect::retrying;
use super::retry::{max_retries, retry_eta, retry_message};
use super::run_loop::WorkerContext;
use super::state_updates::StateUpdates;
use super::{CeleryException, HeaderTimeLimits, TaskState, TracingTaskEvents, resolve_limits};

/// Longest result text written in a `succeeded` log line.
const MAX_LOGGED_RESULT: usize = 1024;

/// What to do with a late-acked message once its task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Done: ack it.
    Ack,
    /// Reject it, back to the queue or dropped.
    Reject {
        /// Back to the queue.
        requeue: bool,
    },
}

/// Stores `meta`, riding out a dropped connection, and logs a failure; the error is
/// returned so a late-acked message can stay in the queue when its final state could not
/// be written.
pub async fn store<R: ResultBackend>(backend: &R, meta: &TaskMeta) -> Result<(), BackendError> {
    let what = || {
        format!(
            "storing {} for task {}",
            meta.state().as_str(),
            meta.task_id()
        )
    };
    let stored = retrying(what, || backend.store(meta)).await;
    stored.map(drop).inspect_err(|err| {
        tracing::error!(
            "cannot store {} for task {}: {err}",
            meta.state().as_str(),
            meta.task_id()
        );
    })
}

/// One accepted task and everything needed to run it and report on it.
pub struct TaskRun<'a, B: Broker, R: ResultBackend> {
    /// The worker's shared state.
    pub worker: &'a WorkerContext<B, R>,
    /// The decoded message.
    pub message: &'a TaskMessage,
    /// The delivery that carried it.
    pub delivery: &'a Delivery,
    /// The task's declared options.
    pub options: &'a TaskOptions,
    /// Whether results are skipped (header, else the task's option).
    pub ignore_result: bool,
}

impl<B: Broker, R: ResultBackend + 'static> TaskRun<'_, B, R> {
    /// Stores `meta` (with the extended fields when configured).
    pub async fn store(&self, meta: TaskMeta) -> Result<(), BackendError> {
        let meta = if self.worker.config.result_extended {
            meta.with_extended(self.extended())
        } else {
            meta
        };
        store(&*self.worker.backend, &meta).await
    }

    fn extended(&self) -> ExtendedFields {
        ExtendedFields {
            name: self.message.task.clone(),
            args: Value::Array(self.message.args.clone()),
            kwargs: Value::Object(self.message.kwargs.clone()),
            worker: self.worker.config.nodename.clone(),
            retries: self.message.retries,
            queue: routing_key(self.delivery).to_owned(),
        }
    }

    /// Runs the task, stores what it reported, and says what to do with its message.
    pub async fn execute(&self, prepared: &Prepared) -> Settle {
        let message = self.message;
        let (events, updates) = StateUpdates::start(
            Arc::clone(&self.worker.backend),
            TracingTaskEvents {
                task_name: message.task.clone(),
                task_id: message.id.clone(),
            },
            self.worker.config.result_extended.then(|| self.extended()),
        );
        let limits = resolve_limits(
            &self.worker.config.limits,
            self.options,
            self.header_time_limits(),
        );
        let invocation = Invocation {
            request: self.request(),
            args_json: message.args_json.clone(),
            kwargs_json: message.kwargs_json.clone(),
            limits,
            events,
        };
        let started = Instant::now();
        let report = self.worker.sandbox.run(prepared, invocation).await;
        let elapsed = started.elapsed();
        updates.finish().await;

        let stored = match report {
            Ok(report) => {
                self.worker
                    .monitor
                    .task_ran(&message.task, elapsed, report.peak_memory_bytes);
                self.report(super::task_state(&report.outcome), elapsed)
                    .await
            }
            Err(err) => {
                tracing::error!("Task {}[{}] could not run: {err}", message.task, message.id);
                let exception = CeleryException {
                    exc_type: "WorkerLostError".into(),
                    exc_module: "billiard.exceptions".into(),
                    exc_message: vec![Value::from(err.to_string())],
                    message: err.to_string(),
                    traceback: None,
                };
                self.store_failure(&exception).await.map(|()| Settle::Ack)
            }
        };
        // A final state the backend did not take: with a late ack the message goes back so
        // the task runs again once the backend is reachable (kombu's connection errors).
        stored.unwrap_or_else(|err| {
            if err.is_connection() {
                Settle::Reject { requeue: true }
            } else {
                Settle::Ack
            }
        })
    }

    /// The message's time limits; when it has none, those set by remote `time_limit`.
    fn header_time_limits(&self) -> HeaderTimeLimits {
        let message = self.message;
        let remote = self.worker.monitor.overrides.time(&message.task);
        match (message.timelimit.soft, message.timelimit.hard, remote) {
            (None, None, Some((soft, hard))) => HeaderTimeLimits { hard, soft },
            (soft, hard, _) => HeaderTimeLimits { hard, soft },
        }
    }

    /// Logs and stores the state the task ended in.
    async fn report(&self, state: TaskState, elapsed: Duration) -> Result<Settle, BackendError> {
        let message = self.message;
        match state {
            TaskState::Success(result) => {
                tracing::info!(
                    "Task {}[{}] succeeded in {}s: {}",
                    message.task,
                    message.id,
                    elapsed.as_secs_f64(),
                    truncate(&result, MAX_LOGGED_RESULT)
                );
                self.worker
                    .monitor
                    .task_succeeded(&message.id, &message.task, &result, elapsed);
                if !self.ignore_result {
                    match TaskMeta::success(&message.id, &result) {
                        Ok(meta) => self.store(meta).await?,
                        Err(err) => tracing::error!(
                            "Task {}[{}] returned an unstorable result: {err}",
                            message.task,
                            message.id
                        ),
                    }
                }
                Ok(Settle::Ack)
            }
            TaskState::Failure(exception) => {
                self.store_failure(&exception).await?;
                Ok(Settle::Ack)
            }
            TaskState::Retry(retry) => {
                if let Some(limit) = max_retries(&retry, self.options)
                    && message.retries >= limit
                {
                    let exception =
                        CeleryException::max_retries_exceeded(&message.task, &message.id, limit);
                    self.store_failure(&exception).await?;
                    return Ok(Settle::Ack);
                }
                let eta = retry_eta(&retry, self.options, super::clock::now_micros());
                let outgoing = retry_message(message, eta.clone(), &self.worker.config.nodename);
                let exchange = &self.delivery.properties.delivery_info.exchange;
                let published = self
                    .worker
                    .consumer
                    .broker()
                    .publish(exchange, routing_key(self.delivery), &outgoing)
                    .await;
                if let Err(err) = published {
                    tracing::error!(
                        "Task {}[{}] retry could not be published: {err}",
                        message.task,
                        message.id
                    );
                    return Ok(Settle::Reject { requeue: true });
                }
                tracing::info!(
                    "Task {}[{}] retry: Retry in {eta}",
                    message.task,
                    message.id
                );
                let original = retry.exc.as_ref().map(CeleryException::from_guest);
                self.worker.monitor.task_retried(
                    &message.id,
                    &message.task,
                    original.as_ref(),
                    &eta.to_string(),
                );
                if !self.ignore_result {
                    let meta = match &retry.exc {
                        Some(exc) => {
                            let args = match serde_json::from_str::<Value>(&exc.exc_args) {
                                Ok(Value::Array(args)) => args,
                                _ => vec![Value::from(exc.message.clone())],
                            };
                            TaskMeta::retry(
                                &message.id,
                                Some(ExceptionInfo {
                                    exc_type: &exc.exc_type,
                                    exc_module: &exc.exc_module,
                                    exc_message: &args,
                                }),
                                exc.traceback.as_deref(),
                            )
                        }
                        None => TaskMeta::retry(&message.id, None, None),
                    };
                    // The retry is published: a lost RETRY state must not run it twice.
                    let _ = self.store(meta).await;
                }
                Ok(Settle::Ack)
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
                    self.store(meta).await?;
                }
                Ok(Settle::Reject {
                    requeue: reject.requeue,
                })
            }
            TaskState::Ignored => Ok(Settle::Ack),
        }
    }

    async fn store_failure(&self, exception: &CeleryException) -> Result<(), BackendError> {
        tracing::error!(
            "Task {}[{}] raised unexpected: {}({})",
            self.message.task,
            self.message.id,
            exception.exc_type,
            python_args(&exception.exc_message)
        );
        self.worker
            .monitor
            .task_failed(&self.message.id, &self.message.task, exception);
        if self.ignore_result {
            return Ok(());
        }
        let meta = TaskMeta::failure(
            &self.message.id,
            ExceptionInfo {
                exc_type: &exception.exc_type,
                exc_module: &exception.exc_module,
                exc_message: &exception.exc_message,
            },
            exception.traceback.as_deref(),
        );
        self.store(meta).await
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
            hostname: self.worker.config.nodename.clone(),
            origin: m.origin.clone(),
            correlation_id: m.correlation_id.clone(),
            reply_to: m.reply_to.clone(),
            delivery_info: crate::sandbox::DeliveryInfo {
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
