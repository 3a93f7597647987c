"""Drain benchmark: celeriac and the Python Celery worker, side by side, on Redis.

Each setting (Python Celery with prefork and with threads; celeriac with the Rust guest at 16
slots and at the default, the Python guest in a fresh instance per task, and the Python
guest reusing instances) gets the same three measurements on the machine's Redis. Broker db 8 and results db 9 are flushed
before each one; nothing else on the server is touched.

drain rate
    ``--tasks`` trivial ``add(2, 3)`` tasks are queued, then the worker starts, and the
    results db is polled (DBSIZE, every 20 ms; one ``celery-task-meta-<id>`` key per result)
    until it holds them all. The clock starts at the first poll that sees a result, so
    worker start-up (loading components, forking the pool) is not counted:
    tasks/s = (N - results seen at that poll) / (time from that poll to the N-th result).
latency
    on an idle worker, one task at a time: subscribe to the task's result channel, push its
    message, and time until the worker's PUBLISH arrives. 20 warm-up tasks, then
    ``--latency-tasks`` measured ones; p50 and p99.
idle RSS
    after the worker has run one task and then sat idle for 2 s: VmRSS of the worker and of
    every descendant, summed (pages that prefork children share count once per process).

Messages come from the real Celery client: one ``send_task`` per task name, taken off the
queue list exactly as kombu's Redis transport wrote it, then pushed again (LPUSH on the
queue's list, as kombu does) with a fresh task id and delivery tag per copy. The exchange's
``_kombu.binding`` set that the client created is put back after every flush.

Run it through ``scripts/bench-drain.sh``, which builds what is missing first::

    scripts/bench-drain.sh [--tasks N] [--latency-tasks M] [--only NAME ...]

It prints a markdown table, with each target of the issue marked ✔ or ✘, and every
worker's command line. Worker logs go to ``target/bench-drain/NAME-{drain,latency}.log``.
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
BROKER_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{BROKER_DB}"
RESULTS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{RESULTS_DB}"
QUEUE = "bench-drain"

DEFAULT_TASKS = 20_000
DEFAULT_LATENCY_TASKS = 500
WARMUP_TASKS = 20
POLL_INTERVAL = 0.02
PREQUEUE_BATCH = 1_000
# Seconds without a new result before a drain is declared stuck (start-up included).
STALL_TIMEOUT = 120.0
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
    flags: tuple[str, ...]  # worker flags after the broker, backend and queue
    task: str = "tasks.add"  # the task every message calls

    def prepare(self) -> None:
        """Nothing to set up: the tasks module is imported from examples/python."""

    def command(self) -> list[str]:
        return [
            str(CELERY), "-A", "tasks", "-b", BROKER_URL, "--result-backend", RESULTS_URL,
            "worker", "-Q", QUEUE, *self.flags,
        ]

    def environment(self) -> dict[str, str]:
        return clean_environment() | {"PYTHONPATH": str(PYTHON_TASKS_DIR)}


@dataclasses.dataclass(frozen=True)
class Celeriac:
    """`celeriac worker` serving one example component from a tasks directory of its own."""

    name: str  # for --only, the log file names and the tasks directory
    label: str  # the table row
    component: str  # the file stem in target/wasm-tasks
    task: str  # the task every message calls
    min_ratio: float  # target: at least this many times the best Python Celery rate
    flags: tuple[str, ...] = ()  # worker flags after the broker, backend and queue
    reuse: bool = False  # a policy file with isolation = "reuse" beside the component

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

    def command(self) -> list[str]:
        return [
            str(CELERIAC), "worker", "--tasks", str(self.tasks_dir), "-b", BROKER_URL,
            "--result-backend", RESULTS_URL, "-Q", QUEUE, *self.flags,
        ]

    def environment(self) -> dict[str, str]:
        return clean_environment() | {"CELERIAC_CACHE_DIR": str(COMPILE_CACHE)}


Setting = PythonCelery | Celeriac

# Celery's benchmark-friendly worker flags: no gossip, mingle or heartbeat events, which
# celeriac does not do either. Both workers log at their default level, WARNING.
CELERY_QUIET = ("--without-gossip", "--without-mingle", "--without-heartbeat")
# celeriac's default concurrency is one slot per CPU, and a slot stays taken while its task
# waits on Redis (ack, result read, result write). A guest that needs microseconds leaves
# the slots mostly waiting, so more slots drain faster: 16 was the best of 2-128 for the
# Rust guest on the 2-core machine, and as good as 32 with reuse. The CPU-bound fresh Python
# guest gains nothing (it loses: see README) and keeps the default.
CELERIAC_SLOTS = ("-c", "16")

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
        label="celeriac, Rust guest, -c 16",
        component="rs_tasks",
        task="rs.add",
        min_ratio=25.0,
        flags=CELERIAC_SLOTS,
    ),
    Celeriac(
        name="celeriac-rust-default-c",
        label="celeriac, Rust guest, default -c",
        component="rs_tasks",
        task="rs.add",
        min_ratio=25.0,
    ),
    Celeriac(
        name="celeriac-python-fresh",
        label="celeriac, Python guest, fresh",
        component="tasks",
        task="tasks.add",
        min_ratio=2.0,
    ),
    Celeriac(
        name="celeriac-python-reuse",
        label="celeriac, Python guest, reuse, -c 16",
        component="tasks",
        task="tasks.add",
        min_ratio=10.0,
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
    bindings: dict[bytes, set[bytes]]

    def copy(self) -> tuple[str, str]:
        """A new task id and the message text carrying it (and a new delivery tag)."""
        task_id = str(uuid.uuid4())
        text = self.text.replace(self.task_id, task_id)
        return task_id, text.replace(self.delivery_tag, str(uuid.uuid4()))


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One setting's figures (see the module doc for how each is taken)."""

    rate: float  # tasks/s while draining
    p50_ms: float  # enqueue → result, one task at a time
    p99_ms: float
    idle_rss_mib: float


