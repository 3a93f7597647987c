//! Hot swap in a real `celeriac worker` on Redis (`-c 2`): how long from a component file
//! renamed into the tasks directory to the new version serving, and what a swap does to the
//! latency of the tasks flowing meanwhile.
//!
//! * drop → serving: the time from the rename to the worker's `swapped … → NEW` log line
//!   (written right after the new table is published; the log file is polled every 2 ms).
//!   For a WAT component (a 2 KB `tasks.echo`) and the Python example (`tasks.wasm`,
//!   ~18 MB): first load (a version never seen, so it is compiled) and again with the
//!   compile cache (a version compiled before).
//! * latency: `tasks.echo` (WAT) or `tasks.add` (Python) sent at a steady 100/s; a task's
//!   latency is its result's `date_done` minus the moment it was published. Steady state is
//!   the 3 s before the drop; "during the swap" is every task published from the drop until
//!   0.5 s after the new version serves. p50 and p99 of each.
//!
//! `cargo test --release -p celeriac-tests --bench hotswap -- --nocapture` (or `cargo bench
//! -p celeriac-tests --bench hotswap`), after `scripts/build-examples.sh` and a release build
//! of the binary. The compile cache is `target/test-compile-cache`.

#[path = "../support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use celeriac::protocol::Timestamp;
use serde_json::{Value, json};

use support::celeriac_cli::example_tasks;
use support::guests;
use support::hotswap::{drop_file, versioned_echo};
use support::redis_worker::{Client, WorkerProcess};

/// Tasks published per second while latency is measured.
const RATE: u64 = 100;
const STEADY: Duration = Duration::from_secs(3);
const AFTER_SWAP: Duration = Duration::from_millis(500);

/// Builds the component bytes declaring a version.
type Build = Box<dyn Fn(&str) -> Vec<u8>>;

struct Kind {
    label: &'static str,
    file: &'static str,
    task: &'static str,
    args: Value,
    build: Build,
}

fn kinds() -> Vec<Kind> {
    let python = std::fs::read(example_tasks().join("tasks.wasm")).expect("tasks.wasm");
    vec![
        Kind {
            label: "WAT echo (2 KB)",
            file: "echo.wasm",
            task: "tasks.echo",
            args: json!([]),
            build: Box::new(versioned_echo),
        },
        Kind {
            label: "Python example (tasks.wasm)",
            file: "tasks.wasm",
            task: "tasks.add",
            args: json!([2, 3]),
            build: Box::new(move |version| guests::with_declared_version(&python, version)),
        },
    ]
}

fn now_micros() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_micros()).unwrap()
}

/// Drops `bytes` (declaring `to`) and waits for the worker's swap line; returns the time.
async fn swap(worker: &WorkerProcess, dir: &Path, kind: &Kind, from: &str, to: &str) -> Duration {
    let bytes = (kind.build)(to);
    let started = Instant::now();
    drop_file(dir, kind.file, &bytes);
    let line = format!("swapped {from} → {to}:");
    worker
        .wait_log(Duration::from_secs(600), |log| log.contains(&line))
        .await;
    started.elapsed()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Latencies {
    steady: Vec<f64>,
    swap: Vec<f64>,
}

/// Sends tasks at `RATE` while a fresh version is dropped after `STEADY`; returns the
/// latencies (ms) of the two windows and the drop → serving time.
async fn stream_through_swap(
    worker: &WorkerProcess,
    dir: &Path,
    kind: &Kind,
    from: &str,
    to: &str,
) -> (Latencies, Duration) {
    let client = Client::connect().await;
    let interval = Duration::from_micros(1_000_000 / RATE);
    let mut sent: Vec<(String, i64)> = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    let deadline = Instant::now() + STEADY;
    while Instant::now() < deadline {
        ticker.tick().await;
        let at = now_micros();
        let args = kind.args.as_array().unwrap().clone();
        sent.push((client.send(&worker.queue, kind.task, args).await, at));
    }
    let drop_at = now_micros();
    let swapping = swap(worker, dir, kind, from, to);
    tokio::pin!(swapping);
    let took = loop {
        tokio::select! {
            took = &mut swapping => break took,
            _ = ticker.tick() => {
                let at = now_micros();
                let args = kind.args.as_array().unwrap().clone();
                sent.push((client.send(&worker.queue, kind.task, args).await, at));
            }
        }
    };
    let swap_end = now_micros() + i64::try_from(AFTER_SWAP.as_micros()).unwrap();
    while now_micros() < swap_end {
        ticker.tick().await;
        let at = now_micros();
        let args = kind.args.as_array().unwrap().clone();
        sent.push((client.send(&worker.queue, kind.task, args).await, at));
    }
    let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    let metas = client.wait_all(&ids, Duration::from_secs(600)).await;
    let mut latencies = Latencies {
        steady: Vec::new(),
        swap: Vec::new(),
    };
    for ((_, at), meta) in sent.iter().zip(&metas) {
        assert_eq!(meta["status"], "SUCCESS", "{meta}");
        let done = Timestamp::parse(meta["date_done"].as_str().expect("date_done"))
            .expect("date_done parses")
            .unix_micros();
        let ms = (done - at) as f64 / 1000.0;
        if *at < drop_at {
            latencies.steady.push(ms);
        } else {
            latencies.swap.push(ms);
        }
    }
    latencies.steady.sort_by(f64::total_cmp);
    latencies.swap.sort_by(f64::total_cmp);
    (latencies, took)
}

#[tokio::main]
async fn main() {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut drop_rows = Vec::new();
    let mut latency_rows = Vec::new();
    for kind in kinds() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = dir.path().join("tasks");
        std::fs::create_dir(&tasks).unwrap();
        // Versions unique to this run, so "first load" really compiles.
        let (a, b, c) = (format!("a-{run}"), format!("b-{run}"), format!("c-{run}"));
        drop_file(&tasks, kind.file, &(kind.build)(&a));
        let log = dir.path().join("worker.log");
        let worker = WorkerProcess::start(&tasks, 2, &log, &[]).await;

        let first = swap(&worker, &tasks, &kind, &a, &b).await;
        let cached = swap(&worker, &tasks, &kind, &b, &a).await;
        drop_rows.push(format!(
            "| {} | {:.0} ms | {:.0} ms |",
            kind.label,
            first.as_secs_f64() * 1000.0,
            cached.as_secs_f64() * 1000.0
        ));

        let (latencies, took) = stream_through_swap(&worker, &tasks, &kind, &a, &c).await;
        latency_rows.push(format!(
            "| {} | {:.1} / {:.1} ms ({}) | {:.1} / {:.1} ms ({}) | {:.0} ms |",
            kind.label,
            percentile(&latencies.steady, 50.0),
            percentile(&latencies.steady, 99.0),
            latencies.steady.len(),
            percentile(&latencies.swap, 50.0),
            percentile(&latencies.swap, 99.0),
            latencies.swap.len(),
            took.as_secs_f64() * 1000.0,
        ));
        assert_eq!(worker.stop(), Some(0), "the worker stops cleanly");
    }
    println!("\ndrop → new version serving (celeriac worker -c 2, Redis)\n");
    println!("| component | first load (compiled) | with the compile cache |");
    println!("| --- | --- | --- |");
    for row in drop_rows {
        println!("{row}");
    }
    println!("\ntask latency, p50 / p99 (tasks), {RATE} tasks/s, during a first-load swap\n");
    println!("| component | steady state | during the swap | drop → serving |");
    println!("| --- | --- | --- | --- |");
    for row in latency_rows {
        println!("{row}");
    }
}
