//! [`Task`]: what a running task sees of itself — Celery's `self` in a bound task. It owns
//! the request and the calls into the host's `context` import (log, update_state, time
//! left); the retry rules themselves live in `retry`.

use std::time::Duration;

use serde::Serialize;

use crate::bindings::celeriac::task::context;
use crate::bindings::celeriac::task::types::{LogLevel, Request};
use crate::error::{RetryOptions, TaskError};
use crate::options::TaskSpec;
use crate::retry::{self, RetryContext};

/// The running task: Celery's `self` in a task declared with `bind=True`.
///
/// A task function receives it by declaring `task: &Task` as its first parameter.
#[derive(Debug)]
pub struct Task {
    request: Request,
    spec: &'static TaskSpec,
    /// The call's `args` and `kwargs` JSON as received, for `MaxRetriesExceededError`.
    args: String,
    kwargs: String,
}

impl Task {
    pub(crate) fn new(
        request: Request,
        spec: &'static TaskSpec,
        args: String,
        kwargs: String,
    ) -> Self {
        Task {
            request,
            spec,
            args,
            kwargs,
        }
    }

    /// Celery's `self.request`: id, retries, parent/root ids, delivery info, ….
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The task id (`self.request.id`).
    pub fn id(&self) -> &str {
        &self.request.id
    }

    /// The registered Celery name (`self.name`).
    pub fn name(&self) -> &str {
        self.spec.name
    }

    /// How many times this task has been retried so far (`self.request.retries`).
    pub fn retries(&self) -> u32 {
        self.request.retries
    }

    /// The `max_retries` in effect for a retry without a per-call override; `None` means
    /// unlimited.
    pub fn max_retries(&self) -> Option<u32> {
        retry::effective_max_retries(None, &self.spec.options)
    }

    /// Writes a log line through the host, tagged with this task's id and name. (Anything
    /// printed to stdout or stderr is logged too, without a level.)
    pub fn log(&self, level: LogLevel, message: impl AsRef<str>) {
        context::log(level, message.as_ref());
    }

    /// Logs at DEBUG.
    pub fn debug(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Debug, message);
    }

    /// Logs at INFO.
    pub fn info(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Info, message);
    }

    /// Logs at WARNING.
    pub fn warning(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Warning, message);
    }

    /// Logs at ERROR.
    pub fn error(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Error, message);
    }

    /// Logs at CRITICAL.
    pub fn critical(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Critical, message);
    }

    /// Celery's `self.update_state(state=state, meta=meta)`: stores a custom state (e.g.
    /// `PROGRESS`) with `meta` as its result. Fails only if `meta` cannot be serialized to
    /// JSON (`kombu.exceptions.EncodeError`).
    pub fn update_state(&self, state: &str, meta: impl Serialize) -> Result<(), TaskError> {
        let meta = crate::dispatch::to_json(&meta)?;
        context::update_state(state, &meta);
        Ok(())
    }

    /// Time left before the soft time limit (or the hard one when there is no soft limit);
    /// `None` when the task runs without a time limit.
    pub fn time_left(&self) -> Option<Duration> {
        context::time_left_ms().map(Duration::from_millis)
    }

    /// `self.retry()` with every option at the task's default; see [`Task::retry_with`].
    pub fn retry(&self) -> TaskError {
        self.retry_with(RetryOptions::default())
    }

    /// Celery's `self.retry(countdown=…, eta=…, max_retries=…, exc=…)`; return the result as
    /// the task's error.
    ///
    /// While `request.retries` is below the effective `max_retries` (this call's override,
    /// else the task's option, else 3; unlimited with `retry_forever`) this is a
    /// [`TaskError::Retry`]. After that it is the failure Celery raises instead: `exc`
    /// itself when given, else `celery.exceptions.MaxRetriesExceededError`.
    pub fn retry_with(&self, options: RetryOptions) -> TaskError {
        retry::decide(&self.retry_context(), options)
    }

    pub(crate) fn retry_context(&self) -> RetryContext<'_> {
        RetryContext {
            name: self.spec.name,
            id: &self.request.id,
            retries: self.request.retries,
            options: &self.spec.options,
            args: &self.args,
            kwargs: &self.kwargs,
        }
    }

    pub(crate) fn spec(&self) -> &'static TaskSpec {
        self.spec
    }

    /// The `args` and `kwargs` JSON texts as the host sent them.
    pub(crate) fn raw_arguments(&self) -> (&str, &str) {
        (&self.args, &self.kwargs)
    }
}
