//! A chord header part's return (spec §7): record it; the part that completes the header
//! sends the body with the header results in order, or, when a part failed, stores a
//! `ChordError` for the body and sends the body's errbacks (Celery's
//! `chord_error_from_stack`).

use serde_json::{Map, Value};

use crate::backend::{ChordPart, ExceptionInfo, PartReturn, ResultBackend, TaskMeta};
use crate::broker::Broker;
use crate::protocol::{Sender, Signature};

use super::super::CeleryException;
use super::super::execution::store;
use super::super::run_loop::WorkerContext;
use super::after_failure::fail_chain;
use super::errbacks::{Failure, call_errbacks};
use super::{CanvasError, carry_out, plan};

/// Records `part` of the chord whose body is `body`, and fires the body when this part
/// completed the header.
///
/// The work is boxed: its future holds the chord's backend calls and the body's publishing,
/// over 10 KB, and inline it would make every task's future that large (the ones of tasks
/// in no chord too), copied whole whenever a delivery is spawned.
pub async fn part_return<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    sender: &Sender,
    part: &ChordPart<'_>,
    body: &Value,
) {
    Box::pin(record_part(worker, sender, part, body)).await;
}

async fn record_part<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    sender: &Sender,
    part: &ChordPart<'_>,
    body: &Value,
) {
    let claim = match worker.backend.chord_part_return(part).await {
        Ok(PartReturn::Claimed(claim)) => claim,
        Ok(PartReturn::Unsupported) => {
            tracing::warn!(
                "chord {}: the result backend has no chord support; the body is never sent",
                part.group_id
            );
            return;
        }
        Ok(PartReturn::AlreadyDone) => {
            tracing::info!(
                "chord {}: part {} returned after the body was sent; ignored",
                part.group_id,
                part.task_id
            );
            return;
        }
        Ok(PartReturn::Waiting) => return,
        Err(err) => {
            tracing::error!(
                "chord {}: part {} not recorded: {err}",
                part.group_id,
                part.task_id
            );
            return;
        }
    };
    let body = match Signature::from_value(body) {
        Ok(body) => body,
        Err(err) => {
            tracing::error!("chord {}: body not sent: {err}", part.group_id);
            return;
        }
    };
    match claim.body_argument() {
        Err(reason) => fail_body(worker, sender, &body, &reason).await,
        Ok(argument) => match worker.backend.chord_claim_extend(&claim).await {
            Ok(true) => {
                if let Err(err) = send_body(worker, sender, &body, argument).await {
                    let exception = err.exception();
                    let reason = format!(
                        "Callback error: {}('{}')",
                        exception.exc_type, exception.message
                    );
                    fail_body(worker, sender, &body, &reason).await;
                }
            }
            Ok(false) => {
                tracing::warn!(
                    "chord {}: the claim lapsed and another worker holds it; it sends the body",
                    claim.group_id
                );
                return;
            }
            Err(err) => {
                tracing::error!("chord {}: claim not extended: {err}", claim.group_id);
                return;
            }
        },
    }
    if let Err(err) = worker.backend.chord_cleanup(&claim).await {
        tracing::warn!("chord {}: state not cleaned up: {err}", claim.group_id);
    }
}

/// `callback.delay(results)`.
pub(super) async fn send_body<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    sender: &Sender,
    body: &Signature,
    argument: Value,
) -> Result<(), CanvasError> {
    let applied = plan(worker, sender, |applier| {
        applier.apply(body, &[argument], &Map::new())
    })?;
    carry_out(worker, applied.actions).await
}

/// Fails the body with `ChordError(reason)`: its errbacks get the body id, its FAILURE is
/// stored, and so are the FAILUREs of the steps chained after it (Celery 5.7).
pub(super) async fn fail_body<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    sender: &Sender,
    body: &Signature,
    reason: &str,
) {
    let body_id = body
        .task_id()
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    tracing::error!("Chord callback {body_id} failed: ChordError: {reason}");
    let exception = CeleryException {
        exc_type: "ChordError".into(),
        exc_module: "celery.exceptions".into(),
        exc_message: vec![Value::from(reason)],
        message: reason.to_owned(),
        traceback: Some(format!("celery.exceptions.ChordError: {reason}\n")),
    };
    let errbacks = match body.options.get("link_error") {
        Some(Value::Array(errbacks)) => errbacks.clone(),
        Some(errback @ Value::Object(_)) => vec![errback.clone()],
        _ => Vec::new(),
    };
    let root_id = body.option_str("root_id").unwrap_or(&body_id).to_owned();
    // Celery's `_create_fake_task_request`: the body's signature dict as the request.
    let mut request = body.to_value();
    if let Value::Object(fields) = &mut request {
        fields.insert("id".into(), Value::from(body_id.as_str()));
        fields.insert("errbacks".into(), Value::Array(errbacks.clone()));
        fields.insert("delivery_info".into(), Value::Object(Map::new()));
    }
    let failure = Failure {
        id: &body_id,
        root_id: &root_id,
        request,
        exception: &exception,
        traceback: None,
    };
    call_errbacks(worker, &errbacks, &failure).await;
    let meta = TaskMeta::failure(
        &body_id,
        ExceptionInfo {
            exc_type: &exception.exc_type,
            exc_module: &exception.exc_module,
            exc_message: &exception.exc_message,
        },
        exception.traceback.as_deref(),
    );
    let _ = store(&*worker.backend, &meta).await;
    if let Some(Value::Array(chain)) = body.options.get("chain") {
        fail_chain(worker, sender, chain, &exception).await;
    }
}
