//! Declaring a task queue as Celery declares it (spec §4.1): a durable `direct` exchange
//! named like the queue, the durable queue (not exclusive, not auto-delete, with
//! `x-max-priority` only when asked), and the binding between them with the queue's name
//! as routing key. Identical flags and arguments are what lets a Python worker or client
//! declare the same queue before or after celeriac without RabbitMQ refusing it.

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

use crate::broker::BrokerError;

use super::fields::short;
use super::{amqp_error, is_precondition_failed};

/// How a queue came to be usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Declared {
    /// Declared with Celery's flags and arguments (created, or found identical).
    AsAsked,
    /// It already existed with other flags or arguments (RabbitMQ refused ours with
    /// PRECONDITION_FAILED), and is used as it is.
    Existing {
        /// What RabbitMQ said was different.
        reason: String,
    },
}

impl Declared {
    /// Whether RabbitMQ said the queue exists as a quorum queue (its refusal names the
    /// `x-queue-type` it has).
    pub fn is_quorum_queue(&self) -> bool {
        matches!(self, Declared::Existing { reason } if reason.contains("x-queue-type") && reason.contains("'quorum'"))
    }
}

/// Celery's queue arguments: `x-max-priority` (`task_queue_max_priority`) when set, as
/// py-amqp encodes a small integer (a signed 32-bit `I`), else none.
pub fn queue_arguments(max_priority: Option<u8>) -> FieldTable {
    let mut arguments = FieldTable::default();
    if let Some(max) = max_priority {
        arguments.insert("x-max-priority".into(), AMQPValue::LongInt(i32::from(max)));
    }
    arguments
}

/// Declares `queue`, its exchange and binding on a channel of their own, so a refusal
/// (which closes the channel) never takes a consuming or publishing channel with it. When
/// RabbitMQ refuses because the queue or exchange exists with other settings (a quorum
/// queue, another `x-max-priority`), the queue is checked to exist and used as it is,
/// with a warning.
pub async fn declare_task_queue(
    connection: &Connection,
    queue: &str,
    max_priority: Option<u8>,
) -> Result<Declared, BrokerError> {
    let channel = open(connection, queue).await?;
    let declared = match declare_on(&channel, queue, max_priority).await {
        Ok(()) => Declared::AsAsked,
        Err(err) if is_precondition_failed(&err) => {
            let reason = err.to_string();
            check_exists(connection, queue).await?;
            tracing::warn!(
                queue,
                %reason,
                "queue exists with other settings than Celery's defaults; consuming it as it is"
            );
            Declared::Existing { reason }
        }
        Err(err) => return Err(amqp_error("queue.declare", queue)(err)),
    };
    close(&channel).await;
    Ok(declared)
}

/// Deletes `queue` (tests and tools; a worker never deletes queues).
pub async fn delete_queue(connection: &Connection, queue: &str) -> Result<u32, BrokerError> {
    let channel = open(connection, queue).await?;
    let deleted = channel
        .queue_delete(short("queue name", queue)?, QueueDeleteOptions::default())
        .await
        .map_err(amqp_error("queue.delete", queue));
    close(&channel).await;
    deleted
}

/// Celery's exchange, queue and binding, in the order kombu declares them.
async fn declare_on(
    channel: &Channel,
    queue: &str,
    max_priority: Option<u8>,
) -> Result<(), lapin::Error> {
    // Names were checked to be short strings when the channel was opened for them.
    let name = || lapin::types::ShortString::from(queue);
    channel
        .exchange_declare(
            name(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            name(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            queue_arguments(max_priority),
        )
        .await?;
    channel
        .queue_bind(
            name(),
            name(),
            name(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// A passive declaration: fails unless the queue exists.
async fn check_exists(connection: &Connection, queue: &str) -> Result<(), BrokerError> {
    let channel = open(connection, queue).await?;
    let checked = channel
        .queue_declare(
            short("queue name", queue)?,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(amqp_error("queue.declare (passive)", queue));
    close(&channel).await;
    checked.map(drop)
}

/// A fresh channel for declaring `queue`, whose name is checked to fit AMQP first.
async fn open(connection: &Connection, queue: &str) -> Result<Channel, BrokerError> {
    short("queue name", queue)?;
    connection
        .create_channel()
        .await
        .map_err(amqp_error("channel.open", queue))
}

/// Closes a declaring channel; one RabbitMQ already closed needs nothing more.
async fn close(channel: &Channel) {
    if channel.status().connected() {
        let _ = channel.close(200, "OK".into()).await;
    }
}
