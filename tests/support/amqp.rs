//! RabbitMQ for the tests: the server URL, a plain lapin connection to look behind the
//! transport, declaring queues the way a Python Celery client does, and cleaning up.
//!
//! Included with `#[path = "../support/amqp.rs"] mod amqp_support;` by the targets that
//! talk to RabbitMQ, so they do not compile the rest of `support/`.
#![allow(dead_code)]

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

/// The test server: `CELERIAC_TEST_AMQP_URL`, else the machine's RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("CELERIAC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672//".into())
}

/// A unique queue name starting with `celeriac-test-<what>-`.
pub fn unique_queue(what: &str) -> String {
    format!("celeriac-test-{what}-{}", uuid::Uuid::new_v4())
}

/// A plain connection to the test server; panics naming the URL if it is unreachable.
pub async fn raw() -> Connection {
    let url = amqp_url();
    let parsed = celeriac::broker::amqp::parse_url(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
    Connection::connect_uri(parsed.uri, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {url} is unreachable: {e}"))
}

/// Celery's queue arguments for `task_queue_max_priority = max` (py-amqp sends the
/// integer as a signed 32-bit `I`).
pub fn celery_arguments(max_priority: Option<i32>) -> FieldTable {
    let mut arguments = FieldTable::default();
    if let Some(max) = max_priority {
        arguments.insert("x-max-priority".into(), AMQPValue::LongInt(max));
    }
    arguments
}

/// Declares `queue` as kombu does for a Celery queue: exchange `queue` (direct, durable),
/// the durable queue with `arguments`, and the binding with routing key `queue`.
pub async fn declare_celery_way(
    conn: &Connection,
    queue: &str,
    arguments: FieldTable,
) -> Result<(), lapin::Error> {
    let channel = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            queue.into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), durable, arguments)
        .await?;
    channel
        .queue_bind(
            queue.into(),
            queue.into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel.close(200, "OK".into()).await
}

/// Messages ready in `queue` (not delivered); 0 if it does not exist.
pub async fn ready(conn: &Connection, queue: &str) -> usize {
    let channel = conn.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(declared) => {
            let _ = channel.close(200, "OK".into()).await;
            declared.message_count() as usize
        }
        Err(_) => 0, // NOT_FOUND closed the channel
    }
}

/// Takes one message from `queue` with `basic.get` (acked), if there is one.
pub async fn get(conn: &Connection, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    let channel = conn.create_channel().await.expect("channel");
    let options = BasicGetOptions { no_ack: true };
    let message = channel
        .basic_get(queue.into(), options)
        .await
        .expect("basic.get");
    let _ = channel.close(200, "OK".into()).await;
    message
}

/// Deletes `queues` and the exchanges named like them (Celery declares one per queue).
pub async fn delete_queues(conn: &Connection, queues: &[String]) {
    let channel = conn.create_channel().await.expect("channel");
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = channel
            .exchange_delete(queue.as_str().into(), Default::default())
            .await;
    }
    let _ = channel.close(200, "OK".into()).await;
}

/// The pids of the connections RabbitMQ has open under `name` (their
/// `connection_name` client property), found with `rabbitmqctl`.
pub fn connections_named(name: &str) -> Vec<String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split('\t').next().map(str::to_owned))
        .collect()
}

/// Closes the connections named `name` from the server side, as a RabbitMQ restart or
/// a network cut would end them; returns how many were closed.
pub fn close_connections_named(name: &str) -> usize {
    let pids = connections_named(name);
    for pid in &pids {
        let status = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "closed by a celeriac test"])
            .output()
            .expect("rabbitmqctl runs");
        assert!(status.status.success(), "{status:?}");
    }
    pids.len()
}
