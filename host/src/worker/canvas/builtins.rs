//! Celery's built-in tasks (`celery/app/builtins.py`, spec §8.6), run by the host itself:
//! a message naming one of them is served by every celeriac worker, whatever components
//! it loaded, as every Python worker serves them.
//!
//! * `celery.map` / `celery.starmap`: the inner task is run in this worker once per item,
//!   each in a fresh sandbox instance of its component; the list of results is returned.
//! * `celery.chunks`: sent as a group of `celery.starmap` messages; returns the group's
//!   result tuple (Celery returns the `GroupResult` object itself).
//! * `celery.accumulate`: `args[index]`, or `args`.
//! * `celery.chord_unlock` (backends without a native join): once every header result is
//!   ready, sends the body (or fails it); otherwise retries after `interval`.
//! * `celery.group`, `celery.chord`: their legacy forms, applied as the canvas they name;
//!   `celery.chain` fails as in Celery ("chain is not a real task").
//! * `celery.backend_cleanup`: nothing to do on Redis.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::backend::chord::exception_repr;
use crate::backend::{HeaderResult, ResultBackend};
use crate::broker::Broker;
use crate::protocol::kombu_json::{from_kombu_json, to_kombu_json};
use crate::protocol::{Signature, SignatureError};
use crate::registry::{LoadedComponent, TaskTable};
use crate::sandbox::{RetryRequest, TaskOptions};

use super::super::execution::TaskRun;
use super::super::{CeleryException, HeaderTimeLimits, TaskState};
use super::chord::{fail_body, send_body};
use super::{carry_out, plan, run_inline, sender_of};

/// How often `celery.chord_unlock` polls without an `interval` (Celery's
/// `result_chord_retry_interval`).
const CHORD_UNLOCK_INTERVAL_SECS: f64 = 1.0;

/// What serves a task name.
#[derive(Clone)]
pub enum Target {
    /// A loaded component.
    Component(Arc<LoadedComponent>),
    /// One of Celery's built-in tasks.
    Builtin(Builtin),
}

/// Celery's built-in task names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    /// `celery.map`.
    Map,
    /// `celery.starmap`.
    Starmap,
    /// `celery.chunks`.
    Chunks,
    /// `celery.accumulate`.
    Accumulate,
    /// `celery.chord_unlock`.
    ChordUnlock,
    /// `celery.group`.
    Group,
    /// `celery.chain`.
    Chain,
    /// `celery.chord`.
    Chord,
    /// `celery.backend_cleanup`.
    BackendCleanup,
}

impl Builtin {
    /// The built-in task called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Builtin> {
        Some(match name {
            "celery.map" => Builtin::Map,
            "celery.starmap" => Builtin::Starmap,
            "celery.chunks" => Builtin::Chunks,
            "celery.accumulate" => Builtin::Accumulate,
            "celery.chord_unlock" => Builtin::ChordUnlock,
            "celery.group" => Builtin::Group,
            "celery.chain" => Builtin::Chain,
            "celery.chord" => Builtin::Chord,
            "celery.backend_cleanup" => Builtin::BackendCleanup,
            _ => return None,
        })
    }
}

impl Target {
    /// What serves `name`: a built-in, else the component that registered it in `tasks`
    /// (the registry's snapshot taken when the delivery was handed out).
    pub fn resolve(tasks: &TaskTable, name: &str) -> Option<Target> {
        Builtin::from_name(name)
            .map(Target::Builtin)
            .or_else(|| tasks.resolve(name).cloned().map(Target::Component))
    }

    /// The task options of `name` (as declared by Celery for the built-ins).
    pub fn options(&self, name: &str) -> TaskOptions {
        match self {
            Target::Component(component) => component
                .task(name)
                .map(|info| info.options.clone())
                .unwrap_or_default(),
            Target::Builtin(Builtin::ChordUnlock) => TaskOptions {
                retry_forever: true,
                ignore_result: Some(true),
                ..TaskOptions::default()
            },
            Target::Builtin(_) => TaskOptions::default(),
        }
    }
}

