//! The promises every transport keeps, each written once as an `async fn` over a
//! [`Harness`]; `broker_suite!` instantiates the list for one transport.

use std::sync::Arc;
use std::time::Duration;

use celeriac::broker::{Broker, Consumer, Outgoing, PriorityOrder};
use serde_json::{Map, Value, json};

/// A fresh, isolated broker for one test: its own queue names and keys.
pub trait Harness: Sized {
    /// The transport under test.
    type B: Broker;
    /// Connects; panics (failing the test) with the server URL if it is unreachable.
    async fn new() -> Self;
    /// The transport.
    fn broker(&self) -> Arc<Self::B>;
    /// A queue name unique to this test.
    fn queue(&self, name: &str) -> String;
    /// Messages waiting in `queue` (not delivered).
    async fn waiting(&self, queue: &str) -> usize;
    /// True if the broker still tracks `delivery_tag` as delivered and unacked.
    async fn is_unacked(&self, delivery_tag: &str) -> bool;
    /// Removes everything this test created.
    async fn cleanup(self);
}

/// How long a fetch may take before a test gives up.
pub const WAIT: Duration = Duration::from_secs(5);

pub fn message(body: &str, priority: Option<u8>) -> Outgoing {
    let mut headers = Map::new();
    headers.insert("task".into(), json!("tests.echo"));
    headers.insert("id".into(), json!(body));
    headers.insert("nested".into(), json!({"a": [1, 2.5, null, "x"]}));
    Outgoing {
        body: body.as_bytes().to_vec(),
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        headers,
        correlation_id: Some(body.to_owned()),
        reply_to: Some("reply-queue".into()),
        priority,
        expiration: None,
    }
}

pub async fn next<B: Broker>(consumer: &Consumer<B>) -> celeriac::broker::Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a message within the wait")
        .expect("fetch succeeds")
}

/// Publishes one plain message to a fresh queue and fetches it with a prefetch of one.
async fn one_delivered<H: Harness>(
    h: &H,
    name: &str,
) -> (String, Consumer<H::B>, celeriac::broker::Delivery) {
    let q = h.queue(name);
    h.broker()
        .publish("", &q, &message("1", None))
        .await
        .expect("publish");
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 1);
    let delivery = next(&consumer).await;
    (q, consumer, delivery)
}

pub async fn publish_then_consume_keeps_body_headers_and_properties<H: Harness>(h: &H) {
    let q = h.queue("roundtrip");
    let sent = message("\"payload\"", Some(3));
    h.broker().publish("", &q, &sent).await.expect("publish");
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 1);
    let got = next(&consumer).await;
    assert_eq!(got.queue, q);
    assert_eq!(got.body, sent.body);
    assert_eq!(got.content_type, "application/json");
    assert_eq!(got.content_encoding, "utf-8");
    assert_eq!(got.headers.to_map(), sent.headers);
    assert_eq!(
        got.properties.correlation_id.as_deref(),
        Some("\"payload\"")
    );
    assert_eq!(got.properties.reply_to.as_deref(), Some("reply-queue"));
    assert_eq!(got.properties.priority, Some(3));
    assert_eq!(got.properties.delivery_info.exchange, "");
    assert_eq!(got.properties.delivery_info.routing_key, q);
    assert!(!got.properties.delivery_tag.is_empty());
    assert!(!got.redelivered);
    consumer.ack(got.delivery_tag()).await.expect("ack");
}

pub async fn ack_removes_message<H: Harness>(h: &H) {
    let (q, consumer, got) = one_delivered(h, "ack").await;
    assert!(
        h.is_unacked(got.delivery_tag()).await,
        "tracked while unacked"
    );
    consumer.ack(got.delivery_tag()).await.expect("ack");
    assert!(!h.is_unacked(got.delivery_tag()).await, "gone after ack");
    assert_eq!(h.waiting(&q).await, 0);
    assert!(consumer.in_flight().is_empty());
}

pub async fn reject_with_requeue_redelivers<H: Harness>(h: &H) {
    let (_, consumer, first) = one_delivered(h, "requeue").await;
    consumer
        .reject(first.delivery_tag(), true)
        .await
        .expect("reject");
    assert!(!h.is_unacked(first.delivery_tag()).await);
    let again = next(&consumer).await;
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers.get("id"), first.headers.get("id"));
    assert!(again.redelivered, "requeued message is marked redelivered");
    consumer.ack(again.delivery_tag()).await.expect("ack");
}

pub async fn reject_without_requeue_drops<H: Harness>(h: &H) {
    let (q, consumer, got) = one_delivered(h, "drop").await;
    consumer
        .reject(got.delivery_tag(), false)
        .await
        .expect("reject");
    assert!(!h.is_unacked(got.delivery_tag()).await);
    assert_eq!(h.waiting(&q).await, 0);
    let none = tokio::time::timeout(Duration::from_millis(1500), consumer.next()).await;
    assert!(none.is_err(), "nothing comes back: {none:?}");
}

