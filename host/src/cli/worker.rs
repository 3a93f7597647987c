//! `celeriac worker`: consumes Celery task messages from Redis or RabbitMQ and runs them,
//! like `celery worker`.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use celeriac::broker::RedisOptions;
use celeriac::connect::{AnyBroker, BackendOptions, BrokerOptions};
use celeriac::control::ControlConfig;
use celeriac::registry::Registry;
use celeriac::sandbox::{EngineOptions, Sandbox, SandboxLimits};
use celeriac::url::redact_password;
use celeriac::worker::{self, StateDb, WorkerConfig, WorkerHandle};

use super::{ConnectionOpts, LimitOpts, TasksOpts, connect_backend, exit, list_entries};

/// The longest wait between two sweeps for unacked messages past their visibility timeout.
const MAX_RESTORE_INTERVAL: Duration = Duration::from_secs(60);

/// `celeriac worker` arguments.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connection: ConnectionOpts,
    /// Queues to consume, comma-separated
    #[arg(short = 'Q', long, value_delimiter = ',', default_value = "celery")]
    pub queues: Vec<String>,
    /// Tasks running at once [default: number of CPUs, divided among --processes]
    #[arg(short = 'c', long)]
    pub concurrency: Option<usize>,
    /// Worker processes to run, each with -c slots and a node name of its own (the -n name
    /// with -1, -2, ... after it: celery-1@host); one per core serves guests with a fresh
    /// instance per task best
    #[arg(long, default_value_t = NonZeroUsize::MIN, value_name = "N")]
    pub processes: NonZeroUsize,
    /// WebAssembly instances that may exist at once: running tasks, idle `reuse` instances
    /// and one for loading a component. Each reserves 8 GiB of address space, not memory
    /// [default: 1000, or 2 × concurrency + 1 if more]
    #[arg(long, value_name = "N")]
    pub max_instances: Option<u32>,
    /// Unacked messages held per concurrency slot
    #[arg(long, default_value_t = 4)]
    pub prefetch_multiplier: u32,
    /// Node name; %h is the host name, %n its first label, %d its domain
    #[arg(short = 'n', long, default_value = "celery@%h")]
    pub hostname: String,
    /// Ack messages after the task ran rather than when it starts
    #[arg(long)]
    pub acks_late: bool,
    /// Store the task name, args, kwargs, worker, retries and queue with results
    #[arg(long)]
    pub result_extended: bool,
    /// Redis: seconds after which unacked messages go back to their queue [default: 3600]
    #[arg(long, value_name = "SECONDS")]
    pub visibility_timeout: Option<u64>,
    /// RabbitMQ: the server's consumer_timeout in seconds (0: none); a message waiting for
    /// a later ETA is republished before it [default: 1800, RabbitMQ's]
    #[arg(long, value_name = "SECONDS")]
    pub broker_consumer_timeout: Option<u64>,
    /// Send task events (task-received, task-started, ...) for monitors such as Flower
    #[arg(short = 'E', long = "task-events", visible_alias = "events")]
    pub task_events: bool,
    /// Seconds between worker heartbeat events
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub heartbeat_interval: f64,
    /// Send no worker events (online, heartbeat, offline)
    #[arg(long)]
    pub without_heartbeat: bool,
    /// Do not listen for remote control commands (celery inspect / control)
    #[arg(long)]
    pub without_remote_control: bool,
    /// Do not listen for `celeriac deploy`: components sent through the broker are not installed
    #[arg(long)]
    pub without_deploy: bool,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9808)
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Seconds a warm shutdown waits for running tasks
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub shutdown_timeout: f64,
    /// File that keeps the revoked task ids across restarts (Celery's --statedb; celeriac's
    /// own JSON format); %n is the node name, %h its host, %d the host's domain
    #[arg(long, value_name = "PATH")]
    pub statedb: Option<std::path::PathBuf>,
    /// Redis result backend: keep the results of the chords this worker starts in header
    /// order (false: in arrival order, as Celery with result_backend_transport_options
    /// {'result_chord_ordered': False}); chords started by others are joined either way
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub result_chord_ordered: bool,
    /// Queue of callbacks, chain steps and errbacks without routing options (Celery's task_default_queue)
    #[arg(
        long,
        env = "CELERY_TASK_DEFAULT_QUEUE",
        default_value = "celery",
        value_name = "QUEUE"
    )]
    pub default_queue: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub tasks: TasksOpts,
    /// Do not watch the tasks directory: components change only with a restart
    #[arg(long)]
    pub no_watch: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub limits: LimitOpts,
}

