//! The `celeriac` command line: one module per subcommand, shared option groups, exit codes.

pub mod build;
pub mod call;
pub mod compile_artifact;
pub mod deploy;
pub mod exit;
pub mod logging;
pub mod malloc;
pub mod run;
pub mod worker;
#[cfg(unix)]
pub mod worker_processes;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};

use anyhow::Context as _;

use celeriac::broker::AmqpOptions;
use celeriac::connect::{self, AnyBackend, AnyBroker, BrokerOptions};
use celeriac::registry::CompileCache;

/// The default broker, as Celery's `broker_url` for Redis.
const DEFAULT_BROKER: &str = "redis://127.0.0.1:6379/0";

/// celeriac: a Celery worker that runs every task in a WebAssembly sandbox.
///
/// Tasks are WebAssembly components (build one from a Celery tasks.py with `celeriac build`);
/// the worker serves every component found in its tasks directory.
#[derive(Debug, Parser)]
#[command(name = "celeriac", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Logging options.
    #[command(flatten)]
    pub log: logging::LogOpts,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one task locally, without a broker, and print its JSON result.
    Run(run::RunArgs),
    /// Compile a Celery task module (tasks.py) into a task component.
    Build(build::BuildArgs),
    /// Consume Celery task messages from the broker and run them, like `celery worker`.
    Worker(worker::WorkerArgs),
    /// Send a task message to the broker, like `celery call`, and optionally wait for its result.
    Call(call::CallArgs),
    /// Install a component on every worker through the broker, or roll it back.
    Deploy(deploy::DeployArgs),
    /// Compile a component from stdin into a worker's compile cache (a worker runs this in a
    /// child process).
    #[command(name = celeriac::registry::COMPILE_SUBCOMMAND, hide = true)]
    CompileArtifact(compile_artifact::CompileArtifactArgs),
}

/// Runs an async command on a multi-threaded tokio runtime and turns its result into an
/// exit code: the command's own code, or [`exit::USAGE`] with the whole error chain.
pub fn run_async(command: impl std::future::Future<Output = anyhow::Result<i32>>) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // A running guest yields every epoch tick (5 ms), so each scheduler tick can take
        // that long; polled for I/O only every 61 ticks (tokio's default), a worker whose
        // slots all run guests would hear a control request and send its reply only after
        // seconds. Every 4 ticks keeps that within tens of milliseconds.
        .event_interval(4)
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return exit::USAGE;
        }
    };
    let code = match runtime.block_on(command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_report(&err));
            exit::USAGE
        }
    };
    // Everything the command must finish it has awaited. What may still run is a blocking
    // thread waiting for a compile child after a shutdown during start-up: not waited for
    // (dropping the runtime would), the child dies with this process.
    runtime.shutdown_timeout(BLOCKING_WORK_GRACE);
    code
}

/// How long a finished command waits for blocking threads it left running.
const BLOCKING_WORK_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// `err` and its causes on one line, `outer: inner: …`, leaving out a cause whose text the
/// line already holds: the library's errors name their source in their own message too,
/// and `{:#}` would print it twice.
pub fn error_report(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The task to call and its arguments, shared by `run` and `call`.
#[derive(Debug, clap::Args)]
pub struct TaskCallOpts {
    /// The Celery task name, e.g. tasks.add
    pub name: String,
    /// Positional arguments, a JSON array
    #[arg(short, long, default_value = "[]", value_name = "JSON")]
    pub args: String,
    /// Keyword arguments, a JSON object
    #[arg(short, long, default_value = "{}", value_name = "JSON")]
    pub kwargs: String,
}

impl TaskCallOpts {
    /// The arguments, checked to be a JSON array and a JSON object.
    pub fn parsed(&self) -> anyhow::Result<(Vec<Value>, Map<String, Value>)> {
        let args = match parse_json(&self.args, "--args")? {
            Value::Array(args) => args,
            _ => anyhow::bail!("--args must be a JSON array, e.g. '[2, 3]'"),
        };
        let kwargs = match parse_json(&self.kwargs, "--kwargs")? {
            Value::Object(kwargs) => kwargs,
            _ => anyhow::bail!("--kwargs must be a JSON object, e.g. '{{\"x\": 1}}'"),
        };
        Ok((args, kwargs))
    }
}

/// The non-empty entries of a comma-separated list flag, trimmed (`-Q a, b,` is `a`, `b`).
pub fn list_entries(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|entry| entry.trim().to_owned())
        .filter(|entry| !entry.is_empty())
        .collect()
}

