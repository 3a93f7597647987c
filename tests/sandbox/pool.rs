//! The instance pool: room for `max_instances` instances at once, whatever the component,
//! and idle `reuse` instances give their room back to tasks that need it.

use std::sync::Arc;
use std::time::Duration;

use celeriac::sandbox::{EngineOptions, Isolation, Prepared, Sandbox, SandboxLimits, WasiPolicy};

use crate::support::guests;
use crate::support::harness::{invocation, prepare_with};

fn sandbox_with_room_for(max_instances: u32) -> Sandbox {
    Sandbox::new(&EngineOptions {
        max_instances,
        ..EngineOptions::default()
    })
    .expect("engine")
}

fn reused(sandbox: &Sandbox, component: &[u8]) -> Prepared {
    let isolation = Isolation::Reuse {
        max_tasks_per_instance: u32::MAX,
    };
    prepare_with(sandbox, component, WasiPolicy::default(), isolation)
}

/// How the task ended, as `Returned("…")`, another outcome, or the host's error.
async fn run_task(sandbox: &Sandbox, prepared: &Prepared, task: &str) -> String {
    let (invocation, _) = invocation(task, "[]", "{}", SandboxLimits::new());
    match sandbox.run(prepared, invocation).await {
        Ok(report) => format!("{:?}", report.outcome),
        Err(err) => format!("host error: {err:#}"),
    }
}

#[tokio::test]
async fn idle_reuse_instances_make_room_for_a_task_when_the_pool_is_full() {
    let sandbox = sandbox_with_room_for(2);
    let first = reused(&sandbox, &guests::ok_guest("a", "1"));
    let second = reused(&sandbox, &guests::ok_guest("b", "2"));
    let fresh = prepare_with(
        &sandbox,
        &guests::ok_guest("c", "3"),
        WasiPolicy::default(),
        Isolation::Fresh,
    );
    assert_eq!(run_task(&sandbox, &first, "a").await, r#"Returned("1")"#);
    assert_eq!(run_task(&sandbox, &second, "b").await, r#"Returned("2")"#);
    // Both slots now hold an idle instance.
    assert_eq!(run_task(&sandbox, &fresh, "c").await, r#"Returned("3")"#);
    let (invocation, _) = invocation("a", "[]", "{}", SandboxLimits::new());
    let report = sandbox.run(&first, invocation).await.expect("runs");
    assert!(
        report.instantiate.is_some(),
        "the idle instance was dropped to make room, so a new one was made"
    );
}

#[tokio::test]
async fn the_pool_holds_max_instances_running_tasks_of_a_many_module_component() {
    // Each instance holds three core instances. wasmtime's default pool has room for 1,000
    // of each kind, which ran out at 71 running Python tasks (14 core instances each).
    let instances = 400;
    let sandbox = Sandbox::new(&EngineOptions {
        max_instances: instances,
        epoch_tick: Duration::from_millis(1),
        ..EngineOptions::default()
    })
    .expect("engine");
    // Each task spins for a few ticks, so every instance is alive before the first ends.
    let component = guests::logging_spinning_guest("spin", 5_000_000);
    let prepared = Arc::new(prepare_with(
        &sandbox,
        &component,
        WasiPolicy::default(),
        Isolation::Fresh,
    ));
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..instances {
        let (sandbox, prepared) = (sandbox.clone(), Arc::clone(&prepared));
        runs.spawn(async move { run_task(&sandbox, &prepared, "spin").await });
    }
    let outcomes = runs.join_all().await;
    let failed: Vec<&String> = outcomes
        .iter()
        .filter(|outcome| **outcome != r#"Returned("null")"#)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {instances} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
}
