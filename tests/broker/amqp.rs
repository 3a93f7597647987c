//! RabbitMQ: the conformance suite, plus what Python workers and clients rely on:
//! Celery's entities declared identically whoever comes first, message properties on the
//! wire, unacked deliveries returning when a connection ends, and reconnecting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use celeriac::broker::amqp::Declared;
use celeriac::broker::{AmqpBroker, AmqpOptions, Broker, BrokerError, Consumer, Outgoing};
use celeriac::protocol::{OutgoingTask, Timestamp};
use lapin::Connection;

use crate::amqp_support::{
    amqp_url, celery_arguments, close_connections_named, declare_celery_way, delete_queues, get,
    raw, ready, unique_queue,
};
use crate::broker_suite;
use crate::conformance::{Harness, WAIT, message, next};

/// A broker whose queues get `x-max-priority` 10 (so priorities work), with its own
/// connection name; every queue it hands out is deleted at cleanup.
pub struct AmqpHarness {
    broker: Arc<AmqpBroker>,
    raw: Connection,
    /// The connection name, unique to the test.
    name: String,
    /// Queues to delete at cleanup.
    queues: Mutex<Vec<String>>,
}

impl AmqpHarness {
    async fn with(options: impl FnOnce(&mut AmqpOptions)) -> Self {
        let url = amqp_url();
        let name = format!("celeriac-test-{}", uuid::Uuid::new_v4());
        let mut opts = AmqpOptions {
            queue_max_priority: Some(10),
            connection_name: name.clone(),
            ..AmqpOptions::default()
        };
        options(&mut opts);
        let broker = AmqpBroker::connect_with(&url, opts)
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ at {url} is unreachable: {e}"));
        AmqpHarness {
            broker: Arc::new(broker),
            raw: raw().await,
            name,
            queues: Mutex::default(),
        }
    }

    /// A unique queue name, deleted at cleanup.
    fn track(&self, queue: String) -> String {
        self.queues
            .lock()
            .expect("not poisoned")
            .push(queue.clone());
        queue
    }
}

impl Harness for AmqpHarness {
    type B = AmqpBroker;

    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    fn broker(&self) -> Arc<AmqpBroker> {
        Arc::clone(&self.broker)
    }

    fn queue(&self, name: &str) -> String {
        self.track(unique_queue(name))
    }

    async fn waiting(&self, queue: &str) -> usize {
        ready(&self.raw, queue).await
    }

    async fn is_unacked(&self, delivery_tag: &str) -> bool {
        self.broker.is_unacked(delivery_tag)
    }

    async fn cleanup(self) {
        self.broker.close().await;
        let queues = self.queues.lock().expect("not poisoned").clone();
        delete_queues(&self.raw, &queues).await;
        let _ = self.raw.close(200, "OK".into()).await;
    }
}