fn parse_json(text: &str, flag: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{flag} is not valid JSON: {text}"))
}

/// Where the broker and the result backend are, shared by `worker` and `call`.
#[derive(Debug, clap::Args)]
pub struct ConnectionOpts {
    /// Broker URL: redis://, rediss://, amqp:// or amqps://
    #[arg(short = 'b', long, env = "CELERY_BROKER_URL", default_value = DEFAULT_BROKER)]
    pub broker: String,
    /// Result backend URL: redis://, rediss:// or rpc:// [default: the broker URL for Redis, rpc:// for RabbitMQ]
    #[arg(long, env = "CELERY_RESULT_BACKEND")]
    pub result_backend: Option<String>,
    /// RabbitMQ: x-max-priority of the queues declared, as Celery's task_queue_max_priority [default: none]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=255))]
    pub queue_max_priority: Option<u8>,
}

impl ConnectionOpts {
    /// The result backend URL: the one given, else the broker's default (see
    /// [`connect::backend_url`]), checked to work with the broker.
    pub fn backend_url(&self) -> anyhow::Result<String> {
        Ok(connect::backend_url(
            &self.broker,
            self.result_backend.as_deref(),
        )?)
    }

    /// Connects to the broker; `options` are the transport options other than the AMQP
    /// queue arguments, which come from these flags.
    pub async fn connect_broker(&self, mut options: BrokerOptions) -> anyhow::Result<AnyBroker> {
        options.amqp = AmqpOptions {
            queue_max_priority: self.queue_max_priority,
            ..options.amqp
        };
        Ok(connect::connect_broker(&self.broker, options).await?)
    }
}

/// Connects to the result backend at `url` (`rpc://` uses `broker`'s connection).
pub async fn connect_backend(
    url: &str,
    broker: &AnyBroker,
    options: &connect::BackendOptions,
) -> anyhow::Result<AnyBackend> {
    Ok(connect::connect_backend(url, broker, options).await?)
}

/// Where tasks come from, shared by the commands that load components.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Task options")]
pub struct TasksOpts {
    /// Directory of task components (*.wasm), with optional policy files beside them
    #[arg(
        long = "tasks",
        env = "CELERIAC_TASKS",
        default_value = "tasks",
        value_name = "DIR"
    )]
    pub tasks_dir: PathBuf,
    /// Directory for compiled components [default: $CELERIAC_CACHE_DIR, else ~/.cache/celeriac]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile components on every start instead of using the cache
    #[arg(long)]
    pub no_cache: bool,
}

impl TasksOpts {
    /// The compile cache these options ask for.
    pub fn cache(&self) -> Option<CompileCache> {
        if self.no_cache {
            return None;
        }
        self.cache_dir
            .clone()
            .or_else(CompileCache::default_dir)
            .map(CompileCache::new)
    }
}

