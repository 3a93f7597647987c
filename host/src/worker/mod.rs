//! The worker: turns sandbox outcomes into Celery states and exceptions, resolves each
//! task's limits, and decides retries. (The consumer loop arrives with the broker.)
//!
//! This is the only module that speaks in Celery's terms about guest failures; the sandbox
//! reports outcomes and knows nothing of Celery's exception names.

mod celery_state;
mod limits;
mod task_log;

pub use celery_state::{CeleryException, TaskState, task_state};
pub use limits::{HeaderTimeLimits, resolve_limits};
pub use task_log::TracingTaskEvents;
