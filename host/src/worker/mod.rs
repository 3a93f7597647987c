//! The worker: turns sandbox outcomes into Celery states and exceptions, resolves each
//! task's limits, decides retries, and runs the consumer loop ([`run`]): fetch, decode,
//! run in the sandbox, store the state, ack or reject.
//!
//! This is the only module that speaks in Celery's terms about guest failures; the sandbox
//! reports outcomes and knows nothing of Celery's exception names.
//!
//! * [`run_loop`](run): fetching, reconnecting, warm shutdown;
//! * `delivery`: one message from arrival to ack (revoked and expired messages, ETAs,
//!   early and late acks);
//! * `execution`: one task run and the state it leaves; `retry`: what a retry publishes;
//! * `canvas`: callbacks, chains, errbacks, groups, chords and Celery's built-in tasks;
//! * `state_updates`: `update_state` from a running guest; `revoked`: the revoked ids;
//! * `reconnect`: retrying broker and backend calls across a dropped connection.

mod canvas;
mod celery_state;
mod clock;
mod config;
mod delivery;
mod execution;
mod limits;
mod log_format;
mod reconnect;
mod retry;
mod revoked;
mod run_loop;
mod state_updates;
mod task_log;

pub use celery_state::{CeleryException, TaskState, task_state};
pub use clock::now_micros;
pub use config::{WorkerConfig, WorkerError};
pub use limits::{HeaderTimeLimits, resolve_limits};
pub use retry::{max_retries, retry_eta, retry_message};
pub use revoked::RevokedTasks;
pub use run_loop::run;
pub use task_log::TracingTaskEvents;