@dataclasses.dataclass(frozen=True)
class Databases:
    """A client on each of the two Redis databases the benchmark owns."""

    broker: redis.Redis
    results: redis.Redis

    def flush(self) -> None:
        self.broker.flushdb()
        self.results.flushdb()

    def reset(self, template: MessageTemplate) -> None:
        """Empties both databases and restores the bindings the Celery client made."""
        self.flush()
        for key, members in template.bindings.items():
            self.broker.sadd(key, *members)


def clean_environment() -> dict[str, str]:
    """This process's environment without Celery or celeriac settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "CELERIAC_"))}


def capture_message(dbs: Databases, task_name: str) -> MessageTemplate:
    """Sends `task_name(2, 3)` with the real Celery client and takes its message off the
    queue list."""
    dbs.broker.flushdb()
    client = Celery("bench-drain", broker=BROKER_URL)
    try:
        client.send_task(task_name, args=(2, 3), queue=QUEUE)
    finally:
        client.close()
    raw = dbs.broker.rpop(QUEUE)
    if raw is None:
        raise BenchError(f"the Celery client's {task_name} message did not reach list {QUEUE!r}")
    text = raw.decode()
    envelope = json.loads(text)
    bindings = {
        key: dbs.broker.smembers(key) for key in dbs.broker.scan_iter("_kombu.binding.*")
    }
    return MessageTemplate(
        text=text,
        task_id=envelope["headers"]["id"],
        delivery_tag=envelope["properties"]["delivery_tag"],
        bindings=bindings,
    )


def prequeue(dbs: Databases, template: MessageTemplate, count: int) -> None:
    """Pushes `count` copies of the message, in pipelined batches."""
    for start in range(0, count, PREQUEUE_BATCH):
        pipe = dbs.broker.pipeline(transaction=False)
        for _ in range(min(PREQUEUE_BATCH, count - start)):
            pipe.lpush(QUEUE, template.copy()[1])
        pipe.execute()


@contextlib.contextmanager
def running_worker(setting: Setting, log_name: str):
    """Starts the setting's worker, logging to ``target/bench-drain/<name>-<log_name>.log``,
    and stops it (SIGTERM, then SIGKILL after 30 s) on exit."""
    log_path = WORK_DIR / f"{setting.name}-{log_name}.log"
    setting.prepare()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            setting.command(),
            env=setting.environment(),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    except BenchError as error:
        raise BenchError(f"{setting.name}: {error} (worker log: {log_path})") from error
    finally:
        stop_worker(process)


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


def ensure_alive(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        raise BenchError(f"the worker exited with status {process.returncode}")


def measure_drain_rate(
    dbs: Databases, setting: Setting, template: MessageTemplate, count: int
) -> float:
    """Tasks per second for `count` pre-queued tasks (see the module doc)."""
    dbs.reset(template)
    prequeue(dbs, template, count)
    with running_worker(setting, "drain") as worker:
        return time_drain(dbs.results, count, worker)


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
    dbs: Databases, setting: Setting, template: MessageTemplate, count: int
) -> tuple[float, list[float]]:
    """Idle RSS in MiB after one task and 2 s idle, then `count` enqueue→result times in ms."""
    dbs.reset(template)
    with running_worker(setting, "latency") as worker, dbs.results.pubsub() as pubsub:
        time_one_task(dbs.broker, pubsub, template, FIRST_RESULT_TIMEOUT)
        time.sleep(IDLE_BEFORE_RSS)
        ensure_alive(worker)
        idle_rss = sum(map(vm_rss_kib, process_tree(worker.pid))) / 1024
        for _ in range(WARMUP_TASKS):
            time_one_task(dbs.broker, pubsub, template, RESULT_TIMEOUT)
        latencies = [
            time_one_task(dbs.broker, pubsub, template, RESULT_TIMEOUT) for _ in range(count)
        ]
    return idle_rss, latencies


def time_one_task(
    broker: redis.Redis, pubsub: redis.client.PubSub, template: MessageTemplate, timeout: float
) -> float:
    """Milliseconds from pushing one message to the PUBLISH of its result."""
    task_id, text = template.copy()
    channel = f"celery-task-meta-{task_id}".encode()
    pubsub.subscribe(channel)
    await_event(pubsub, "subscribe", channel, RESULT_TIMEOUT)
    started = time.perf_counter()
    broker.lpush(QUEUE, text)
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
    dbs: Databases, setting: Setting, template: MessageTemplate, args: argparse.Namespace
) -> Measurement:
    log(f"{setting.name}: draining {args.tasks} tasks")
    rate = measure_drain_rate(dbs, setting, template, args.tasks)
    log(f"{setting.name}: {rate:,.0f} tasks/s; now idle RSS and latency")
    idle_rss, latencies = measure_idle_and_latency(dbs, setting, template, args.latency_tasks)
    return Measurement(rate, *p50_p99(latencies), idle_rss)


def target_marks(setting: Setting, result: Measurement, best_python_rate: float | None) -> str:
    """'≥ 25× ✘ · p50 ≤ 1 ms ✔ · …' for a celeriac setting; empty for Python Celery."""
    if not isinstance(setting, Celeriac):
        return ""
    checks = []
    if best_python_rate:
        ratio = result.rate / best_python_rate
        checks.append((f"≥ {setting.min_ratio:g}×", ratio >= setting.min_ratio))
    checks.append((f"p50 ≤ {P50_TARGET_MS:g} ms", result.p50_ms <= P50_TARGET_MS))
    checks.append((f"RSS ≤ {RSS_TARGET_MIB:g} MiB", result.idle_rss_mib <= RSS_TARGET_MIB))
    return " · ".join(f"{name} {'✔' if ok else '✘'}" for name, ok in checks)


def render_report(
    results: dict[Setting, Measurement],
    args: argparse.Namespace,
    started: datetime.datetime,
    load: tuple[str, str],
) -> str:
    """The markdown for the README: what ran, the table, and each worker's command line."""
    python_rates = [r.rate for s, r in results.items() if isinstance(s, PythonCelery)]
    best_python = max(python_rates, default=None)
    lines = [
        f"Drain benchmark, {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"load average {load[0]} before and {load[1]} after.",
        f"Command: `{shlex.join(['scripts/bench-drain.sh', *sys.argv[1:]])}` "
        f"({args.tasks:,} tasks drained, {args.latency_tasks} timed one by one, per setting).",
        "",
        "| setting | tasks/s | × best Python Celery | p50 ms | p99 ms | idle RSS MiB | targets |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for setting, result in results.items():
        ratio = f"{result.rate / best_python:.1f}×" if best_python else "n/a"
        marks = target_marks(setting, result, best_python)
        lines.append(
            f"| {setting.label} | {result.rate:,.0f} | {ratio} | {result.p50_ms:.2f} | "
            f"{result.p99_ms:.2f} | {result.idle_rss_mib:.1f} | {marks} |"
        )
    lines += ["", "Worker command lines (run from the repository root):", ""]
    for setting in results:
        command = [display_path(part) for part in setting.command()]
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
    dbs = Databases(
        broker=redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=BROKER_DB),
        results=redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=RESULTS_DB),
    )
    settings = [s for s in SETTINGS if not args.only or s.name in args.only]
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = load_average()
    try:
        templates = {task: capture_message(dbs, task) for task in {s.task for s in settings}}
        results = {s: measure(dbs, s, templates[s.task], args) for s in settings}
    except BenchError as error:
        log(f"failed: {error}")
        return 1
    finally:
        dbs.flush()
    print(render_report(results, args, started, (load_before, load_average())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