/// Runs the command and returns the exit code.
pub fn main(args: WorkerArgs) -> i32 {
    #[cfg(unix)]
    {
        use super::worker_processes;
        let index = worker_processes::supervised_index();
        if args.processes.get() > 1 && index.is_none() {
            return super::run_async(async move {
                check_process_settings(&args)?;
                worker_processes::supervise(args.processes).await
            });
        }
        super::run_async(run(args, index))
    }
    #[cfg(not(unix))]
    {
        if args.processes.get() > 1 {
            eprintln!("error: --processes needs a Unix system");
            return super::exit::USAGE;
        }
        super::run_async(run(args, None))
    }
}

/// Settings that several worker processes cannot share, refused before any starts.
fn check_process_settings(args: &WorkerArgs) -> anyhow::Result<()> {
    if let Some(statedb) = &args.statedb
        && !statedb.to_string_lossy().contains("%n")
    {
        anyhow::bail!(
            "--statedb {} would be one file for {} worker processes: put %n (the node name) in it",
            statedb.display(),
            args.processes
        );
    }
    Ok(())
}

/// Each of `processes` worker processes' share of the CPUs (at least one): its default `-c`
/// and, under `--processes`, its runtime's threads.
pub(super) fn cpus_per_process(processes: NonZeroUsize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    (cpus / processes.get()).max(1)
}

/// The sandbox's instance pool for `concurrency` slots: the one asked for, if it leaves room
/// for every slot and a load; by default 1,000 or, for a larger concurrency, enough for every
/// slot to also keep an idle `reuse` instance.
fn instance_pool_size(asked: Option<u32>, concurrency: usize) -> anyhow::Result<u32> {
    let slots = u32::try_from(concurrency)
        .ok()
        .filter(|&slots| slots < u32::MAX / 2)
        .ok_or_else(|| anyhow::anyhow!("-c {concurrency} is more tasks than a worker can run"))?;
    let needed = slots + 1;
    match asked {
        Some(size) if size < needed => anyhow::bail!(
            "--max-instances {size} leaves no room for {concurrency} running tasks and a \
             component being loaded: it must be at least {needed}"
        ),
        Some(size) => Ok(size),
        None => Ok(EngineOptions::DEFAULT_MAX_INSTANCES.max(2 * slots + 1)),
    }
}

/// Expands Celery's `%h`, `%n`, `%d` (and `%%`) in a node name.
pub fn expand_nodename(pattern: &str, host: &str) -> String {
    let short = host.split_once('.').map_or(host, |(short, _)| short);
    host_format(pattern, host, short)
}

/// Celery's `node_format` for `--statedb`: `%h` the node's host, `%n` its name (the part
/// before `@`), `%d` the host's domain.
fn node_format(pattern: &str, nodename: &str) -> String {
    let (name, host) = nodename.split_once('@').unwrap_or(("celery", nodename));
    host_format(pattern, host, name)
}

