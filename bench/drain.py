"""Drain benchmark: celeriac and the Python Celery worker, side by side, on Redis or RabbitMQ.

Each setting (Python Celery with prefork and with threads; celeriac with the Rust guest at
``SLOTS`` slots and at the default, the Python guest in a fresh instance per task in one
worker and in one worker process per CPU, and the Python guest reusing instances at
``SLOTS``) gets the same three measurements on one broker, chosen with ``--broker``:

redis (the default)
    the machine's Redis, broker db 8.
amqp
    the machine's RabbitMQ, ``amqp://guest:guest@127.0.0.1:5672//``, on a queue (and direct
    exchange) of the benchmark's own, ``bench-drain``.

Results always go to Celery's Redis result backend in db 9. Before each setting the results
db is flushed and the broker emptied (Redis: db 8 flushed; RabbitMQ: the queue and exchange
deleted), and both are emptied again at the end; nothing else on either server is touched.

drain rate
    ``--tasks`` trivial ``add(2, 3)`` tasks are queued (untimed), then the worker starts, and the
    results db is polled (DBSIZE, every 20 ms; one ``celery-task-meta-<id>`` key per result)
    until it holds them all. The clock starts at the first poll that sees a result, so
    worker start-up (loading components, forking the pool) is not counted:
    tasks/s = (N - results seen at that poll) / (time from that poll to the N-th result).
latency
    on an idle worker, one task at a time: subscribe to the result channel of a task id
    chosen beforehand, send the task with that id, and time until the worker's PUBLISH
    arrives. 20 warm-up tasks, then ``--latency-tasks`` measured ones; p50 and p99.
idle RSS
    after the worker has run one task and then sat idle for 2 s: VmRSS of the worker and of
    every descendant, summed (pages that prefork children share count once per process;
    for ``celeriac worker --processes N``, the supervisor and its N worker processes).

Messages come from the real Celery client. On Redis: one ``send_task`` per task name, taken
off the queue list exactly as kombu's Redis transport wrote it, then pushed again (LPUSH on
the queue's list, as kombu does) with a fresh task id and delivery tag per copy; the
exchange's ``_kombu.binding`` set that the client created is put back after every flush. On
RabbitMQ: ``send_task`` for every message, the pre-queued ones in a loop on one producer
connection (and the drain waits until RabbitMQ counts them all in the queue); a timed one
therefore includes the client's own cost of building and publishing the message.

Run it through ``scripts/bench-drain.sh``, which builds what is missing first::

    scripts/bench-drain.sh [--broker redis|amqp] [--tasks N] [--latency-tasks M] [--only NAME ...]

It prints a markdown table, with each target of the issue marked ✔ or ✘ (on RabbitMQ the
Rust guest's targets are 20,000 tasks/s and 15× the best Python Celery setting; on Redis
25×), and every worker's command line. Worker logs go to
``target/bench-drain/NAME-BROKER-{drain,latency}.log``.
"""

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import redis
from celery import Celery
from kombu import Connection

ROOT = Path(__file__).resolve().parents[1]
CELERIAC = ROOT / "target" / "release" / "celeriac"
CELERY = ROOT / "target" / "interop-venv" / "bin" / "celery"
COMPONENTS = ROOT / "target" / "wasm-tasks"
PYTHON_TASKS_DIR = ROOT / "examples" / "python"
COMPILE_CACHE = ROOT / "target" / "test-compile-cache"
WORK_DIR = ROOT / "target" / "bench-drain"

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
BROKER_DB = 8
RESULTS_DB = 9
RESULTS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{RESULTS_DB}"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
# The list (Redis) or queue and direct exchange (RabbitMQ) the benchmark owns.
QUEUE = "bench-drain"
# The workers' node name: not the default celery@%h, whose exclusive pidbox queue on RabbitMQ
# another worker on this machine may hold.
NODE_NAME = "bench-drain@%h"
TASK_ARGS = (2, 3)

DEFAULT_TASKS = 20_000
DEFAULT_LATENCY_TASKS = 500
WARMUP_TASKS = 20
POLL_INTERVAL = 0.02
PREQUEUE_BATCH = 1_000
# Seconds without a new result before a drain is declared stuck (start-up included).
STALL_TIMEOUT = 120.0
# Seconds for RabbitMQ to count every pre-queued message.
QUEUED_TIMEOUT = 60.0
# Seconds for a fresh worker to store its first result, and for any later one.
FIRST_RESULT_TIMEOUT = 120.0
RESULT_TIMEOUT = 10.0
IDLE_BEFORE_RSS = 2.0
STOP_TIMEOUT = 30.0

