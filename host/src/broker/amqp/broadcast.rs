//! Broadcast on RabbitMQ (see [`crate::broker::broadcast`]): exchanges declared with
//! Celery's flags, transient messages on the publishing connection, and subscriptions on a
//! connection of their own with an exclusive, auto-deleted queue consumed without acks,
//! as kombu's pidbox consumes `<nodename>.celery.pidbox`.

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind as LapinKind};
use tokio::sync::mpsc;

use crate::broker::{BroadcastExchange, BroadcastQueue, BrokerError, ExchangeKind, Subscription};

use super::fields::{delivery, short};
use super::{AmqpUrl, amqp_error, connect};

/// Declares `exchange` on `channel` with exactly its flags.
pub(super) async fn declare_exchange(
    channel: &Channel,
    exchange: &BroadcastExchange,
) -> Result<(), BrokerError> {
    let kind = match exchange.kind {
        ExchangeKind::Fanout => LapinKind::Fanout,
        ExchangeKind::Topic => LapinKind::Topic,
    };
    channel
        .exchange_declare(
            short("exchange name", &exchange.name)?,
            kind,
            ExchangeDeclareOptions {
                durable: exchange.durable,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(amqp_error("exchange.declare", &exchange.name))
}

/// kombu's queue arguments for an expiring queue: `x-message-ttl` and `x-expires` in
/// whole milliseconds (py-amqp encodes them as 32-bit integers when they fit).
fn queue_arguments(queue: &BroadcastQueue) -> FieldTable {
    let mut arguments = FieldTable::default();
    let millis = |d: std::time::Duration| {
        let ms = d.as_millis();
        i32::try_from(ms).map_or(AMQPValue::LongLongInt(i64::MAX), AMQPValue::LongInt)
    };
    if let Some(ttl) = queue.message_ttl {
        arguments.insert("x-message-ttl".into(), millis(ttl));
    }
    if let Some(expires) = queue.expires {
        arguments.insert("x-expires".into(), millis(expires));
    }
    arguments
}

/// Opens a connection named `name`, declares the exchange and the queue, binds them and
/// consumes the queue without acks; every message goes to the returned subscription
/// until the connection or channel closes.
pub(super) async fn subscribe(
    target: &AmqpUrl,
    url: &str,
    name: &str,
    queue: &BroadcastQueue,
) -> Result<Subscription, BrokerError> {
    let connection = connect(target, url, name).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp_error("channel.open", url))?;
    declare_exchange(&channel, &queue.exchange).await?;
    let queue_name = short("queue name", &queue.queue)?;
    channel
        .queue_declare(
            queue_name.clone(),
            QueueDeclareOptions {
                durable: false,
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            queue_arguments(queue),
        )
        .await
        .map_err(amqp_error("queue.declare", &queue.queue))?;
    channel
        .queue_bind(
            queue_name.clone(),
            short("exchange name", &queue.exchange.name)?,
            short("binding key", &queue.binding_key)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp_error("queue.bind", &queue.queue))?;
    let mut consumer = channel
        .basic_consume(
            queue_name,
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(amqp_error("basic.consume", &queue.queue))?;
    let (sender, receiver) = mpsc::unbounded_channel();
    let queue_name = queue.queue.clone();
    let listener = tokio::spawn(async move {
        // Owned here so the connection lives exactly as long as the listener.
        let _connection = connection;
        let mut seen: u64 = 0;
        while let Some(Ok(message)) = consumer.next().await {
            seen += 1;
            let tag = format!("{queue_name}.{seen}");
            if sender.send(delivery(&queue_name, tag, message)).is_err() {
                return;
            }
        }
    });
    Ok(Subscription::new(receiver, listener))
}
