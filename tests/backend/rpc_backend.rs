//! Celery's `rpc://` backend over RabbitMQ: each state of a task goes, as a message, to
//! the `reply_to` queue of the message that carried the task, with its `correlation_id`.

use std::sync::Arc;
use std::time::Duration;

use celeriac::backend::{BackendError, ResultBackend, RpcBackend, StoreOutcome, TaskMeta};
use celeriac::broker::{AmqpBroker, AmqpOptions, Broker, Consumer, Outgoing};
use celeriac::protocol::OutgoingTask;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};

use crate::amqp_support::{amqp_url, delete_queues, get, raw, unique_queue};
use crate::conformance::{key_order, task_id};

/// How long a delivery may take.
const WAIT: Duration = Duration::from_secs(5);

/// A broker, its rpc backend, a task queue and a client's reply queue.
struct Rpc {
    broker: Arc<AmqpBroker>,
    backend: RpcBackend,
    raw: lapin::Connection,
    tasks: String,
    replies: String,
}

impl Rpc {
    async fn new() -> Rpc {
        let url = amqp_url();
        let options = AmqpOptions {
            connection_name: format!("celeriac-test-{}", uuid::Uuid::new_v4()),
            ..AmqpOptions::default()
        };
        let broker = AmqpBroker::connect_with(&url, options)
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ at {url} is unreachable: {e}"));
        let backend = RpcBackend::new(&broker);
        let raw = raw().await;
        let replies = unique_queue("replies");
        declare_reply_queue(&raw, &replies).await;
        Rpc {
            broker: Arc::new(broker),
            backend,
            raw,
            tasks: unique_queue("rpc-tasks"),
            replies,
        }
    }

    /// Sends task `id` with `reply_to` and has the broker deliver it, as the worker would.
    async fn deliver(&self, id: &str, reply_to: Option<&str>) {
        let mut task = OutgoingTask::new(id, "proj.add", Vec::new(), Default::default());
        task.reply_to = reply_to.map(str::to_owned);
        self.broker
            .publish("", &self.tasks, &Outgoing::from(task.encode()))
            .await
            .expect("publish");
        let consumer = Consumer::new(Arc::clone(&self.broker), vec![self.tasks.clone()], 1);
        let delivery = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("delivered in time")
            .expect("fetch");
        consumer.ack(delivery.delivery_tag()).await.expect("ack");
    }

    async fn cleanup(self) {
        self.broker.close().await;
        delete_queues(&self.raw, &[self.tasks, self.replies]).await;
        let _ = self.raw.close(200, "OK".into()).await;
    }
}

/// A reply queue as Celery's rpc backend declares it for a client: auto-delete, with an
/// expiry (`result_expires`).
async fn declare_reply_queue(conn: &lapin::Connection, queue: &str) {
    let channel = conn.create_channel().await.expect("channel");
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(600_000));
    let options = QueueDeclareOptions {
        durable: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, arguments)
        .await
        .expect("reply queue");
    let _ = channel.close(200, "OK".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_goes_to_reply_to_with_the_correlation_id() {
    let rpc = Rpc::new().await;
    let id = task_id();
    rpc.deliver(&id, Some(&rpc.replies)).await;
    let started = TaskMeta::started(&id, 7, "w1@vm");
    let success = TaskMeta::success(&id, "4").expect("JSON");
    for meta in [&started, &success] {
        assert_eq!(
            rpc.backend.store(meta).await.expect("sent"),
            StoreOutcome::Stored
        );
    }
    for meta in [&started, &success] {
        let message = get(&rpc.raw, &rpc.replies).await.expect("a reply");
        let body = String::from_utf8(message.delivery.data.clone()).expect("UTF-8");
        assert_eq!(body, meta.to_json());
        assert_eq!(key_order(&body).last().map(String::as_str), Some("task_id"));
        let props = &message.delivery.properties;
        let text =
            |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
        assert_eq!(text(props.correlation_id()), Some(id.clone()));
        assert_eq!(
            text(props.content_type()).as_deref(),
            Some("application/json")
        );
        assert_eq!(text(props.content_encoding()).as_deref(), Some("utf-8"));
        assert_eq!(*props.delivery_mode(), Some(1), "result_persistent is off");
        assert_eq!(message.delivery.exchange.as_str(), "");
    }
    assert!(get(&rpc.raw, &rpc.replies).await.is_none());
    assert_eq!(
        rpc.backend.store(&success).await.expect("nothing to do"),
        StoreOutcome::NoDestination,
        "the route is dropped once a final state was sent"
    );
    rpc.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_results_are_sent_with_delivery_mode_2() {
    let rpc = Rpc::new().await;
    let backend = rpc.backend.clone().persistent(true);
    let id = task_id();
    rpc.deliver(&id, Some(&rpc.replies)).await;
    backend
        .store(&TaskMeta::success(&id, "1").expect("JSON"))
        .await
        .expect("sent");
    let message = get(&rpc.raw, &rpc.replies).await.expect("a reply");
    assert_eq!(*message.delivery.properties.delivery_mode(), Some(2));
    rpc.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_without_reply_to_sends_nothing() {
    let rpc = Rpc::new().await;
    let id = task_id();
    rpc.deliver(&id, None).await;
    assert_eq!(
        rpc.backend
            .store(&TaskMeta::success(&id, "1").expect("JSON"))
            .await
            .expect("nothing to do"),
        StoreOutcome::NoDestination
    );
    let unknown = TaskMeta::success(&task_id(), "1").expect("JSON");
    assert_eq!(
        rpc.backend.store(&unknown).await.expect("nothing to do"),
        StoreOutcome::NoDestination,
        "a task this broker never delivered"
    );
    rpc.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_queue_that_is_gone_is_dropped_quietly() {
    let rpc = Rpc::new().await;
    let id = task_id();
    rpc.deliver(&id, Some("celeriac-test-no-such-reply-queue"))
        .await;
    assert_eq!(
        rpc.backend
            .store(&TaskMeta::success(&id, "1").expect("JSON"))
            .await
            .expect("RabbitMQ drops an unroutable reply; not an error"),
        StoreOutcome::Stored
    );
    rpc.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_cannot_be_read_back() {
    let rpc = Rpc::new().await;
    let err = rpc.backend.get(&task_id()).await.expect_err("unsupported");
    assert!(
        matches!(err, BackendError::Unsupported { op: "get", .. }),
        "{err}"
    );
    assert!(!err.is_connection());
    rpc.cleanup().await;
}