P50_TARGET_MS = 1.0
RSS_TARGET_MIB = 40.0


class BenchError(Exception):
    """A measurement could not be taken; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class PythonCelery:
    """The real Celery worker running ``examples/python/tasks.py``."""

    name: str  # for --only and the log file names
    label: str  # the table row
    flags: tuple[str, ...]  # worker flags after the broker, backend, queue and node name
    task: str = "tasks.add"  # the task every message calls

    def prepare(self) -> None:
        """Nothing to set up: the tasks module is imported from examples/python."""

    def command(self, broker_url: str) -> list[str]:
        return [
            str(CELERY), "-A", "tasks", "-b", broker_url, "--result-backend", RESULTS_URL,
            "worker", "-Q", QUEUE, "-n", NODE_NAME, *self.flags,
        ]

    def environment(self) -> dict[str, str]:
        return clean_environment() | {"PYTHONPATH": str(PYTHON_TASKS_DIR)}


@dataclasses.dataclass(frozen=True)
class RateTarget:
    """What a celeriac setting's drain rate should reach."""

    min_ratio: float  # at least this many times the best Python Celery rate of the run
    min_rate: float | None = None  # and at least this many tasks/s

    def checks(self, rate: float, best_python_rate: float | None) -> list[tuple[str, bool]]:
        checks = []
        if self.min_rate is not None:
            checks.append((f"≥ {self.min_rate:,.0f}/s", rate >= self.min_rate))
        if best_python_rate:
            ratio = rate / best_python_rate
            checks.append((f"≥ {self.min_ratio:g}×", ratio >= self.min_ratio))
        return checks


@dataclasses.dataclass(frozen=True)
class Celeriac:
    """`celeriac worker` serving one example component from a tasks directory of its own."""

    name: str  # for --only, the log file names and the tasks directory
    label: str  # the table row
    component: str  # the file stem in target/wasm-tasks
    task: str  # the task every message calls
    rate_target: RateTarget
    flags: tuple[str, ...] = ()  # worker flags after the broker, backend, queue and node name
    reuse: bool = False  # a policy file with isolation = "reuse" beside the component
    amqp_rate_target: RateTarget | None = None  # on RabbitMQ, when not rate_target

    def rate_target_on(self, broker: "Broker") -> RateTarget:
        if isinstance(broker, AmqpBroker) and self.amqp_rate_target:
            return self.amqp_rate_target
        return self.rate_target

    @property
    def tasks_dir(self) -> Path:
        return WORK_DIR / f"tasks-{self.name}"

    def prepare(self) -> None:
        """Fills the tasks directory: a symlink to the component and, for reuse, its policy
        file (NAME.toml beside NAME.wasm)."""
        self.tasks_dir.mkdir(parents=True, exist_ok=True)
        link = self.tasks_dir / f"{self.component}.wasm"
        link.unlink(missing_ok=True)
        link.symlink_to(COMPONENTS / f"{self.component}.wasm")
        policy = self.tasks_dir / f"{self.component}.toml"
        policy.unlink(missing_ok=True)
        if self.reuse:
            policy.write_text('isolation = "reuse"\n')

    def command(self, broker_url: str) -> list[str]:
        return [
            str(CELERIAC), "worker", "--tasks", str(self.tasks_dir), "-b", broker_url,
            "--result-backend", RESULTS_URL, "-Q", QUEUE, "-n", NODE_NAME, *self.flags,
        ]

    def environment(self) -> dict[str, str]:
        return clean_environment() | {"CELERIAC_CACHE_DIR": str(COMPILE_CACHE)}


Setting = PythonCelery | Celeriac

