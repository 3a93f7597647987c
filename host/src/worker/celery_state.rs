//! From a sandbox [`Outcome`] to the state and exception Celery would store.

use serde_json::Value;

use crate::protocol::python_repr::{python_args, python_repr, python_tuple};
use crate::sandbox::{Abort, Exception, Outcome, RejectRequest, RetryRequest, TaskError};

/// An exception as Celery's result backend encodes it (`exc_type`, `exc_module`,
/// `exc_message`), plus the text for log lines.
#[derive(Clone, Debug, PartialEq)]
pub struct CeleryException {
    /// The class `__qualname__`.
    pub exc_type: String,
    /// The class `__module__`.
    pub exc_module: String,
    /// `exc.args`, Celery's `exc_message`.
    pub exc_message: Vec<Value>,
    /// `str(exc)`.
    pub message: String,
    /// Traceback text, when the guest gave one.
    pub traceback: Option<String>,
}

impl CeleryException {
    fn new(exc_module: &str, exc_type: &str, args: Vec<Value>, message: String) -> Self {
        CeleryException {
            exc_type: exc_type.to_string(),
            exc_module: exc_module.to_string(),
            exc_message: args,
            message,
            traceback: None,
        }
    }

    /// `exc_type(message)`: an exception raised with one text argument.
    pub fn from_message(exc_module: &str, exc_type: &str, message: &str) -> Self {
        CeleryException::new(
            exc_module,
            exc_type,
            vec![Value::from(message)],
            message.to_owned(),
        )
    }

    /// `ExcType: message`, as Celery's log lines and the `run` command print it.
    pub fn summary(&self) -> String {
        if self.message.is_empty() {
            self.exc_type.clone()
        } else {
            format!("{}: {}", self.exc_type, self.message)
        }
    }

    /// `MaxRetriesExceededError`, as Celery's `Task.retry` raises it (the message names the
    /// arguments as the retried signature holds them: a tuple and a dict).
    pub fn max_retries_exceeded(
        task: &str,
        task_id: &str,
        args: &[Value],
        kwargs: &serde_json::Map<String, Value>,
    ) -> Self {
        let message = format!(
            "Can't retry {task}[{task_id}] args:{} kwargs:{}",
            python_tuple(args),
            python_repr(&Value::Object(kwargs.clone()))
        );
        CeleryException::new(
            "celery.exceptions",
            "MaxRetriesExceededError",
            vec![Value::from(message.clone())],
            message,
        )
    }

    /// billiard's `TimeLimitExceeded(limit)`, `limit` as the message or task gave it.
    pub fn time_limit_exceeded(limit: Value) -> Self {
        // billiard's __str__: "TimeLimitExceeded(2,)".
        let message = format!("TimeLimitExceeded({},)", python_repr(&limit));
        CeleryException::new(
            "billiard.exceptions",
            "TimeLimitExceeded",
            vec![limit],
            message,
        )
    }

    /// billiard's `SoftTimeLimitExceeded()`, raised without arguments.
    pub fn soft_time_limit_exceeded() -> Self {
        CeleryException::new(
            "billiard.exceptions",
            "SoftTimeLimitExceeded",
            vec![],
            "SoftTimeLimitExceeded()".to_owned(),
        )
    }

    /// `TaskRevokedError(reason)`: "revoked", "expired" or "terminated".
    pub fn task_revoked(reason: &str) -> Self {
        CeleryException::new(
            "celery.exceptions",
            "TaskRevokedError",
            vec![Value::from(reason)],
            reason.to_owned(),
        )
    }

    /// The exception's repr, as Celery logs it: `KeyError('k')`.
    pub fn repr(&self) -> String {
        format!("{}({})", self.exc_type, python_args(&self.exc_message))
    }

    /// A guest's exception, its `exc_args` decoded.
    pub fn from_guest(exception: &Exception) -> Self {
        let args = match serde_json::from_str::<Value>(&exception.exc_args) {
            Ok(Value::Array(args)) => args,
            // A guest that sends something other than a JSON array still gets its message
            // through.
            _ => vec![Value::from(exception.message.clone())],
        };
        CeleryException {
            exc_type: exception.exc_type.clone(),
            exc_module: exception.exc_module.clone(),
            exc_message: args,
            message: exception.message.clone(),
            traceback: exception.traceback.clone(),
        }
    }

