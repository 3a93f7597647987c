//! Hostile guests: each is stopped with the exact abort Celery users would see, and the same
//! sandbox then runs a normal task.

use std::time::{Duration, Instant};

use celeriac::sandbox::{Abort, KillSwitch, Outcome, Sandbox, SandboxLimits};

use crate::support::guests;
use crate::support::harness::{invocation, prepare, sandbox};

/// Tests that spin guests until a time limit take this lock, so on a small machine one
/// test's spinners cannot delay another test's measured deadline.
static SPINNING: std::sync::LazyLock<tokio::sync::Mutex<()>> =
    std::sync::LazyLock::new(Default::default);

/// Runs `component` under `limits` and returns the outcome and how long it took.
async fn run(sandbox: &Sandbox, component: &[u8], limits: SandboxLimits) -> (Outcome, Duration) {
    let prepared = prepare(sandbox, component);
    let (invocation, _) = invocation("hostile", "[]", "{}", limits);
    let started = Instant::now();
    let report = sandbox
        .run(&prepared, invocation)
        .await
        .expect("the host does not fail");
    (report.outcome, started.elapsed())
}

/// After a hostile guest, the same sandbox still serves a normal task.
async fn assert_still_serving(sandbox: &Sandbox) {
    let (outcome, _) = run(
        sandbox,
        &guests::ok_guest("hostile", "5"),
        SandboxLimits::new(),
    )
    .await;
    assert!(
        matches!(&outcome, Outcome::Returned(result) if result == "5"),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_hits_hard_time_limit_within_100ms() {
    let _serial = SPINNING.lock().await;
    let sandbox = sandbox();
    let limit = Duration::from_millis(300);
    let (outcome, took) = run(
        &sandbox,
        &guests::infinite_loop_guest("hostile"),
        SandboxLimits::new().time_limit(Some(limit)),
    )
    .await;
    assert!(
        matches!(outcome, Outcome::Aborted(Abort::TimeLimit(l)) if l == limit),
        "{outcome:?}"
    );
    assert!(took >= limit, "stopped before its limit: {took:?}");
    assert!(
        took < limit + Duration::from_millis(100),
        "stopped {took:?} after start, limit {limit:?}"
    );
    assert_still_serving(&sandbox).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_hits_soft_time_limit_first() {
    let _serial = SPINNING.lock().await;
    let sandbox = sandbox();
    let limits = SandboxLimits::new()
        .soft_time_limit(Some(Duration::from_millis(100)))
        .time_limit(Some(Duration::from_secs(5)));
    let (outcome, took) = run(&sandbox, &guests::infinite_loop_guest("hostile"), limits).await;
    assert!(
        matches!(outcome, Outcome::Aborted(Abort::SoftTimeLimit(l)) if l == Duration::from_millis(100)),
        "{outcome:?}"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_still_serving(&sandbox).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_switch_stops_a_spinning_guest_within_a_tick() {
    let _serial = SPINNING.lock().await;
    let sandbox = sandbox();
    let prepared = prepare(&sandbox, &guests::infinite_loop_guest("hostile"));
    let (spin_call, _) = invocation("hostile", "[]", "{}", SandboxLimits::new());
    let kill = KillSwitch::new();
    let killer = kill.clone();
    let flipped = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        killer.kill();
        Instant::now()
    });
    let report = sandbox
        .run_killable(&prepared, spin_call, &kill)
        .await
        .expect("the host does not fail");
    let stopped = Instant::now();
    let flipped = flipped.await.expect("killer");
    assert!(
        matches!(report.outcome, Outcome::Aborted(Abort::Terminated)),
        "{:?}",
        report.outcome
    );
    assert!(
        stopped.duration_since(flipped) < Duration::from_millis(100),
        "stopped {:?} after the switch",
        stopped.duration_since(flipped)
    );
    // A switch flipped before the start stops the task before it runs.
    let (ok_call, recorder) = invocation("hostile", "[]", "{}", SandboxLimits::new());
    let ok = prepare(&sandbox, &guests::logging_guest("hostile", "ran"));
    let report = sandbox
        .run_killable(&ok, ok_call, &kill)
        .await
        .expect("the host does not fail");
    assert!(matches!(
        report.outcome,
        Outcome::Aborted(Abort::Terminated)
    ));
    assert!(recorder.logs.lock().unwrap().is_empty(), "the guest ran");
    assert_still_serving(&sandbox).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bomb_hits_memory_limit() {
    let sandbox = sandbox();
    let limits = SandboxLimits::new().memory_bytes(16 << 20);
    let (outcome, _) = run(&sandbox, &guests::memory_bomb_guest("hostile"), limits).await;
    assert_eq!(
        outcome_abort(outcome),
        Abort::MemoryLimit {
            limit_bytes: 16 << 20
        }
    );
    assert_still_serving(&sandbox).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_is_reported_as_a_trap() {
    let sandbox = sandbox();
    let (outcome, _) = run(
        &sandbox,
        &guests::trap_guest("hostile"),
        SandboxLimits::new(),
    )
    .await;
    match outcome_abort(outcome) {
        Abort::Trap(message) => assert!(message.contains("unreachable"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_still_serving(&sandbox).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_recursion_is_a_stack_overflow() {
    let sandbox = sandbox();
    let (outcome, _) = run(
        &sandbox,
        &guests::deep_recursion_guest("hostile"),
        SandboxLimits::new(),
    )
    .await;
    assert_eq!(outcome_abort(outcome), Abort::StackOverflow);
    assert_still_serving(&sandbox).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn result_over_the_cap_is_refused() {
    let sandbox = sandbox();
    let limits = SandboxLimits::new().max_result_bytes(1 << 20);
    let (outcome, _) = run(
        &sandbox,
        &guests::big_result_guest("hostile", (1 << 20) + 1),
        limits,
    )
    .await;
    assert_eq!(
        outcome_abort(outcome),
        Abort::ResultTooLarge {
            size: (1 << 20) + 1,
            limit: 1 << 20
        }
    );
    assert_still_serving(&sandbox).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn result_at_the_cap_is_returned() {
    let sandbox = sandbox();
    let limits = SandboxLimits::new().max_result_bytes(1 << 20);
    let (outcome, _) = run(
        &sandbox,
        &guests::big_result_guest("hostile", 1 << 20),
        limits,
    )
    .await;
    assert!(
        matches!(&outcome, Outcome::Returned(result) if result.len() == 1 << 20),
        "not returned"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn arguments_over_the_cap_never_start_the_guest() {
    let sandbox = sandbox();
    let prepared = prepare(&sandbox, &guests::trap_guest("hostile"));
    let big = format!("[\"{}\"]", "a".repeat(2000));
    let (invocation, _) = invocation(
        "hostile",
        &big,
        "{}",
        SandboxLimits::new().max_argument_bytes(1000),
    );
    let report = sandbox.run(&prepared, invocation).await.unwrap();
    // The guest would trap if it ran.
    assert_eq!(
        outcome_abort(report.outcome),
        Abort::ArgumentsTooLarge {
            size: big.len() + 2,
            limit: 1000
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spinning_guests_do_not_block_other_tasks() {
    let _serial = SPINNING.lock().await;
    // Two runtime threads, four guests spinning until their limit: a well-behaved task
    // started after them must still finish first, because spinning guests yield every tick.
    let sandbox = sandbox();
    let spinner = std::sync::Arc::new(prepare(&sandbox, &guests::infinite_loop_guest("hostile")));
    let mut spinning = Vec::new();
    for _ in 0..4 {
        let (sandbox, spinner) = (sandbox.clone(), spinner.clone());
        spinning.push(tokio::spawn(async move {
            let (invocation, _) = invocation(
                "hostile",
                "[]",
                "{}",
                SandboxLimits::new().time_limit(Some(Duration::from_secs(2))),
            );
            sandbox.run(&spinner, invocation).await.unwrap().outcome
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_still_serving(&sandbox).await;
    assert!(
        spinning.iter().all(|task| !task.is_finished()),
        "the normal task finished after the spinners"
    );
    for task in spinning {
        assert!(matches!(
            task.await.unwrap(),
            Outcome::Aborted(Abort::TimeLimit(_))
        ));
    }
}

fn outcome_abort(outcome: Outcome) -> Abort {
    match outcome {
        Outcome::Aborted(abort) => abort,
        other => panic!("expected an abort, got {other:?}"),
    }
}
