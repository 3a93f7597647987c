//! What a task returns instead of a value: [`TaskError`], the [`Exception`] it raises and the
//! [`RetryOptions`] of a retry. This module owns their conversion into the WIT `task-error`;
//! it does not decide *whether* a retry is allowed (that is `retry`).

use std::fmt;

use serde_json::Value;

use crate::bindings::celeriac::task::types as wit;
use crate::exceptions;

/// `Result<T, TaskError>`, the usual return type of a fallible task.
pub type TaskResult<T> = Result<T, TaskError>;

/// A Python-style exception, encoded the way Celery's result backend stores one
/// (`exc_type`, `exc_module`, `exc_message`).
///
/// The Python client re-raises it as `exc_module.exc_type(*args)` when that class exists on
/// its side (`builtins.ValueError` always does), else as a generated subclass of
/// `Exception` with the same name.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Exception {
    /// The class `__qualname__`, e.g. `ValueError`.
    pub exc_type: String,
    /// The class `__module__`, e.g. `builtins`.
    pub exc_module: String,
    /// `exc.args`: what the client passes to the class when it re-creates the exception.
    pub args: Vec<Value>,
    /// `str(exc)`, used in log lines.
    pub message: String,
    /// Traceback text, if there is one worth storing.
    pub traceback: Option<String>,
}

impl Exception {
    /// An exception with a single message argument, e.g.
    /// `Exception::new("ValueError", "builtins", "bad input")`.
    pub fn new(
        exc_type: impl Into<String>,
        exc_module: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        Exception {
            exc_type: exc_type.into(),
            exc_module: exc_module.into(),
            args: vec![Value::String(message.clone())],
            message,
            traceback: None,
        }
    }

    /// An exception with arbitrary `args`; the message is what Python's `str(exc)` would
    /// print for them (the lone argument, or the tuple's repr).
    pub fn with_args(
        exc_type: impl Into<String>,
        exc_module: impl Into<String>,
        args: Vec<Value>,
    ) -> Self {
        let message = exceptions::python_str_of_args(&args);
        Exception {
            exc_type: exc_type.into(),
            exc_module: exc_module.into(),
            args,
            message,
            traceback: None,
        }
    }

    /// A `builtins` exception with one message argument, e.g. `Exception::builtin("ValueError", msg)`.
    pub fn builtin(exc_type: impl Into<String>, message: impl Into<String>) -> Self {
        Exception::new(exc_type, "builtins", message)
    }

    /// The `OSError` subclass Python would raise for this I/O error
    /// (`FileNotFoundError`, `PermissionError`, …), with `filename` in the message as
    /// Python puts it there: `[Errno 2] No such file or directory: 'x.txt'`.
    pub fn from_io(err: &std::io::Error, filename: Option<&str>) -> Self {
        exceptions::from_io(err, filename)
    }

    /// Attaches traceback text, stored with the FAILURE state.
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.traceback = Some(traceback.into());
        self
    }

    pub(crate) fn into_wit(self) -> wit::Exception {
        wit::Exception {
            exc_type: self.exc_type,
            exc_module: self.exc_module,
            // A Vec<Value> always serializes; the fallback only keeps this total.
            exc_args: serde_json::to_string(&self.args).unwrap_or_else(|_| "[]".to_owned()),
            message: self.message,
            traceback: self.traceback,
        }
    }
}

impl fmt::Display for Exception {
    /// The last line of a Python traceback: `ValueError: bad input`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            f.write_str(&self.exc_type)
        } else {
            write!(f, "{}: {}", self.exc_type, self.message)
        }
    }
}

impl std::error::Error for Exception {}

impl From<std::io::Error> for Exception {
    fn from(err: std::io::Error) -> Self {
        exceptions::from_io(&err, None)
    }
}

/// What `self.retry(...)` asks for; every field left `None` means "the task's default".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetryOptions {
    /// Seconds until the retry runs; `None` = the task's `default_retry_delay` (180 s unless set).
    pub countdown: Option<f64>,
    /// An absolute ISO 8601 time; wins over `countdown`.
    pub eta: Option<String>,
    /// Overrides the task's `max_retries` for this call.
    pub max_retries: Option<u32>,
    /// The exception that caused the retry: stored with the RETRY state, and raised as the
    /// task's failure once the retries are used up.
    pub exc: Option<Exception>,
}

