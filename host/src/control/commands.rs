//! The remote control commands (celery-worker-behaviour.md §3.6) and their replies
//! (§3.7). Each returns the reply value, or `None` for a command that replies nothing
//! (`shutdown`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Map, Value, json};

use crate::backend::ResultBackend;
use crate::broker::Broker;
use crate::registry::Change;
use crate::sandbox::TaskInfo;
use crate::worker::parse_rate;

use super::events::software_fields;
use super::identity::{self, SW_VER, monotonic_seconds, sw_sys};
use super::state::Phase;
use super::{ControlContext, HEARTBEAT_COMMAND_FREQ};
use crate::protocol::python_repr::python_repr;

/// The reply of a command that failed, as kombu sends it: `{"error": "<repr>"}`.
fn error(text: impl Into<String>) -> Option<Value> {
    Some(json!({ "error": text.into() }))
}

fn ok(text: impl Into<String>) -> Option<Value> {
    Some(json!({ "ok": text.into() }))
}

/// Runs `method` with `arguments` and returns the reply.
pub async fn dispatch<B: Broker, R: ResultBackend + 'static>(
    ctx: &ControlContext<B, R>,
    method: &str,
    arguments: &Map<String, Value>,
) -> Option<Value> {
    let arg = |name: &str| arguments.get(name).filter(|v| !v.is_null());
    match method {
        "ping" => ok("pong"),
        "clock" => Some(json!({ "clock": ctx.monitor.sender.clock.value() })),
        "stats" => Some(stats(ctx)),
        "active" | "dump_active" => {
            let safe = arg("safe").and_then(Value::as_bool).unwrap_or(false);
            Some(infos(ctx, safe, |p| matches!(p, Phase::Active(_))))
        }
        "reserved" | "dump_reserved" => Some(infos(ctx, false, |p| *p == Phase::Reserved)),
        "scheduled" | "dump_schedule" => Some(scheduled(ctx)),
        "revoked" | "dump_revoked" => Some(json!(ctx.revoked.ids())),
        "registered" | "dump_tasks" => Some(registered(ctx, arg("taskinfoitems"))),
        "query_task" => Some(query_task(ctx, arg("ids"))),
        "report" => ok(report(ctx)),
        "conf" | "dump_conf" => {
            let with_defaults = arg("with_defaults").and_then(Value::as_bool) == Some(true);
            Some(conf(ctx, with_defaults))
        }
        "revoke" => {
            let terminate = arg("terminate").and_then(Value::as_bool) == Some(true);
            revoke(ctx, arg("task_id"), terminate, arg("signal")).await
        }
        "terminate" => revoke(ctx, arg("task_id"), true, arg("signal")).await,
        "rate_limit" => rate_limit(ctx, arg("task_name"), arg("rate_limit")),
        "time_limit" => time_limit(ctx, arg("task_name"), arg("soft"), arg("hard")),
        "add_consumer" => add_consumer(ctx, arg("queue")),
        "cancel_consumer" => cancel_consumer(ctx, arg("queue")),
        "active_queues" => Some(active_queues(ctx)),
        "enable_events" => ok(ctx.monitor.task_events.enable()),
        "disable_events" => ok(ctx.monitor.task_events.disable()),
        "heartbeat" => {
            ctx.monitor
                .send_worker_event("worker-heartbeat", software_fields(HEARTBEAT_COMMAND_FREQ));
            Some(Value::Null)
        }
        "pool_grow" => pool_grow(ctx, count(arg("n"))),
        "pool_shrink" => pool_shrink(ctx, count(arg("n"))),
        "pool_restart" => pool_restart(ctx, arg("modules")),
        "autoscale" => error("ValueError('Autoscale not enabled')"),
        "hello" => Some(hello(ctx, arg("from_node"), arg("revoked"))),
        "election" => Some(Value::Null),
        "shutdown" => {
            tracing::warn!("Got shutdown from remote");
            let _ = ctx.remote_shutdown.send(true);
            None
        }
        other => {
            tracing::error!("pidbox command error: KeyError({other:?})");
            error(format!("KeyError({})", python_repr(&Value::from(other))))
        }
    }
}