pub async fn priority_order_follows_capabilities<H: Harness>(h: &H) {
    let q = h.queue("priority");
    let broker = h.broker();
    for p in [5u8, 0, 9] {
        broker
            .publish("", &q, &message(&p.to_string(), Some(p)))
            .await
            .expect("publish");
    }
    let expected: Vec<u8> = match broker.capabilities().priority {
        PriorityOrder::LowerFirst => vec![0, 5, 9],
        PriorityOrder::HigherFirst => vec![9, 5, 0],
        PriorityOrder::Unsupported => vec![5, 0, 9],
    };
    let consumer = Consumer::new(broker, vec![q], 0);
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next(&consumer).await;
        got.push(d.properties.priority.expect("priority property"));
        consumer.ack(d.delivery_tag()).await.expect("ack");
    }
    assert_eq!(got, expected);
}

pub async fn prefetch_holds_third_message_until_ack<H: Harness>(h: &H) {
    let q = h.queue("prefetch");
    for i in 0..3 {
        h.broker()
            .publish("", &q, &message(&i.to_string(), None))
            .await
            .expect("publish");
    }
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 2);
    let a = next(&consumer).await;
    let _b = next(&consumer).await;
    let blocked = tokio::time::timeout(Duration::from_millis(1500), consumer.next()).await;
    assert!(blocked.is_err(), "third delivery must wait for an ack");
    assert_eq!(h.waiting(&q).await, 1, "third message stays in the broker");
    consumer.ack(a.delivery_tag()).await.expect("ack");
    let c = next(&consumer).await;
    assert_eq!(c.body, b"2");
    assert_eq!(h.waiting(&q).await, 0);
}

pub async fn eta_hold_lends_a_prefetch_slot_until_dropped<H: Harness>(h: &H) {
    let q = h.queue("eta-hold");
    for i in 0..3 {
        h.broker()
            .publish("", &q, &message(&i.to_string(), None))
            .await
            .expect("publish");
    }
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 1);
    let held = next(&consumer).await;
    let hold = consumer.hold_for_eta();
    let due = next(&consumer).await;
    assert_eq!(
        due.body, b"1",
        "an ETA-held delivery must not use up the prefetch"
    );
    drop(hold);
    consumer.ack(due.delivery_tag()).await.expect("ack");
    let blocked = tokio::time::timeout(Duration::from_millis(1500), consumer.next()).await;
    assert!(
        blocked.is_err(),
        "the lent slot is paid back by the first ack after the hold ends"
    );
    assert_eq!(h.waiting(&q).await, 1);
    consumer.ack(held.delivery_tag()).await.expect("ack");
    assert_eq!(next(&consumer).await.body, b"2");
}

pub async fn consumed_celery_v2_message_decodes<H: Harness>(h: &H) {
    let q = h.queue("celery");
    let id = "11111111-1111-1111-1111-111111111111";
    let headers: Map<String, Value> = serde_json::from_value(json!({
        "lang": "py", "task": "proj.add", "id": id, "shadow": null, "eta": null,
        "expires": null, "group": null, "group_index": null, "retries": 0,
        "timelimit": [null, null], "root_id": id, "parent_id": null, "argsrepr": "(2, 2)",
        "kwargsrepr": "{}", "origin": "gen19837@vm", "ignore_result": false,
        "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}
    }))
    .expect("headers object");
    let outgoing = Outgoing {
        body:
            br#"[[2, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#
                .to_vec(),
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        headers,
        correlation_id: Some(id.into()),
        reply_to: Some("2d970f97-5e90-35e4-8b55-dced593d30d1".into()),
        priority: Some(0),
        expiration: None,
    };
    h.broker()
        .publish("", &q, &outgoing)
        .await
        .expect("publish");
    let consumer = Consumer::new(h.broker(), vec![q], 1);
    let d = next(&consumer).await;
    let task = celeriac::protocol::decode(&d.raw()).expect("decodes");
    assert_eq!(task.id, id);
    assert_eq!(task.task, "proj.add");
    assert_eq!(task.args, vec![json!(2), json!(2)]);
    consumer.ack(d.delivery_tag()).await.expect("ack");
}

/// Instantiates every conformance case as a `#[tokio::test]` for one harness.
#[macro_export]
macro_rules! broker_suite {
    ($transport:ident, $harness:ty) => {
        mod $transport {
            use super::*;
            $crate::broker_suite!(@cases $harness;
                publish_then_consume_keeps_body_headers_and_properties,
                ack_removes_message,
                reject_with_requeue_redelivers,
                reject_without_requeue_drops,
                priority_order_follows_capabilities,
                prefetch_holds_third_message_until_ack,
                eta_hold_lends_a_prefetch_slot_until_dropped,
                consumed_celery_v2_message_decodes,
            );
        }
    };
    (@cases $harness:ty; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let h = <$harness as $crate::conformance::Harness>::new().await;
                $crate::conformance::$case(&h).await;
                $crate::conformance::Harness::cleanup(h).await;
            }
        )*
    };
}