/// Runs a built-in task and says how it ended.
pub async fn run_builtin<B: Broker, R: ResultBackend + 'static>(
    builtin: Builtin,
    run: &TaskRun<'_, B, R>,
) -> TaskState {
    let message = run.message;
    let ended = match builtin {
        Builtin::Map | Builtin::Starmap => map(run, builtin == Builtin::Starmap).await,
        Builtin::Chunks => chunks(run).await,
        Builtin::Accumulate => Ok(accumulate(&message.args, &message.kwargs)),
        Builtin::ChordUnlock => return chord_unlock(run).await,
        Builtin::Group => legacy_group(run).await,
        Builtin::Chord => legacy_chord(run).await,
        Builtin::Chain => Err(CeleryException::from_message(
            "builtins",
            "NotImplementedError",
            "chain is not a real task",
        )),
        Builtin::BackendCleanup => Ok(Value::Null),
    };
    match ended {
        Ok(value) => TaskState::Success(to_kombu_json(&value)),
        Err(exception) => TaskState::Failure(exception),
    }
}

fn type_error(message: &str) -> CeleryException {
    CeleryException::from_message("builtins", "TypeError", message)
}

impl From<SignatureError> for CeleryException {
    fn from(err: SignatureError) -> Self {
        type_error(&err.to_string())
    }
}

/// `kwargs[key]` as a signature.
fn signature_kwarg(kwargs: &Map<String, Value>, key: &str) -> Result<Signature, CeleryException> {
    let value = kwargs
        .get(key)
        .ok_or_else(|| type_error(&format!("missing required argument: '{key}'")))?;
    Ok(Signature::from_value(value)?)
}

/// `kwargs[key]` as a list.
fn list_kwarg<'a>(
    kwargs: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a [Value], CeleryException> {
    match kwargs.get(key) {
        Some(Value::Array(items)) => Ok(items),
        _ => Err(type_error(&format!("'{key}' must be a list"))),
    }
}

/// `celery.accumulate`.
fn accumulate(args: &[Value], kwargs: &Map<String, Value>) -> Value {
    match kwargs.get("index").and_then(Value::as_u64) {
        Some(index) => args
            .get(usize::try_from(index).unwrap_or(usize::MAX))
            .cloned()
            .unwrap_or(Value::Null),
        None => Value::Array(args.to_vec()),
    }
}

/// `celery.map` (`task(item)`) and `celery.starmap` (`task(*item)`), in this worker.
async fn map<B: Broker, R: ResultBackend + 'static>(
    run: &TaskRun<'_, B, R>,
    star: bool,
) -> Result<Value, CeleryException> {
    let kwargs = &run.message.kwargs;
    let task = signature_kwarg(kwargs, "task")?;
    let items = list_kwarg(kwargs, "it")?;
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let args = match (star, item) {
            (true, Value::Array(args)) => args.clone(),
            (true, _) => return Err(type_error("starmap items must be lists of arguments")),
            (false, item) => vec![item.clone()],
        };
        // The component runs the task the request names: the inner one.
        let mut request = run.request();
        request.task = task.task.clone();
        let header = HeaderTimeLimits {
            hard: run.message.timelimit.hard,
            soft: run.message.timelimit.soft,
        };
        let args_json = to_kombu_json(&Value::Array(args));
        match run_inline(run.worker, request, args_json, "{}".into(), header).await? {
            TaskState::Success(result) => {
                results.push(from_kombu_json(&result).map_err(|err| type_error(&err.to_string()))?)
            }
            TaskState::Failure(exception) => return Err(exception),
            _ => {
                return Err(CeleryException::from_message(
                    "builtins",
                    "RuntimeError",
                    &format!(
                        "{} cannot retry, reject or ignore inside {}",
                        task.task, run.message.task
                    ),
                ));
            }
        }
    }
    Ok(Value::Array(results))
}

