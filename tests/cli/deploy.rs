//! Fleet deploy through the broker: `celeriac deploy` sends a component to real `celeriac
//! worker` processes, each checks its digest, installs and serves it, and answers; rollback
//! returns them to the version kept before. On Redis, and on RabbitMQ with the 18 MB Python
//! example (which only fits compressed).
//!
//! Every deploy names its workers with `--destination` (node names unique to the test), so it
//! never reaches another test's workers; the one test without a destination runs on a Redis
//! database of its own.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use celeriac::broker::{Broker, Outgoing};
use celeriac::connect::{BrokerOptions, connect_broker};
use celeriac::control::deploy::{self, Action, Package, Status};
use celeriac::protocol::OutgoingTask;
use celeriac::registry::digest_of;
use serde_json::{Map, Value, json};

use crate::amqp_support::amqp_url;
use crate::support::celeriac_cli::{command, describe, example_tasks, path_str, warm_cache};
use crate::support::hotswap::{drop_file, versioned_echo};
use crate::support::redis_worker::{Client, WorkerProcess, redis_url};

/// How long a deploy command waits for the answers.
const ANSWER_TIMEOUT: &str = "60";
/// How long a line the worker logs may take to reach its log file.
const LOG_WAIT: Duration = Duration::from_secs(10);

/// A worker with a tasks directory of its own, serving `echo.wasm` v1 to begin with.
struct Node {
    name: String,
    tasks: PathBuf,
    process: WorkerProcess,
}

impl Node {
    /// Starts `celeriac worker -n <label>-<uuid>@deploy-test` on `broker` (results in the
    /// test Redis), with echo v1 in its tasks directory under `dir`.
    async fn start(dir: &Path, label: &str, broker: &str, extra: &[&str]) -> Node {
        Node::start_serving(dir, label, broker, extra, Some(versioned_echo("v1"))).await
    }

    /// Like [`Node::start`], with `echo` as `echo.wasm` (if any) in the tasks directory.
    async fn start_serving(
        dir: &Path,
        label: &str,
        broker: &str,
        extra: &[&str],
        echo: Option<Vec<u8>>,
    ) -> Node {
        let name = format!("{label}-{}@deploy-test", uuid::Uuid::new_v4());
        let tasks = dir.join(label);
        std::fs::create_dir(&tasks).unwrap();
        if let Some(echo) = echo {
            drop_file(&tasks, "echo.wasm", &echo);
        }
        let backend = redis_url();
        let mut args = vec!["-n", name.as_str(), "--result-backend", &backend];
        args.extend_from_slice(extra);
        let log = dir.join(format!("{label}.log"));
        let process = WorkerProcess::start_on(broker, &tasks, 1, &log, &args).await;
        Node {
            name,
            tasks,
            process,
        }
    }