/// Limits shared by the commands that run tasks.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitOpts {
    /// Hard time limit in seconds: the task is killed with TimeLimitExceeded [default: task's option, else none]
    #[arg(long, value_name = "SECONDS")]
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds: the task is interrupted with SoftTimeLimitExceeded [default: task's option, else none]
    #[arg(long, value_name = "SECONDS")]
    pub soft_time_limit: Option<f64>,
    /// Memory cap per task instance, in MiB [default: 256]
    #[arg(long, value_name = "MB", env = "CELERIAC_MEMORY_LIMIT")]
    pub memory_limit: Option<usize>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use clap::error::ErrorKind;

    use super::{Cli, error_report};

    #[test]
    fn valid_command_lines_parse() {
        let valid: &[&[&str]] = &[
            &["celeriac", "run", "tasks.add"],
            &[
                "celeriac",
                "run",
                "--tasks",
                "dir",
                "tasks.add",
                "-a",
                "[1, 2]",
                "-k",
                "{}",
                "-v",
            ],
            &[
                "celeriac",
                "run",
                "tasks.spin",
                "--time-limit",
                "1.5",
                "--soft-time-limit",
                "1",
                "--memory-limit",
                "64",
            ],
            &["celeriac", "-l", "info", "run", "tasks.add", "--no-cache"],
            &[
                "celeriac",
                "run",
                "tasks.add",
                "--loglevel",
                "DEBUG",
                "--log-format",
                "json",
            ],
            &[
                "celeriac",
                "build",
                "tasks.py",
                "-o",
                "tasks.wasm",
                "-p",
                "deps",
                "-p",
                "more",
            ],
            &["celeriac", "worker"],
            &[
                "celeriac",
                "worker",
                "-b",
                "amqp://guest:guest@127.0.0.1:5672//",
                "--result-backend",
                "rpc://",
                "--queue-max-priority",
                "10",
            ],
            &["celeriac", "call", "tasks.add", "-a", "[2, 3]"],
            &["celeriac", "deploy", "tasks.wasm"],
            &[
                "celeriac",
                "deploy",
                "tasks.wasm",
                "-b",
                "amqp://guest:guest@127.0.0.1:5672//",
                "--destination",
                "w1@a,w2@b",
                "--timeout",
                "5",
            ],
            &[
                "celeriac",
                "deploy",
                "--rollback",
                "tasks.add",
                "-d",
                "w1@a",
            ],
            &["celeriac", "worker", "--without-deploy"],
            &[
                "celeriac",
                celeriac::registry::COMPILE_SUBCOMMAND,
                "--output",
                "out.cwasm",
            ],
            &[
                "celeriac",
                "call",
                "tasks.add",
                "--args",
                "[2, 3]",
                "--kwargs",
                "{}",
                "-Q",
                "q1",
                "--countdown",
                "1.5",
                "--expires",
                "60",
                "--wait",
                "10",
                "-b",
                "redis://127.0.0.1:6379/1",
            ],
            &[
                "celeriac",
                "worker",
                "-b",
                "redis://:pw@localhost:6379/1",
                "-Q",
                "a,b",
                "-c",
                "2",
                "--prefetch-multiplier",
                "1",
                "-n",
                "w1@%h",
                "--acks-late",
                "--result-extended",
                "--visibility-timeout",
                "30",
                "--time-limit",
                "5",
                "-l",
                "info",
            ],
        ];
        for argv in valid {
            if let Err(err) = Cli::try_parse_from(*argv) {
                panic!("{argv:?} should parse: {err}");
            }
        }
    }

    #[test]
    fn invalid_command_lines_fail_with_the_right_kind() {
        let invalid: &[(&[&str], ErrorKind)] = &[
            (
                &["celeriac"],
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
            ),
            (&["celeriac", "run"], ErrorKind::MissingRequiredArgument),
            (
                &["celeriac", "run", "x", "--time-limit", "soon"],
                ErrorKind::ValueValidation,
            ),
            (
                &["celeriac", "run", "x", "--memory-limit", "-5"],
                ErrorKind::UnknownArgument,
            ),
            (
                &["celeriac", "-l", "loud", "run", "x"],
                ErrorKind::ValueValidation,
            ),
            (
                &["celeriac", "build", "tasks.py"],
                ErrorKind::MissingRequiredArgument,
            ),
            (&["celeriac", "worker-please"], ErrorKind::InvalidSubcommand),
            (
                &["celeriac", "worker", "-c", "many"],
                ErrorKind::ValueValidation,
            ),
            (&["celeriac", "call"], ErrorKind::MissingRequiredArgument),
            (&["celeriac", "deploy"], ErrorKind::MissingRequiredArgument),
            (
                &["celeriac", "deploy", "x.wasm", "--rollback", "x.wasm"],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["celeriac", "deploy", "x.wasm", "-t", "soon"],
                ErrorKind::ValueValidation,
            ),
            (
                &["celeriac", "worker", "--queue-max-priority", "0"],
                ErrorKind::ValueValidation,
            ),
            (
                &["celeriac", "call", "x", "--wait", "soon"],
                ErrorKind::ValueValidation,
            ),
        ];
        for (argv, kind) in invalid {
            match Cli::try_parse_from(*argv) {
                Ok(_) => panic!("{argv:?} should not parse"),
                Err(err) => assert_eq!(err.kind(), *kind, "{argv:?}: {err}"),
            }
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::other("connection refused");
        let err = anyhow::Error::new(Outer(io)).context("broker redis://h");
        assert_eq!(
            error_report(&err),
            "broker redis://h: cannot connect: connection refused"
        );
    }

    #[test]
    fn a_cause_not_in_the_message_is_appended() {
        let err = anyhow::Error::new(std::io::Error::other("refused")).context("broker");
        assert_eq!(error_report(&err), "broker: refused");
    }
}