# Celery's benchmark-friendly worker flags: no gossip, mingle or heartbeat events, which
# celeriac does not do either. Both workers log at their default level, WARNING.
CELERY_QUIET = ("--without-gossip", "--without-mingle", "--without-heartbeat")
# celeriac's default concurrency is one slot per CPU, and a slot stays taken while its task
# waits on the broker and Redis (storing the result; with acks_late also the ack). A guest
# that needs microseconds leaves the slots mostly waiting, so more slots drain faster, and
# fill each batched round trip with more tasks: in interleaved runs on the 2-core machine
# (2026-11-22) 64 slots drained the Rust guest at 10,800-13,300 tasks/s where 16 did
# 6,200-9,300. The CPU-bound fresh Python guest gains nothing (it loses: see README) and
# keeps the default.
SLOTS = 64
CELERIAC_SLOTS = ("-c", str(SLOTS))
# Fresh Python instances copy-on-write fault ~280 pages each, and with two threads of one
# process running guests on two cores every such fault interrupts the other core (a TLB
# shootdown): one worker at -c 2 drains no faster than at -c 1 (see README). One worker
# process per CPU (`--processes`), as Celery's prefork pool does it, avoids that.
CPUS = os.cpu_count() or 1
# The targets for the Rust guest: 25× the best Python Celery rate on Redis; on
# RabbitMQ 20,000 tasks/s and 15×.
RUST_RATE_TARGET = RateTarget(min_ratio=25.0)
RUST_AMQP_RATE_TARGET = RateTarget(min_ratio=15.0, min_rate=20_000.0)

SETTINGS = (
    PythonCelery(
        name="celery-prefork",
        label="Python Celery, prefork ×2",
        flags=("-P", "prefork", "-c", "2", *CELERY_QUIET),
    ),
    PythonCelery(
        name="celery-threads",
        label="Python Celery, threads ×8",
        flags=("-P", "threads", "-c", "8", *CELERY_QUIET),
    ),
    Celeriac(
        name="celeriac-rust",
        label=f"celeriac, Rust guest, -c {SLOTS}",
        component="rs_tasks",
        task="rs.add",
        rate_target=RUST_RATE_TARGET,
        amqp_rate_target=RUST_AMQP_RATE_TARGET,
        flags=CELERIAC_SLOTS,
    ),
    Celeriac(
        name="celeriac-rust-default-c",
        label="celeriac, Rust guest, default -c",
        component="rs_tasks",
        task="rs.add",
        rate_target=RUST_RATE_TARGET,
        amqp_rate_target=RUST_AMQP_RATE_TARGET,
    ),
    Celeriac(
        name="celeriac-python-fresh",
        label="celeriac, Python guest, fresh",
        component="tasks",
        task="tasks.add",
        rate_target=RateTarget(min_ratio=2.0),
    ),
    Celeriac(
        name="celeriac-python-fresh-processes",
        label=f"celeriac, Python guest, fresh, {CPUS} processes × -c 1",
        component="tasks",
        task="tasks.add",
        rate_target=RateTarget(min_ratio=2.0),
        flags=("--processes", str(CPUS), "-c", "1"),
    ),
    Celeriac(
        name="celeriac-python-reuse",
        label=f"celeriac, Python guest, reuse, -c {SLOTS}",
        component="tasks",
        task="tasks.add",
        rate_target=RateTarget(min_ratio=10.0),
        flags=CELERIAC_SLOTS,
        reuse=True,
    ),
)


@dataclasses.dataclass(frozen=True)
class MessageTemplate:
    """A task message as kombu's Redis transport stores it, copied with fresh ids."""

    text: str
    task_id: str
    delivery_tag: str

    def copy(self, task_id: str) -> str:
        """The message text carrying `task_id` (and a new delivery tag)."""
        text = self.text.replace(self.task_id, task_id)
        return text.replace(self.delivery_tag, str(uuid.uuid4()))


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One setting's figures (see the module doc for how each is taken)."""

    rate: float  # tasks/s while draining
    p50_ms: float  # send → result, one task at a time
    p99_ms: float
    idle_rss_mib: float


