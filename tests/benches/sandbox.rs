//! Per-task cost of the sandbox: a fresh instance, the `run` call and teardown, for a trivial
//! WAT component and the Rust and Python examples; then the pooling allocator's
//! keep-resident knob and instance reuse. Median and p99 over `CELERIAC_BENCH_RUNS` runs
//! (default 2,000) after 100 warm-up runs, and the process's minor page faults per run (most
//! of a fresh instance's cost is the kernel copying and mapping pages of its memory);
//! `CELERIAC_BENCH_CASE=python` runs only the cases whose label contains that text.
//!
//! `cargo bench -p celeriac-tests --bench sandbox` (after `scripts/build-examples.sh`).

#[path = "../support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac::registry::{CompileCache, load_component};
use celeriac::sandbox::{
    EngineOptions, Invocation, Isolation, Outcome, Sandbox, SandboxLimits, WasiPolicy,
};

use support::celeriac_cli::workspace;
use support::guests;
use support::harness::{Recorder, request};

struct Case {
    label: &'static str,
    component: Component,
    task: &'static str,
    args: &'static str,
    engine: EngineOptions,
    isolation: Isolation,
}

enum Component {
    Bytes(Vec<u8>),
    Example(&'static str),
}

fn main() {
    let runs: usize = std::env::var("CELERIAC_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    // One task at a time: a pool of 4 instances is plenty, and its small address space
    // lets the bench run under valgrind (a default pool reserves terabytes).
    let default = EngineOptions {
        max_instances: 4,
        ..EngineOptions::default()
    };
    let madvise = EngineOptions {
        keep_resident_bytes: 0,
        ..default.clone()
    };
    let reuse = Isolation::Reuse {
        max_tasks_per_instance: u32::MAX,
    };
    let wat = || Component::Bytes(guests::ok_guest("bench.add", "5"));
    let rust = || Component::Example("rs_tasks.wasm");
    let python = || Component::Example("tasks.wasm");
    let case = |label, component, task, engine: &EngineOptions, isolation| Case {
        label,
        component,
        task,
        args: "[2, 3]",
        engine: engine.clone(),
        isolation,
    };
    let cases = vec![
        case("wat, fresh", wat(), "bench.add", &default, Isolation::Fresh),
        case("rust, fresh", rust(), "rs.add", &default, Isolation::Fresh),
        case(
            "python, fresh",
            python(),
            "tasks.add",
            &default,
            Isolation::Fresh,
        ),
        case(
            "wat, fresh, no keep-resident (madvise)",
            wat(),
            "bench.add",
            &madvise,
            Isolation::Fresh,
        ),
        case(
            "rust, fresh, no keep-resident (madvise)",
            rust(),
            "rs.add",
            &madvise,
            Isolation::Fresh,
        ),
        case(
            "python, fresh, no keep-resident (madvise)",
            python(),
            "tasks.add",
            &madvise,
            Isolation::Fresh,
        ),
        case("rust, reuse", rust(), "rs.add", &default, reuse),
        case("python, reuse", python(), "tasks.add", &default, reuse),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!("| case | median | p99 | page faults per run | runs |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let only = std::env::var("CELERIAC_BENCH_CASE").unwrap_or_default();
    for case in cases
        .into_iter()
        .filter(|case| case.label.contains(only.as_str()))
    {
        let measured = runtime.block_on(measure(&case, runs));
        println!(
            "| {} | {} | {} | {:.0} | {runs} |",
            case.label,
            micros(measured.median),
            micros(measured.p99),
            measured.faults_per_run
        );
    }
}

struct Measured {
    median: Duration,
    p99: Duration,
    faults_per_run: f64,
}

async fn measure(case: &Case, runs: usize) -> Measured {
    let sandbox = Sandbox::new(&case.engine).expect("engine");
    let prepared = match &case.component {
        Component::Bytes(bytes) => {
            let compiled = sandbox.compile(bytes).expect("compiles");
            sandbox
                .prepare(&compiled, WasiPolicy::default(), case.isolation)
                .expect("fits the world")
        }
        Component::Example(file) => {
            // The isolation comes from a policy file, as an operator would set it.
            let source = workspace().join("target/wasm-tasks").join(file);
            assert!(
                source.is_file(),
                "{} is missing: run scripts/build-examples.sh",
                source.display()
            );
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join(file);
            std::fs::copy(&source, &path).expect("copy example");
            if let Isolation::Reuse {
                max_tasks_per_instance,
            } = case.isolation
            {
                let policy = format!(
                    "isolation = \"reuse\"\nmax_tasks_per_instance = {max_tasks_per_instance}\n"
                );
                std::fs::write(path.with_extension("toml"), policy).expect("write policy");
            }
            let cache = CompileCache::new(workspace().join("target/bench-compile-cache"));
            load_component(&sandbox, &path, Some(&cache))
                .await
                .expect("example loads")
                .prepared
        }
    };
    let events = Arc::new(Recorder::default());
    let mut samples = Vec::with_capacity(runs);
    let mut faults_before = 0;
    for run in 0..runs + 100 {
        if run == 100 {
            faults_before = minor_faults();
        }
        let invocation = Invocation {
            request: request(case.task),
            args_json: case.args.into(),
            kwargs_json: "{}".into(),
            limits: SandboxLimits::new(),
            events: events.clone(),
        };
        let started = Instant::now();
        let report = sandbox.run(&prepared, invocation).await.expect("host ok");
        let took = started.elapsed();
        assert!(
            matches!(&report.outcome, Outcome::Returned(result) if result == "5"),
            "{}: {:?}",
            case.label,
            report.outcome
        );
        if run >= 100 {
            samples.push(took);
        }
    }
    let faults_per_run = (minor_faults() - faults_before) as f64 / runs as f64;
    samples.sort_unstable();
    Measured {
        median: samples[samples.len() / 2],
        p99: samples[samples.len() * 99 / 100],
        faults_per_run,
    }
}

/// Minor page faults of the whole process so far (guest code may run on any thread).
fn minor_faults() -> i64 {
    // SAFETY: `rusage` is plain integers, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct it is given.
    let status = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(status, 0, "getrusage");
    usage.ru_minflt
}

fn micros(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}
