//! Hot swap in a real `celeriac worker` on Redis: components replaced, refused and removed
//! in its tasks directory while thousands of tasks flow, without losing or failing one.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::celeriac_cli::path_str;
use crate::support::guests;
use crate::support::hotswap::{drop_file, versioned_echo};
use crate::support::redis_worker::{Client, WorkerProcess};

const TASKS: usize = 5_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_task_stream_switches_from_v1_to_v2_once_and_a_broken_v3_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    std::fs::create_dir(&tasks).unwrap();
    drop_file(&tasks, "echo.wasm", &versioned_echo("v1"));
    // A cache of its own, so the worker compiles each version (in a child process).
    let cache = dir.path().join("cache");
    let worker = WorkerProcess::start(
        &tasks,
        2,
        &dir.path().join("worker.log"),
        &["--cache-dir", path_str(&cache)],
    )
    .await;
    let banner = worker.log();
    assert!(
        banner.contains("tasks.echo  v1 (echo.wasm)"),
        "the banner names the version:\n{banner}"
    );
    assert!(
        banner.contains("tasks.echo → v1 (compiled in a child process in"),
        "the worker leaves compiling to a child process:\n{banner}"
    );

    let client = Client::connect().await;
    let mut ids = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        ids.push(
            client
                .send(&worker.queue, "tasks.echo", vec![json!(i)])
                .await,
        );
        if i == TASKS / 3 {
            drop_file(&tasks, "echo.wasm", &versioned_echo("v2"));
        }
        if i == 2 * TASKS / 3 {
            // v2 must be in force first: two drops within the settle delay are one change.
            worker
                .wait_log(Duration::from_secs(30), |log| {
                    log.contains("echo.wasm swapped v1 → v2: tasks.echo → v2")
                })
                .await;
            drop_file(&tasks, "echo.wasm", b"\0asm a broken v3");
        }
        // A steady stream, so the swaps land while tasks flow.
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let metas = client.wait_all(&ids, Duration::from_secs(300)).await;

    let failed: Vec<&Value> = metas.iter().filter(|m| m["status"] != "SUCCESS").collect();
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    let versions: Vec<&str> = metas
        .iter()
        .map(|m| m["result"].as_str().expect("a version string"))
        .collect();
    let first_v2 = versions
        .iter()
        .position(|v| *v == "v2")
        .expect("v2 served some tasks");
    assert!(first_v2 > 0, "v1 served the first tasks");
    assert!(
        versions[..first_v2].iter().all(|v| *v == "v1"),
        "only v1 before the switch"
    );
    let back = versions[first_v2..].iter().position(|v| *v != "v2");
    assert_eq!(
        back.map(|at| (first_v2 + at, versions[first_v2 + at])),
        None,
        "never back to v1 (nor anything else) after the switch"
    );

    let log = worker
        .wait_log(Duration::from_secs(10), |log| {
            log.contains("registry: refused")
        })
        .await;
    let refusal = log
        .lines()
        .find(|line| line.contains("registry: refused"))
        .expect("a refusal line");
    assert!(
        refusal.contains("echo.wasm") && refusal.contains("version v2 keeps serving"),
        "{refusal}"
    );
    let after = client.send(&worker.queue, "tasks.echo", vec![]).await;
    assert_eq!(
        client.wait_one(&after, Duration::from_secs(30)).await["result"],
        json!("v2")
    );
    assert_eq!(worker.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_components_running_task_finishes_and_its_name_is_then_unregistered() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    std::fs::create_dir(&tasks).unwrap();
    // Several seconds of counting: long enough to remove the file while it runs.
    drop_file(
        &tasks,
        "slow.wasm",
        &guests::spinning_guest("tasks.slow", 4_000_000_000, "\"slow done\""),
    );
    let worker = WorkerProcess::start(&tasks, 2, &dir.path().join("worker.log"), &[]).await;
    let client = Client::connect().await;

    let slow = client.send(&worker.queue, "tasks.slow", vec![]).await;
    let received = format!("Task tasks.slow[{slow}] received");
    worker
        .wait_log(Duration::from_secs(30), |log| log.contains(&received))
        .await;
    std::fs::remove_file(tasks.join("slow.wasm")).unwrap();
    worker
        .wait_log(Duration::from_secs(10), |log| {
            log.contains("registry: slow.wasm removed")
        })
        .await;
    let meta = client.wait_one(&slow, Duration::from_secs(120)).await;
    assert_eq!(meta["status"], "SUCCESS", "{meta}");
    assert_eq!(meta["result"], "slow done");
    // The worker's log is written by a background thread: wait for the success line.
    let log = worker
        .wait_log(Duration::from_secs(10), |log| {
            log.contains(&format!("Task tasks.slow[{slow}] succeeded"))
        })
        .await;
    let removed_at = log.find("registry: slow.wasm removed").unwrap();
    let succeeded_at = log
        .find(&format!("Task tasks.slow[{slow}] succeeded"))
        .expect("success logged");
    assert!(
        removed_at < succeeded_at,
        "the task was still running when its file went:\n{log}"
    );

    let late = client.send(&worker.queue, "tasks.slow", vec![]).await;
    let meta = client.wait_one(&late, Duration::from_secs(30)).await;
    assert_eq!(meta["status"], "FAILURE", "{meta}");
    assert_eq!(meta["result"]["exc_type"], "NotRegistered");
    assert_eq!(worker.stop(), Some(0));
}