class RedisBroker:
    """kombu's Redis transport in db 8: copies of messages the Celery client wrote, pushed
    straight onto the queue's list."""

    scheme = "redis"
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{BROKER_DB}"
    description = f"Redis (broker db {BROKER_DB}, results db {RESULTS_DB})"

    def __init__(self, task_names: set[str]) -> None:
        self.db = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=BROKER_DB)
        self.db.flushdb()
        self.templates = {name: self.capture_message(name) for name in task_names}
        self.bindings = {
            key: self.db.smembers(key) for key in self.db.scan_iter("_kombu.binding.*")
        }

    def capture_message(self, task_name: str) -> MessageTemplate:
        """Sends `task_name(2, 3)` with the real Celery client and takes its message off the
        queue list."""
        with celery_client(self.url) as client:
            send_add(client, task_name)
        raw = self.db.rpop(QUEUE)
        if raw is None:
            raise BenchError(
                f"the Celery client's {task_name} message did not reach list {QUEUE!r}"
            )
        text = raw.decode()
        envelope = json.loads(text)
        return MessageTemplate(
            text=text,
            task_id=envelope["headers"]["id"],
            delivery_tag=envelope["properties"]["delivery_tag"],
        )

    def reset(self) -> None:
        """Empties the broker db and restores the bindings the Celery client made."""
        self.db.flushdb()
        for key, members in self.bindings.items():
            self.db.sadd(key, *members)

    def prequeue(self, task_name: str, count: int) -> None:
        """Pushes `count` copies of the task's message, in pipelined batches."""
        template = self.templates[task_name]
        for start in range(0, count, PREQUEUE_BATCH):
            pipe = self.db.pipeline(transaction=False)
            for _ in range(min(PREQUEUE_BATCH, count - start)):
                pipe.lpush(QUEUE, template.copy(str(uuid.uuid4())))
            pipe.execute()

    def send(self, task_name: str, task_id: str) -> None:
        self.db.lpush(QUEUE, self.templates[task_name].copy(task_id))

    def close(self) -> None:
        self.db.flushdb()


class AmqpBroker:
    """The machine's RabbitMQ: every message sent by the real Celery client."""

    scheme = "amqp"
    url = AMQP_URL
    description = f"RabbitMQ ({AMQP_URL}, queue {QUEUE}; results in Redis db {RESULTS_DB})"

    def __init__(self, task_names: set[str]) -> None:
        del task_names  # any task name can be sent as it is
        self.client = celery_client(self.url)

    def reset(self) -> None:
        """Deletes the queue and its exchange, then declares them again as the Celery client
        does: kombu declares an entity only once per connection (and its producer pool is
        shared by every client of a URL), so the client would not notice they were gone and
        would publish to a missing exchange."""
        self.delete_queue()
        with self.client.connection_for_write() as connection:
            self.client.amqp.queues[QUEUE](connection.default_channel).declare()

    def prequeue(self, task_name: str, count: int) -> None:
        """Sends `count` tasks on one producer connection, then waits until RabbitMQ counts
        them all in the queue."""
        with self.client.producer_or_acquire() as producer:
            for _ in range(count):
                send_add(self.client, task_name, producer=producer)
        deadline = time.monotonic() + QUEUED_TIMEOUT
        with Connection(self.url) as connection:
            while (queued := self.queued(connection)) < count:
                if time.monotonic() > deadline:
                    raise BenchError(f"RabbitMQ counts {queued}/{count} messages in {QUEUE!r}")
                time.sleep(POLL_INTERVAL)

    @staticmethod
    def queued(connection: Connection) -> int:
        _, message_count, _ = connection.default_channel.queue_declare(QUEUE, passive=True)
        return message_count

    def send(self, task_name: str, task_id: str) -> None:
        send_add(self.client, task_name, task_id=task_id)

    def close(self) -> None:
        self.client.close()
        self.delete_queue()

    def delete_queue(self) -> None:
        """Deletes the queue and its exchange (RabbitMQ deletes missing ones without error)."""
        with Connection(self.url) as connection:
            channel = connection.default_channel
            channel.queue_delete(QUEUE)
            channel.exchange_delete(QUEUE)


Broker = RedisBroker | AmqpBroker
BROKERS = {broker.scheme: broker for broker in (RedisBroker, AmqpBroker)}


def celery_client(broker_url: str) -> Celery:
    return Celery("bench-drain", broker=broker_url)


def send_add(client: Celery, task_name: str, **options) -> None:
    """`task_name(2, 3)` on the benchmark's queue, through the Celery client."""
    client.send_task(task_name, args=TASK_ARGS, queue=QUEUE, **options)


