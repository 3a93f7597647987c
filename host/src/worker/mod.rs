//! The worker: turns sandbox outcomes into Celery states and exceptions, resolves each
//! task's limits, decides retries, and runs the consumer loop ([`run`]): fetch, decode,
//! run in the sandbox, store the state, ack or reject.
//!
//! This is the only module that speaks in Celery's terms about guest failures; the sandbox
//! reports outcomes and knows nothing of Celery's exception names.

mod celery_state;
mod consumer;
mod limits;
mod task_log;

pub use celery_state::{CeleryException, TaskState, task_state};
pub use consumer::{WorkerConfig, WorkerError, run};
pub use limits::{HeaderTimeLimits, resolve_limits};
pub use task_log::TracingTaskEvents;
