//! `celeriac run`: loads the tasks directory and runs one task locally, like Celery's
//! `task.apply()`: no broker, retries run in place after their countdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use celeriac::registry::Registry;
use celeriac::sandbox::{
    EngineOptions, Invocation, Request, RetryRequest, Sandbox, SandboxLimits, TaskOptions,
};
use celeriac::worker::{self, CeleryException, HeaderTimeLimits, TaskState, TracingTaskEvents};

use super::{LimitOpts, TaskCallOpts, TasksOpts, exit};

/// Longest countdown `run` waits for before a retry; a longer one would look like a hang.
const MAX_LOCAL_RETRY_WAIT: Duration = Duration::from_secs(60);

/// `celeriac run` arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub call: TaskCallOpts,
    /// Print the time taken and the peak memory on stderr
    #[arg(short, long)]
    pub verbose: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub tasks: TasksOpts,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub limits: LimitOpts,
}

/// Runs the command and returns the exit code.
pub fn main(args: RunArgs) -> i32 {
    super::run_async(run(args))
}

async fn run(args: RunArgs) -> anyhow::Result<i32> {
    args.call.parsed()?;
    let mut worker_limits = SandboxLimits::new();
    if let Some(megabytes) = args.limits.memory_limit {
        worker_limits = worker_limits.memory_bytes(megabytes << 20);
    }
    let header = HeaderTimeLimits {
        hard: args.limits.time_limit,
        soft: args.limits.soft_time_limit,
    };

    // One instance describes each component as it loads, then one runs the task.
    let sandbox = Sandbox::new(&EngineOptions {
        max_instances: 2,
        ..EngineOptions::default()
    })?;
    let cache = args.tasks.cache();
    let registry = Registry::load_dir(&sandbox, &args.tasks.tasks_dir, cache.as_ref()).await?;
    let Some(component) = registry.resolve(&args.call.name) else {
        // Celery's worker stores NotRegistered for an unknown name; say the same here.
        eprintln!("NotRegistered: '{}'", args.call.name);
        let known = registry.task_names().join(", ");
        eprintln!(
            "  tasks in {}: {}",
            args.tasks.tasks_dir.display(),
            if known.is_empty() { "none" } else { &known }
        );
        return Ok(exit::TASK_FAILED);
    };
    let options = component
        .task(&args.call.name)
        .map(|task| task.options.clone())
        .context("task vanished from its component")?;
    let limits = worker::resolve_limits(&worker_limits, &options, header);
    limits.validate().map_err(anyhow::Error::msg)?;

    let task_id = uuid::Uuid::new_v4().to_string();
    let args_json = args.call.args.clone();
    let kwargs_json = args.call.kwargs.clone();
    let mut retries = 0u32;
    loop {
        let request = local_request(&task_id, &args.call.name, retries);
        let invocation = Invocation {
            request,
            args_json: args_json.clone(),
            kwargs_json: kwargs_json.clone(),
            limits: limits.clone(),
            events: Arc::new(TracingTaskEvents {
                task_name: args.call.name.clone(),
                task_id: task_id.clone(),
            }),
        };
        let started = Instant::now();
        let report = sandbox.run(&component.prepared, invocation).await?;
        if args.verbose {
            eprintln!(
                "{}[{task_id}] ran in {:.6}s, peak memory {:.1} MiB (component {} {})",
                args.call.name,
                started.elapsed().as_secs_f64(),
                report.peak_memory_bytes as f64 / (1 << 20) as f64,
                component.path.display(),
                component.version()
            );
        }
        match worker::task_state(&report.outcome) {
            TaskState::Success(result) => {
                println!("{result}");
                return Ok(exit::SUCCESS);
            }
            TaskState::Failure(exception) => return Ok(report_failure(&exception, args.verbose)),
            TaskState::Retry(retry) => {
                if let Some(limit) = worker::max_retries(&retry, &options)
                    && retries >= limit
                {
                    let exception = match &retry.exc {
                        Some(exc) => CeleryException::from_guest(exc),
                        None => CeleryException::max_retries_exceeded(
                            &args.call.name,
                            &task_id,
                            &serde_json::from_str::<Vec<serde_json::Value>>(&args_json)
                                .unwrap_or_default(),
                            &serde_json::from_str(&kwargs_json).unwrap_or_default(),
                        ),
                    };
                    return Ok(report_failure(&exception, args.verbose));
                }
                let wait = retry_wait(&retry, &options);
                tracing::info!(task_name = %args.call.name, task_id = %task_id, retries, "Task {}[{task_id}] retry: in {:.3}s", args.call.name, wait.as_secs_f64());
                tokio::time::sleep(wait).await;
                retries += 1;
            }
            TaskState::Rejected(reject) => {
                eprintln!(
                    "Reject: {} (requeue={})",
                    reject.reason.as_deref().unwrap_or("no reason given"),
                    reject.requeue
                );
                return Ok(exit::TASK_FAILED);
            }
            TaskState::Ignored => {
                eprintln!("Ignore: the task asked for its result to be ignored");
                return Ok(exit::SUCCESS);
            }
        }
    }
}

fn report_failure(exception: &CeleryException, verbose: bool) -> i32 {
    eprintln!("{}", exception.summary());
    if verbose && let Some(traceback) = &exception.traceback {
        eprintln!("{traceback}");
    }
    exit::TASK_FAILED
}

/// How long a local retry waits: until the retry's ETA (see [`worker::retry_eta`]), never
/// more than [`MAX_LOCAL_RETRY_WAIT`].
fn retry_wait(retry: &RetryRequest, options: &TaskOptions) -> Duration {
    let now = worker::now_micros();
    let eta = worker::retry_eta(retry, options, now);
    let micros = u64::try_from(eta.unix_micros().saturating_sub(now)).unwrap_or(0);
    Duration::from_micros(micros).min(MAX_LOCAL_RETRY_WAIT)
}

/// `self.request` of a local run: eager, no broker, the root of its own work-flow.
fn local_request(task_id: &str, name: &str, retries: u32) -> Request {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    Request {
        retries,
        root_id: Some(task_id.to_string()),
        origin: Some(format!("gen{}@{host}", std::process::id())),
        correlation_id: Some(task_id.to_string()),
        is_eager: true,
        ..Request::new(
            task_id.to_string(),
            name.to_string(),
            format!("celeriac@{host}"),
        )
    }
}
