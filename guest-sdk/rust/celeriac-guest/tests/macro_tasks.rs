//! `#[task]` functions run end to end on the native target: the macro's expansion, argument
//! binding, result encoding, retries and autoretry, through the same `run` entry point the
//! component export uses. (Host imports — log, update_state — exist only on wasm32 and are
//! not called here.)

use celeriac_guest::__private::{TaskSpec, run, sample_request, tasks, wit};
use celeriac_guest::serde_json::{Value, json};
use celeriac_guest::{Args, Kwargs, RetryOptions, Task, TaskError, TaskResult, task};

#[task(name = "t.add")]
fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task(name = "t.greet")]
fn greet(name: String, punctuation: Option<String>) -> String {
    format!("hello {name}{}", punctuation.unwrap_or_default())
}

#[task(name = "t.echo")]
fn echo(args: Args, kwargs: Kwargs) -> Value {
    json!({ "args": args, "kwargs": kwargs })
}

#[task(name = "t.fail")]
fn fail(message: String) -> TaskResult<()> {
    Err(TaskError::value_error(message))
}

#[task(name = "t.nothing")]
fn nothing() {}

#[task(name = "t.countdown", max_retries = 2, default_retry_delay = 7)]
fn countdown(task: &Task, until: u32) -> Result<u32, TaskError> {
    if task.retries() < until {
        return Err(task.retry_with(RetryOptions {
            countdown: Some(0.5),
            ..RetryOptions::default()
        }));
    }
    Ok(task.retries())
}

#[task(
    name = "t.auto",
    autoretry_for = [LookupError],
    retry_backoff = 2,
    retry_jitter = false
)]
fn auto() -> TaskResult<()> {
    Err(TaskError::key_error("k"))
}

#[task(name = "t.io")]
fn io() -> TaskResult<String> {
    Ok(std::fs::read_to_string(
        "/celeriac-test/definitely/not/here",
    )?)
}

const SPECS: &[&TaskSpec] = &[
    &__celeriac_task_add,
    &__celeriac_task_greet,
    &__celeriac_task_echo,
    &__celeriac_task_fail,
    &__celeriac_task_nothing,
    &__celeriac_task_countdown,
    &__celeriac_task_auto,
    &__celeriac_task_io,
];

// The error type is wit-bindgen's, as in the real export.
#[allow(clippy::result_large_err)]
fn call(task: &str, retries: u32, args: &str, kwargs: &str) -> Result<String, wit::TaskError> {
    run(
        SPECS,
        sample_request(task, retries),
        args.to_owned(),
        kwargs.to_owned(),
    )
}

fn raised(result: Result<String, wit::TaskError>) -> wit::Exception {
    match result {
        Err(wit::TaskError::Raised(exc)) => exc,
        other => panic!("expected a raised exception, got {other:?}"),
    }
}

