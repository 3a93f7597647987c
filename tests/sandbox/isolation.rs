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