/// Every way a task can end other than returning a value.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskError {
    /// The task raised an exception: stored as FAILURE, unless it matches `autoretry_for`.
    Raised(Exception),
    /// `raise Retry(...)`: the message is republished and RETRY is stored. Constructing this
    /// directly skips the `max_retries` check; [`Task::retry_with`](crate::Task::retry_with)
    /// applies it. Boxed to keep `Result<T, TaskError>` small.
    Retry(Box<RetryOptions>),
    /// `raise Reject(reason, requeue)`: the message is rejected, and requeued if asked.
    Reject {
        /// Put the message back on its queue.
        requeue: bool,
        /// Why, for the log.
        reason: Option<String>,
    },
    /// `raise Ignore()`: nothing is stored for this run.
    Ignore,
}

impl TaskError {
    /// Raises `exc_module.exc_type(message)`.
    pub fn raise(
        exc_type: impl Into<String>,
        exc_module: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        TaskError::Raised(Exception::new(exc_type, exc_module, message))
    }

    /// Raises `exc_module.exc_type(*args)`.
    pub fn raise_with_args(
        exc_type: impl Into<String>,
        exc_module: impl Into<String>,
        args: Vec<Value>,
    ) -> Self {
        TaskError::Raised(Exception::with_args(exc_type, exc_module, args))
    }

    /// Raises `ValueError(message)`.
    pub fn value_error(message: impl Into<String>) -> Self {
        TaskError::Raised(Exception::builtin("ValueError", message))
    }

    /// Raises `TypeError(message)`.
    pub fn type_error(message: impl Into<String>) -> Self {
        TaskError::Raised(Exception::builtin("TypeError", message))
    }

    /// Raises `RuntimeError(message)`.
    pub fn runtime_error(message: impl Into<String>) -> Self {
        TaskError::Raised(Exception::builtin("RuntimeError", message))
    }

    /// Raises `KeyError(key)`; like Python, its message is the key's repr (`'k'`).
    pub fn key_error(key: impl Into<String>) -> Self {
        let key = key.into();
        let mut exc = Exception::builtin("KeyError", key.clone());
        exc.message = exceptions::python_repr(&Value::String(key));
        TaskError::Raised(exc)
    }

    /// A plain retry (`raise Retry(...)`), without the `max_retries` check that
    /// [`Task::retry_with`](crate::Task::retry_with) makes.
    pub fn retry(options: RetryOptions) -> Self {
        TaskError::Retry(Box::new(options))
    }

    /// `raise Reject(reason, requeue=requeue)`.
    pub fn reject(requeue: bool, reason: impl Into<String>) -> Self {
        TaskError::Reject {
            requeue,
            reason: Some(reason.into()),
        }
    }

    /// `raise Ignore()`.
    pub fn ignore() -> Self {
        TaskError::Ignore
    }

    /// The `OSError` subclass Python would raise for this I/O error, naming `filename`.
    pub fn from_io(err: &std::io::Error, filename: &str) -> Self {
        TaskError::Raised(exceptions::from_io(err, Some(filename)))
    }

    pub(crate) fn into_wit(self) -> wit::TaskError {
        match self {
            TaskError::Raised(exc) => wit::TaskError::Raised(exc.into_wit()),
            TaskError::Retry(retry) => wit::TaskError::Retry(wit::RetryRequest {
                countdown: retry.countdown,
                eta: retry.eta,
                max_retries: retry.max_retries,
                exc: retry.exc.map(Exception::into_wit),
            }),
            TaskError::Reject { requeue, reason } => {
                wit::TaskError::Reject(wit::RejectRequest { reason, requeue })
            }
            TaskError::Ignore => wit::TaskError::Ignore,
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Raised(exc) => exc.fmt(f),
            TaskError::Retry(retry) => {
                match (&retry.eta, retry.countdown) {
                    (Some(eta), _) => write!(f, "Retry at {eta}")?,
                    (None, Some(countdown)) => write!(f, "Retry in {countdown}s")?,
                    (None, None) => f.write_str("Retry")?,
                }
                match &retry.exc {
                    Some(exc) => write!(f, ": {exc}"),
                    None => Ok(()),
                }
            }
            TaskError::Reject { requeue, reason } => write!(
                f,
                "Reject (requeue={requeue}): {}",
                reason.as_deref().unwrap_or("no reason given")
            ),
            TaskError::Ignore => f.write_str("Ignore"),
        }
    }
}