/// `celery.chunks`: a group of `celery.starmap` over `n`-item chunks of `it`.
async fn chunks<B: Broker, R: ResultBackend + 'static>(
    run: &TaskRun<'_, B, R>,
) -> Result<Value, CeleryException> {
    let kwargs = &run.message.kwargs;
    let task = signature_kwarg(kwargs, "task")?;
    let items = list_kwarg(kwargs, "it")?;
    let size = kwargs
        .get("n")
        .and_then(Value::as_u64)
        .filter(|&n| n > 0)
        .ok_or_else(|| type_error("'n' must be a positive integer"))?;
    let members: Vec<Signature> = items
        .chunks(usize::try_from(size).unwrap_or(usize::MAX))
        .map(|part| {
            let mut kwargs = Map::new();
            kwargs.insert("task".into(), task.to_value());
            kwargs.insert("it".into(), Value::Array(part.to_vec()));
            Signature {
                task: "celery.starmap".into(),
                kwargs,
                options: routing_options(&task),
                subtask_type: Some("xstarmap".into()),
                immutable: true,
                ..Signature::default()
            }
        })
        .collect();
    send_group(run, &members, &[]).await
}

/// The routing options of `sig`, which the map tasks over it share.
fn routing_options(sig: &Signature) -> Map<String, Value> {
    sig.options
        .iter()
        .filter(|(key, _)| {
            matches!(
                key.as_str(),
                "queue" | "exchange" | "routing_key" | "priority"
            )
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// Sends `members` as one group (this task their parent) and returns its result tuple.
async fn send_group<B: Broker, R: ResultBackend + 'static>(
    run: &TaskRun<'_, B, R>,
    members: &[Signature],
    partial: &[Value],
) -> Result<Value, CeleryException> {
    let sender = sender_of(run.message, &run.worker.config.nodename);
    let applied = plan(run.worker, &sender, |applier| {
        applier.apply_as_group(members, partial, &Map::new())
    })?;
    carry_out(run.worker, applied.actions)
        .await
        .map_err(|err| err.exception())?;
    Ok(applied.result)
}

/// `celery.group(tasks, result, group_id, partial_args)`.
async fn legacy_group<B: Broker, R: ResultBackend + 'static>(
    run: &TaskRun<'_, B, R>,
) -> Result<Value, CeleryException> {
    let kwargs = &run.message.kwargs;
    let members = list_kwarg(kwargs, "tasks")?
        .iter()
        .map(Signature::from_value)
        .collect::<Result<Vec<_>, _>>()?;
    let partial = match kwargs.get("partial_args") {
        Some(Value::Array(args)) => args.clone(),
        _ => Vec::new(),
    };
    let mut group_options = Map::new();
    if let Some(group_id) = kwargs.get("group_id").filter(|id| id.is_string()) {
        group_options.insert("task_id".into(), group_id.clone());
    }
    let group = Signature {
        task: "celery.group".into(),
        kwargs: [(
            "tasks".to_owned(),
            Value::Array(members.iter().map(Signature::to_value).collect()),
        )]
        .into_iter()
        .collect(),
        options: group_options,
        subtask_type: Some("group".into()),
        ..Signature::default()
    };
    apply_one(run, &group, &partial).await
}

/// `celery.chord(header, body, partial_args)`.
async fn legacy_chord<B: Broker, R: ResultBackend + 'static>(
    run: &TaskRun<'_, B, R>,
) -> Result<Value, CeleryException> {
    let kwargs = &run.message.kwargs;
    let mut chord_kwargs = Map::new();
    for key in ["header", "body"] {
        let value = kwargs
            .get(key)
            .ok_or_else(|| type_error(&format!("missing required argument: '{key}'")))?;
        chord_kwargs.insert(key.into(), value.clone());
    }
    let partial = match kwargs.get("partial_args") {
        Some(Value::Array(args)) => args.clone(),
        _ => Vec::new(),
    };
    let chord = Signature {
        task: "celery.chord".into(),
        kwargs: chord_kwargs,
        subtask_type: Some("chord".into()),
        ..Signature::default()
    };
    apply_one(run, &chord, &partial).await
}