broker_suite!(amqp_transport, AmqpHarness);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_declared_the_celery_way_first_is_declared_as_asked() {
    let h = AmqpHarness::new().await;
    let q = h.queue("python-first");
    declare_celery_way(&h.raw, &q, celery_arguments(Some(10)))
        .await
        .expect("a Celery client declares it");
    let declared = h.broker.declare_queue(&q).await.expect("declare");
    assert_eq!(declared, Declared::AsAsked, "identical flags and arguments");
    h.broker
        .publish("", &q, &message("1", Some(7)))
        .await
        .expect("publish");
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 1);
    let d = next(&consumer).await;
    assert_eq!(d.properties.priority, Some(7));
    consumer.ack(d.delivery_tag()).await.expect("ack");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_declared_by_celeriac_first_is_accepted_the_celery_way() {
    for max_priority in [None, Some(10u8)] {
        let h = AmqpHarness::with(|o| o.queue_max_priority = max_priority).await;
        let q = h.queue("celeriac-first");
        assert_eq!(
            h.broker.declare_queue(&q).await.expect("declare"),
            Declared::AsAsked
        );
        declare_celery_way(&h.raw, &q, celery_arguments(max_priority.map(i32::from)))
            .await
            .unwrap_or_else(|e| panic!("a Celery client is refused ({max_priority:?}): {e}"));
        h.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_with_other_arguments_is_consumed_as_it_is() {
    let h = AmqpHarness::new().await;
    let q = h.queue("other-args");
    declare_celery_way(&h.raw, &q, celery_arguments(Some(5)))
        .await
        .expect("declared with x-max-priority 5");
    let declared = h.broker.declare_queue(&q).await.expect("not refused");
    assert!(
        matches!(&declared, Declared::Existing { reason } if reason.contains("x-max-priority")),
        "{declared:?}"
    );
    h.broker
        .publish("", &q, &message("1", None))
        .await
        .expect("publish on the same connection still works");
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 1);
    let d = next(&consumer).await;
    consumer.ack(d.delivery_tag()).await.expect("ack");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_task_carries_celery_properties_on_the_wire() {
    let h = AmqpHarness::new().await;
    let q = h.queue("wire");
    let mut task = OutgoingTask::new(
        "W-1",
        "proj.add",
        vec![2.into(), 2.into()],
        Default::default(),
    );
    task.reply_to = Some("reply-here".into());
    task.priority = Some(4);
    let in_a_minute = Timestamp::from_unix_micros(celeriac::worker::now_micros() + 60_000_000);
    task.expires = Some(in_a_minute);
    let outgoing = Outgoing::from(task.encode());
    h.broker.publish("", &q, &outgoing).await.expect("publish");
    let got = get(&h.raw, &q).await.expect("the message is queued");
    let props = &got.delivery.properties;
    let text = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    assert_eq!(
        text(props.content_type()).as_deref(),
        Some("application/json")
    );
    assert_eq!(text(props.content_encoding()).as_deref(), Some("utf-8"));
    assert_eq!(text(props.correlation_id()).as_deref(), Some("W-1"));
    assert_eq!(text(props.reply_to()).as_deref(), Some("reply-here"));
    assert_eq!(*props.delivery_mode(), Some(2));
    assert_eq!(*props.priority(), Some(4));
    let expiration: u64 = text(props.expiration())
        .expect("expiration set from expires")
        .parse()
        .expect("milliseconds");
    assert!((55_000..=60_000).contains(&expiration), "{expiration}");
    let headers = props.headers().as_ref().expect("application_headers");
    assert_eq!(
        headers.inner().get("task"),
        Some(&lapin::types::AMQPValue::LongString("proj.add".into()))
    );
    assert_eq!(
        headers.inner().get("shadow"),
        Some(&lapin::types::AMQPValue::Void)
    );
    assert_eq!(got.delivery.exchange.as_str(), "");
    assert_eq!(got.delivery.routing_key.as_str(), q);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_task_is_dropped_by_rabbitmq() {
    let h = AmqpHarness::new().await;
    let q = h.queue("expired");
    let mut task = OutgoingTask::new("E-1", "proj.add", Vec::new(), Default::default());
    task.expires = Some(Timestamp::from_unix_micros(
        celeriac::worker::now_micros() - 1_000_000,
    ));
    let outgoing = Outgoing::from(task.encode());
    assert_eq!(outgoing.expiration, Some(Duration::ZERO), "clamped at 0");
    h.broker.publish("", &q, &outgoing).await.expect("publish");
    assert_eq!(h.waiting(&q).await, 0, "a TTL of 0 expires it at once");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_delivery_returns_redelivered_when_the_connection_closes() {
    let h = AmqpHarness::new().await;
    let q = h.queue("closed");
    h.broker
        .publish("", &q, &message("1", None))
        .await
        .expect("publish");
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 1);
    let first = next(&consumer).await;
    assert_eq!(h.waiting(&q).await, 0, "delivered, unacked");
    h.broker.close().await;
    assert!(!h.is_unacked(first.delivery_tag()).await, "forgotten");
    assert_eq!(h.waiting(&q).await, 1, "back in the queue");
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 1);
    let again = next(&consumer).await;
    assert_eq!(again.body, first.body);
    assert!(again.redelivered);
    assert_ne!(
        again.delivery_tag(),
        first.delivery_tag(),
        "tags of another connection never collide"
    );
    consumer
        .ack(first.delivery_tag())
        .await
        .expect("acking a tag of a closed connection is a no-op");
    assert!(h.is_unacked(again.delivery_tag()).await);
    consumer.ack(again.delivery_tag()).await.expect("ack");
    h.cleanup().await;
}

/// Acks asked for together go out as one `multiple` ack only where nothing unsettled lies
/// below them: a delivery still held (say, for its ETA) under a pile of acked ones must
/// come back when the connection closes, and none of the acked ones may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_sent_together_never_cover_a_delivery_still_held() {
    let h = AmqpHarness::new().await;
    let q = h.queue("coalesced");
    for body in ["a", "b", "held", "c", "d", "e"] {
        h.broker
            .publish("", &q, &message(body, None))
            .await
            .expect("publish");
    }
    let consumer = Arc::new(Consumer::new(h.broker(), vec![q.clone()], 6));
    let mut deliveries = Vec::new();
    while deliveries.len() < 6 {
        deliveries.push(next(&consumer).await);
    }
    let held = deliveries.remove(2);
    assert_eq!(held.body, b"held");
    // Every ack at once, so they pile up behind the first one written: the two below the
    // held delivery may go as one `multiple` ack, the three above it may not.
    let acks: Vec<_> = deliveries
        .iter()
        .map(|delivery| {
            let (consumer, tag) = (Arc::clone(&consumer), delivery.delivery_tag().to_owned());
            tokio::spawn(async move { consumer.ack(&tag).await })
        })
        .collect();
    for ack in acks {
        ack.await.expect("joined").expect("ack");
    }
    assert!(h.is_unacked(held.delivery_tag()).await);
    h.broker.close().await;
    assert_eq!(h.waiting(&q).await, 1, "only the held delivery went back");
    let again = next(&Consumer::new(h.broker(), vec![q.clone()], 1)).await;
    assert_eq!(again.body, b"held");
    assert!(again.redelivered);
    h.cleanup().await;
}

/// Acks out of order, the lowest last, then many at once: every one reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_out_of_order_or_together_all_reach_the_server() {
    let h = AmqpHarness::new().await;
    let q = h.queue("out-of-order");
    for body in ["1", "2", "3", "4"] {
        h.broker
            .publish("", &q, &message(body, None))
            .await
            .expect("publish");
    }
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 4);
    let mut deliveries = Vec::new();
    while deliveries.len() < 4 {
        deliveries.push(next(&consumer).await);
    }
    for index in [3, 1, 2, 0] {
        consumer
            .ack(deliveries[index].delivery_tag())
            .await
            .expect("ack");
    }
    consumer
        .reject(deliveries[0].delivery_tag(), true)
        .await
        .expect("settling a settled tag again is a no-op");
    for body in 0..50 {
        h.broker
            .publish("", &q, &message(&body.to_string(), None))
            .await
            .expect("publish");
    }
    let consumer = Arc::new(consumer);
    let mut acks = Vec::new();
    for _ in 0..50 {
        let delivery = next(&consumer).await;
        let consumer = Arc::clone(&consumer);
        acks.push(tokio::spawn(async move {
            consumer.ack(delivery.delivery_tag()).await
        }));
    }
    for ack in acks {
        ack.await.expect("joined").expect("ack");
    }
    h.broker.close().await;
    assert_eq!(h.waiting(&q).await, 0, "every ack reached the server");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_is_a_connection_error_and_the_next_fetch_resumes() {
    let h = AmqpHarness::new().await;
    let q = h.queue("reconnect");
    h.broker
        .publish("", &q, &message("1", None))
        .await
        .expect("publish");
    let broker = h.broker();
    let first = broker
        .fetch(std::slice::from_ref(&q), 1)
        .await
        .expect("fetch")
        .pop()
        .expect("one delivery");
    let closed = close_connections_named(&format!("{} consumer", h.name));
    assert_eq!(closed, 1, "the consuming connection was found");
    let err = tokio::time::timeout(WAIT, async {
        loop {
            match broker.fetch(std::slice::from_ref(&q), 1).await {
                Err(err) => return err,
                Ok(got) => assert!(got.is_empty(), "nothing new before the error"),
            }
        }
    })
    .await
    .expect("the drop is noticed");
    assert!(err.is_connection(), "{err}");
    let again = tokio::time::timeout(WAIT, async {
        loop {
            match broker.fetch(std::slice::from_ref(&q), 1).await {
                Ok(mut got) if !got.is_empty() => return got.remove(0),
                Ok(_) => {}
                Err(err) => panic!("the fetch after the error reconnects: {err}"),
            }
        }
    })
    .await
    .expect("redelivered after reconnecting");
    assert_eq!(again.body, first.body);
    assert!(again.redelivered);
    broker.ack(again.delivery_tag()).await.expect("ack");
    assert_eq!(h.waiting(&q).await, 0);
    h.cleanup().await;
}