/// `pool_restart(modules=None, reload=False)`: reloads the components from the tasks
/// directory in the background (all, or those whose file or task names are in `modules`)
/// and replies at once, as Celery does. Unlike a Python pool restart it is always enabled
/// (no `worker_pool_restarts`): swapping a component in is safe while tasks run, and a
/// worker started with `--no-watch` takes its changes this way. `reload` is ignored:
/// every reload reads the files anew.
fn pool_restart<B: Broker, R: ResultBackend + 'static>(
    ctx: &ControlContext<B, R>,
    modules: Option<&Value>,
) -> Option<Value> {
    let only = string_list(modules);
    let registry = Arc::clone(&ctx.registry);
    tokio::spawn(async move {
        let (mut loaded, mut removed, mut unchanged, mut refused) = (0, 0, 0, 0);
        for (_, outcome) in registry.reload(&only).await {
            match outcome {
                Ok(Change::Loaded(_)) => loaded += 1,
                Ok(Change::Removed(_)) => removed += 1,
                Ok(Change::Unchanged) => unchanged += 1,
                Err(_) => refused += 1,
            }
        }
        tracing::info!(
            "pool_restart: components reloaded: {loaded} loaded, {removed} removed, \
             {unchanged} unchanged, {refused} refused"
        );
    });
    ok("reload started")
}

