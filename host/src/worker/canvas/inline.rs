//! Running a task of a loaded component inside the work of another one, in a fresh
//! instance and without a message of its own: the items of `celery.map`/`celery.starmap`
//! and Celery's inline ("new style") errbacks.

use std::sync::Arc;

use crate::backend::ResultBackend;
use crate::broker::Broker;
use crate::sandbox::{Invocation, Request};

use super::super::run_loop::WorkerContext;
use super::super::{CeleryException, HeaderTimeLimits, TaskState, TracingTaskEvents};
use super::super::{resolve_limits, task_state};

/// Runs `request.task` with the given arguments (kombu JSON text) under its own options'
/// limits (`header` wins over them, as a message's `timelimit` would) and says how it
/// ended; `Err` when no component serves it (`NotRegistered`) or the sandbox failed.
pub(super) async fn run_inline<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    request: Request,
    args_json: String,
    kwargs_json: String,
    header: HeaderTimeLimits,
) -> Result<TaskState, CeleryException> {
    let Some(component) = worker.registry.resolve(&request.task) else {
        return Err(CeleryException::from_message(
            "celery.exceptions",
            "NotRegistered",
            &request.task,
        ));
    };
    let options = component
        .task(&request.task)
        .map(|info| info.options.clone())
        .unwrap_or_default();
    let events = Arc::new(TracingTaskEvents {
        task_name: request.task.clone(),
        task_id: request.id.clone(),
    });
    let invocation = Invocation {
        request,
        args_json,
        kwargs_json,
        limits: resolve_limits(&worker.config.limits, &options, header),
        events,
    };
    let report = worker
        .sandbox
        .run(&component.prepared, invocation)
        .await
        .map_err(|err| {
            CeleryException::from_message(
                "billiard.exceptions",
                "WorkerLostError",
                &err.to_string(),
            )
        })?;
    Ok(task_state(&report.outcome))
}
