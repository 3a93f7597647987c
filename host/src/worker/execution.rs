//! Running one accepted task: the sandbox call, the Celery state its outcome leads to, the
//! stored result, and what should happen to its message afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::backend::{BackendError, ExceptionInfo, ExtendedFields, ResultBackend, TaskMeta};
use crate::broker::{Broker, Delivery};
use crate::protocol::TaskMessage;
use crate::sandbox::{Abort, Invocation, KillSwitch, Outcome, Request, RetryRequest, TaskOptions};

use super::canvas::{self, Target};
use super::limits::limit_as_given;
use super::log_format::truncate;
use super::reconnect::retrying;
use super::retry::{max_retries, retry_eta, retry_message, retry_when};
use super::run_loop::WorkerContext;
use super::state_updates::StateUpdates;
use super::{CeleryException, HeaderTimeLimits, TaskState, TracingTaskEvents, resolve_limits};
use crate::protocol::python_repr::python_repr;

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
    /// Not run because the worker is stopping: back where the next consumer takes it first.
    GiveBack,
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

/// `meta` as Celery stores any state of a request (`_get_result_meta`): with the message's
/// `group_id` and `parent_id`, and with `result_extended` the request's name, arguments,
/// worker, retries and queue.
pub fn with_request<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    message: &TaskMessage,
    delivery: &Delivery,
    meta: TaskMeta,
) -> TaskMeta {
    let meta = canvas::with_request_ids(meta, message);
    if worker.config.result_extended {
        meta.with_extended(extended_fields(worker, message, delivery))
    } else {
        meta
    }
}

