//! The component's exports behind [`export_tasks!`](crate::export_tasks): `tasks` lists the
//! specs, `run` finds one by name, binds the call, runs it, applies `autoretry_for` and
//! converts the outcome into the WIT types. It owns the panic hook too.

use std::hash::{BuildHasher, Hasher};
#[cfg(target_arch = "wasm32")]
use std::sync::Once;

use serde::Serialize;
use serde_json::Value;

use crate::args::{self, Bound};
#[cfg(target_arch = "wasm32")]
use crate::bindings::celeriac::task::context;
use crate::bindings::celeriac::task::types as wit;
use crate::error::{Exception, TaskError};
use crate::exceptions;
use crate::options::TaskSpec;
use crate::retry;
use crate::task::Task;

/// The `tasks` export: every task's name and options, and the parameters of unbound ones,
/// which Celery's rule may call inline as errbacks.
pub fn tasks(specs: &[&'static TaskSpec]) -> Vec<wit::TaskInfo> {
    specs
        .iter()
        .map(|spec| wit::TaskInfo {
            name: spec.name.to_owned(),
            options: spec.options.to_wit(),
            errback_parameters: errback_parameters(spec),
        })
        .collect()
}

/// A Rust parameter binds by position or by name, like a Python positional-or-keyword one.
fn errback_parameters(spec: &TaskSpec) -> Option<wit::Parameters> {
    (!spec.bound).then(|| wit::Parameters {
        positional: spec.params.iter().map(|p| p.name.to_owned()).collect(),
        positional_only: 0,
        keyword_only: Vec::new(),
        var_positional: spec.var_args,
        var_keyword: spec.var_kwargs,
    })
}

/// The `run` export: runs `request.task` with the `args`/`kwargs` JSON.
// The error type is wit-bindgen's, and the signature is the `Guest` trait's.
#[allow(clippy::result_large_err)]
pub fn run(
    specs: &[&'static TaskSpec],
    request: wit::Request,
    args: String,
    kwargs: String,
) -> Result<String, wit::TaskError> {
    install_panic_hook();
    let Some(spec) = specs.iter().copied().find(|spec| spec.name == request.task) else {
        // Celery's NotRegistered is a KeyError, so str() shows the quoted name.
        let name = Value::String(request.task.clone());
        let mut exc =
            Exception::with_args("NotRegistered", "celery.exceptions", vec![name.clone()]);
        exc.message = exceptions::python_repr(&name);
        return Err(TaskError::Raised(exc).into_wit());
    };
    let task = Task::new(request, spec, args, kwargs);
    run_task(&task, random_u64).map_err(TaskError::into_wit)
}

/// Binds, calls, and applies autoretry. `random` feeds the retry jitter.
fn run_task(task: &Task, random: fn() -> u64) -> Result<String, TaskError> {
    let spec = task.spec();
    let result = call(task, spec);
    match result {
        // Binding errors count too: Celery's autoretry wrapper also surrounds the call.
        Err(TaskError::Raised(exc))
            if retry::autoretry_matches(spec.options.autoretry_for, &exc) =>
        {
            Err(retry::autoretry(&task.retry_context(), exc, random()))
        }
        other => other,
    }
}

fn call(task: &Task, spec: &'static TaskSpec) -> Result<String, TaskError> {
    let (args_text, kwargs_text) = task.raw_arguments();
    let args = args::parse_args(spec.func, args_text)?;
    let kwargs = args::parse_kwargs(spec.func, kwargs_text)?;
    let mut bound = Bound::bind(
        spec.func,
        spec.params,
        spec.var_args,
        spec.var_kwargs,
        args,
        kwargs,
    )?;
    (spec.call)(task, &mut bound)
}

/// Serializes a task's result (or `update_state` meta) as JSON. A value serde cannot
/// encode (a map with non-string keys, say) fails the way kombu's encoder does.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, TaskError> {
    serde_json::to_string(value)
        .map_err(|err| TaskError::raise("EncodeError", "kombu.exceptions", err.to_string()))
}

/// Whether the specs' names are pairwise different; `export_tasks!` asserts it at compile
/// time, because the host could only serve one of two tasks with the same name.
pub const fn names_unique(specs: &[&TaskSpec]) -> bool {
    let mut i = 0;
    while i < specs.len() {
        let mut j = i + 1;
        while j < specs.len() {
            if str_eq(specs[i].name, specs[j].name) {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A random number for retry jitter. std seeds `RandomState` from the platform's random
/// source (on wasm32-wasip2, `wasi:random`), so hashing nothing with a fresh one yields an
/// unpredictable value without another dependency.
fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Panics abort on wasm32-wasip2, so the instance will trap whatever we do; the hook makes
/// sure the reason reaches the worker's log, at CRITICAL and tagged with the task, before
/// the host records `WorkerLostError`.
///
/// Only on wasm32: elsewhere (the SDK's own native tests) the context import does not exist,
/// and a hook calling it would turn every failed assertion into an abort.
fn install_panic_hook() {
    #[cfg(target_arch = "wasm32")]
    {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                context::log(wit::LogLevel::Critical, &format!("task panicked: {info}"));
            }));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::__private::sample_request;
    use crate::args::Param;
    use crate::options::StaticOptions;
    use serde_json::json;

    /// What `#[task(name = "t.add")] fn add(x: i64, y: i64) -> i64` generates, by hand.
    static ADD: TaskSpec = TaskSpec {
        name: "t.add",
        func: "add",
        params: &[
            Param {
                name: "x",
                required: true,
            },
            Param {
                name: "y",
                required: true,
            },
        ],
        var_args: false,
        var_kwargs: false,
        bound: false,
        options: StaticOptions::DEFAULT,
        call: |_, bound| {
            let x: i64 = bound.take(0)?;
            let y: i64 = bound.take(1)?;
            to_json(&(x + y))
        },
    };

    static FLAKY: TaskSpec = TaskSpec {
        name: "t.flaky",
        func: "flaky",
        params: &[],
        var_args: false,
        var_kwargs: false,
        bound: true,
        options: StaticOptions {
            autoretry_for: &["OSError"],
            retry_backoff: Some(1),
            ..StaticOptions::DEFAULT
        },
        call: |_, _| {
            Err(TaskError::Raised(Exception::builtin(
                "FileNotFoundError",
                "gone",
            )))
        },
    };

    fn run_spec(
        spec: &'static TaskSpec,
        retries: u32,
        args: &str,
        kwargs: &str,
    ) -> Result<String, TaskError> {
        let task = Task::new(
            sample_request(spec.name, retries),
            spec,
            args.to_owned(),
            kwargs.to_owned(),
        );
        run_task(&task, || 5)
    }

    #[test]
    fn runs_a_task_and_serializes_the_result() {
        assert_eq!(run_spec(&ADD, 0, "[2, 3]", "{}").expect("adds"), "5");
        assert_eq!(
            run_spec(&ADD, 0, "[2]", r#"{"y": 40}"#).expect("adds"),
            "42"
        );
    }

    #[test]
    fn binding_errors_surface_as_type_errors() {
        let Err(TaskError::Raised(exc)) = run_spec(&ADD, 0, "[1, 2, 3]", "{}") else {
            panic!("three arguments to add must fail");
        };
        assert_eq!(
            exc.to_string(),
            "TypeError: add() takes 2 positional arguments but 3 were given"
        );
    }

    #[test]
    fn autoretry_turns_matching_exceptions_into_backed_off_retries() {
        // retries=2, factor 1 → countdown 4, jitter: 5 % (4 + 1) = 0.
        let Err(TaskError::Retry(retry)) = run_spec(&FLAKY, 2, "[]", "{}") else {
            panic!("FileNotFoundError is an OSError and must be retried");
        };
        assert_eq!(retry.countdown, Some(0.0));
        assert_eq!(
            retry.exc.map(|e| e.exc_type),
            Some("FileNotFoundError".to_owned())
        );
        // At the default max (3) the original exception becomes the failure.
        let Err(TaskError::Raised(exc)) = run_spec(&FLAKY, 3, "[]", "{}") else {
            panic!("retries exhausted must fail");
        };
        assert_eq!(exc.exc_type, "FileNotFoundError");
    }

    #[test]
    fn unknown_task_is_not_registered() {
        let Err(wit::TaskError::Raised(exc)) = run(
            &[&ADD],
            sample_request("t.nope", 0),
            "[]".into(),
            "{}".into(),
        ) else {
            panic!("an unknown name must raise");
        };
        assert_eq!(
            (exc.exc_type.as_str(), exc.exc_module.as_str()),
            ("NotRegistered", "celery.exceptions")
        );
        assert_eq!(exc.exc_args, r#"["t.nope"]"#);
        assert_eq!(exc.message, "'t.nope'");
    }

    #[test]
    fn tasks_lists_names_and_options() {
        let infos = tasks(&[&ADD, &FLAKY]);
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[1].name, "t.flaky");
        assert_eq!(infos[1].options.autoretry_for, vec!["OSError".to_owned()]);
        assert_eq!(infos[1].options.retry_backoff, Some(1));
        assert_eq!(infos[0].options.max_retries, None);
    }

    #[test]
    fn unbound_tasks_declare_their_errback_parameters() {
        let infos = tasks(&[&ADD, &FLAKY]);
        let add = infos[0]
            .errback_parameters
            .as_ref()
            .expect("add is unbound");
        assert_eq!(add.positional, vec!["x".to_owned(), "y".to_owned()]);
        assert!(!add.var_positional && !add.var_keyword && add.keyword_only.is_empty());
        assert_eq!(
            infos[1].errback_parameters, None,
            "a bound task is never inline"
        );
    }

    #[test]
    fn duplicate_names_are_detected() {
        assert!(names_unique(&[&ADD, &FLAKY]));
        assert!(!names_unique(&[&ADD, &FLAKY, &ADD]));
    }

    #[test]
    fn unencodable_results_are_encode_errors() {
        let mut map = std::collections::HashMap::new();
        map.insert(vec![1u8], 1);
        let Err(TaskError::Raised(exc)) = to_json(&map) else {
            panic!("a map with list keys cannot be JSON");
        };
        assert_eq!(exc.exc_module, "kombu.exceptions");
        assert_eq!(
            to_json(&json!({"a": [1, null]})).expect("encodes"),
            r#"{"a":[1,null]}"#
        );
    }
}
