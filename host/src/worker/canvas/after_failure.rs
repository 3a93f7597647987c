//! What follows a failure (spec §8.1, §8.3, §8.4; Celery's `mark_as_failure`): the chord
//! part, the same FAILURE under every remaining chain step's id, then the errbacks.

use std::collections::VecDeque;

use serde_json::{Value, json};

use crate::backend::{ChordPart, ExceptionInfo, ResultBackend, TaskMeta};
use crate::broker::Broker;
use crate::protocol::kombu_json::to_kombu_json;
use crate::protocol::{Sender, Signature, TaskMessage};

use super::super::CeleryException;
use super::super::execution::{TaskRun, store};
use super::super::run_loop::WorkerContext;
use super::errbacks::{Failure, call_errbacks, request_json};
use super::{chord, sender_of};

/// Runs the canvas consequences of a task failing with `exception`; `store_errors` says
/// whether its FAILURE is stored (then the remaining chain steps get it too).
pub async fn after_failure<B: Broker, R: ResultBackend + 'static>(
    run: &TaskRun<'_, B, R>,
    exception: &CeleryException,
    store_errors: bool,
) {
    let message = run.message;
    let worker = run.worker;
    let sender = sender_of(message, &worker.config.nodename);
    if let (Some(body), Some(group_id)) = (&message.embed.chord, &message.group) {
        let result_json = exception_json(exception);
        let part = ChordPart {
            group_id,
            task_id: &message.id,
            group_index: message.group_index,
            state: "FAILURE",
            result_json: &result_json,
        };
        chord::part_return(worker, &sender, &part, body).await;
    }
    if store_errors {
        fail_chain(worker, &sender, &message.embed.chain, exception).await;
    }
    if message.embed.errbacks.is_empty() {
        return;
    }
    let failure = Failure {
        id: &message.id,
        root_id: sender.root_id.as_deref().unwrap_or(&message.id),
        request: request_json(&run.request(), &message.args, &message.kwargs),
        exception,
        traceback: exception.traceback.as_deref(),
    };
    call_errbacks(worker, &message.embed.errbacks, &failure).await;
}

/// Returns a revoked chord header part (`reason`: `revoked`, `expired`, `terminated`) to
/// its chord with the REVOKED state and its `TaskRevokedError`, as Celery's
/// `mark_as_revoked` does; nothing else follows a revoke.
pub async fn chord_part_revoked<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    message: &TaskMessage,
    reason: &str,
) {
    let (Some(body), Some(group_id)) = (&message.embed.chord, &message.group) else {
        return;
    };
    let result_json = exception_dict_json(
        "TaskRevokedError",
        "celery.exceptions",
        &[Value::from(reason)],
    );
    let part = ChordPart {
        group_id,
        task_id: &message.id,
        group_index: message.group_index,
        state: "REVOKED",
        result_json: &result_json,
    };
    let sender = sender_of(message, &worker.config.nodename);
    chord::part_return(worker, &sender, &part, body).await;
}

/// The exception dict of `exception`, as kombu JSON text.
pub(super) fn exception_json(exception: &CeleryException) -> String {
    exception_dict_json(
        &exception.exc_type,
        &exception.exc_module,
        &exception.exc_message,
    )
}

/// `{"exc_type": …, "exc_message": […], "exc_module": …}` as kombu JSON text.
fn exception_dict_json(exc_type: &str, exc_module: &str, exc_message: &[Value]) -> String {
    to_kombu_json(&exception_dict(exc_type, exc_module, exc_message))
}

/// `exception` as Celery's result backend encodes one.
pub(super) fn exception_value(exception: &CeleryException) -> Value {
    exception_dict(
        &exception.exc_type,
        &exception.exc_module,
        &exception.exc_message,
    )
}

fn exception_dict(exc_type: &str, exc_module: &str, exc_message: &[Value]) -> Value {
    json!({
        "exc_type": exc_type,
        "exc_message": exc_message,
        "exc_module": exc_module,
    })
}

/// Stores `exception` as the FAILURE of every chain element that has an id (next step
/// first), returns chord parts for elements in a chord, and descends into chord bodies.
pub(super) async fn fail_chain<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    sender: &Sender,
    chain: &[Value],
    exception: &CeleryException,
) {
    let mut pending: VecDeque<Value> = chain.iter().rev().cloned().collect();
    let result_json = exception_json(exception);
    while let Some(element) = pending.pop_front() {
        let sig = match Signature::from_value(&element) {
            Ok(sig) => sig,
            Err(err) => {
                tracing::error!("chain step not failed: {err}");
                continue;
            }
        };
        if let Some(task_id) = sig.task_id() {
            let meta = TaskMeta::failure(
                task_id,
                ExceptionInfo {
                    exc_type: &exception.exc_type,
                    exc_module: &exception.exc_module,
                    exc_message: &exception.exc_message,
                },
                exception.traceback.as_deref(),
            );
            let meta = match sig.option_str("group_id") {
                Some(group_id) => meta.with_group_id(group_id),
                None => meta,
            };
            let _ = store(&*worker.backend, &meta).await;
            if let (Some(body), Some(group_id)) =
                (sig.options.get("chord"), sig.option_str("group_id"))
            {
                let part = ChordPart {
                    group_id,
                    task_id,
                    group_index: sig.options.get("group_index").and_then(Value::as_u64),
                    state: "FAILURE",
                    result_json: &result_json,
                };
                // Boxed: failing a chord body fails the chain after it, which may hold
                // another chord.
                Box::pin(chord::part_return(worker, sender, &part, body)).await;
            }
        }
        if sig.subtask_type.as_deref() == Some("chord")
            && let Some(body) = sig.kwargs.get("body")
        {
            pending.push_back(body.clone());
        }
    }
}
