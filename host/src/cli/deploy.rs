//! `celeriac deploy`: sends a component through the broker to every celeriac worker (or those
//! named), or asks them to roll back, and prints one line per worker's answer.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use celeriac::connect::{self, BrokerOptions};
use celeriac::control::deploy::{self, Action, Package, Reply, Status};

use super::{DEFAULT_BROKER, exit, list_entries};

/// `celeriac deploy` arguments.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The component to install (NAME.wasm); each worker writes it into its tasks directory
    /// under the same file name
    #[arg(
        value_name = "FILE",
        required_unless_present = "rollback",
        conflicts_with = "rollback"
    )]
    pub file: Option<PathBuf>,
    /// Return to the version each worker kept from before the last change of NAME (a
    /// component file such as tasks.wasm, or a task name it serves)
    #[arg(long, value_name = "NAME")]
    pub rollback: Option<String>,
    /// Only these workers, comma-separated node names (celery@host,...) [default: every
    /// celeriac worker on the broker]
    #[arg(short = 'd', long, value_delimiter = ',', value_name = "NODES")]
    pub destination: Vec<String>,
    /// Seconds to wait for the answers; a worker compiles the component before it answers
    #[arg(short = 't', long, default_value_t = 60.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// Broker URL: redis://, rediss://, amqp:// or amqps://
    #[arg(short = 'b', long, env = "CELERY_BROKER_URL", default_value = DEFAULT_BROKER)]
    pub broker: String,
}

/// Runs the command and returns the exit code.
pub fn main(args: DeployArgs) -> i32 {
    super::run_async(run(args))
}

async fn run(args: DeployArgs) -> anyhow::Result<i32> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .context("--timeout must be a non-negative number of seconds")?;
    let destination = list_entries(&args.destination);
    let action = match (&args.file, args.rollback) {
        (Some(path), _) => Action::Install(pack(path.clone()).await?),
        (None, Some(name)) => Action::Rollback { name },
        (None, None) => anyhow::bail!("give a component FILE or --rollback NAME"),
    };
    let what = action.describe();
    let broker = connect::connect_broker(&args.broker, BrokerOptions::default()).await?;
    let sent = deploy::send(&broker, action, destination)
        .await
        .with_context(|| format!("cannot send {what}"))?;
    tracing::info!("sent {what}; waiting up to {:.1}s", timeout.as_secs_f64());
    let answers = sent
        .collect(timeout, |reply| println!("{}", line(reply)))
        .await;
    for node in &answers.silent {
        println!("{node}: no answer within {:.1}s", timeout.as_secs_f64());
    }
    if answers.replies.is_empty() && answers.silent.is_empty() {
        eprintln!("no celeriac worker answered");
    }
    Ok(if answers.all_ok() {
        exit::SUCCESS
    } else {
        exit::NOT_DEPLOYED
    })
}

/// Reads, digests and compresses the component off the runtime.
async fn pack(path: PathBuf) -> anyhow::Result<Package> {
    let file = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .with_context(|| format!("{} names no file", path.display()))?;
    tokio::task::spawn_blocking(move || {
        let component =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Package::pack(&file, &component)?)
    })
    .await
    .context("packing was interrupted")?
}

/// One worker's answer: `celery@host: ok echo.wasm v2 sha256:… (tasks.echo)` or
/// `celery@host: error echo.wasm sha256:…: why` (no digest for a rollback).
fn line(reply: &Reply) -> String {
    let digest = reply
        .digest
        .as_deref()
        .map(|digest| format!(" {digest}"))
        .unwrap_or_default();
    match reply.status {
        Status::Ok => format!(
            "{}: ok {} {}{digest} ({})",
            reply.nodename,
            reply.file,
            reply.version.as_deref().unwrap_or("-"),
            reply.tasks.join(", ")
        ),
        Status::Error | Status::Received => format!(
            "{}: error {}{digest}: {}",
            reply.nodename,
            reply.file,
            reply.error.as_deref().unwrap_or("(no reason given)")
        ),
    }
}
