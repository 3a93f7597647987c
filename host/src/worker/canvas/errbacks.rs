//! The errbacks of a failed task (spec celery-protocol.md §8.3; Celery 5.7's
//! `_call_task_errbacks`): a "new style" errback served by this worker is called inline
//! with `(request, exc, traceback)`; every other one is sent, all together as one group,
//! with the failed task's id as first argument.

use serde_json::{Map, Value, json};

use crate::backend::ResultBackend;
use crate::broker::Broker;
use crate::protocol::kombu_json::to_kombu_json;
use crate::protocol::python_repr::python_repr;
use crate::protocol::{Sender, Signature};
use crate::sandbox::{Parameters, Request};

use super::super::run_loop::WorkerContext;
use super::super::{CeleryException, HeaderTimeLimits, TaskState};
use super::after_failure::exception_value;
use super::{carry_out, origin, plan, run_inline};

/// A failed task, as its errbacks see it.
pub(super) struct Failure<'a> {
    /// The failed task's id: the first argument of errbacks sent as messages.
    pub id: &'a str,
    /// Its work-flow's root id.
    pub root_id: &'a str,
    /// Celery's request of the failed task, as a JSON object (what an inline errback gets
    /// as `request`).
    pub request: Value,
    /// What it raised.
    pub exception: &'a CeleryException,
    /// Its traceback text; Celery passes none for chord errors.
    pub traceback: Option<&'a str>,
}

/// Calls the inline errbacks in order, then sends the others as one group.
pub(super) async fn call_errbacks<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    errbacks: &[Value],
    failure: &Failure<'_>,
) {
    let mut as_messages = Vec::new();
    for errback in errbacks {
        let signature = match Signature::from_value(errback) {
            Ok(signature) => signature,
            Err(err) => {
                tracing::error!("errback of task {} not sent: {err}", failure.id);
                continue;
            }
        };
        if called_inline(worker, &signature) {
            call_inline(worker, &signature, failure).await;
        } else {
            as_messages.push(signature);
        }
    }
    send_errbacks(worker, &as_messages, failure.id, failure.root_id).await;
}

/// Whether Celery would call `errback` inline here: its task is served by this worker,
/// declares its parameters (a plain `@app.task` function, not bound) and takes more than
/// one positional argument besides those the signature binds.
fn called_inline<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    errback: &Signature,
) -> bool {
    let Some(component) = worker.registry.resolve(&errback.task) else {
        return false;
    };
    component
        .task(&errback.task)
        .and_then(|info| info.errback_parameters.as_ref())
        .is_some_and(|parameters| takes_failure_context(parameters, errback))
}

/// Celery 5.7's `_errback_arity_greater(errback, 1)`: the arity of the task function once
/// a mutable signature's own arguments are bound (`functools.partial`), else unbound.
fn takes_failure_context(parameters: &Parameters, errback: &Signature) -> bool {
    let bound = !errback.immutable && (!errback.args.is_empty() || !errback.kwargs.is_empty());
    let positional = if bound {
        positional_left(parameters, &errback.args, &errback.kwargs)
            .unwrap_or(parameters.positional.len())
    } else {
        parameters.positional.len()
    };
    parameters.var_positional || positional > 1
}

/// How many positional parameters `partial(fun, *args, **kwargs)` leaves as
/// `inspect.getfullargspec` counts them: the leading ones are taken by `args`, and a
/// parameter bound by keyword turns itself and every later one keyword-only. `None` when
/// `inspect.signature(...).bind_partial` would refuse the binding (too many arguments, one
/// given twice, an unknown keyword): Celery then counts the unbound function's.
fn positional_left(
    parameters: &Parameters,
    args: &[Value],
    kwargs: &Map<String, Value>,
) -> Option<usize> {
    let names = &parameters.positional;
    let positional_only = usize::try_from(parameters.positional_only).unwrap_or(usize::MAX);
    if args.len() > names.len() && !parameters.var_positional {
        return None;
    }
    for key in kwargs.keys() {
        match names.iter().position(|name| name == key) {
            // A positional-only name given by keyword can only land in `**kwargs`.
            Some(index) if index < positional_only => {
                if !parameters.var_keyword {
                    return None;
                }
            }
            Some(index) if index < args.len() => return None,
            Some(_) => {}
            None if parameters.var_keyword || parameters.keyword_only.contains(key) => {}
            None => return None,
        }
    }
    let rest = names.get(args.len()..).unwrap_or_default();
    let first_by_keyword = rest.iter().enumerate().position(|(offset, name)| {
        offset + args.len() >= positional_only && kwargs.contains_key(name)
    });
    Some(first_by_keyword.unwrap_or(rest.len()))
}