fn extended_fields<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    message: &TaskMessage,
    delivery: &Delivery,
) -> ExtendedFields {
    ExtendedFields {
        name: message.task.clone(),
        args: Value::Array(message.args.clone()),
        kwargs: Value::Object(message.kwargs.clone()),
        worker: worker.config.nodename.clone(),
        retries: message.retries,
        queue: routing_key(delivery).to_owned(),
    }
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
        let meta = with_request(self.worker, self.message, self.delivery, meta);
        store(&*self.worker.backend, &meta).await
    }

    fn extended(&self) -> ExtendedFields {
        extended_fields(self.worker, self.message, self.delivery)
    }

    /// Runs the task, stores what it reported, and says what to do with its message.
    /// Flipping `kill` (a revoke with terminate) stops it at once.
    pub async fn execute(&self, target: &Target, kill: &KillSwitch) -> Settle {
        let message = self.message;
        let prepared = match target {
            Target::Component(component) => &component.prepared,
            Target::Builtin(builtin) => {
                let started = Instant::now();
                let state = canvas::run_builtin(*builtin, self).await;
                return self
                    .report(state, started.elapsed())
                    .await
                    .unwrap_or_else(|err| settle_unstored(&err));
            }
        };
        let (events, updates) = StateUpdates::start(
            Arc::clone(&self.worker.backend),
            TracingTaskEvents {
                task_name: message.task.clone(),
                task_id: message.id.clone(),
            },
            self.worker.config.result_extended.then(|| self.extended()),
        );
        let header = self.header_time_limits();
        let limits = resolve_limits(&self.worker.config.limits, self.options, header);
        let invocation = Invocation {
            request: self.request(),
            args_json: message.args_json.clone(),
            kwargs_json: message.kwargs_json.clone(),
            limits,
            events,
        };
        let started = Instant::now();
        let report = self
            .worker
            .sandbox
            .run_killable(prepared, invocation, kill)
            .await;
        let elapsed = started.elapsed();
        updates.finish().await;

        if let Ok(report) = &report {
            self.worker.monitor.task_ran(&message.task, elapsed, report);
        }
        let stored = match report.map(|report| report.outcome) {
            Ok(Outcome::Aborted(Abort::TimeLimit(limit))) => {
                let given = limit_as_given(header.hard, self.options.time_limit, limit);
                self.hard_time_limit_exceeded(given).await
            }
            Ok(Outcome::Aborted(Abort::SoftTimeLimit(limit))) => {
                let given = limit_as_given(header.soft, self.options.soft_time_limit, limit);
                self.soft_time_limit_exceeded(given).await
            }
            Ok(Outcome::Aborted(Abort::Terminated)) => self.terminated().await,
            Ok(outcome) => self.report(super::task_state(&outcome), elapsed).await,
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
        stored.unwrap_or_else(|err| settle_unstored(&err))
    }

    /// Celery's pool killed the process: the log lines of `on_timeout` and FAILURE with
    /// `TimeLimitExceeded(limit)`, no traceback; acked (`acks_on_failure_or_timeout`).
    async fn hard_time_limit_exceeded(&self, limit: Value) -> Result<Settle, BackendError> {
        let message = self.message;
        tracing::error!(
            "Task handler raised error: TimeLimitExceeded({})",
            python_repr(&limit)
        );
        tracing::error!(
            "Hard time limit ({}s) exceeded for {}[{}]",
            python_repr(&limit),
            message.task,
            message.id
        );
        self.write_failure(&CeleryException::time_limit_exceeded(limit))
            .await?;
        Ok(Settle::Ack)
    }

    /// `SoftTimeLimitExceeded` raised in the task and not handled there: an ordinary
    /// failure, announced by the main process's warning.
    async fn soft_time_limit_exceeded(&self, limit: Value) -> Result<Settle, BackendError> {
        tracing::warn!(
            "Soft time limit ({}s) exceeded for {}[{}]",
            python_repr(&limit),
            self.message.task,
            self.message.id
        );
        self.store_failure(&CeleryException::soft_time_limit_exceeded())
            .await?;
        Ok(Settle::Ack)
    }

    /// A revoke with terminate ended the task: REVOKED ("terminated"), message acked, as
    /// Celery's `Request.terminate` announces it.
    async fn terminated(&self) -> Result<Settle, BackendError> {
        // Every signal stops a guest the same way; Celery's default is SIGTERM.
        const SIGTERM: i32 = 15;
        self.worker.monitor.task_revoked(
            &self.message.id,
            &self.message.task,
            false,
            Some(SIGTERM),
        );
        if !self.ignore_result {
            let exception = CeleryException::task_revoked("terminated");
            let meta = TaskMeta::revoked(
                &self.message.id,
                ExceptionInfo {
                    exc_type: &exception.exc_type,
                    exc_module: &exception.exc_module,
                    exc_message: &exception.exc_message,
                },
            );
            self.store(meta).await?;
        }
        Ok(Settle::Ack)
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
                // Callbacks and the next chain step go out before SUCCESS is stored, so
                // the stored children list them (spec §8.1).
                let children = match canvas::after_success(self, &result).await {
                    Ok(children) => children,
                    Err(err) => {
                        tracing::error!(
                            "Task {}[{}] succeeded, but its callbacks could not be sent: {err}",
                            message.task,
                            message.id
                        );
                        self.store_failure(&err.exception()).await?;
                        return Ok(Settle::Ack);
                    }
                };
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
                        Ok(meta) => self.store(meta.with_children(&children)).await?,
                        Err(err) => tracing::error!(
                            "Task {}[{}] returned an unstorable result: {err}",
                            message.task,
                            message.id
                        ),
                    }
                }
                canvas::chord_part_succeeded(self, &result).await;
                Ok(Settle::Ack)
            }
            TaskState::Failure(exception) => {
                self.store_failure(&exception).await?;
                Ok(Settle::Ack)
            }
            TaskState::Retry(retry) => self.retry(&retry).await,
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

    /// Celery's `Task.retry` after the task ended with a Retry: past the retry limit the
    /// task fails (with the given exception, else MaxRetriesExceededError); otherwise the
    /// message is republished and RETRY stored.
    async fn retry(&self, retry: &RetryRequest) -> Result<Settle, BackendError> {
        let message = self.message;
        let exc = retry.exc.as_ref().map(CeleryException::from_guest);
        if let Some(limit) = max_retries(retry, self.options)
            && message.retries >= limit
        {
            let exception = exc.unwrap_or_else(|| {
                CeleryException::max_retries_exceeded(
                    &message.task,
                    &message.id,
                    &message.args,
                    &message.kwargs,
                )
            });
            self.store_failure(&exception).await?;
            return Ok(Settle::Ack);
        }
        let eta = retry_eta(retry, self.options, super::clock::now_micros());
        let eta_text = eta.to_string();
        let outgoing = retry_message(message, eta, &self.worker.config.nodename);
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
        let reason = match &exc {
            Some(exc) => format!("Retry {}: {}", retry_when(retry, self.options), exc.repr()),
            None => format!("Retry {}", retry_when(retry, self.options)),
        };
        tracing::info!("Task {}[{}] retry: {reason}", message.task, message.id);
        self.worker
            .monitor
            .task_retried(&message.id, &message.task, exc.as_ref(), &eta_text);
        if !self.ignore_result {
            let meta = match &exc {
                Some(exc) => TaskMeta::retry(
                    &message.id,
                    Some(ExceptionInfo {
                        exc_type: &exc.exc_type,
                        exc_module: &exc.exc_module,
                        exc_message: &exc.exc_message,
                    }),
                    exc.traceback.as_deref(),
                ),
                None => TaskMeta::retry(&message.id, None, None),
            };
            // Celery's quirk: the republished message registers as a child of the task.
            let meta = meta.with_children(&json!([[[message.id, null], null]]));
            // The retry is published: a lost RETRY state must not run it twice.
            let _ = self.store(meta).await;
        }
        Ok(Settle::Ack)
    }

    /// Logs the failure as Celery does and stores it.
    async fn store_failure(&self, exception: &CeleryException) -> Result<(), BackendError> {
        tracing::error!(
            "Task {}[{}] raised unexpected: {}",
            self.message.task,
            self.message.id,
            exception.repr()
        );
        self.write_failure(exception).await
    }

    /// Stores FAILURE with `exception` unless results are ignored, then carries out what
    /// the failure means for the canvas (chain steps, errbacks, chord).
    async fn write_failure(&self, exception: &CeleryException) -> Result<(), BackendError> {
        self.worker
            .monitor
            .task_failed(&self.message.id, &self.message.task, exception);
        let store_errors = !self.ignore_result;
        if store_errors {
            let meta = TaskMeta::failure(
                &self.message.id,
                ExceptionInfo {
                    exc_type: &exception.exc_type,
                    exc_module: &exception.exc_module,
                    exc_message: &exception.exc_message,
                },
                exception.traceback.as_deref(),
            );
            self.store(meta).await?;
        }
        canvas::after_failure(self, exception, store_errors).await;
        Ok(())
    }

    /// Celery's `self.request` for this run.
    pub fn request(&self) -> Request {
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
            inline_errback: false,
        }
    }
}

/// A final state the backend did not take: with a late ack the message goes back so the
/// task runs again once the backend is reachable (kombu's connection errors).
fn settle_unstored(err: &BackendError) -> Settle {
    if err.is_connection() {
        Settle::Reject { requeue: true }
    } else {
        Settle::Ack
    }
}

/// The routing key of a delivery, else the queue it came from.
pub(super) fn routing_key(delivery: &Delivery) -> &str {
    let key = &delivery.properties.delivery_info.routing_key;
    if key.is_empty() { &delivery.queue } else { key }
}
