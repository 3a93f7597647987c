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
//! * `revoke`: the revoke API ([`WorkerHandle`]) and the running tasks it can terminate;
//!   `statedb`: the revoked ids kept across restarts; `rate_limit`: per-task token buckets;
//! * `reconnect`: retrying broker and backend calls across a dropped connection.

mod canvas;
mod celery_state;
mod clock;
mod config;
mod delivery;
mod execution;
mod limits;
mod log_format;
mod rate_limit;
mod reconnect;
mod retry;
mod revoke;
mod revoked;
mod run_loop;
mod state_updates;
mod statedb;
mod task_log;

pub use celery_state::{CeleryException, TaskState, task_state};
pub use clock::now_micros;
pub use config::{WorkerConfig, WorkerError};
pub use limits::{HeaderTimeLimits, limit_as_given, resolve_limits};
pub use rate_limit::{RateError, parse_rate};
pub use retry::{max_retries, retry_eta, retry_message, retry_when};
pub use revoke::{RevokeError, Revoked, RunningTask, RunningTasks, WorkerHandle};
pub use revoked::RevokedTasks;
pub use run_loop::{run, run_with};
pub use statedb::{StateDb, StateDbError};
pub use task_log::TracingTaskEvents;