/// `n` of pool_grow and pool_shrink: default 1.
fn count(n: Option<&Value>) -> usize {
    n.and_then(|n| n.as_u64().or_else(|| n.as_str()?.parse().ok()))
        .map_or(1, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// An argument that is a string or a list of them (`maybe_list`): task ids, module names.
fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(id)) => vec![id.clone()],
        Some(Value::Array(ids)) => ids
            .iter()
            .filter_map(|id| id.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn infos<B: Broker, R: ResultBackend>(
    ctx: &ControlContext<B, R>,
    safe: bool,
    keep: impl Fn(&Phase) -> bool,
) -> Value {
    let monitor = &ctx.monitor;
    let infos: Vec<Value> = monitor
        .tasks
        .select(|r| keep(&r.phase))
        .iter()
        .map(|r| r.info(&monitor.sender.hostname, monitor.sender.pid, safe))
        .collect();
    Value::Array(infos)
}

fn scheduled<B: Broker, R: ResultBackend>(ctx: &ControlContext<B, R>) -> Value {
    let monitor = &ctx.monitor;
    let entries: Vec<Value> = monitor
        .tasks
        .select(|r| matches!(r.phase, Phase::Scheduled(_)))
        .iter()
        .map(|r| {
            let eta = match &r.phase {
                Phase::Scheduled(eta) => Value::from(eta.as_str()),
                _ => Value::Null,
            };
            json!({
                "eta": eta,
                "priority": 6,
                "request": r.info(&monitor.sender.hostname, monitor.sender.pid, false),
            })
        })
        .collect();
    Value::Array(entries)
}

fn query_task<B: Broker, R: ResultBackend>(
    ctx: &ControlContext<B, R>,
    wanted: Option<&Value>,
) -> Value {
    let wanted = string_list(wanted);
    let monitor = &ctx.monitor;
    let found: Map<String, Value> = monitor
        .tasks
        .select(|r| wanted.iter().any(|id| id == r.id()))
        .iter()
        .map(|r| {
            let info = r.info(&monitor.sender.hostname, monitor.sender.pid, false);
            (r.id().to_owned(), json!([r.query_state(), info]))
        })
        .collect();
    Value::Object(found)
}

/// The rate limit in force for a task: set by remote command, else its own.
fn current_rate_limit<B: Broker, R: ResultBackend>(
    ctx: &ControlContext<B, R>,
    task: &TaskInfo,
) -> Option<String> {
    ctx.monitor
        .overrides
        .rate(&task.name)
        .unwrap_or_else(|| task.options.rate_limit.clone())
}

/// `registered`: sorted names, each with ` [attr=value ...]` for the asked attributes
/// that are set (default: exchange, routing_key, rate_limit; only rate_limit can be).
fn registered<B: Broker, R: ResultBackend>(
    ctx: &ControlContext<B, R>,
    items: Option<&Value>,
) -> Value {
    let asked: Vec<String> = match items.and_then(Value::as_array) {
        Some(items) if !items.is_empty() => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        // Celery's DEFAULT_TASK_INFO_ITEMS, and the version of the component serving it.
        _ => vec![
            "exchange".into(),
            "routing_key".into(),
            "rate_limit".into(),
            "version".into(),
        ],
    };
    let mut names: Vec<String> = Vec::new();
    for component in ctx.registry.components() {
        for task in &component.tasks {
            if task.name.starts_with("celery.") {
                continue;
            }
            let attrs: Vec<String> = asked
                .iter()
                .filter_map(|attr| {
                    let options = &task.options;
                    let value = match attr.as_str() {
                        "rate_limit" => current_rate_limit(ctx, task),
                        "time_limit" => options.time_limit.map(|v| python_repr(&json!(v))),
                        "soft_time_limit" => {
                            options.soft_time_limit.map(|v| python_repr(&json!(v)))
                        }
                        "acks_late" => options.acks_late.map(|v| python_repr(&json!(v))),
                        "ignore_result" => options.ignore_result.map(|v| python_repr(&json!(v))),
                        "max_retries" => options.max_retries.map(|v| v.to_string()),
                        "version" => Some(component.version.clone()),
                        "digest" => Some(component.digest.clone()),
                        _ => None,
                    }?;
                    Some(format!("{attr}={value}"))
                })
                .collect();
            if attrs.is_empty() {
                names.push(task.name.clone());
            } else {
                names.push(format!("{} [{}]", task.name, attrs.join(" ")));
            }
        }
    }
    names.sort();
    names.dedup();
    json!(names)
}

fn stats<B: Broker, R: ResultBackend>(ctx: &ControlContext<B, R>) -> Value {
    let monitor = &ctx.monitor;
    let limits = &ctx.config.limits;
    let seconds = |d: Option<std::time::Duration>| d.map_or(json!(0), |d| json!(d.as_secs_f64()));
    json!({
        "total": monitor.tasks.totals(),
        "pid": monitor.sender.pid,
        "clock": monitor.sender.clock.value().to_string(),
        "uptime": monitor.started.elapsed().as_secs(),
        "pool": {
            "implementation": "celeriac:WasmPool",
            "max-concurrency": ctx.concurrency.load(Ordering::Relaxed),
            "processes": [monitor.sender.pid],
            "max-tasks-per-child": "N/A",
            "put-guarded-by-semaphore": false,
            "timeouts": [seconds(limits.soft_time_limit), seconds(limits.time_limit)],
        },
        "broker": ctx.settings.broker_info(ctx.consumer.broker().capabilities().transport),
        "prefetch_count": ctx.config.prefetch(),
        "rusage": identity::rusage().unwrap_or_else(|| Value::from("N/A")),
    })
}

fn report<B: Broker, R: ResultBackend>(ctx: &ControlContext<B, R>) -> String {
    format!(
        "software -> celeriac:{SW_VER} (wasm) sandbox:wasmtime\n\
         platform -> system:{} arch:{}\n\
         nodename -> {}\n\
         transport -> {}\n\
         concurrency -> {}\n",
        sw_sys(),
        std::env::consts::ARCH,
        ctx.monitor.sender.hostname,
        ctx.consumer.broker().capabilities().transport,
        ctx.concurrency.load(Ordering::Relaxed),
    )
}

/// `conf`: the settings that differ from Celery's defaults, and with `with_defaults` the
/// defaults too, as JSON values (never a password).
fn conf<B: Broker, R: ResultBackend>(ctx: &ControlContext<B, R>, with_defaults: bool) -> Value {
    let config = &ctx.config;
    let settings: [(&str, Value, Value); 6] = [
        (
            "worker_concurrency",
            json!(ctx.concurrency.load(Ordering::Relaxed)),
            Value::Null,
        ),
        (
            "worker_prefetch_multiplier",
            json!(config.prefetch_multiplier),
            json!(4),
        ),
        ("task_acks_late", json!(config.acks_late), json!(false)),
        (
            "result_extended",
            json!(config.result_extended),
            json!(false),
        ),
        (
            "worker_send_task_events",
            json!(ctx.settings.task_events),
            json!(false),
        ),
        ("task_default_queue", json!("celery"), json!("celery")),
    ];
    let conf: Map<String, Value> = settings
        .into_iter()
        .filter(|(_, value, default)| with_defaults || value != default)
        .map(|(key, value, _)| (key.to_owned(), value))
        .collect();
    Value::Object(conf)
}

/// `revoke`: the worker's own revoke (remember the ids, store REVOKED for each, and with
/// `terminate` stop those running here; §3.9).
async fn revoke<B: Broker, R: ResultBackend + 'static>(
    ctx: &ControlContext<B, R>,
    task_id: Option<&Value>,
    terminate: bool,
    signal: Option<&Value>,
) -> Option<Value> {
    let task_ids = string_list(task_id);
    // Celery's `signum()` takes a number or a name, any case, with or without `SIG`.
    let signal = match signal {
        Some(Value::Number(number)) => Some(number.to_string()),
        Some(Value::String(name)) => Some(name.to_ascii_uppercase()),
        _ => None,
    };
    match ctx
        .worker
        .revoke(&task_ids, terminate, signal.as_deref())
        .await
    {
        Ok(revoked) => ok(revoked.reply_text()),
        Err(err) => error(err.to_string()),
    }
}

fn is_registered<B: Broker, R: ResultBackend>(ctx: &ControlContext<B, R>, name: &str) -> bool {
    ctx.registry.resolve(name).is_some()
}

fn rate_limit<B: Broker, R: ResultBackend>(
    ctx: &ControlContext<B, R>,
    task_name: Option<&Value>,
    rate: Option<&Value>,
) -> Option<Value> {
    let name = task_name.and_then(Value::as_str).unwrap_or_default();
    if !is_registered(ctx, name) {
        tracing::error!("Rate limit attempt for unknown task {name}");
        return error("unknown task");
    }
    let text = match rate {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let rate = (!text.is_empty()).then_some(text);
    if let Err(err) = ctx.worker.set_rate_limit(name, rate.as_deref()) {
        return error(format!("Invalid rate limit string: {err}"));
    }
    let text = rate.as_deref().unwrap_or_default();
    tracing::info!("New rate limit for tasks of type {name}: {text}.");
    // "0" sets no limit, as an empty rate does.
    let limited = matches!(rate.as_deref().map(parse_rate), Some(Ok(Some(_))));
    ctx.monitor
        .overrides
        .set_rate(name, rate.filter(|_| limited));
    if limited {
        ok("new rate limit set successfully")
    } else {
        ok("rate limit disabled successfully")
    }
}

fn time_limit<B: Broker, R: ResultBackend>(
    ctx: &ControlContext<B, R>,
    task_name: Option<&Value>,
    soft: Option<&Value>,
    hard: Option<&Value>,
) -> Option<Value> {
    let name = task_name.and_then(Value::as_str).unwrap_or_default();
    if !is_registered(ctx, name) {
        tracing::error!("Change time limit attempt for unknown task {name}");
        return error("unknown task");
    }
    let seconds = |v: Option<&Value>| {
        v.and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()))
            .filter(|s| s.is_finite() && *s > 0.0)
    };
    let (soft, hard) = (seconds(soft), seconds(hard));
    let shown = |v: Option<f64>| v.map_or("None".to_owned(), |v| python_repr(&json!(v)));
    tracing::info!(
        "New time limits for tasks of type {name}: soft={} hard={}",
        shown(soft),
        shown(hard)
    );
    ctx.monitor.overrides.set_time(name, soft, hard);
    ok("time limits set successfully")
}

