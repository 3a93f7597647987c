//! The publishing side of [`super::AmqpBroker`]: a connection of its own (RabbitMQ blocks
//! a publishing connection under memory pressure, which must not stall acks), one channel
//! in publisher-confirm mode, and the task queues already declared on it. Opened again on
//! the next publish after the connection dropped.

use std::collections::HashSet;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use crate::broker::{BroadcastExchange, BrokerError};

use super::fields::short;
use super::topology::{Declared, declare_task_queue, delete_queue};
use super::{AmqpUrl, amqp_error, connect};

/// A publishing connection, opened on demand.
pub(super) struct Link {
    /// Where to connect, and with which TLS settings.
    target: AmqpUrl,
    /// The URL without its password, for errors.
    url: String,
    /// The name RabbitMQ lists the connection under.
    name: String,
    /// The open connection, if any. tokio `Mutex`: held while (re)connecting and
    /// declaring, so concurrent publishers wait for one connection rather than open many.
    live: tokio::sync::Mutex<Option<Live>>,
}

/// An open publishing connection.
struct Live {
    connection: Connection,
    /// The channel messages are published on, in confirm mode.
    channel: Channel,
    /// Task queues declared on this connection (kombu's `maybe_declare` cache).
    declared: HashSet<String>,
    /// Broadcast exchanges declared on this connection.
    exchanges: HashSet<String>,
}

impl Live {
    fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

impl Link {
    /// Connects now, so a bad URL, bad credentials or an unreachable server fail at once.
    pub(super) async fn connect(
        target: AmqpUrl,
        url: String,
        name: String,
    ) -> Result<Link, BrokerError> {
        let link = Link {
            target,
            url,
            name,
            live: tokio::sync::Mutex::new(None),
        };
        let mut live = link.live.lock().await;
        link.open(&mut live).await?;
        drop(live);
        Ok(link)
    }

    /// Declares `queue` as Celery does (see [`declare_task_queue`]), once per connection.
    pub(super) async fn declare(
        &self,
        queue: &str,
        max_priority: Option<u8>,
    ) -> Result<Declared, BrokerError> {
        let mut slot = self.live.lock().await;
        let live = self.open(&mut slot).await?;
        let declared = declare_task_queue(&live.connection, queue, max_priority).await?;
        live.declared.insert(queue.to_owned());
        Ok(declared)
    }

    /// Declares a broadcast exchange, once per connection, on a channel of its own (a
    /// refusal closes the channel it came on).
    pub(super) async fn declare_exchange(
        &self,
        exchange: &BroadcastExchange,
    ) -> Result<(), BrokerError> {
        let mut slot = self.live.lock().await;
        let live = self.open(&mut slot).await?;
        if live.exchanges.contains(&exchange.name) {
            return Ok(());
        }
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(amqp_error("channel.open", &exchange.name))?;
        let declared = super::broadcast::declare_exchange(&channel, exchange).await;
        if channel.status().connected() {
            let _ = channel.close(200, "OK".into()).await;
        }
        declared?;
        live.exchanges.insert(exchange.name.clone());
        Ok(())
    }

    /// Deletes `queue`, and forgets it was declared.
    pub(super) async fn delete(&self, queue: &str) -> Result<u32, BrokerError> {
        let mut slot = self.live.lock().await;
        let live = self.open(&mut slot).await?;
        live.declared.remove(queue);
        delete_queue(&live.connection, queue).await
    }

    /// Publishes `body` to `exchange` with `routing_key` and waits for the server's
    /// confirm. With `declare`, the task queue named (and its max priority) is declared
    /// first unless it was already on this connection.
    pub(super) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        declare: Option<(&str, Option<u8>)>,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let exchange_name = short("exchange name", exchange)?;
        let key = short("routing key", routing_key)?;
        let channel = {
            let mut slot = self.live.lock().await;
            let live = self.open(&mut slot).await?;
            if let Some((queue, max_priority)) = declare
                && !live.declared.contains(queue)
            {
                declare_task_queue(&live.connection, queue, max_priority).await?;
                live.declared.insert(queue.to_owned());
            }
            live.channel.clone()
        };
        let failed = amqp_error("basic.publish", routing_key);
        let confirm = channel
            .basic_publish(
                exchange_name,
                key,
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .map_err(&failed)?;
        match confirm.await.map_err(failed)? {
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => Err(BrokerError::NotConfirmed {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
        }
    }

    /// Closes the connection, if open.
    pub(super) async fn close(&self) {
        if let Some(live) = self.live.lock().await.take() {
            let _ = live.connection.close(200, "OK".into()).await;
        }
    }

    /// The open connection, opening a new one (with a new confirm channel and an empty
    /// declaration cache) when there is none or it dropped.
    async fn open<'a>(&self, slot: &'a mut Option<Live>) -> Result<&'a mut Live, BrokerError> {
        if slot.as_ref().is_some_and(Live::is_open) {
            return Ok(slot.as_mut().expect("checked to be Some just above"));
        }
        *slot = None;
        let connection = connect(&self.target, &self.url, &self.name).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(amqp_error("channel.open", &self.url))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp_error("confirm.select", &self.url))?;
        Ok(slot.insert(Live {
            connection,
            channel,
            declared: HashSet::new(),
            exchanges: HashSet::new(),
        }))
    }
}
