//! Every way a well-formed guest can end, and what it reports on the way.

use std::time::Duration;

use celeriac::sandbox::{LogLevel, Outcome, SandboxLimits, TaskError};

use crate::support::guests;
use crate::support::harness::{invocation, prepare, sandbox};

async fn run_guest(
    component: &[u8],
    args: &str,
    kwargs: &str,
    limits: SandboxLimits,
) -> (Outcome, std::sync::Arc<crate::support::harness::Recorder>) {
    let sandbox = sandbox();
    let prepared = prepare(&sandbox, component);
    let (invocation, recorder) = invocation("t", args, kwargs, limits);
    (
        sandbox
            .run(&prepared, invocation)
            .await
            .expect("the host does not fail")
            .outcome,
        recorder,
    )
}

/// Runs a guest with no arguments and the default limits.
async fn run_plain(
    component: &[u8],
) -> (Outcome, std::sync::Arc<crate::support::harness::Recorder>) {
    run_guest(component, "[]", "{}", SandboxLimits::new()).await
}

#[tokio::test]
async fn arguments_reach_the_guest_verbatim() {
    let args = r#"[1, "ünïcode", {"__type__": "uuid", "__value__": {"hex": "00"}}]"#;
    let (outcome, _) = run_guest(
        &guests::echo_args_guest("t"),
        args,
        "{}",
        SandboxLimits::new(),
    )
    .await;
    assert!(
        matches!(&outcome, Outcome::Returned(r) if r == args),
        "{outcome:?}"
    );
    let kwargs = r#"{"x": 1.5}"#;
    let (outcome, _) = run_guest(
        &guests::echo_kwargs_guest("t"),
        "[]",
        kwargs,
        SandboxLimits::new(),
    )
    .await;
    assert!(
        matches!(&outcome, Outcome::Returned(r) if r == kwargs),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn raised_exception_keeps_type_module_and_args() {
    let (outcome, _) = run_plain(&guests::raising_guest(
        "t",
        "ValueError",
        "builtins",
        "bad input",
    ))
    .await;
    let Outcome::Errored(TaskError::Raised(exception)) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(exception.exc_type, "ValueError");
    assert_eq!(exception.exc_module, "builtins");
    assert_eq!(exception.exc_args, r#"["bad input"]"#);
    assert_eq!(exception.message, "bad input");
}

#[tokio::test]
async fn retry_reject_and_ignore_are_outcomes() {
    let (outcome, _) = run_plain(&guests::retrying_guest("t", Some(2.5), Some(4))).await;
    let Outcome::Errored(TaskError::Retry(retry)) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!((retry.countdown, retry.max_retries), (Some(2.5), Some(4)));

    let (outcome, _) = run_plain(&guests::rejecting_guest("t", Some("poison"), true)).await;
    let Outcome::Errored(TaskError::Reject(reject)) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        (reject.reason.as_deref(), reject.requeue),
        (Some("poison"), true)
    );

    let (outcome, _) = run_plain(&guests::ignoring_guest("t")).await;
    assert!(
        matches!(outcome, Outcome::Errored(TaskError::Ignore)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn log_and_update_state_reach_the_task_events() {
    let (outcome, recorder) = run_plain(&guests::logging_guest("t", "hello from the guest")).await;
    assert!(
        matches!(&outcome, Outcome::Returned(r) if r == "null"),
        "{outcome:?}"
    );
    assert_eq!(
        *recorder.logs.lock().unwrap(),
        [(LogLevel::Info, "hello from the guest".to_string())]
    );
    assert_eq!(
        *recorder.states.lock().unwrap(),
        [("PROGRESS".to_string(), r#"{"n":1}"#.to_string())]
    );
}

#[tokio::test]
async fn time_left_counts_down_from_the_soft_limit() {
    let (outcome, _) = run_plain(&guests::time_left_guest("t")).await;
    assert!(
        matches!(&outcome, Outcome::Returned(r) if r == "null"),
        "no limit means none: {outcome:?}"
    );
    let limits = SandboxLimits::new()
        .soft_time_limit(Some(Duration::from_secs(10)))
        .time_limit(Some(Duration::from_secs(20)));
    let (outcome, _) = run_guest(&guests::time_left_guest("t"), "[]", "{}", limits).await;
    let Outcome::Returned(left) = outcome else {
        panic!("{outcome:?}")
    };
    let left: u64 = left.parse().expect("milliseconds as JSON");
    assert!(
        (9_000..=10_000).contains(&left),
        "{left} ms left of a 10 s soft limit"
    );
}