fn add_consumer<B: Broker, R: ResultBackend>(
    ctx: &ControlContext<B, R>,
    queue: Option<&Value>,
) -> Option<Value> {
    let Some(queue) = queue.and_then(Value::as_str).filter(|q| !q.is_empty()) else {
        return error("TypeError(\"add_consumer() missing required argument: 'queue'\")");
    };
    if ctx.consumer.add_queue(queue) {
        tracing::info!("Started consuming from {queue}");
    }
    ok(format!("add consumer {queue}"))
}

fn cancel_consumer<B: Broker, R: ResultBackend>(
    ctx: &ControlContext<B, R>,
    queue: Option<&Value>,
) -> Option<Value> {
    let Some(queue) = queue.and_then(Value::as_str) else {
        return error("TypeError(\"cancel_consumer() missing required argument: 'queue'\")");
    };
    tracing::info!("Canceling queue {queue}");
    ctx.consumer.remove_queue(queue);
    ok(format!("no longer consuming from {queue}"))
}

/// kombu's `Queue.as_dict(recurse=True)` for a queue declared the Celery way.
fn queue_dict(name: &str) -> Value {
    json!({
        "name": name,
        "exchange": {"name": name, "type": "direct", "arguments": null, "durable": true,
                     "passive": false, "auto_delete": false, "delivery_mode": null,
                     "no_declare": false},
        "routing_key": name, "queue_arguments": null, "binding_arguments": null,
        "consumer_arguments": null, "durable": true, "exclusive": false,
        "auto_delete": false, "no_ack": false, "alias": null, "bindings": [],
        "no_declare": null, "expires": null, "message_ttl": null, "max_length": null,
        "max_length_bytes": null, "max_priority": null,
    })
}

