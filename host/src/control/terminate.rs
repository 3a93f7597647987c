//! The terminate hook: where `revoke(terminate=True)` and `terminate` stop tasks that are
//! running on this worker (celery-worker-behaviour.md §3.9, step 3).
//!
//! Stopping a running guest belongs to the execution side; until it offers a way to,
//! [`terminate_running_tasks`] stops nothing and says so. The ids are revoked already, so
//! a task not yet started is discarded when its turn comes.

use crate::backend::ResultBackend;
use crate::broker::Broker;

use super::ControlContext;

/// **The terminate hook.** Stops the running tasks among `task_ids` with `signum` and
/// returns the ids it stopped; each stopped task must end as REVOKED with
/// `exc_message ["terminated"]`, send task-revoked `{terminated: true, signum}` and have
/// its message acked (the execution side does this when it ends a task it was asked to
/// stop).
pub fn terminate_running_tasks<B: Broker, R: ResultBackend>(
    ctx: &ControlContext<B, R>,
    task_ids: &[String],
    signum: i32,
) -> Vec<String> {
    let active = ctx.monitor.active_ids();
    for id in task_ids.iter().filter(|id| active.contains(id)) {
        tracing::warn!(
            "Cannot terminate {id} ({signum}): stopping a running task is not available; \
             it runs to its end"
        );
    }
    Vec::new()
}
