//! The Redis chord join (Celery 5.7's algorithm): parts counted once, the body claimed by
//! exactly one part, results in header order, state cleaned up, late parts ignored.

use celeriac::backend::{ChordPart, PartReturn, RedisBackendConfig, ResultBackend};
use serde_json::json;

use crate::conformance::task_id;
use crate::redis_backend::{connect, redis_url};

fn part<'a>(group_id: &'a str, task_id: &'a str, index: u64, result: &'a str) -> ChordPart<'a> {
    ChordPart {
        group_id,
        task_id,
        group_index: Some(index),
        state: "SUCCESS",
        result_json: result,
    }
}

async fn raw() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    redis::Client::open(url.as_str())
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is unreachable: {e}"))
}

#[tokio::test]
async fn the_part_completing_the_header_claims_the_body_once_with_results_in_order() {
    let backend = connect(RedisBackendConfig::new(redis_url()).result_expires(Some(120))).await;
    let group = task_id();
    let (first, second, third) = (task_id(), task_id(), task_id());
    backend.set_chord_size(&group, 3).await.expect("size");

    let returned = |p| {
        let backend = backend.clone();
        async move { backend.chord_part_return(&p).await.expect("part return") }
    };
    assert_eq!(
        returned(part(&group, &third, 2, "30")).await,
        PartReturn::Waiting
    );
    assert_eq!(
        returned(part(&group, &first, 0, "10")).await,
        PartReturn::Waiting
    );
    // A redelivered duplicate of a part already counted does not complete the header.
    assert_eq!(
        returned(part(&group, &first, 0, "10")).await,
        PartReturn::Waiting
    );
    let PartReturn::Claimed(claim) = returned(part(&group, &second, 1, "[2, 0]")).await else {
        panic!("the last part claims the body");
    };
    let values: Vec<_> = claim.results.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values, vec![json!(10), json!([2, 0]), json!(30)]);
    let ids: Vec<_> = claim.results.iter().map(|r| r.task_id.clone()).collect();
    assert_eq!(ids, vec![first.clone(), second.clone(), third.clone()]);

    let key = format!("celery-taskset-meta-{group}");
    let mut conn = raw().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{key}.j"))
        .query_async(&mut conn)
        .await
        .expect("TTL");
    assert!(
        (110..=120).contains(&ttl),
        "chord keys expire with results: {ttl}"
    );

    assert!(backend.chord_claim_extend(&claim).await.expect("extend"));
    backend.chord_cleanup(&claim).await.expect("cleanup");
    let left: i64 = redis::cmd("EXISTS")
        .arg(format!("{key}.j"))
        .arg(format!("{key}.s"))
        .arg(format!("{key}.d"))
        .arg(format!("{key}.t"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(left, 0);
    let done: Option<String> = redis::cmd("GET")
        .arg(format!("{key}.c"))
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(done.as_deref(), Some("done"));
    assert_eq!(
        returned(part(&group, &second, 1, "[2, 0]")).await,
        PartReturn::AlreadyDone,
        "a late duplicate cannot fire the body again"
    );
}

#[tokio::test]
async fn a_claim_held_by_another_worker_is_not_taken() {
    let backend = connect(RedisBackendConfig::new(redis_url()).result_expires(Some(60))).await;
    let group = task_id();
    let only = task_id();
    backend.set_chord_size(&group, 1).await.expect("size");
    let PartReturn::Claimed(mut claim) = backend
        .chord_part_return(&part(&group, &only, 0, "1"))
        .await
        .expect("part return")
    else {
        panic!("a one-part chord is complete at once");
    };
    claim.token = "someone else".into();
    assert!(!backend.chord_claim_extend(&claim).await.expect("extend"));
    backend.chord_cleanup(&claim).await.expect("cleanup");
    let size: Option<String> = redis::cmd("GET")
        .arg(format!("celery-taskset-meta-{group}.s"))
        .query_async(&mut raw().await)
        .await
        .expect("GET");
    assert_eq!(
        size.as_deref(),
        Some("1"),
        "cleanup by a non-holder changes nothing"
    );
}

async fn key_type(key: &str) -> String {
    redis::cmd("TYPE")
        .arg(key)
        .query_async(&mut raw().await)
        .await
        .expect("TYPE")
}

#[tokio::test]
async fn unordered_chords_keep_their_results_in_a_list_in_arrival_order() {
    let backend = connect(
        RedisBackendConfig::new(redis_url())
            .result_expires(Some(60))
            .result_chord_ordered(false),
    )
    .await;
    let group = task_id();
    let (first, second, third) = (task_id(), task_id(), task_id());
    backend.set_chord_size(&group, 3).await.expect("size");
    for (id, index, value) in [(&third, 2, "30"), (&first, 0, "10")] {
        let returned = backend
            .chord_part_return(&part(&group, id, index, value))
            .await;
        assert_eq!(returned.expect("part return"), PartReturn::Waiting);
    }
    assert_eq!(
        key_type(&format!("celery-taskset-meta-{group}.j")).await,
        "list"
    );
    let PartReturn::Claimed(claim) = backend
        .chord_part_return(&part(&group, &second, 1, "20"))
        .await
        .expect("part return")
    else {
        panic!("the last part claims the body");
    };
    assert_eq!(claim.body_argument(), Ok(json!([30, 10, 20])));
}

#[tokio::test]
async fn an_ordered_worker_follows_a_chord_another_worker_keeps_in_a_list() {
    let config = RedisBackendConfig::new(redis_url()).result_expires(Some(60));
    let unordered = connect(config.clone().result_chord_ordered(false)).await;
    let ordered = connect(config).await;
    let group = task_id();
    let (first, second) = (task_id(), task_id());
    ordered.set_chord_size(&group, 2).await.expect("size");
    let returned = unordered
        .chord_part_return(&part(&group, &second, 1, "2"))
        .await;
    assert_eq!(returned.expect("part return"), PartReturn::Waiting);
    let PartReturn::Claimed(claim) = ordered
        .chord_part_return(&part(&group, &first, 0, "1"))
        .await
        .expect("an ordered worker records into the list rather than failing on its type")
    else {
        panic!("the last part claims the body");
    };
    assert_eq!(claim.body_argument(), Ok(json!([2, 1])));
    assert_eq!(
        key_type(&format!("celery-taskset-meta-{group}.j")).await,
        "list"
    );
}