/// Celery's `errback(request, exc, traceback)` in this worker: the task runs in a fresh
/// instance with the failure prepended to its own arguments (or with only those when the
/// signature is immutable); its return value is dropped and what it raises is logged.
async fn call_inline<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    errback: &Signature,
    failure: &Failure<'_>,
) {
    let with_failure = !errback.immutable;
    let mut args = Vec::with_capacity(errback.args.len() + 3);
    if with_failure {
        args.push(failure.request.clone());
        args.push(exception_value(failure.exception));
        args.push(failure.traceback.map_or(Value::Null, Value::from));
    }
    args.extend(errback.args.iter().cloned());
    let request = Request {
        root_id: Some(failure.root_id.to_owned()),
        inline_errback: with_failure,
        ..Request::new(
            failure.id.to_owned(),
            errback.task.clone(),
            worker.config.nodename.clone(),
        )
    };
    let state = run_inline(
        worker,
        request,
        to_kombu_json(&Value::Array(args)),
        to_kombu_json(&Value::Object(errback.kwargs.clone())),
        HeaderTimeLimits::default(),
    )
    .await;
    let name = python_repr(&Value::from(errback.task.as_str()));
    match state {
        Ok(TaskState::Success(_) | TaskState::Ignored) => {}
        Ok(TaskState::Failure(exception)) | Err(exception) => {
            let traceback = exception.traceback.as_deref().unwrap_or_default();
            tracing::error!(
                "Errback {name} raised an exception\n{traceback}{}",
                exception.repr()
            );
        }
        Ok(TaskState::Retry(_) | TaskState::Rejected(_)) => {
            tracing::error!("Errback {name} raised an exception: it cannot retry or reject");
        }
    }
}

/// Sends `errbacks` as one new group with partial arguments `(failed_id,)`, parent
/// `failed_id` and root `root_id` (Celery's "old style" errbacks).
async fn send_errbacks<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    errbacks: &[Signature],
    failed_id: &str,
    root_id: &str,
) {
    if errbacks.is_empty() {
        return;
    }
    let sender = Sender {
        task_id: Some(failed_id.to_owned()),
        root_id: Some(root_id.to_owned()),
        origin: origin(&worker.config.nodename),
    };
    let mut options = Map::new();
    options.insert("parent_id".into(), Value::from(failed_id));
    options.insert("root_id".into(), Value::from(root_id));
    let sent = match plan(worker, &sender, |applier| {
        applier.apply_as_group(errbacks, &[Value::from(failed_id)], &options)
    }) {
        Ok(applied) => carry_out(worker, applied.actions).await,
        Err(err) => Err(err.into()),
    };
    if let Err(err) = sent {
        tracing::error!("errbacks of task {failed_id} not sent: {err}");
    }
}