    fn from_abort(abort: &Abort) -> Self {
        let text = abort.to_string();
        match abort {
            // Celery stores the limit in seconds as the only argument.
            Abort::TimeLimit(limit) => {
                CeleryException::time_limit_exceeded(Value::from(limit.as_secs_f64()))
            }
            Abort::SoftTimeLimit(_) => CeleryException::soft_time_limit_exceeded(),
            Abort::Terminated => CeleryException::task_revoked("terminated"),
            Abort::MemoryLimit { .. } => CeleryException::new(
                "builtins",
                "MemoryError",
                vec![Value::from(text.clone())],
                text,
            ),
            Abort::StackOverflow => {
                let message = "maximum recursion depth exceeded (wasm stack overflow)".to_string();
                CeleryException::new(
                    "builtins",
                    "RecursionError",
                    vec![Value::from(message.clone())],
                    message,
                )
            }
            // A trap ends the guest the way a crash ends a Python pool process.
            Abort::Trap(trap) => {
                let message = format!("Worker exited prematurely: wasm trap: {trap}");
                CeleryException::new(
                    "billiard.exceptions",
                    "WorkerLostError",
                    vec![Value::from(message.clone())],
                    message,
                )
            }
            Abort::ResultTooLarge { .. } => CeleryException::new(
                "celeriac.exceptions",
                "ResultTooLarge",
                vec![Value::from(text.clone())],
                text,
            ),
            Abort::ArgumentsTooLarge { .. } => CeleryException::new(
                "celeriac.exceptions",
                "ArgumentsTooLarge",
                vec![Value::from(text.clone())],
                text,
            ),
        }
    }
}

/// What the worker does with a finished task, in Celery's terms.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskState {
    /// SUCCESS with the result's JSON text.
    Success(String),
    /// FAILURE with the exception.
    Failure(CeleryException),
    /// RETRY: republish as asked; the exception (if any) is stored with the state.
    Retry(RetryRequest),
    /// The message is rejected (`Reject`); nothing is stored.
    Rejected(RejectRequest),
    /// `Ignore`: nothing is stored.
    Ignored,
}

/// The Celery state an outcome leads to.
pub fn task_state(outcome: &Outcome) -> TaskState {
    match outcome {
        Outcome::Returned(result) => TaskState::Success(result.clone()),
        Outcome::Errored(TaskError::Raised(exception)) => {
            TaskState::Failure(CeleryException::from_guest(exception))
        }
        Outcome::Errored(TaskError::Retry(retry)) => TaskState::Retry(retry.clone()),
        Outcome::Errored(TaskError::Reject(reject)) => TaskState::Rejected(reject.clone()),
        Outcome::Errored(TaskError::Ignore) => TaskState::Ignored,
        Outcome::Aborted(abort) => TaskState::Failure(CeleryException::from_abort(abort)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn hard_time_limit_is_billiards_time_limit_exceeded_with_seconds() {
        let TaskState::Failure(exc) = task_state(&Outcome::Aborted(Abort::TimeLimit(
            Duration::from_millis(1500),
        ))) else {
            panic!("not a failure")
        };
        assert_eq!(
            (exc.exc_module.as_str(), exc.exc_type.as_str()),
            ("billiard.exceptions", "TimeLimitExceeded")
        );
        assert_eq!(exc.exc_message, vec![Value::from(1.5)]);
    }

    #[test]
    fn guest_exception_keeps_its_type_module_and_args() {
        let raised = Exception {
            exc_type: "ValueError".into(),
            exc_module: "builtins".into(),
            exc_args: "[\"bad\", 42]".into(),
            message: "('bad', 42)".into(),
            traceback: Some("Traceback ...".into()),
        };
        let TaskState::Failure(exc) = task_state(&Outcome::Errored(TaskError::Raised(raised)))
        else {
            panic!("not a failure")
        };
        assert_eq!(exc.exc_message, vec![Value::from("bad"), Value::from(42)]);
        assert_eq!(exc.summary(), "ValueError: ('bad', 42)");
        assert_eq!(exc.traceback.as_deref(), Some("Traceback ..."));
    }

    #[test]
    fn malformed_guest_args_fall_back_to_the_message() {
        let raised = Exception {
            exc_type: "KeyError".into(),
            exc_module: "builtins".into(),
            exc_args: "not json".into(),
            message: "'k'".into(),
            traceback: None,
        };
        let TaskState::Failure(exc) = task_state(&Outcome::Errored(TaskError::Raised(raised)))
        else {
            panic!("not a failure")
        };
        assert_eq!(exc.exc_message, vec![Value::from("'k'")]);
    }

    #[test]
    fn a_trap_is_a_lost_worker() {
        let TaskState::Failure(exc) = task_state(&Outcome::Aborted(Abort::Trap(
            "wasm `unreachable` instruction executed".into(),
        ))) else {
            panic!("not a failure")
        };
        assert_eq!(exc.exc_type, "WorkerLostError");
        assert!(
            exc.message
                .starts_with("Worker exited prematurely: wasm trap:"),
            "{}",
            exc.message
        );
    }
}