fn active_queues<B: Broker, R: ResultBackend>(ctx: &ControlContext<B, R>) -> Value {
    let mut queues = ctx.consumer.queues();
    queues.sort();
    Value::Array(queues.iter().map(|q| queue_dict(q)).collect())
}

/// Adds `n` slots, as far as the sandbox has room for running tasks.
fn pool_grow<B: Broker, R: ResultBackend>(ctx: &ControlContext<B, R>, n: usize) -> Option<Value> {
    let grown = ctx
        .concurrency
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
            current
                .checked_add(n)
                .filter(|&wanted| wanted <= ctx.max_concurrency)
        });
    match grown {
        Ok(_) => {
            ctx.slots.add_permits(n);
            ok("pool will grow")
        }
        Err(current) => error(format!(
            "cannot grow the pool by {n} from {current}: the worker has room for {} tasks \
             at once (--max-instances)",
            ctx.max_concurrency
        )),
    }
}

/// Takes `n` slots away (keeping at least one) as soon as they are free.
fn pool_shrink<B: Broker, R: ResultBackend>(ctx: &ControlContext<B, R>, n: usize) -> Option<Value> {
    let mut taken = 0;
    let _ = ctx
        .concurrency
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
            taken = n.min(current.saturating_sub(1));
            Some(current - taken)
        });
    if taken > 0 {
        let slots = std::sync::Arc::clone(&ctx.slots);
        let taken = u32::try_from(taken).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            if let Ok(permits) = slots.acquire_many_owned(taken).await {
                permits.forget();
            }
        });
    }
    ok("pool will shrink")
}

/// Mingle's `hello` (§5.4): merge the peer's revoked ids and answer with ours and the
/// clock; `null` to ourselves.
fn hello<B: Broker, R: ResultBackend>(
    ctx: &ControlContext<B, R>,
    from_node: Option<&Value>,
    revoked: Option<&Value>,
) -> Value {
    let from = from_node.and_then(Value::as_str).unwrap_or_default();
    if from == ctx.monitor.sender.hostname {
        return Value::Null;
    }
    tracing::info!("sync with {from}");
    if let Some(Value::Object(theirs)) = revoked {
        for id in theirs.keys() {
            ctx.revoked.insert(id);
        }
    }
    let now = monotonic_seconds();
    let ours: Map<String, Value> = ctx
        .revoked
        .ids()
        .into_iter()
        .map(|id| {
            let entry = json!([now, id]);
            (id, entry)
        })
        .collect();
    json!({ "revoked": ours, "clock": ctx.monitor.sender.clock.forward() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_arguments_may_be_a_string_or_a_list() {
        assert_eq!(string_list(Some(&json!("a"))), vec!["a"]);
        assert_eq!(string_list(Some(&json!(["a", "b"]))), vec!["a", "b"]);
        assert!(string_list(None).is_empty());
    }

    #[test]
    fn queues_are_described_as_kombu_does() {
        let q = queue_dict("hipri");
        assert_eq!(q["name"], "hipri");
        assert_eq!(q["exchange"]["type"], "direct");
        assert_eq!(q["routing_key"], "hipri");
        assert_eq!(q["exclusive"], false);
        assert_eq!(q["durable"], true);
    }
}