/// Celery's `host_format`: `%h` → `host`, `%n` → `name`, `%d` → the domain of `host`.
fn host_format(pattern: &str, host: &str, name: &str) -> String {
    let domain = host.split_once('.').map_or("", |(_, domain)| domain);
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => out.push_str(host),
            Some('n') => out.push_str(name),
            Some('d') => out.push_str(domain),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Runs one worker; `process_index` is its number when `--processes` started it.
async fn run(args: WorkerArgs, process_index: Option<NonZeroUsize>) -> anyhow::Result<i32> {
    // Counted from the start, so that a signal while components load or the broker is
    // reached stops the start-up instead of killing the process.
    let signals = count_signals();
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let mut nodename = expand_nodename(&args.hostname, &host);
    let mut metrics_addr = args.metrics_addr;
    #[cfg(unix)]
    if let Some(index) = process_index {
        use super::worker_processes::{indexed_metrics_addr, indexed_nodename};
        nodename = indexed_nodename(&nodename, index);
        metrics_addr = metrics_addr
            .map(|addr| indexed_metrics_addr(addr, index))
            .transpose()?;
    }
    let concurrency = args
        .concurrency
        .unwrap_or_else(|| cpus_per_process(args.processes));
    let queues = list_entries(&args.queues);
    let backend_url = args.connection.backend_url()?;

    let mut limits = SandboxLimits::new()
        .time_limit(positive(args.limits.time_limit))
        .soft_time_limit(positive(args.limits.soft_time_limit));
    if let Some(megabytes) = args.limits.memory_limit {
        limits = limits.memory_bytes(megabytes << 20);
    }
    limits.validate().map_err(anyhow::Error::msg)?;

    let sandbox = Sandbox::new(&EngineOptions {
        max_instances: instance_pool_size(args.max_instances, concurrency)?,
        ..EngineOptions::default()
    })?;
    // A worker runs for long: what compiling a component costs in memory should leave with
    // a child process instead of staying in this one's allocator.
    let cache = args
        .tasks
        .cache()
        .map(|cache| match std::env::current_exe() {
            Ok(program) => cache.compiling_in_child(program),
            Err(_) => cache,
        });
    let start_up = async {
        let registry =
            Arc::new(Registry::load_dir(&sandbox, &args.tasks.tasks_dir, cache.as_ref()).await?);
        registry.keep_versions().await;
        // Watching starts before the banner, so a file dropped from now on is noticed.
        let watcher = if args.no_watch {
            None
        } else {
            Some(registry.watch()?)
        };

        let mut options = BrokerOptions::default();
        if let Some(seconds) = args.visibility_timeout {
            options.redis = RedisOptions {
                visibility_timeout: Duration::from_secs(seconds),
                ..options.redis
            };
        }
        if let Some(seconds) = args.broker_consumer_timeout {
            options.amqp.consumer_timeout = (seconds > 0).then(|| Duration::from_secs(seconds));
        }
        let broker = Arc::new(args.connection.connect_broker(options).await?);
        let backend_options = BackendOptions {
            result_chord_ordered: args.result_chord_ordered,
        };
        let backend = Arc::new(connect_backend(&backend_url, &broker, &backend_options).await?);
        let handle = match &args.statedb {
            Some(pattern) => {
                let path = node_format(&pattern.to_string_lossy(), &nodename);
                let (handle, restored) = WorkerHandle::with_statedb(backend, StateDb::new(&path))?;
                tracing::info!("Restored {restored} revoked task id(s) from {path}");
                handle
            }
            None => WorkerHandle::new(backend),
        };
        anyhow::Ok((registry, watcher, broker, handle))
    };
    let mut stop_while_starting = signals.clone();
    let (registry, _watcher, broker, handle) = tokio::select! {
        started = start_up => started?,
        _ = stop_while_starting.wait_for(|count| *count >= 1) => {
            tracing::warn!("worker: Warm shutdown while starting (nothing was consumed yet)");
            return Ok(exit::SUCCESS);
        }
    };

    print_banner(
        &nodename,
        &args.connection.broker,
        &backend_url,
        concurrency,
        &queues,
        &registry,
    );

    let mut config = WorkerConfig::new(queues, concurrency, nodename.clone());
    config.prefetch_multiplier = args.prefetch_multiplier;
    config.acks_late = args.acks_late;
    config.result_extended = args.result_extended;
    config.limits = limits;
    config.shutdown_timeout = Duration::from_secs_f64(args.shutdown_timeout.max(0.0));
    config.drain_timeout = broker.polling_interval() + Duration::from_secs(1);
    config.default_queue = args.default_queue;
    config.control = ControlConfig {
        task_events: args.task_events,
        heartbeat: (!args.without_heartbeat)
            .then(|| positive(Some(args.heartbeat_interval)))
            .flatten(),
        remote_control: !args.without_remote_control,
        deploy: !args.without_deploy,
        broker_url: redact_password(&args.connection.broker),
        metrics_addr,
    };

    let restorer = spawn_restorer(Arc::clone(&broker));

    let mut first = signals.clone();
    let shutdown = async move {
        let _ = first.wait_for(|count| *count >= 1).await;
        tracing::warn!("worker: Warm shutdown (signal received; send another to exit now)");
    };
    let mut second = signals;
    let cold = async move {
        let _ = second.wait_for(|count| *count >= 2).await;
    };
    // On a runtime thread, not the one blocked in `block_on`: handing each delivery from
    // there to the runtime's threads would wake one of them for every task.
    let mut running = tokio::spawn(worker::run_with(
        config, sandbox, registry, broker, handle, shutdown,
    ));
    let code = tokio::select! {
        joined = &mut running => {
            match joined {
                Ok(Ok(())) => exit::SUCCESS,
                // Not a set-up error (exit::USAGE): this worker had started serving.
                Ok(Err(err)) => {
                    tracing::error!("worker: stopped on an error: {err}");
                    exit::WORKER_FAILED
                }
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Err(err) => return Err(err.into()),
            }
        }
        // Returning (rather than exiting here) lets main flush the log lines still queued.
        () = cold => {
            running.abort();
            tracing::warn!("worker: Cold shutdown (second signal)");
            exit::WORKER_FAILED
        }
    };
    if let Some(restorer) = restorer {
        restorer.abort();
    }
    Ok(code)
}

/// How many SIGINT/SIGTERM the process has received so far.
pub(super) fn count_signals() -> tokio::sync::watch::Receiver<u32> {
    let (count, counted) = tokio::sync::watch::channel(0);
    tokio::spawn(async move {
        loop {
            wait_for_signal().await;
            count.send_modify(|n| *n += 1);
        }
    });
    counted
}

/// kombu's restore sweep on a Redis broker: unacked messages past the visibility timeout
/// go back. Twice per timeout, so a short timeout (a test, a fast fleet) recovers about
/// as fast as set. RabbitMQ needs none: unacked messages return when a connection drops.
fn spawn_restorer(broker: Arc<AnyBroker>) -> Option<tokio::task::JoinHandle<()>> {
    let every = (broker.as_redis()?.options().visibility_timeout / 2)
        .clamp(Duration::from_secs(1), MAX_RESTORE_INTERVAL);
    Some(tokio::spawn(async move {
        let Some(redis) = broker.as_redis() else {
            return;
        };
        let mut interval = tokio::time::interval(every);
        loop {
            interval.tick().await;
            match redis.restore_visible().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!("restored {n} unacked message(s) to their queues"),
                Err(err) => tracing::error!("restoring unacked messages failed: {err}"),
            }
        }
    }))
}