/// Celery's `Context` of a run of `request` with these arguments, as a JSON object with
/// `Context`'s field names.
pub(super) fn request_json(
    request: &Request,
    args: &[Value],
    kwargs: &Map<String, Value>,
) -> Value {
    let info = &request.delivery_info;
    json!({
        "id": request.id,
        "task": request.task,
        "args": args,
        "kwargs": kwargs,
        "retries": request.retries,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "group": request.group,
        "group_index": request.group_index,
        "eta": request.eta,
        "expires": request.expires,
        "hostname": request.hostname,
        "origin": request.origin,
        "correlation_id": request.correlation_id,
        "reply_to": request.reply_to,
        "delivery_info": {
            "exchange": info.exchange,
            "routing_key": info.routing_key,
            "priority": info.priority,
            "redelivered": info.redelivered,
        },
        "is_eager": request.is_eager,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameters(names: &[&str], var_positional: bool) -> Parameters {
        Parameters {
            positional: names.iter().map(|name| (*name).to_owned()).collect(),
            positional_only: 0,
            keyword_only: Vec::new(),
            var_positional,
            var_keyword: false,
        }
    }

    fn errback(args: Value, kwargs: Value, immutable: bool) -> Signature {
        Signature::from_value(&json!({
            "task": "tasks.on_error",
            "args": args,
            "kwargs": kwargs,
            "options": {},
            "subtask_type": null,
            "immutable": immutable,
        }))
        .expect("a valid signature")
    }

    #[test]
    fn three_free_parameters_are_the_new_style() {
        let p = parameters(&["request", "exc", "traceback"], false);
        assert!(takes_failure_context(
            &p,
            &errback(json!([]), json!({}), false)
        ));
    }

    #[test]
    fn one_parameter_is_the_old_style() {
        let p = parameters(&["task_id"], false);
        assert!(!takes_failure_context(
            &p,
            &errback(json!([]), json!({}), false)
        ));
    }

    #[test]
    fn star_args_is_always_the_new_style() {
        let p = parameters(&[], true);
        assert!(takes_failure_context(
            &p,
            &errback(json!([1, 2]), json!({}), false)
        ));
    }

    #[test]
    fn bound_arguments_are_not_counted() {
        // on_stage_error(failed_task_id, pipeline_id, stage) with .s(pipeline_id, stage):
        // one parameter is left, so Celery 5.7 sends it as a message.
        let p = parameters(&["failed_task_id", "pipeline_id", "stage"], false);
        assert!(!takes_failure_context(
            &p,
            &errback(json!(["p1", "train"]), json!({}), false)
        ));
        // Bound by keyword: `pipeline_id` and everything after it become keyword-only.
        assert!(!takes_failure_context(
            &p,
            &errback(json!([]), json!({"pipeline_id": "p1"}), false)
        ));
        // (request, exc, traceback, note) with one bound argument still leaves three.
        let p = parameters(&["request", "exc", "traceback", "note"], false);
        assert!(takes_failure_context(
            &p,
            &errback(json!(["n"]), json!({}), false)
        ));
    }

    #[test]
    fn immutable_signatures_count_the_unbound_function() {
        let p = parameters(&["failed_task_id", "pipeline_id", "stage"], false);
        assert!(takes_failure_context(
            &p,
            &errback(json!(["p1", "train"]), json!({}), true)
        ));
    }

    #[test]
    fn an_invalid_binding_counts_the_unbound_function() {
        let p = parameters(&["a", "b"], false);
        // Too many positional arguments.
        assert!(takes_failure_context(
            &p,
            &errback(json!([1, 2, 3]), json!({}), false)
        ));
        // `a` given twice.
        assert!(takes_failure_context(
            &p,
            &errback(json!([1]), json!({"a": 2}), false)
        ));
    }

    #[test]
    fn an_unknown_keyword_is_an_invalid_binding_unless_the_function_takes_it() {
        // (request, exc, traceback).s(1, 2, note=1): bind_partial refuses `note`, so the
        // unbound function's three parameters count.
        let mut p = parameters(&["request", "exc", "traceback"], false);
        let sig = errback(json!([1, 2]), json!({"note": 1}), false);
        assert!(takes_failure_context(&p, &sig));
        // With `*, note` or `**kwargs` the binding is valid and leaves one parameter.
        p.keyword_only = vec!["note".to_owned()];
        assert!(!takes_failure_context(&p, &sig));
        p.keyword_only.clear();
        p.var_keyword = true;
        assert!(!takes_failure_context(&p, &sig));
    }

    #[test]
    fn a_positional_only_name_given_by_keyword_stays_positional() {
        // def on_error(request, exc, /, traceback, **kw) with .s(exc=1): `exc` goes to
        // **kw, so three positional parameters are left.
        let mut p = parameters(&["request", "exc", "traceback"], false);
        p.positional_only = 2;
        p.var_keyword = true;
        assert!(takes_failure_context(
            &p,
            &errback(json!([]), json!({"exc": 1}), false)
        ));
        // Without **kw the binding is refused: the unbound count (three) decides too.
        p.var_keyword = false;
        assert!(takes_failure_context(
            &p,
            &errback(json!([1, 2]), json!({"exc": 1}), false)
        ));
    }
}