/// Applies `sig` with this task as its parent and returns its result tuple.
async fn apply_one<B: Broker, R: ResultBackend + 'static>(
    run: &TaskRun<'_, B, R>,
    sig: &Signature,
    partial: &[Value],
) -> Result<Value, CeleryException> {
    let sender = sender_of(run.message, &run.worker.config.nodename);
    let applied = plan(run.worker, &sender, |applier| {
        applier.apply(sig, partial, &Map::new())
    })?;
    carry_out(run.worker, applied.actions)
        .await
        .map_err(|err| err.exception())?;
    Ok(applied.result)
}

/// `celery.chord_unlock(group_id, callback, interval, max_retries, result)`: polls the
/// header results stored under their ids.
async fn chord_unlock<B: Broker, R: ResultBackend + 'static>(run: &TaskRun<'_, B, R>) -> TaskState {
    let kwargs = &run.message.kwargs;
    let parsed = signature_kwarg(kwargs, "callback").and_then(|callback| {
        let ids = list_kwarg(kwargs, "result")?
            .iter()
            .map(|tuple| tuple[0][0].as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| type_error("'result' must hold result tuples"))?;
        Ok((callback, ids))
    });
    let (callback, ids) = match parsed {
        Ok(parsed) => parsed,
        Err(exception) => return TaskState::Failure(exception),
    };
    let interval = kwargs
        .get("interval")
        .and_then(Value::as_f64)
        .unwrap_or(CHORD_UNLOCK_INTERVAL_SECS);
    let retry = |max_retries: Option<u32>| {
        TaskState::Retry(RetryRequest {
            countdown: Some(interval),
            eta: None,
            max_retries,
            exc: None,
        })
    };
    let max_retries = kwargs
        .get("max_retries")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok());
    let mut results = Vec::with_capacity(ids.len());
    for id in ids {
        let stored = match run.worker.backend.get(&id).await {
            Ok(Some(document)) => from_kombu_json(&document).ok(),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!("chord_unlock: cannot read the result of {id}: {err}");
                None
            }
        };
        let Some(meta) = stored else {
            return retry(max_retries);
        };
        let state = meta["status"].as_str().unwrap_or("PENDING").to_owned();
        if !matches!(state.as_str(), "SUCCESS" | "FAILURE" | "REVOKED") {
            return retry(max_retries);
        }
        results.push(HeaderResult {
            task_id: id,
            state,
            value: meta["result"].clone(),
        });
    }
    let sender = sender_of(run.message, &run.worker.config.nodename);
    if let Some(failed) = results.iter().find(|result| result.failed()) {
        let reason = format!(
            "Dependency {} raised {}",
            failed.task_id,
            exception_repr(&failed.value)
        );
        fail_body(run.worker, &sender, &callback, &reason).await;
    } else {
        let values = Value::Array(results.into_iter().map(|r| r.value).collect());
        if let Err(err) = send_body(run.worker, &sender, &callback, values).await {
            let exception = err.exception();
            let reason = format!(
                "Callback error: {}('{}')",
                exception.exc_type, exception.message
            );
            fail_body(run.worker, &sender, &callback, &reason).await;
        }
    }
    TaskState::Success("null".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtin_names_are_celerys() {
        assert_eq!(Builtin::from_name("celery.starmap"), Some(Builtin::Starmap));
        assert_eq!(
            Builtin::from_name("celery.chord_unlock"),
            Some(Builtin::ChordUnlock)
        );
        assert_eq!(Builtin::from_name("tasks.add"), None);
    }

    #[test]
    fn accumulate_returns_the_indexed_argument_or_all() {
        let args = [json!(1), json!(2)];
        let index = json!({"index": 1});
        assert_eq!(accumulate(&args, index.as_object().expect("map")), json!(2));
        assert_eq!(accumulate(&args, &Map::new()), json!([1, 2]));
    }

    #[test]
    fn chord_unlock_retries_forever_and_ignores_its_result() {
        let options = Target::Builtin(Builtin::ChordUnlock).options("celery.chord_unlock");
        assert!(options.retry_forever);
        assert_eq!(options.ignore_result, Some(true));
    }
}
