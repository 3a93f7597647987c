//! Fresh instances share nothing; reused instances carry state, which is why reuse is an
//! explicit per-component choice.

use celeriac::sandbox::{Isolation, SandboxLimits, WasiPolicy};

use crate::support::guests;
use crate::support::harness::{invocation, prepare_with, sandbox};

/// The guest allocates 1 MiB per run from a bump allocator that never frees: a fresh
/// instance starts from nothing every time, a reused one keeps growing.
async fn peaks(isolation: Isolation) -> Vec<usize> {
    let sandbox = sandbox();
    let prepared = prepare_with(
        &sandbox,
        &guests::big_result_guest("t", 1 << 20),
        WasiPolicy::default(),
        isolation,
    );
    let mut peaks = Vec::new();
    for _ in 0..3 {
        let (invocation, _) = invocation("t", "[]", "{}", SandboxLimits::new());
        peaks.push(
            sandbox
                .run(&prepared, invocation)
                .await
                .unwrap()
                .peak_memory_bytes,
        );
    }
    peaks
}

#[tokio::test]
async fn fresh_instances_start_from_a_clean_memory() {
    let peaks = peaks(Isolation::Fresh).await;
    assert!(peaks[0] >= 1 << 20, "{peaks:?}");
    assert!(peaks.iter().all(|&peak| peak == peaks[0]), "{peaks:?}");
}

#[tokio::test]
async fn reused_instances_keep_their_memory_until_their_quota() {
    let peaks = peaks(Isolation::Reuse {
        max_tasks_per_instance: 2,
    })
    .await;
    assert!(
        peaks[1] >= peaks[0] + (1 << 20),
        "the second task ran in the first one's instance: {peaks:?}"
    );
    assert_eq!(
        peaks[2], peaks[0],
        "after two tasks the instance is replaced: {peaks:?}"
    );
}

#[tokio::test]
async fn dropping_warm_instances_makes_the_next_task_start_fresh() {
    let sandbox = sandbox();
    let prepared = prepare_with(
        &sandbox,
        &guests::big_result_guest("t", 1 << 20),
        WasiPolicy::default(),
        Isolation::Reuse {
            max_tasks_per_instance: u32::MAX,
        },
    );
    let mut reports = Vec::new();
    for drop_first in [false, false, true] {
        if drop_first {
            prepared.drop_warm_instances();
        }
        let (invocation, _) = invocation("t", "[]", "{}", SandboxLimits::new());
        reports.push(sandbox.run(&prepared, invocation).await.unwrap());
    }
    let peaks: Vec<usize> = reports.iter().map(|r| r.peak_memory_bytes).collect();
    assert!(
        peaks[1] > peaks[0],
        "the second task reused the instance: {peaks:?}"
    );
    assert_eq!(
        peaks[2], peaks[0],
        "a new instance after the drop: {peaks:?}"
    );
    let instantiated: Vec<bool> = reports.iter().map(|r| r.instantiate.is_some()).collect();
    assert_eq!(instantiated, [true, false, true]);
}