#[test]
fn plain_task_binds_positional_and_keyword_arguments() {
    assert_eq!(call("t.add", 0, "[2, 3]", "{}"), Ok("5".to_owned()));
    assert_eq!(
        call("t.add", 0, "[]", r#"{"y": 1, "x": 2}"#),
        Ok("3".to_owned())
    );
}

#[test]
fn option_parameter_may_be_left_out() {
    assert_eq!(
        call("t.greet", 0, r#"["bob"]"#, "{}"),
        Ok(r#""hello bob""#.to_owned())
    );
    assert_eq!(
        call("t.greet", 0, r#"["bob"]"#, r#"{"punctuation": "!"}"#),
        Ok(r#""hello bob!""#.to_owned())
    );
}

#[test]
fn bad_calls_raise_type_error_with_python_wording() {
    let exc = raised(call("t.add", 0, "[1]", "{}"));
    assert_eq!(
        (exc.exc_type.as_str(), exc.exc_module.as_str()),
        ("TypeError", "builtins")
    );
    assert_eq!(
        exc.message,
        "add() missing 1 required positional argument: 'y'"
    );
    let exc = raised(call("t.greet", 0, r#"["a"]"#, r#"{"shout": true}"#));
    assert_eq!(
        exc.message,
        "greet() got an unexpected keyword argument 'shout'"
    );
    let exc = raised(call("t.add", 0, "[1, 2, 3]", "{}"));
    assert_eq!(
        exc.message,
        "add() takes 2 positional arguments but 3 were given"
    );
}

#[test]
fn raw_args_and_kwargs_task_receives_everything() {
    assert_eq!(
        call("t.echo", 0, r#"[1, "two", null]"#, r#"{"k": [true]}"#),
        Ok(r#"{"args":[1,"two",null],"kwargs":{"k":[true]}}"#.to_owned())
    );
}

#[test]
fn raised_error_and_unit_result() {
    let exc = raised(call("t.fail", 0, r#"["boom"]"#, "{}"));
    assert_eq!(
        (exc.exc_type.as_str(), exc.exc_args.as_str()),
        ("ValueError", r#"["boom"]"#)
    );
    assert_eq!(call("t.nothing", 0, "[]", "{}"), Ok("null".to_owned()));
}

#[test]
fn bound_task_retries_until_max_retries_then_fails() {
    let Err(wit::TaskError::Retry(retry)) = call("t.countdown", 0, "[5]", "{}") else {
        panic!("first call must retry");
    };
    assert_eq!(retry.countdown, Some(0.5));
    assert_eq!(retry.max_retries, None);
    assert!(matches!(
        call("t.countdown", 1, "[5]", "{}"),
        Err(wit::TaskError::Retry(_))
    ));
    // max_retries = 2: the third attempt fails.
    let exc = raised(call("t.countdown", 2, "[5]", "{}"));
    assert_eq!(exc.exc_type, "MaxRetriesExceededError");
    assert_eq!(
        exc.message,
        "Can't retry t.countdown[T-1] args:(5,) kwargs:{}"
    );
    assert_eq!(call("t.countdown", 2, "[2]", "{}"), Ok("2".to_owned()));
}

#[test]
fn autoretry_applies_backoff_and_gives_up_with_the_original_exception() {
    let Err(wit::TaskError::Retry(retry)) = call("t.auto", 1, "[]", "{}") else {
        panic!("KeyError is a LookupError and must be retried");
    };
    assert_eq!(retry.countdown, Some(4.0)); // 2 * 2**1, no jitter
    assert_eq!(retry.exc.map(|e| e.exc_type), Some("KeyError".to_owned()));
    let exc = raised(call("t.auto", 3, "[]", "{}"));
    assert_eq!(
        (exc.exc_type.as_str(), exc.message.as_str()),
        ("KeyError", "'k'")
    );
}

#[test]
fn io_errors_become_python_os_errors() {
    let exc = raised(call("t.io", 0, "[]", "{}"));
    assert_eq!(exc.exc_type, "FileNotFoundError");
    assert_eq!(exc.exc_args, r#"[2,"No such file or directory"]"#);
}

#[test]
fn unknown_task_is_not_registered() {
    let exc = raised(call("t.missing", 0, "[]", "{}"));
    assert_eq!(
        (exc.exc_type.as_str(), exc.exc_module.as_str()),
        ("NotRegistered", "celery.exceptions")
    );
}

#[test]
fn tasks_export_carries_the_macro_options() {
    let infos = tasks(SPECS);
    let names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "t.add",
            "t.greet",
            "t.echo",
            "t.fail",
            "t.nothing",
            "t.countdown",
            "t.auto",
            "t.io"
        ]
    );
    let countdown = &infos[5].options;
    assert_eq!(
        (countdown.max_retries, countdown.default_retry_delay),
        (Some(2), Some(7.0))
    );
    let auto = &infos[6].options;
    assert_eq!(auto.autoretry_for, vec!["LookupError".to_owned()]);
    assert_eq!(
        (auto.retry_backoff, auto.retry_jitter),
        (Some(2), Some(false))
    );
    assert_eq!(infos[0].options, tasks(&[&__celeriac_task_add])[0].options);
    assert_eq!(infos[0].options.max_retries, None);
}
