//! The canvas work a worker does around a task (spec celery-protocol.md §6–§8): after a
//! success, the link callbacks and the next chain step; after a failure, the chord part,
//! the FAILURE of the remaining chain steps and the errbacks; the chord join; and
//! Celery's built-in tasks.
//!
//! * `apply`: what applying a signature publishes (pure);
//! * `after_success`, `after_failure`: what follows a task's end, in Celery's order;
//! * `errbacks`: a failed task's errbacks, called inline ("new style") or sent;
//! * `chord`: a header part's return and sending (or failing) the body;
//! * `builtins`: `celery.map`, `celery.starmap`, `celery.chunks`, … run by the host;
//! * `inline`: running a task inside another one's work (map items, inline errbacks).
//!
//! A component declares which of its tasks may be "new style" errbacks and their
//! positional parameters (`task-info.errback-parameters`); the host applies Celery 5.7's
//! arity rule to each errback signature and calls those in a fresh instance with the
//! failed request, the exception and the traceback as JSON, which the Python SDK turns
//! back into a `Context` and an exception instance.

mod after_failure;
mod after_success;
mod apply;
mod builtins;
mod chord;
mod errbacks;
mod inline;

use serde_json::Value;

use crate::backend::{BackendError, ResultBackend, TaskMeta};
use crate::broker::{Broker, BrokerError, Outgoing};
use crate::protocol::{Sender, SignatureError, TaskMessage};

use super::run_loop::WorkerContext;
use apply::{Action, Applied, Applier};
use inline::run_inline;

/// Several plans' actions, in order, and their result tuples.
fn flatten(plans: Vec<Applied>) -> (Vec<Action>, Vec<Value>) {
    let mut actions = Vec::new();
    let mut results = Vec::new();
    for applied in plans {
        actions.extend(applied.actions);
        results.push(applied.result);
    }
    (actions, results)
}

pub use after_failure::{after_failure, chord_part_revoked};
pub use after_success::{after_success, chord_part_succeeded};
pub use builtins::{Target, run_builtin};

/// Why canvas work could not be done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CanvasError {
    /// A signature in the message cannot be used.
    #[error("invalid signature: {0}")]
    Signature(#[from] SignatureError),
    /// The task's result is not JSON (it cannot become an argument).
    #[error("the result cannot be passed on: {0}")]
    Result(#[source] serde_json::Error),
    /// Publishing a message failed.
    #[error("cannot publish: {0}")]
    Publish(#[from] BrokerError),
    /// The result backend failed (chord size, chord join).
    #[error("{0}")]
    Backend(#[from] BackendError),
}

impl CanvasError {
    /// The exception Celery would store for it: kombu's `EncodeError` for what cannot be
    /// encoded, `OperationalError` for the broker and backend.
    pub fn exception(&self) -> super::CeleryException {
        let (exc_module, exc_type) = match self {
            CanvasError::Signature(_) | CanvasError::Result(_) => {
                ("kombu.exceptions", "EncodeError")
            }
            CanvasError::Publish(_) | CanvasError::Backend(_) => {
                ("kombu.exceptions", "OperationalError")
            }
        };
        let message = self.to_string();
        super::CeleryException {
            exc_type: exc_type.into(),
            exc_module: exc_module.into(),
            exc_message: vec![Value::from(message.clone())],
            message,
            traceback: None,
        }
    }
}

/// `meta` with the `group_id` and `parent_id` of the message it is about, which Celery
/// writes into every state stored with a request (spec §5.2).
pub fn with_request_ids(meta: TaskMeta, message: &TaskMessage) -> TaskMeta {
    let meta = match &message.group {
        Some(group) => meta.with_group_id(group),
        None => meta,
    };
    match &message.parent_id {
        Some(parent) => meta.with_parent_id(parent),
        None => meta,
    }
}

/// The sender of what `message`'s task publishes.
fn sender_of(message: &TaskMessage, nodename: &str) -> Sender {
    Sender {
        task_id: Some(message.id.clone()),
        root_id: Some(
            message
                .root_id
                .clone()
                .unwrap_or_else(|| message.id.clone()),
        ),
        origin: origin(nodename),
    }
}

/// `gen<pid>@<host>`, as Celery's `origin` header names the sending process.
fn origin(nodename: &str) -> String {
    let host = nodename.split_once('@').map_or(nodename, |(_, host)| host);
    format!("gen{}@{host}", std::process::id())
}

/// Plans with a fresh-id [`Applier`] for `sender`.
fn plan<B: Broker, R: ResultBackend, T>(
    worker: &WorkerContext<B, R>,
    sender: &Sender,
    build: impl FnOnce(&mut Applier<'_>) -> Result<T, SignatureError>,
) -> Result<T, SignatureError> {
    let mut new_id = || uuid::Uuid::new_v4().to_string();
    let mut applier = Applier {
        sender,
        default_queue: &worker.config.default_queue,
        now_micros: super::clock::now_micros(),
        new_id: &mut new_id,
    };
    build(&mut applier)
}

/// Carries out a plan, in order.
async fn carry_out<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    actions: Vec<Action>,
) -> Result<(), CanvasError> {
    for action in actions {
        match action {
            Action::Publish { route, message } => {
                let outgoing = Outgoing::from(message.encode());
                worker
                    .consumer
                    .broker()
                    .publish(&route.exchange, &route.routing_key, &outgoing)
                    .await?;
            }
            Action::ChordSize { group_id, size } => {
                worker.backend.set_chord_size(&group_id, size).await?;
            }
        }
    }
    Ok(())
}