impl std::error::Error for TaskError {}

impl From<Exception> for TaskError {
    fn from(exc: Exception) -> Self {
        TaskError::Raised(exc)
    }
}

impl From<std::io::Error> for TaskError {
    /// The matching `OSError` subclass; use [`TaskError::from_io`] to name the file.
    fn from(err: std::io::Error) -> Self {
        TaskError::Raised(exceptions::from_io(&err, None))
    }
}

impl From<serde_json::Error> for TaskError {
    /// `ValueError`, as Python's `json.JSONDecodeError` is one.
    fn from(err: serde_json::Error) -> Self {
        TaskError::value_error(err.to_string())
    }
}

impl From<std::num::ParseIntError> for TaskError {
    /// `ValueError`, as Python's `int("x")` raises.
    fn from(err: std::num::ParseIntError) -> Self {
        TaskError::value_error(err.to_string())
    }
}

impl From<std::num::ParseFloatError> for TaskError {
    /// `ValueError`, as Python's `float("x")` raises.
    fn from(err: std::num::ParseFloatError) -> Self {
        TaskError::value_error(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn value_error_encodes_like_celery() {
        let wit::TaskError::Raised(exc) = TaskError::value_error("bad").into_wit() else {
            panic!("value_error must be a raised exception");
        };
        assert_eq!(exc.exc_type, "ValueError");
        assert_eq!(exc.exc_module, "builtins");
        assert_eq!(exc.exc_args, r#"["bad"]"#);
        assert_eq!(exc.message, "bad");
    }

    #[test]
    fn key_error_message_is_the_repr_of_the_key() {
        let TaskError::Raised(exc) = TaskError::key_error("k") else {
            panic!("key_error must be a raised exception");
        };
        assert_eq!(exc.args, vec![json!("k")]);
        assert_eq!(exc.message, "'k'");
        assert_eq!(exc.to_string(), "KeyError: 'k'");
    }

    #[test]
    fn with_args_message_is_python_str_of_the_tuple() {
        let exc = Exception::with_args("ValueError", "builtins", vec![json!("bad"), json!(42)]);
        assert_eq!(exc.message, "('bad', 42)");
        let exc = Exception::with_args("ValueError", "builtins", vec![]);
        assert_eq!(exc.to_string(), "ValueError");
    }

    #[test]
    fn retry_converts_with_its_exception() {
        let err = TaskError::retry(RetryOptions {
            countdown: Some(1.5),
            max_retries: Some(7),
            exc: Some(Exception::builtin("KeyError", "k")),
            ..Default::default()
        });
        assert_eq!(err.to_string(), "Retry in 1.5s: KeyError: k");
        let wit::TaskError::Retry(retry) = err.into_wit() else {
            panic!("retry must stay a retry");
        };
        assert_eq!(retry.countdown, Some(1.5));
        assert_eq!(retry.eta, None);
        assert_eq!(retry.max_retries, Some(7));
        assert_eq!(retry.exc.map(|e| e.exc_type), Some("KeyError".to_owned()));
    }

    #[test]
    fn reject_and_ignore_convert() {
        assert_eq!(
            TaskError::reject(true, "later").into_wit(),
            wit::TaskError::Reject(wit::RejectRequest {
                reason: Some("later".to_owned()),
                requeue: true
            })
        );
        assert_eq!(TaskError::ignore().into_wit(), wit::TaskError::Ignore);
    }

    #[test]
    fn parse_errors_become_value_errors() {
        let err: TaskError = "x".parse::<i32>().unwrap_err().into();
        let TaskError::Raised(exc) = err else {
            panic!("a parse error must be raised");
        };
        assert_eq!(exc.exc_type, "ValueError");
    }
}