/// A task that finishes just after the connection dropped, before any fetch noticed,
/// settles its delivery on a channel that is gone: that must end (the server requeued the
/// message), never wait forever holding the turn every later ack needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_a_delivery_of_a_dropped_connection_ends_and_later_acks_go_through() {
    let h = AmqpHarness::new().await;
    let q = h.queue("settle-after-drop");
    for id in ["1", "2", "3"] {
        h.broker
            .publish("", &q, &message(id, None))
            .await
            .expect("publish");
    }
    let broker = h.broker();
    let mut held = Vec::new();
    tokio::time::timeout(WAIT, async {
        while held.len() < 2 {
            let got = broker.fetch(std::slice::from_ref(&q), 2 - held.len());
            held.extend(got.await.expect("fetch"));
        }
    })
    .await
    .expect("two deliveries in hand");
    assert_eq!(close_connections_named(&format!("{} consumer", h.name)), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ack = tokio::time::timeout(WAIT, broker.ack(held[0].delivery_tag())).await;
    assert!(ack.is_ok(), "an ack on the dropped connection never ended");
    let reject = tokio::time::timeout(WAIT, broker.reject(held[1].delivery_tag(), true)).await;
    assert!(
        reject.is_ok(),
        "a reject on the dropped connection never ended"
    );

    let mut seen = Vec::new();
    let all_three = tokio::time::timeout(WAIT * 2, async {
        while seen.len() < 3 {
            if let Ok(got) = broker.fetch(std::slice::from_ref(&q), 3).await {
                for delivery in got {
                    broker
                        .ack(delivery.delivery_tag())
                        .await
                        .expect("ack on the new connection");
                    seen.push(delivery.body);
                }
            }
        }
    })
    .await;
    assert!(
        all_three.is_ok(),
        "{} of 3 messages came back and were acked",
        seen.len()
    );
    broker.close().await;
    assert_eq!(
        h.waiting(&q).await,
        0,
        "every ack on the new connection reached the server"
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_reconnects_after_the_connection_dropped() {
    let h = AmqpHarness::new().await;
    let q = h.queue("republish");
    h.broker
        .publish("", &q, &message("1", None))
        .await
        .expect("publish");
    assert_eq!(close_connections_named(&format!("{} publisher", h.name)), 1);
    let mut published = Err(None);
    for _ in 0..20 {
        match h.broker.publish("", &q, &message("2", None)).await {
            Ok(()) => {
                published = Ok(());
                break;
            }
            Err(err) if err.is_connection() => published = Err(Some(err)),
            Err(err) => panic!("only connection errors while reconnecting: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    published.unwrap_or_else(|e| panic!("publish resumed: {e:?}"));
    assert_eq!(h.waiting(&q).await, 2);
    h.cleanup().await;
}

#[tokio::test]
async fn unreachable_server_is_a_connection_error_naming_it() {
    let err = AmqpBroker::connect("amqp://guest:s3cret@127.0.0.1:1//")
        .await
        .err()
        .expect("no server on port 1");
    assert!(err.is_connection(), "{err}");
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

/// A listener that accepts and never speaks (a server still booting, the wrong service on
/// the port): the attempt fails after `connect_timeout` as a connection error, to be
/// retried, rather than waiting forever.
#[tokio::test]
async fn a_server_that_never_answers_the_handshake_times_out() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("address").port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let url = format!("amqp://guest:guest@127.0.0.1:{port}//?connect_timeout=0.3");
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(WAIT, AmqpBroker::connect(&url))
        .await
        .expect("the attempt ends")
        .err()
        .expect("nothing answers");
    assert!(err.is_connection(), "{err}");
    assert!(
        matches!(err, BrokerError::TimedOut { op: "connect", .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("within 0.3s"),
        "the message says how long it waited: {err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    held.abort();
}

#[tokio::test]
async fn bad_url_is_refused_before_connecting() {
    let err = AmqpBroker::connect("amqp://h/?heartbeat=soon")
        .await
        .err()
        .expect("bad heartbeat");
    assert!(matches!(err, BrokerError::InvalidUrl { .. }), "{err}");
    assert!(!err.is_connection());
}