    /// The JSON result of one `tasks.echo` sent to this worker through `broker`.
    async fn echo(&self, broker: &str, client: &Client) -> Value {
        let id = uuid::Uuid::new_v4().to_string();
        let task = OutgoingTask::new(id.clone(), "tasks.echo", vec![], Map::new());
        connect_broker(broker, BrokerOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{broker}: {e}"))
            .publish("", &self.process.queue, &Outgoing::from(task.encode()))
            .await
            .expect("publish");
        let meta = client.wait_one(&id, Duration::from_secs(60)).await;
        assert_eq!(meta["status"], "SUCCESS", "{meta}");
        meta["result"].clone()
    }
}

/// Runs `celeriac deploy WHAT... -b BROKER -t TIMEOUT [-d DESTINATION]`, asserts that it
/// exits with `code`, and returns what it printed.
fn deploy(
    what: &[&str],
    broker: &str,
    destination: Option<&str>,
    timeout: &str,
    code: i32,
) -> String {
    let mut args = vec!["deploy"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-b", broker, "-t", timeout]);
    if let Some(destination) = destination {
        args.extend_from_slice(&["-d", destination]);
    }
    let output: Output = command(&args).output().expect("celeriac deploy runs");
    let (exit, stdout, stderr) = describe(&output);
    assert_eq!(exit, Some(code), "stdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

/// `echo.wasm` at version `version`, in a directory of its own under `dir`.
fn echo_file(dir: &Path, version: &str) -> PathBuf {
    let out = dir.join(format!("upload-{version}"));
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("echo.wasm");
    std::fs::write(&path, versioned_echo(version)).unwrap();
    path
}

/// The answer line of `node` in a deploy's stdout.
fn line_of<'a>(stdout: &'a str, node: &Node) -> &'a str {
    stdout
        .lines()
        .find(|line| line.starts_with(&format!("{}: ", node.name)))
        .unwrap_or_else(|| panic!("no line for {} in:\n{stdout}", node.name))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_reaches_two_workers_which_serve_v2_and_a_rollback_returns_both_to_v1() {
    deploy_and_rollback_over(&redis_url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_and_a_rollback_reach_two_workers_on_rabbitmq() {
    deploy_and_rollback_over(&amqp_url()).await;
}

/// Two workers on `broker` serving echo v1: a deploy of v2 makes both serve v2 (and write
/// it into their tasks directories); a rollback makes both serve v1 again; a broken
/// component is refused by both.
async fn deploy_and_rollback_over(broker: &str) {
    let dir = tempfile::tempdir().unwrap();
    let nodes = [
        Node::start(dir.path(), "w1", broker, &[]).await,
        Node::start(dir.path(), "w2", broker, &[]).await,
    ];
    let client = Client::connect().await;
    let destination = format!("{},{}", nodes[0].name, nodes[1].name);
    let v2 = echo_file(dir.path(), "v2");
    let v2_digest = digest_of(&std::fs::read(&v2).unwrap());

    let stdout = deploy(
        &[path_str(&v2)],
        broker,
        Some(&destination),
        ANSWER_TIMEOUT,
        0,
    );
    for node in &nodes {
        assert_eq!(
            line_of(&stdout, node),
            format!("{}: ok echo.wasm v2 {v2_digest} (tasks.echo)", node.name)
        );
        assert_eq!(node.echo(broker, &client).await, json!("v2"));
        assert_eq!(
            std::fs::read(node.tasks.join("echo.wasm")).unwrap(),
            versioned_echo("v2"),
            "written into the tasks directory, so a restart keeps it"
        );
        // The worker's log is written by a background thread: wait for the line.
        node.process
            .wait_log(LOG_WAIT, |log| log.contains("echo.wasm swapped v1 → v2"))
            .await;
    }

    let rollback = ["--rollback", "echo.wasm"];
    let stdout = deploy(&rollback, broker, Some(&destination), ANSWER_TIMEOUT, 0);
    let v1_digest = digest_of(&versioned_echo("v1"));
    for node in &nodes {
        assert_eq!(
            line_of(&stdout, node),
            format!("{}: ok echo.wasm v1 {v1_digest} (tasks.echo)", node.name)
        );
        assert_eq!(node.echo(broker, &client).await, json!("v1"));
    }

    // A component that does not compile is refused by each worker: exit 1, v1 serves on.
    let broken = dir.path().join("upload-broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("echo.wasm"), b"\0asm a broken v3").unwrap();
    let broken = broken.join("echo.wasm");
    let stdout = deploy(
        &[path_str(&broken)],
        broker,
        Some(&destination),
        ANSWER_TIMEOUT,
        1,
    );
    for node in &nodes {
        assert!(
            line_of(&stdout, node).starts_with(&format!("{}: error echo.wasm sha256:", node.name)),
            "{stdout}"
        );
        assert_eq!(node.echo(broker, &client).await, json!("v1"));
    }
    for node in nodes {
        assert_eq!(node.process.stop(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_with_a_wrong_digest_is_refused_by_every_worker_and_v1_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let broker_url = redis_url();
    let nodes = [
        Node::start(dir.path(), "w1", &broker_url, &[]).await,
        Node::start(dir.path(), "w2", &broker_url, &[]).await,
    ];
    let client = Client::connect().await;
    // The library lets a sender state any digest; the workers are the ones who check.
    let mut package = Package::pack("echo.wasm", &versioned_echo("v2")).unwrap();
    let claimed = digest_of(b"not the component");
    package.digest = claimed.clone();
    let broker = connect_broker(&broker_url, BrokerOptions::default())
        .await
        .unwrap();
    let names: Vec<String> = nodes.iter().map(|node| node.name.clone()).collect();
    let answers = deploy::send(&broker, Action::Install(package), names.clone())
        .await
        .expect("sent")
        .collect(Duration::from_secs(60), |_| {})
        .await;

    assert!(answers.silent.is_empty(), "{answers:?}");
    assert!(!answers.all_ok());
    let mut answered: Vec<&str> = answers
        .replies
        .iter()
        .map(|r| r.nodename.as_str())
        .collect();
    answered.sort_unstable();
    let mut expected: Vec<&str> = names.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(answered, expected);
    for reply in &answers.replies {
        assert_eq!(reply.status, Status::Error, "{reply:?}");
        assert_eq!(reply.digest.as_deref(), Some(claimed.as_str()));
        let error = reply.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("digest mismatch") && error.contains(&claimed),
            "{error}"
        );
    }
    for node in &nodes {
        assert_eq!(node.echo(&broker_url, &client).await, json!("v1"));
        assert_eq!(
            std::fs::read(node.tasks.join("echo.wasm")).unwrap(),
            versioned_echo("v1"),
            "nothing written"
        );
        let log = node
            .process
            .wait_log(LOG_WAIT, |log| log.contains("registry: refused"))
            .await;
        let refusal = log
            .lines()
            .find(|line| line.contains("registry: refused"))
            .unwrap_or_default();
        assert!(
            refusal.contains("digest mismatch") && refusal.contains("version v1 keeps serving"),
            "{refusal}"
        );
    }
    for node in nodes {
        assert_eq!(node.process.stop(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_named_worker_that_does_not_answer_fails_the_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let broker = redis_url();
    let listening = Node::start(dir.path(), "w1", &broker, &[]).await;
    let deaf = Node::start(dir.path(), "w2", &broker, &["--without-deploy"]).await;
    let v2 = echo_file(dir.path(), "v2");
    let destination = format!("{},{}", listening.name, deaf.name);
    let started = Instant::now();
    let stdout = deploy(&[path_str(&v2)], &broker, Some(&destination), "5", 1);
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "waited the timeout"
    );
    assert!(
        line_of(&stdout, &listening).contains(": ok echo.wasm v2 "),
        "{stdout}"
    );
    assert_eq!(
        line_of(&stdout, &deaf),
        format!("{}: no answer within 5.0s", deaf.name)
    );
    assert_eq!(listening.process.stop(), Some(0));
    assert_eq!(deaf.process.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_destination_every_worker_on_the_broker_answers_and_the_command_ends_early() {
    // A database of its own: Redis broadcasts are per database, so this deploy to "everyone"
    // reaches only the workers started here.
    let base = redis_url();
    let broker = format!(
        "{}/13",
        base.rsplit_once('/').map_or(base.as_str(), |(b, _)| b)
    );
    let dir = tempfile::tempdir().unwrap();
    let nodes = [
        Node::start(dir.path(), "w1", &broker, &[]).await,
        Node::start(dir.path(), "w2", &broker, &[]).await,
    ];
    let v2 = echo_file(dir.path(), "v2");
    let started = Instant::now();
    let stdout = deploy(&[path_str(&v2)], &broker, None, ANSWER_TIMEOUT, 0);
    assert_eq!(stdout.lines().count(), 2, "one line per worker:\n{stdout}");
    for node in &nodes {
        assert!(line_of(&stdout, node).contains(": ok echo.wasm v2 "));
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ends once the workers that received it have answered, not after the timeout"
    );
    for node in nodes {
        assert_eq!(node.process.stop(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_example_deploys_over_rabbitmq_compressed_under_its_message_limit() {
    python_example_deploys_over(&amqp_url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_example_deploys_over_redis_compressed_under_its_message_limit() {
    python_example_deploys_over(&redis_url()).await;
}

/// Deploys the 20 MB Python example (more than RabbitMQ's default 16 MiB message limit, less
/// compressed) to a worker on `broker`, which then runs its `tasks.add`.
async fn python_example_deploys_over(broker: &str) {
    warm_cache();
    let python = example_tasks().join("tasks.wasm");
    let component = std::fs::read(&python).unwrap();
    let packed = Package::pack("tasks.wasm", &component).unwrap();
    assert!(
        component.len() > 16 << 20 && packed.compressed.len() <= deploy::MAX_PACKED_BYTES,
        "{} bytes, {} packed: too big for RabbitMQ's 16 MiB uncompressed, fits compressed",
        component.len(),
        packed.compressed.len()
    );
    let dir = tempfile::tempdir().unwrap();
    // The Python example serves a tasks.echo of its own: start without echo.wasm.
    let node = Node::start_serving(dir.path(), "w1", broker, &[], None).await;
    let stdout = deploy(&[path_str(&python)], broker, Some(&node.name), "300", 0);
    let line = line_of(&stdout, &node);
    assert!(
        line.contains(": ok tasks.wasm ") && line.contains(&digest_of(&component)),
        "{line}"
    );
    assert!(line.contains("tasks.add"), "{line}");

    let client = Client::connect().await;
    let id = uuid::Uuid::new_v4().to_string();
    let task = OutgoingTask::new(
        id.clone(),
        "tasks.add",
        vec![json!(2), json!(3)],
        Map::new(),
    );
    connect_broker(broker, BrokerOptions::default())
        .await
        .unwrap()
        .publish("", &node.process.queue, &Outgoing::from(task.encode()))
        .await
        .expect("publish");
    let meta = client.wait_one(&id, Duration::from_secs(60)).await;
    assert_eq!(meta["result"], json!(5), "{meta}");
    assert_eq!(
        std::fs::read(node.tasks.join("tasks.wasm")).unwrap(),
        component
    );
    assert_eq!(node.process.stop(), Some(0));
}
