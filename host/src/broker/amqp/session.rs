//! The consuming side of [`super::AmqpBroker`]: a connection of its own with one channel,
//! one `basic.consume` per queue, every consumer feeding one in-process queue that
//! `fetch` takes deliveries from. A session ends with its connection; the next fetch opens
//! a new one.

use std::collections::HashMap;
use std::sync::Arc;

use lapin::message::DeliveryResult;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::mpsc;

use crate::broker::BrokerError;

use super::fields::short;
use super::topology::declare_task_queue;
use super::{AmqpUrl, amqp_error, connect};

/// What a consumer passes to [`Session::receiver`].
pub(super) enum Incoming {
    /// A message from `queue`.
    Message {
        /// The queue it was consumed from.
        queue: Arc<str>,
        /// The message, with its acker.
        delivery: Box<lapin::message::Delivery>,
    },
    /// The consumer of `queue` ended: the server cancelled it or the channel closed.
    Lost {
        /// The queue whose consumer ended.
        queue: Arc<str>,
        /// Why.
        reason: String,
    },
}

/// How [`Session::consume`] ended.
pub(super) enum Consumed {
    /// Every queue is consumed.
    All,
    /// This queue is a quorum queue, which RabbitMQ refuses to serve on a channel with
    /// global QoS (it would close the whole connection): not consumed.
    QuorumQueue(String),
}

/// One consuming connection.
pub(super) struct Session {
    /// Distinguishes this session's delivery tags from an earlier one's (AMQP numbers
    /// deliveries per channel, from 1).
    pub(super) id: u64,
    /// Kept open for as long as the session lives.
    connection: Connection,
    /// The channel every consumer is on; its QoS is the consumer's prefetch.
    pub(super) channel: Channel,
    /// Queue → its consumer. Dropping a handle cancels the consumer.
    consumers: HashMap<String, lapin::Consumer>,
    /// Cloned into each consumer's delegate.
    sender: mpsc::UnboundedSender<Incoming>,
    /// Deliveries and lost consumers, in arrival order. Unbounded: the server sends at
    /// most the QoS prefetch count of unacked messages.
    pub(super) receiver: mpsc::UnboundedReceiver<Incoming>,
}

impl Session {
    /// Opens a connection and its channel.
    pub(super) async fn open(
        id: u64,
        target: &AmqpUrl,
        url: &str,
        name: &str,
    ) -> Result<Session, BrokerError> {
        let connection = connect(target, url, name).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(amqp_error("channel.open", url))?;
        let (sender, receiver) = mpsc::unbounded_channel();
        Ok(Session {
            id,
            connection,
            channel,
            consumers: HashMap::new(),
            sender,
            receiver,
        })
    }

    /// Whether the connection and channel are still up.
    pub(super) fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Whether `queue` is consumed (a `Lost` about a queue no longer consumed is stale).
    pub(super) fn consumes(&self, queue: &str) -> bool {
        self.consumers.contains_key(queue)
    }

    /// Consumes exactly `queues`: declares and consumes the new ones, cancels the others.
    /// With global QoS (`per_consumer_qos` false) it stops at the first quorum queue.
    pub(super) async fn consume(
        &mut self,
        queues: &[String],
        max_priority: Option<u8>,
        per_consumer_qos: bool,
    ) -> Result<Consumed, BrokerError> {
        self.consumers.retain(|queue, _| queues.contains(queue));
        for queue in queues {
            if self.consumers.contains_key(queue) {
                continue;
            }
            let declared = declare_task_queue(&self.connection, queue, max_priority).await?;
            if !per_consumer_qos && declared.is_quorum_queue() {
                return Ok(Consumed::QuorumQueue(queue.clone()));
            }
            let consumer = self
                .channel
                .basic_consume(
                    short("queue name", queue)?,
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(amqp_error("basic.consume", queue))?;
            consumer.set_delegate(forward(Arc::from(queue.as_str()), self.sender.clone()));
            self.consumers.insert(queue.clone(), consumer);
        }
        Ok(Consumed::All)
    }

    /// Closes the connection (unacked deliveries go back to their queues).
    pub(super) async fn close(self) {
        let _ = self.connection.close(200, "OK".into()).await;
    }
}

/// A consumer delegate passing every delivery, and the consumer's end, to `sender`.
fn forward(
    queue: Arc<str>,
    sender: mpsc::UnboundedSender<Incoming>,
) -> impl Fn(DeliveryResult) -> std::future::Ready<()> + Send + Sync + 'static {
    move |result| {
        let queue = Arc::clone(&queue);
        let incoming = match result {
            Ok(Some(delivery)) => Incoming::Message {
                queue,
                delivery: Box::new(delivery),
            },
            Ok(None) => Incoming::Lost {
                queue,
                reason: "the server cancelled the consumer".to_owned(),
            },
            Err(err) => Incoming::Lost {
                queue,
                reason: err.to_string(),
            },
        };
        // A closed receiver means the session is gone; the server requeues the message.
        let _ = sender.send(incoming);
        std::future::ready(())
    }
}
