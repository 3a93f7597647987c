//! How one task invocation ended, as seen by the sandbox.

use std::time::Duration;

use super::bindings::types::TaskError;

/// The end of one invocation. Guest failures are outcomes, not errors: `Sandbox::run`
/// returns `Err` only when the host itself failed.
#[derive(Debug)]
pub enum Outcome {
    /// The task returned; the JSON text of its result.
    Returned(String),
    /// The task ended with a `task-error`: an exception, a retry, a reject or an ignore.
    Errored(TaskError),
    /// The sandbox stopped the task, or refused to start it.
    Aborted(Abort),
}

/// Why the sandbox stopped (or never started) a task.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Abort {
    /// The hard time limit passed; the instance was killed.
    TimeLimit(Duration),
    /// The soft time limit passed; the instance was interrupted.
    SoftTimeLimit(Duration),
    /// The instance asked for more memory than its cap.
    MemoryLimit {
        /// The cap, in bytes.
        limit_bytes: usize,
    },
    /// A revoke with `terminate` stopped the task.
    Terminated,
    /// The guest's call stack overflowed (unbounded recursion).
    StackOverflow,
    /// The guest trapped (a Rust panic, `unreachable`, an out-of-bounds access, ...).
    Trap(String),
    /// The result was larger than the cap.
    ResultTooLarge {
        /// Size of the result, in bytes.
        size: usize,
        /// The cap, in bytes.
        limit: usize,
    },
    /// args + kwargs were larger than the cap; the task was not started.
    ArgumentsTooLarge {
        /// Size of the arguments, in bytes.
        size: usize,
        /// The cap, in bytes.
        limit: usize,
    },
}

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abort::TimeLimit(limit) => {
                write!(f, "hard time limit ({}s) exceeded", limit.as_secs_f64())
            }
            Abort::SoftTimeLimit(limit) => {
                write!(f, "soft time limit ({}s) exceeded", limit.as_secs_f64())
            }
            Abort::MemoryLimit { limit_bytes } => {
                write!(f, "memory limit of {} MiB exceeded", limit_bytes >> 20)
            }
            Abort::Terminated => write!(f, "terminated by a revoke"),
            Abort::StackOverflow => write!(f, "stack overflow (unbounded recursion?)"),
            Abort::Trap(message) => write!(f, "guest trapped: {message}"),
            Abort::ResultTooLarge { size, limit } => {
                write!(f, "result of {size} bytes exceeds the {limit}-byte limit")
            }
            Abort::ArgumentsTooLarge { size, limit } => {
                write!(f, "arguments of {size} bytes exceed the {limit}-byte limit")
            }
        }
    }
}

/// An outcome with what it cost.
#[derive(Debug)]
pub struct RunReport {
    /// How the invocation ended.
    pub outcome: Outcome,
    /// Wall-clock time from the start of instantiation to the end of the call.
    pub duration: Duration,
    /// The most linear memory the instance held at once, in bytes.
    pub peak_memory_bytes: usize,
    /// How long creating the instance took; `None` when a warm instance served the task
    /// (`isolation = "reuse"`) or the task ended before one was made.
    pub instantiate: Option<Duration>,
}
