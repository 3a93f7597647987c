//! kombu's Redis transport: the conformance suite, plus the wire details Python workers
//! rely on (key names, the unacked bookkeeping, restore after the visibility timeout).

use std::sync::Arc;
use std::time::Duration;

use celeriac::broker::{Broker, Consumer, RedisBroker, RedisOptions};
use redis::aio::MultiplexedConnection;

use crate::broker_suite;
use crate::conformance::{Harness, message, next};
use crate::reply_cutter::ReplyCutter;

fn redis_url() -> String {
    std::env::var("CELERIAC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// A broker whose every key starts with a fresh `celeriac-test-<uuid>:` prefix, so tests
/// run in parallel without seeing each other's `unacked` entries.
pub struct RedisHarness {
    broker: Arc<RedisBroker>,
    raw: MultiplexedConnection,
    prefix: String,
}

impl RedisHarness {
    async fn with(options: impl FnOnce(&mut RedisOptions)) -> Self {
        let url = redis_url();
        let prefix = format!("celeriac-test-{}:", uuid::Uuid::new_v4());
        let mut opts = RedisOptions {
            global_keyprefix: prefix.clone(),
            ..RedisOptions::default()
        };
        options(&mut opts);
        let broker = RedisBroker::connect_with(&url, opts)
            .await
            .unwrap_or_else(|e| panic!("Redis at {url} is unreachable: {e}"));
        let raw = redis::Client::open(url.as_str())
            .unwrap_or_else(|e| panic!("bad Redis URL {url}: {e}"))
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("Redis at {url} is unreachable: {e}"));
        RedisHarness {
            broker: Arc::new(broker),
            raw,
            prefix,
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        cmd.query_async(&mut self.raw.clone())
            .await
            .expect("redis command")
    }
}

impl Harness for RedisHarness {
    type B = RedisBroker;

    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    fn broker(&self) -> Arc<RedisBroker> {
        Arc::clone(&self.broker)
    }

    fn queue(&self, name: &str) -> String {
        format!("{name}-{}", uuid::Uuid::new_v4())
    }

    async fn waiting(&self, queue: &str) -> usize {
        let mut total = 0;
        for step in [0u8, 3, 6, 9] {
            total += self
                .query::<usize>(redis::cmd("LLEN").arg(self.broker.queue_key(queue, step)))
                .await;
        }
        total
    }

    async fn is_unacked(&self, delivery_tag: &str) -> bool {
        let in_hash: bool = self
            .query(
                redis::cmd("HEXISTS")
                    .arg(self.broker.key("unacked"))
                    .arg(delivery_tag),
            )
            .await;
        let score: Option<f64> = self
            .query(
                redis::cmd("ZSCORE")
                    .arg(self.broker.key("unacked_index"))
                    .arg(delivery_tag),
            )
            .await;
        assert_eq!(in_hash, score.is_some(), "unacked and unacked_index agree");
        in_hash
    }

    async fn cleanup(self) {
        let keys: Vec<String> = self
            .query(redis::cmd("KEYS").arg(format!("{}*", self.prefix)))
            .await;
        if !keys.is_empty() {
            let () = self.query(redis::cmd("DEL").arg(&keys)).await;
        }
    }
}

broker_suite!(redis_transport, RedisHarness);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_message_returns_after_visibility_timeout_marked_redelivered() {
    let h = RedisHarness::with(|o| o.visibility_timeout = Duration::from_millis(300)).await;
    let q = h.queue("restore");
    h.broker
        .publish("", &q, &message("1", None))
        .await
        .expect("publish");
    let first = {
        let consumer = Consumer::new(h.broker(), vec![q.clone()], 1);
        next(&consumer).await
        // consumer dropped without acking, as if its worker died
    };
    assert_eq!(
        h.broker.restore_visible().await.expect("restore"),
        0,
        "not yet expired"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.broker.restore_visible().await.expect("restore"), 1);
    assert!(!h.is_unacked(first.delivery_tag()).await);
    let mutex: bool = h
        .query(redis::cmd("EXISTS").arg(h.broker.key("unacked_mutex")))
        .await;
    assert!(!mutex, "the lock is released");
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 1);
    let again = next(&consumer).await;
    assert_eq!(
        again.delivery_tag(),
        first.delivery_tag(),
        "same delivery tag kept"
    );
    assert!(again.redelivered);
    assert_eq!(
        again.headers.get("redelivered"),
        Some(&serde_json::Value::Bool(true))
    );
    consumer.ack(again.delivery_tag()).await.expect("ack");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_visible_skips_when_another_process_holds_the_lock() {
    let h = RedisHarness::with(|o| o.visibility_timeout = Duration::from_millis(100)).await;
    let q = h.queue("locked");
    h.broker
        .publish("", &q, &message("1", None))
        .await
        .expect("publish");
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 1);
    let d = next(&consumer).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mutex = h.broker.key("unacked_mutex");
    let () = h
        .query(
            redis::cmd("SET")
                .arg(&mutex)
                .arg("other-token")
                .arg("PX")
                .arg(60_000),
        )
        .await;
    assert_eq!(h.broker.restore_visible().await.expect("restore"), 0);
    let token: String = h.query(redis::cmd("GET").arg(&mutex)).await;
    assert_eq!(token, "other-token", "someone else's lock is left alone");
    assert!(h.is_unacked(d.delivery_tag()).await);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_records_kombu_unacked_entry_and_priority_sublist() {
    let h = RedisHarness::new().await;
    let q = h.queue("wire");
    h.broker
        .publish("", &q, &message("1", Some(5)))
        .await
        .expect("publish");
    let sub = format!("{}{q}\x06\x163", h.prefix);
    let len: usize = h.query(redis::cmd("LLEN").arg(&sub)).await;
    assert_eq!(len, 1, "priority 5 goes to the step-3 sub-list");
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 1);
    let d = next(&consumer).await;
    let stored: String = h
        .query(
            redis::cmd("HGET")
                .arg(format!("{}unacked", h.prefix))
                .arg(d.delivery_tag()),
        )
        .await;
    let stored: serde_json::Value = serde_json::from_str(&stored).expect("JSON");
    let arr = stored
        .as_array()
        .expect("[envelope, exchange, routing_key]");
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[1], "");
    assert_eq!(arr[2], q.as_str());
    assert_eq!(arr[0]["properties"]["delivery_tag"], d.delivery_tag());
    assert_eq!(arr[0]["properties"]["priority"], 5);
    assert_eq!(arr[0]["properties"]["body_encoding"], "base64");
    assert_eq!(arr[0]["body"], "MQ==");
    consumer.ack(d.delivery_tag()).await.expect("ack");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_named_exchange_follows_kombu_bindings() {
    let h = RedisHarness::new().await;
    let (a, b) = (h.queue("bound-a"), h.queue("bound-b"));
    let bindings = h.broker.key("_kombu.binding.tasks");
    for (key, queue) in [("rk", &a), ("rk", &b), ("other", &a)] {
        let () = h
            .query(
                redis::cmd("SADD")
                    .arg(&bindings)
                    .arg(format!("{key}\x06\x16\x06\x16{queue}")),
            )
            .await;
    }
    h.broker
        .publish("tasks", "rk", &message("1", None))
        .await
        .expect("publish");
    assert_eq!(h.waiting(&a).await, 1);
    assert_eq!(h.waiting(&b).await, 1);
    let consumer = Consumer::new(h.broker(), vec![a.clone()], 1);
    let d = next(&consumer).await;
    assert_eq!(d.properties.delivery_info.exchange, "tasks");
    consumer
        .reject(d.delivery_tag(), true)
        .await
        .expect("requeue through the binding");
    assert_eq!(h.waiting(&a).await, 1);
    assert_eq!(
        h.waiting(&b).await,
        2,
        "the binding lookup requeues to every bound queue"
    );
    h.cleanup().await;
}

#[tokio::test]
async fn unreachable_server_is_a_connection_error_naming_it() {
    let err = RedisBroker::connect("redis://127.0.0.1:1/0")
        .await
        .err()
        .expect("no server on port 1");
    assert!(err.is_connection(), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_envelope_in_a_batch_is_dropped_and_the_rest_delivered() {
    let h = RedisHarness::new().await;
    let q = h.queue("batch");
    h.broker
        .publish("", &q, &message("first", None))
        .await
        .expect("publish");
    let key = h.broker.queue_key(&q, 0);
    for garbage in [
        "not json",
        r#"{"body": 1, "properties": {"delivery_tag": "t-bad"}}"#,
    ] {
        let () = h.query(redis::cmd("LPUSH").arg(&key).arg(garbage)).await;
    }
    h.broker
        .publish("", &q, &message("last", None))
        .await
        .expect("publish");
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 8);
    let first = next(&consumer).await;
    let last = next(&consumer).await;
    assert_eq!(
        (first.body.as_slice(), last.body.as_slice()),
        (&b"first"[..], &b"last"[..])
    );
    assert_eq!(h.waiting(&q).await, 0, "the garbage left the queue");
    assert!(
        !h.is_unacked("t-bad").await,
        "a dropped message leaves no unacked entry to restore forever"
    );
    assert!(h.is_unacked(first.delivery_tag()).await);
    for d in [first, last] {
        consumer.ack(d.delivery_tag()).await.expect("ack");
    }
    h.cleanup().await;
}

/// The fetch script reads the delivery tag from the envelope's own `properties`, wherever
/// that sits and whatever nested objects named `properties` the message also carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_tag_comes_from_the_envelope_properties_not_a_nested_one() {
    let h = RedisHarness::new().await;
    let q = h.queue("nested-properties");
    let key = h.broker.queue_key(&q, 0);
    let info = format!(r#"{{"exchange": "", "routing_key": "{q}""#);
    let properties_first = format!(
        r#"{{"properties": {{"delivery_tag": "t-first", "body_encoding": "base64", "delivery_info": {info}}}}}, "body": "MQ==", "content-encoding": "utf-8", "content-type": "text/plain", "headers": {{"x": {{"properties": {{"delivery_tag": "t-nested"}}}}}}}}"#
    );
    let nested_inside = format!(
        r#"{{"body": "Mg==", "content-encoding": "utf-8", "content-type": "text/plain", "headers": {{}}, "properties": {{"delivery_info": {info}, "properties": {{"delivery_tag": "t-inner"}}}}, "body_encoding": "base64", "delivery_tag": "t-last"}}}}"#
    );
    for envelope in [&properties_first, &nested_inside] {
        serde_json::from_str::<serde_json::Value>(envelope).expect("the test's JSON is valid");
        let () = h.query(redis::cmd("LPUSH").arg(&key).arg(envelope)).await;
    }
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 8);
    let first = next(&consumer).await;
    let last = next(&consumer).await;
    assert_eq!(
        (first.delivery_tag(), last.delivery_tag()),
        ("t-first", "t-last")
    );
    for tag in ["t-first", "t-last"] {
        assert!(h.is_unacked(tag).await, "{tag} is recorded as unacked");
    }
    for tag in ["t-nested", "t-inner"] {
        assert!(!h.is_unacked(tag).await, "{tag} is not a delivery tag");
    }
    for d in [first, last] {
        consumer.ack(d.delivery_tag()).await.expect("ack");
    }
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acks_all_land_when_grouped() {
    let h = RedisHarness::new().await;
    let q = h.queue("acks");
    for i in 0..200 {
        h.broker
            .publish("", &q, &message(&i.to_string(), None))
            .await
            .expect("publish");
    }
    let consumer = Arc::new(Consumer::new(h.broker(), vec![q.clone()], 200));
    let mut tags = Vec::new();
    for _ in 0..200 {
        tags.push(next(&consumer).await.delivery_tag().to_owned());
    }
    let mut acks = tokio::task::JoinSet::new();
    for tag in tags.clone() {
        let consumer = Arc::clone(&consumer);
        acks.spawn(async move { consumer.ack(&tag).await });
    }
    while let Some(acked) = acks.join_next().await {
        acked.expect("ack task").expect("ack");
    }
    for tag in &tags {
        assert!(!h.is_unacked(tag).await, "{tag} is still unacked");
    }
    assert!(consumer.in_flight().is_empty());
    h.cleanup().await;
}

/// `host:port` of the test Redis server.
fn redis_address() -> String {
    let url = redis_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_whose_reply_is_lost_is_restored_by_the_next_fetch() {
    let h = RedisHarness::new().await;
    let cutter = ReplyCutter::start(redis_address()).await;
    let broker = RedisBroker::connect_with(
        &cutter.url(),
        RedisOptions {
            global_keyprefix: h.prefix.clone(),
            polling_interval: Duration::from_millis(100),
            ..RedisOptions::default()
        },
    )
    .await
    .expect("connect through the proxy");
    let q = h.queue("journal");
    for body in ["1", "2", "3"] {
        h.broker
            .publish("", &q, &message(body, None))
            .await
            .expect("publish");
    }
    let queues = [q.clone()];
    // The first fetch loads the script, so the cut reply below is the script's own.
    let first = broker.fetch(&queues, 1).await.expect("first fetch");
    assert_eq!(first.len(), 1);
    broker.ack(first[0].delivery_tag()).await.expect("ack");

    cutter.cut_next_reply();
    assert!(broker.fetch(&queues, 8).await.is_err(), "the reply was cut");
    assert_eq!(h.waiting(&q).await, 0, "the script ran and popped both");
    let unacked: usize = h.query(redis::cmd("HLEN").arg(broker.key("unacked"))).await;
    assert_eq!(unacked, 2, "both recorded as unacked, delivered to nobody");

    let mut recovered = Vec::new();
    for _ in 0..50 {
        match broker.fetch(&queues, 8).await {
            Ok(deliveries) if !deliveries.is_empty() => {
                recovered = deliveries;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let bodies: Vec<&[u8]> = recovered.iter().map(|d| d.body.as_slice()).collect();
    assert_eq!(bodies, [&b"2"[..], &b"3"[..]], "back at once, in order");
    assert!(recovered.iter().all(|d| d.redelivered));
    for delivery in &recovered {
        broker.ack(delivery.delivery_tag()).await.expect("ack");
    }
    let journals: Vec<String> = h
        .query(redis::cmd("KEYS").arg(format!("{}_celeriac.fetch.*", h.prefix)))
        .await;
    assert!(
        journals.len() <= 1,
        "only the last delivered fetch's journal is left: {journals:?}"
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_given_back_at_shutdown_is_taken_first_and_a_rejected_one_last() {
    let h = RedisHarness::new().await;
    let q = h.queue("give-back");
    for body in ["1", "2", "3"] {
        h.broker
            .publish("", &q, &message(body, None))
            .await
            .expect("publish");
    }
    let consumer = Consumer::new(h.broker(), vec![q.clone()], 1);
    let first = next(&consumer).await;
    consumer
        .give_back(first.delivery_tag())
        .await
        .expect("give back");
    let again = next(&consumer).await;
    assert_eq!(
        again.body, b"1",
        "kombu's restore_unacked: head of the queue"
    );
    assert!(again.redelivered);
    consumer
        .reject(again.delivery_tag(), true)
        .await
        .expect("reject");
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let delivery = next(&consumer).await;
        consumer.ack(delivery.delivery_tag()).await.expect("ack");
        bodies.push(delivery.body);
    }
    assert_eq!(bodies, [b"2", b"3", b"1"], "a requeue goes last");
    h.cleanup().await;
}
