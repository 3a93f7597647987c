//! Each example task through `celeriac run`, for the Python module (`tasks.*`) and the Rust
//! one (`rs.*`), asserting stdout, stderr and the exit code.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::celeriac_cli::{
    command, describe, example_tasks, path_str, rust_example_built, warm_cache,
};

/// Runs `celeriac run PREFIX.task --args ARGS [extra...]` and returns (exit code, stdout, stderr).
fn run(prefix: &str, task: &str, args: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    warm_cache();
    let tasks = example_tasks();
    let name = format!("{prefix}.{task}");
    let mut argv = vec![
        "run",
        "--tasks",
        path_str(&tasks),
        name.as_str(),
        "--args",
        args,
    ];
    argv.extend_from_slice(extra);
    describe(&command(&argv).output().expect("celeriac runs"))
}

fn assert_result(prefix: &str, task: &str, args: &str, extra: &[&str], expected: Value) {
    let (code, stdout, stderr) = run(prefix, task, args, extra);
    assert_eq!(code, Some(0), "{prefix}.{task} failed: {stderr}");
    let result: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|err| panic!("{stdout:?} is not JSON: {err}"));
    assert_eq!(result, expected, "{prefix}.{task} stderr: {stderr}");
}

fn assert_failure(
    prefix: &str,
    task: &str,
    args: &str,
    extra: &[&str],
    expected_line: &str,
) -> String {
    let (code, stdout, stderr) = run(prefix, task, args, extra);
    assert_eq!(
        code,
        Some(1),
        "{prefix}.{task}: stdout {stdout:?} stderr {stderr}"
    );
    assert!(stdout.is_empty(), "a failure prints no result: {stdout:?}");
    assert!(
        stderr.lines().any(|line| line.starts_with(expected_line)),
        "{prefix}.{task}: expected a line starting {expected_line:?} in:\n{stderr}"
    );
    stderr
}

/// The behaviours both example modules share, under `prefix`.
fn common_behaviours(prefix: &str) {
    assert_result(prefix, "add", "[2, 3]", &[], json!(5));
    assert_result(prefix, "mul", "[4, 5]", &[], json!(20));
    assert_result(prefix, "xsum", "[[1, 2, 3.5]]", &[], json!(6.5));
    assert_result(
        prefix,
        "echo",
        r#"[1, "ä"]"#,
        &["--kwargs", r#"{"k": [true, null]}"#],
        json!({"args": [1, "ä"], "kwargs": {"k": [true, null]}}),
    );
    assert_failure(
        prefix,
        "fail",
        r#"["it broke"]"#,
        &[],
        "ValueError: it broke",
    );
    assert_result(prefix, "sleep", "[0.2]", &[], json!(0.2));
    assert_result(prefix, "hog", "[8]", &[], json!(8));
    assert_failure(
        prefix,
        "hog",
        "[200]",
        &["--memory-limit", "64"],
        "MemoryError",
    );
    assert_result(prefix, "retry_until", "[2]", &[], json!(2));
    let (code, stdout, stderr) = run(prefix, "progress", "[3]", &["-l", "info"]);
    assert_eq!((code, stdout.trim()), (Some(0), "3"), "{stderr}");
    assert_eq!(stderr.matches("state PROGRESS").count(), 3, "{stderr}");

    let started = Instant::now();
    assert_failure(
        prefix,
        "spin",
        "[]",
        &["--time-limit", "1"],
        "TimeLimitExceeded",
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{prefix}.spin took {:?}",
        started.elapsed()
    );
    assert_failure(
        prefix,
        "spin",
        "[]",
        &["--soft-time-limit", "0.5"],
        "SoftTimeLimitExceeded",
    );
}

#[test]
fn python_example_tasks_behave_like_celery() {
    common_behaviours("tasks");
}

#[test]
fn rust_example_tasks_behave_like_the_python_ones() {
    if !rust_example_built() {
        return;
    }
    common_behaviours("rs");
    assert_result("rs", "fib", "[10]", &[], json!(55));
}

#[test]
fn retries_past_max_retries_end_in_max_retries_exceeded() {
    // retry_until uses Celery's default max_retries of 3.
    assert_failure(
        "tasks",
        "retry_until",
        "[5]",
        &[],
        "MaxRetriesExceededError",
    );
}

#[test]
fn an_unknown_task_is_not_registered() {
    let stderr = assert_failure("tasks", "nope", "[]", &[], "NotRegistered: 'tasks.nope'");
    assert!(
        stderr.contains("tasks.add"),
        "the known tasks are listed: {stderr}"
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    let (code, _, stderr) = run("tasks", "add", "{\"not\": \"a list\"}", &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--args must be a JSON array"), "{stderr}");
    let (code, _, stderr) = run("tasks", "add", "[1, 2", &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--args is not valid JSON"), "{stderr}");
}

#[test]
fn verbose_reports_time_and_peak_memory() {
    let (code, _, stderr) = run("tasks", "add", "[1, 2]", &["-v"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("ran in") && stderr.contains("peak memory") && stderr.contains(" MiB"),
        "{stderr}"
    );
}
