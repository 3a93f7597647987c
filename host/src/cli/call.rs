//! `celeriac call`: sends one task message to the broker as `celery call` does, and with
//! `--wait` waits for the task's result and prints it.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

use celeriac::backend::{ResultBackend, ResultState};
use celeriac::broker::{Broker, Outgoing};
use celeriac::connect::{BackendKind, BackendOptions, BrokerOptions, backend_kind};
use celeriac::protocol::kombu_json::from_kombu_json;
use celeriac::protocol::{OutgoingTask, Timestamp};
use celeriac::worker::now_micros;

use super::{ConnectionOpts, TaskCallOpts, connect_backend, exit};

/// How often `--wait` looks for the result.
const RESULT_POLL: Duration = Duration::from_millis(20);

/// `celeriac call` arguments.
#[derive(Debug, clap::Args)]
pub struct CallArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub call: TaskCallOpts,
    /// Queue to send the task to
    #[arg(short = 'Q', long, default_value = "celery")]
    pub queue: String,
    /// Run the task no earlier than this many seconds from now
    #[arg(long, value_name = "SECONDS")]
    pub countdown: Option<f64>,
    /// Discard the task if it has not started this many seconds from now
    #[arg(long, value_name = "SECONDS")]
    pub expires: Option<f64>,
    /// Wait up to this many seconds for the result and print it (else print the task id)
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<f64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connection: ConnectionOpts,
}

/// Runs the command and returns the exit code.
pub fn main(args: CallArgs) -> i32 {
    super::run_async(run(args))
}

async fn run(args: CallArgs) -> anyhow::Result<i32> {
    let (task_args, task_kwargs) = args.call.parsed()?;
    let wait = seconds(args.wait, "--wait")?;
    let id = uuid::Uuid::new_v4().to_string();
    let mut task = OutgoingTask::new(id.clone(), args.call.name.clone(), task_args, task_kwargs);
    let now = now_micros();
    task.eta = seconds(args.countdown, "--countdown")?.map(|delay| after(now, delay));
    task.expires = seconds(args.expires, "--expires")?.map(|delay| after(now, delay));
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    task.origin = Some(format!("gen{}@{host}", std::process::id()));

    let backend_url = wait.map(|_| args.connection.backend_url()).transpose()?;
    if let Some(url) = &backend_url
        && backend_kind(url)? == BackendKind::Rpc
    {
        anyhow::bail!(
            "--wait reads results from a redis:// result backend; rpc:// results go to the \
             sending client's own reply queue, which celeriac call does not consume"
        );
    }
    let broker = args
        .connection
        .connect_broker(BrokerOptions::default())
        .await?;
    // Connect to the backend before publishing, so a result is never missed by a late wait.
    let backend = match &backend_url {
        Some(url) => Some(connect_backend(url, &broker, &BackendOptions::default()).await?),
        None => None,
    };
    broker
        .publish("", &args.queue, &Outgoing::from(task.encode()))
        .await
        .with_context(|| format!("cannot send {} to queue {}", args.call.name, args.queue))?;

    let (Some(backend), Some(wait)) = (backend, wait) else {
        println!("{id}");
        return Ok(exit::SUCCESS);
    };
    tracing::info!(
        "sent {}[{id}] to {}; waiting for its result",
        args.call.name,
        args.queue
    );
    let deadline = Instant::now() + wait;
    loop {
        if let Some(document) = backend.get(&id).await? {
            let meta = from_kombu_json(&document)
                .with_context(|| format!("the stored result of {id} is not JSON"))?;
            let status = meta.get("status").and_then(Value::as_str).unwrap_or("");
            if ResultState::from_name(status).is_ready() {
                return Ok(print_outcome(status, &meta));
            }
        }
        if Instant::now() >= deadline {
            eprintln!("no result for {id} within {:.1}s", wait.as_secs_f64());
            return Ok(exit::TASK_FAILED);
        }
        tokio::time::sleep(RESULT_POLL).await;
    }
}

/// Prints a ready result: the value on stdout, an exception on stderr as Celery formats it.
fn print_outcome(status: &str, meta: &Value) -> i32 {
    let result = meta.get("result").unwrap_or(&Value::Null);
    if status == "SUCCESS" {
        println!("{result}");
        return exit::SUCCESS;
    }
    let exc_type = result
        .get("exc_type")
        .and_then(Value::as_str)
        .unwrap_or(status);
    let message = match result.get("exc_message") {
        Some(Value::Array(args)) if args.len() == 1 => text(&args[0]),
        Some(Value::Array(args)) => args.iter().map(text).collect::<Vec<_>>().join(", "),
        Some(other) => text(other),
        None => String::new(),
    };
    eprintln!("{exc_type}: {message}");
    if let Some(traceback) = meta.get("traceback").and_then(Value::as_str) {
        eprintln!("{traceback}");
    }
    exit::TASK_FAILED
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn after(now_micros: i64, delay: Duration) -> Timestamp {
    let micros = i64::try_from(delay.as_micros()).unwrap_or(i64::MAX);
    Timestamp::from_unix_micros(now_micros.saturating_add(micros))
}

/// A non-negative, finite number of seconds from a flag.
fn seconds(value: Option<f64>, flag: &str) -> anyhow::Result<Option<Duration>> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .with_context(|| format!("{flag} must be a non-negative number of seconds"))
        })
        .transpose()
}