def clean_environment() -> dict[str, str]:
    """This process's environment without Celery or celeriac settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "CELERIAC_"))}


@contextlib.contextmanager
def running_worker(setting: Setting, broker: Broker, log_name: str):
    """Starts the setting's worker on `broker`, logging to
    ``target/bench-drain/<name>-<broker>-<log_name>.log``, yields it, and stops it (SIGTERM,
    then SIGKILL after 30 s) on exit."""
    setting.prepare()
    log_path = WORK_DIR / f"{setting.name}-{broker.scheme}-{log_name}.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            setting.command(broker.url),
            env=setting.environment(),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield worker
    except BenchError as error:
        raise BenchError(f"{setting.name}: {error} (worker log: {log_path})") from error
    finally:
        stop_worker(worker)


def stop_worker(process: subprocess.Popen) -> None:
    tree = process_tree(process.pid)
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


def ensure_alive(worker: subprocess.Popen) -> None:
    if worker.poll() is not None:
        raise BenchError(f"the worker exited with status {worker.returncode}")


def reset(broker: Broker, results: redis.Redis) -> None:
    broker.reset()
    results.flushdb()


def measure_drain_rate(broker: Broker, results: redis.Redis, setting: Setting, count: int) -> float:
    """Tasks per second for `count` pre-queued tasks (see the module doc)."""
    reset(broker, results)
    broker.prequeue(setting.task, count)
    with running_worker(setting, broker, "drain") as worker:
        return time_drain(results, count, worker)


def time_drain(results: redis.Redis, count: int, worker: subprocess.Popen) -> float:
    """Polls the results db until it holds `count` results; returns the rate from the first
    poll that saw one."""
    first_poll = None  # (time, results stored) at the first poll that saw any
    progress_at, stored_before = time.monotonic(), 0
    while True:
        stored = results.dbsize()
        now = time.monotonic()
        if stored and first_poll is None:
            first_poll = (now, stored)
        if stored >= count:
            break
        if stored > stored_before:
            progress_at, stored_before = now, stored
        elif now - progress_at > STALL_TIMEOUT:
            raise BenchError(f"drain stuck at {stored}/{count} results for {STALL_TIMEOUT:.0f} s")
        ensure_alive(worker)
        time.sleep(POLL_INTERVAL)
    started, stored_at_start = first_poll
    if stored_at_start >= count:
        raise BenchError(f"all {count} results appeared before the first poll: raise --tasks")
    return (count - stored_at_start) / (now - started)


def measure_idle_and_latency(
    broker: Broker, results: redis.Redis, setting: Setting, count: int
) -> tuple[float, list[float]]:
    """Idle RSS in MiB after one task and 2 s idle, then `count` send→result times in ms."""
    reset(broker, results)
    task = setting.task
    with running_worker(setting, broker, "latency") as worker, results.pubsub() as pubsub:
        time_one_task(broker, pubsub, task, FIRST_RESULT_TIMEOUT)
        time.sleep(IDLE_BEFORE_RSS)
        ensure_alive(worker)
        idle_rss = sum(map(vm_rss_kib, process_tree(worker.pid))) / 1024
        for _ in range(WARMUP_TASKS):
            time_one_task(broker, pubsub, task, RESULT_TIMEOUT)
        latencies = [time_one_task(broker, pubsub, task, RESULT_TIMEOUT) for _ in range(count)]
    return idle_rss, latencies


def time_one_task(
    broker: Broker, pubsub: redis.client.PubSub, task_name: str, timeout: float
) -> float:
    """Milliseconds from sending one task to the PUBLISH of its result."""
    task_id = str(uuid.uuid4())
    channel = f"celery-task-meta-{task_id}".encode()
    pubsub.subscribe(channel)
    await_event(pubsub, "subscribe", channel, RESULT_TIMEOUT)
    started = time.perf_counter()
    broker.send(task_name, task_id)
    await_event(pubsub, "message", channel, timeout)
    elapsed = time.perf_counter() - started
    pubsub.unsubscribe(channel)
    return elapsed * 1000


def await_event(pubsub: redis.client.PubSub, kind: str, channel: bytes, timeout: float) -> None:
    """Reads pub/sub events until one of `kind` on `channel`, skipping the rest."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        event = pubsub.get_message(timeout=remaining)
        if event and event["type"] == kind and event["channel"] == channel:
            return
    raise BenchError(f"no {kind} on {channel.decode()} within {timeout:.0f} s")


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from the parent ids in /proc/*/stat."""
    children = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields_after_name = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited while we looked
        children[int(fields_after_name[1])].append(int(stat.parent.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children[pid])
    return tree


def vm_rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def p50_p99(samples: list[float]) -> tuple[float, float]:
    """The median and the 99th percentile, interpolated between the nearest ranks."""
    cut_points = statistics.quantiles(samples, n=100, method="inclusive")
    return cut_points[49], cut_points[98]


def measure(
    broker: Broker, results: redis.Redis, setting: Setting, args: argparse.Namespace
) -> Measurement:
    log(f"{setting.name}: draining {args.tasks} tasks")
    rate = measure_drain_rate(broker, results, setting, args.tasks)
    log(f"{setting.name}: {rate:,.0f} tasks/s; now idle RSS and latency")
    idle_rss, latencies = measure_idle_and_latency(broker, results, setting, args.latency_tasks)
    return Measurement(rate, *p50_p99(latencies), idle_rss)


def target_marks(
    setting: Setting, broker: Broker, result: Measurement, best_python_rate: float | None
) -> str:
    """'≥ 25× ✘ · p50 ≤ 1 ms ✔ · …' for a celeriac setting; empty for Python Celery."""
    if not isinstance(setting, Celeriac):
        return ""
    checks = setting.rate_target_on(broker).checks(result.rate, best_python_rate)
    checks.append((f"p50 ≤ {P50_TARGET_MS:g} ms", result.p50_ms <= P50_TARGET_MS))
    checks.append((f"RSS ≤ {RSS_TARGET_MIB:g} MiB", result.idle_rss_mib <= RSS_TARGET_MIB))
    return " · ".join(f"{name} {'✔' if ok else '✘'}" for name, ok in checks)


def render_report(
    results: dict[Setting, Measurement],
    broker: Broker,
    args: argparse.Namespace,
    started: datetime.datetime,
    load: tuple[str, str],
) -> str:
    """The markdown for the README: what ran, the table, and each worker's command line."""
    python_rates = [r.rate for s, r in results.items() if isinstance(s, PythonCelery)]
    best_python = max(python_rates, default=None)
    lines = [
        f"Drain benchmark on {broker.description}, {started:%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, load average {load[0]} before and {load[1]} after.",
        f"Command: `{shlex.join(['scripts/bench-drain.sh', *sys.argv[1:]])}` "
        f"({args.tasks:,} tasks drained, {args.latency_tasks} timed one by one, per setting).",
        "",
        "| setting | tasks/s | × best Python Celery | p50 ms | p99 ms | idle RSS MiB | targets |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for setting, result in results.items():
        ratio = f"{result.rate / best_python:.1f}×" if best_python else "n/a"
        marks = target_marks(setting, broker, result, best_python)
        lines.append(
            f"| {setting.label} | {result.rate:,.0f} | {ratio} | {result.p50_ms:.2f} | "
            f"{result.p99_ms:.2f} | {result.idle_rss_mib:.1f} | {marks} |"
        )
    lines += ["", "Worker command lines (run from the repository root):", ""]
    for setting in results:
        command = [display_path(part) for part in setting.command(broker.url)]
        lines.append(f"* {setting.label}: `{shlex.join(command)}`")
    return "\n".join(lines)


def display_path(part: str) -> str:
    """Paths under the repository, relative to it."""
    return part.removeprefix(f"{ROOT}/")


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def log(message: str) -> None:
    print(f"bench-drain: {message}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--broker", choices=list(BROKERS), default=RedisBroker.scheme,
        help=f"the broker the workers consume from [default: {RedisBroker.scheme}]",
    )
    parser.add_argument(
        "--tasks", type=int, default=int(os.environ.get("BENCH_TASKS", DEFAULT_TASKS)),
        help=f"tasks drained per setting [default: $BENCH_TASKS or {DEFAULT_TASKS}]",
    )
    parser.add_argument(
        "--latency-tasks", type=int, default=DEFAULT_LATENCY_TASKS,
        help=f"tasks timed one by one per setting [default: {DEFAULT_LATENCY_TASKS}]",
    )
    parser.add_argument(
        "--only", action="append", choices=[s.name for s in SETTINGS], metavar="NAME",
        help="run only this setting (repeatable): " + ", ".join(s.name for s in SETTINGS),
    )
    args = parser.parse_args()
    if args.tasks < 2 or args.latency_tasks < 2:
        parser.error("--tasks and --latency-tasks must be at least 2")
    return args


def main() -> int:
    args = parse_args()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    results_db = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=RESULTS_DB)
    settings = [s for s in SETTINGS if not args.only or s.name in args.only]
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = load_average()
    try:
        with contextlib.closing(BROKERS[args.broker]({s.task for s in settings})) as broker:
            results = {s: measure(broker, results_db, s, args) for s in settings}
    except BenchError as error:
        log(f"failed: {error}")
        return 1
    finally:
        results_db.flushdb()
    print(render_report(results, broker, args, started, (load_before, load_average())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