fn positive(seconds: Option<f64>) -> Option<Duration> {
    seconds
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
}

fn print_banner(
    nodename: &str,
    broker: &str,
    backend: &str,
    concurrency: usize,
    queues: &[String],
    registry: &Registry,
) {
    let mut out = String::new();
    out.push_str(&format!(
        "\n -------------- {nodename} v{}\n",
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str("--- ***** -----\n");
    out.push_str(&format!(
        "- ** ---------- .> transport:   {}\n",
        redact_password(broker)
    ));
    out.push_str(&format!(
        "- ** ---------- .> results:     {}\n",
        redact_password(backend)
    ));
    out.push_str(&format!(
        "- *** --- * --- .> concurrency: {concurrency} (wasm)\n"
    ));
    out.push_str(" -------------- [queues]\n");
    for queue in queues {
        out.push_str(&format!(
            "                .> {queue:<16} exchange={queue}(direct) key={queue}\n"
        ));
    }
    out.push_str("\n[tasks]\n");
    let versions = registry.versions();
    let width = versions
        .iter()
        .map(|task| task.name.len())
        .max()
        .unwrap_or(0);
    for task in versions {
        out.push_str(&format!(
            "  . {:<width$}  {} ({})\n",
            task.name,
            task.version,
            task.file.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    println!("{out}");
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::{expand_nodename, instance_pool_size, node_format};

    #[test]
    fn the_instance_pool_has_room_for_every_slot_and_a_load() {
        assert_eq!(instance_pool_size(None, 2).unwrap(), 1000);
        assert_eq!(instance_pool_size(None, 600).unwrap(), 1201);
        assert_eq!(instance_pool_size(Some(9), 8).unwrap(), 9);
        let refused = instance_pool_size(Some(8), 8).unwrap_err().to_string();
        assert!(refused.contains("at least 9"), "{refused}");
        assert!(instance_pool_size(None, usize::MAX).is_err());
    }

    #[test]
    fn statedb_expansions_name_the_node_as_celery_does() {
        assert_eq!(
            node_format("/var/run/%n@%h.state", "w1@box.example.com"),
            "/var/run/w1@box.example.com.state"
        );
        assert_eq!(node_format("%d/%n.db", "celery@box.lan"), "lan/celery.db");
    }

    #[test]
    fn nodename_expansions_follow_celery() {
        assert_eq!(
            expand_nodename("celery@%h", "box.example.com"),
            "celery@box.example.com"
        );
        assert_eq!(expand_nodename("w1@%n", "box.example.com"), "w1@box");
        assert_eq!(
            expand_nodename("%n@%d", "box.example.com"),
            "box@example.com"
        );
        assert_eq!(expand_nodename("a%%b@%h", "box"), "a%b@box");
        assert_eq!(expand_nodename("x@%d", "box"), "x@");
    }
}
