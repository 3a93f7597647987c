//! An implementation of `ResultBackend` for Celery's RPC backend (`result_backend =
//! 'rpc://'`, `celery/backends/rpc.py`).
//!
//! Results are not stored anywhere: every state of a task (STARTED, custom states, RETRY,
//! the final one) is sent as a message to the client that sent the task, so a Python
//! client's `AsyncResult.get()` works unchanged.
//!
//! # Features
//!
//! * Destination: the default exchange, routing key = the task message's `reply_to` (the
//!   client's own queue, which the client declared), `correlation_id` = the message's
//!   `correlation_id` (else the task id). A task whose message had no `reply_to` sends
//!   nothing ([`StoreOutcome::NoDestination`]), as Celery does.
//! * Body: the task meta document exactly as the Redis backend stores it (spec §5.2),
//!   `application/json`, `utf-8`; `delivery_mode` 1 (Celery's `result_persistent` is
//!   off by default; [`RpcBackend::persistent`] turns it on).
//! * Published on the AMQP broker's publishing connection, with publisher confirms; a
//!   dropped connection is a [`BackendError::is_connection`] error and the next send
//!   reconnects.
//! * Works only with the `amqp://` broker, which remembers each delivered task's
//!   `reply_to` (the worker hands backends only the task id).
//!
//! Not supported, as in Celery: [`ResultBackend::get`] (results are messages for one
//! client, not stored documents), never overwriting SUCCESS (nothing is stored to check
//! against), groups and chords.
//!
//! # URL
//!
//! `rpc://` (anything after the scheme is ignored, as Celery does).

use super::{BackendError, ResultBackend, StoreOutcome, TaskMeta};
use crate::broker::AmqpBroker;
use crate::broker::amqp::ReplySender;

/// Celery's RPC result backend over an [`AmqpBroker`]'s connection.
///
/// Cheap to clone: clones share the broker's connection.
#[derive(Clone)]
pub struct RpcBackend {
    /// Publishes replies on the broker's connection and knows each task's route.
    sender: ReplySender,
    /// `result_persistent`: send with `delivery_mode` 2 instead of 1.
    persistent: bool,
}

impl RpcBackend {
    /// The RPC backend on `broker`'s connection, with Celery's default: transient replies.
    /// From now on the broker remembers the reply route of every task it delivers.
    pub fn new(broker: &AmqpBroker) -> RpcBackend {
        RpcBackend {
            sender: broker.reply_sender(),
            persistent: false,
        }
    }

    /// Sets Celery's `result_persistent`: replies survive a RabbitMQ restart.
    pub fn persistent(mut self, persistent: bool) -> RpcBackend {
        self.persistent = persistent;
        self
    }
}

impl ResultBackend for RpcBackend {
    async fn store(&self, meta: &TaskMeta) -> Result<StoreOutcome, BackendError> {
        let task_id = meta.task_id();
        let Some(route) = self.sender.route(task_id) else {
            tracing::debug!(task_id, "no reply_to for this task; its state is not sent");
            return Ok(StoreOutcome::NoDestination);
        };
        self.sender
            .send(&route, meta.to_json().as_bytes(), self.persistent)
            .await
            .map_err(|source| BackendError::Broker {
                task_id: task_id.to_owned(),
                source: Box::new(source),
            })?;
        if meta.state().is_ready() {
            self.sender.forget(task_id);
        }
        Ok(StoreOutcome::Stored)
    }

    async fn get(&self, _task_id: &str) -> Result<Option<String>, BackendError> {
        Err(BackendError::Unsupported {
            op: "get",
            backend: "rpc",
        })
    }
}
