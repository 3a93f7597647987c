"""Celery's own monitoring and control tools against `celeriac worker` on Redis and
RabbitMQ:
`celery inspect` / `celery control` (the pidbox), `app.control`, and an
`app.events.Receiver` capturing the worker's events, with the fields and types a Python
worker sends. Also checks that a Python worker sharing the broker keeps working while
celeriac sends its events.

Every request names its worker (`destination`): other workers on the same Redis, from other
test runs, must never see a `shutdown` meant for this one.
"""

import hashlib
import shutil
import socket
import subprocess
import threading
import time
import uuid

import kombu
import pytest
from celery import Celery
from celery.exceptions import TaskRevokedError

from conftest import AMQP_URL, REDIS_URL, ROOT, TASKS, WorkerProcess, worker_env

CELERY = ROOT / "target" / "interop-venv" / "bin" / "celery"
TIMEOUT = 20


def wait_until(condition, what, worker=None, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            log = worker.output()[-6000:] if worker else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{log}")
        time.sleep(0.1)


@pytest.fixture
def node():
    return f"ctl-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"


@pytest.fixture(params=["redis", "amqp"])
def broker_url(request):
    """Each test runs on both brokers; results always go to Redis."""
    return REDIS_URL if request.param == "redis" else AMQP_URL


@pytest.fixture
def start(start_celeriac_worker, broker_url):
    """`start(queue, *options)`: a celeriac worker on the test's broker."""

    def start_worker(task_queue, *options, **kw):
        env = {"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": REDIS_URL}
        return start_celeriac_worker(task_queue, *options, env_overrides=env, **kw)

    return start_worker


@pytest.fixture
def worker(start, unique_queue, node):
    return start(unique_queue, "-n", node, "-E", concurrency=2)


@pytest.fixture
def client(broker_url, unique_queue):
    """A Celery client on the test's broker; on RabbitMQ the test's queues (and the
    exchanges Celery declares beside them) are deleted afterwards."""
    app = Celery("control", broker=broker_url, backend=REDIS_URL)
    app.conf.task_default_queue = unique_queue
    app.conf.result_expires = 600
    yield app
    app.close()
    if broker_url == AMQP_URL:
        with kombu.Connection(AMQP_URL) as connection:
            channel = connection.default_channel
            for name in (unique_queue, f"{unique_queue}-extra", f"{unique_queue}-py"):
                channel.queue_delete(name)
                channel.exchange_delete(name)


def inspect(client, node, timeout=2.0):
    return client.control.inspect(destination=[node], timeout=timeout)


def celery_cli(broker_url, *argv):
    """Runs `celery -b <broker> <argv>` (Celery's CLI, default app) and returns the result."""
    return subprocess.run(
        [str(CELERY), "-b", broker_url, *argv],
        capture_output=True, text=True, timeout=60, env=worker_env(),
    )


def test_celery_inspect_ping_gets_pong(worker, node, broker_url):
    result = celery_cli(broker_url, "inspect", "ping", "-d", node)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"->  {node}: OK" in result.stdout
    assert "pong" in result.stdout
    assert "1 node online." in result.stdout


def test_replies_come_within_the_default_timeout_while_every_slot_is_busy(worker, node, client):
    """Both slots run a CPU-bound guest (`tasks.spin`, ended by its 5 s hard limit)."""
    running = [client.send_task("tasks.spin", time_limit=5) for _ in range(2)]
    wait_until(lambda: len((inspect(client, node).active() or {}).get(node, [])) == 2,
               "both slots busy", worker)
    for _ in range(3):
        started = time.monotonic()
        replies = client.control.ping(destination=[node], timeout=1.0)
        assert replies == [{node: {"ok": "pong"}}], replies
        assert time.monotonic() - started < 1.5
    assert len(inspect(client, node).active()[node]) == 2, "still busy while answering"
    for result in running:
        with pytest.raises(Exception, match="TimeLimitExceeded"):
            result.get(timeout=TIMEOUT)


def test_registered_lists_the_component_task_names(worker, node, broker_url):
    result = celery_cli(broker_url, "inspect", "registered", "-d", node)
    assert result.returncode == 0, result.stdout + result.stderr
    version = hashlib.sha256((TASKS / "tasks.wasm").read_bytes()).hexdigest()[:12]
    for name in ("tasks.add", "tasks.sleep", "tasks.spin", "tasks.fail"):
        assert f"* {name} [version={version}]" in result.stdout, result.stdout
    result = celery_cli(broker_url, "inspect", "registered", "digest", "-d", node)
    assert f"* tasks.add [digest=sha256:{version}" in result.stdout, result.stdout


def test_active_shows_a_running_task_with_celerys_request_info(worker, node, client):
    result = client.send_task("tasks.sleep", (3,))
    active = wait_until(lambda: (inspect(client, node).active() or {}).get(node), "active task", worker)
    info = active[0]
    assert info["id"] == result.id
    assert info["name"] == info["type"] == "tasks.sleep"
    assert info["args"] == [3] and info["kwargs"] == {}
    assert info["hostname"] == node
    assert isinstance(info["time_start"], float)
    assert info["acknowledged"] is True
    assert info["delivery_info"]["routing_key"] == client.conf.task_default_queue
    safe = inspect(client, node).active(safe=True)[node][0]
    assert safe["args"] == "(3,)"
    assert result.get(timeout=TIMEOUT) == 3
    assert inspect(client, node).active() == {node: []}


def test_stats_counts_tasks_and_describes_the_broker(worker, node, client, broker_url):
    assert client.send_task("tasks.add", (1, 2)).get(timeout=TIMEOUT) == 3
    assert client.send_task("tasks.add", (2, 2)).get(timeout=TIMEOUT) == 4
    stats = inspect(client, node).stats()[node]
    assert stats["total"] == {"tasks.add": 2}
    assert stats["broker"]["transport"] == ("redis" if broker_url == REDIS_URL else "amqp")
    assert stats["broker"]["hostname"] == "127.0.0.1"
    assert isinstance(stats["pid"], int)
    assert isinstance(stats["clock"], str) and int(stats["clock"]) > 0
    assert stats["pool"]["max-concurrency"] == 2
    assert stats["prefetch_count"] == 8


def test_revoke_flags_the_id_and_stores_revoked(worker, node, client):
    result = client.send_task("tasks.add", (1, 1), countdown=3)
    wait_until(lambda: (inspect(client, node).scheduled() or {}).get(node), "scheduled task", worker)
    scheduled = inspect(client, node).scheduled()[node][0]
    assert scheduled["priority"] == 6 and scheduled["request"]["id"] == result.id
    client.control.revoke(result.id, destination=[node])
    wait_until(lambda: result.id in (inspect(client, node).revoked() or {}).get(node, []),
               "revoked id listed", worker)
    wait_until(lambda: result.state == "REVOKED", "REVOKED stored", worker)
    time.sleep(3.5)
    assert f"Discarding revoked task: tasks.add[{result.id}]" in worker.output()
    assert result.state == "REVOKED"


def test_revoke_with_terminate_stops_a_running_spin_and_stores_revoked(worker, node, client):
    spinning = client.send_task("tasks.spin")
    wait_until(lambda: (inspect(client, node).active() or {}).get(node), "the spin to start", worker)
    started = time.monotonic()
    replies = client.control.revoke(spinning.id, terminate=True, destination=[node], reply=True, timeout=2)
    assert replies == [{node: {"ok": f"terminate: {spinning.id}"}}], replies
    # REVOKED ("revoked") is stored when the revoke arrives, then ("terminated") when it stops.
    with pytest.raises(TaskRevokedError):
        spinning.get(timeout=TIMEOUT)
    assert spinning.state == "REVOKED"
    assert time.monotonic() - started < 5
    assert client.send_task("tasks.add", (2, 2)).get(timeout=TIMEOUT) == 4, "the worker keeps serving"


def test_a_rate_limit_set_remotely_is_applied(worker, node, client):
    reply = client.control.rate_limit("tasks.add", "2/s", destination=[node], reply=True, timeout=2)
    assert reply == [{node: {"ok": "new rate limit set successfully"}}], reply
    results = [client.send_task("tasks.add", (i, i)) for i in range(6)]
    assert [r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(6)]
    done = sorted(r.date_done for r in results)
    # One token every 0.5 s: six tasks spread over at least 2.5 s (the first runs at once).
    assert (done[-1] - done[0]).total_seconds() >= 2.4, done
    reply = client.control.rate_limit("tasks.add", "0", destination=[node], reply=True, timeout=2)
    assert reply == [{node: {"ok": "rate limit disabled successfully"}}], reply


def test_revoke_with_a_reply_answers_like_celery(worker, node, client):
    replies = client.control.revoke("some-id", destination=[node], reply=True, timeout=2)
    assert replies == [{node: {"ok": "tasks {'some-id'} flagged as revoked"}}], replies


def test_query_task_and_unknown_commands(worker, node, client):
    assert inspect(client, node).query_task("nope") == {node: {}}
    replies = client.control.broadcast("nosuchcmd", destination=[node], reply=True, timeout=2)
    assert replies == [{node: {"error": "KeyError('nosuchcmd')"}}], replies


def test_active_queues_add_consumer_and_cancel_consumer(worker, node, client, unique_queue):
    queues = inspect(client, node).active_queues()[node]
    assert [q["name"] for q in queues] == [unique_queue]
    assert queues[0]["exchange"]["type"] == "direct" and queues[0]["durable"] is True

    extra = f"{unique_queue}-extra"
    reply = client.control.add_consumer(extra, destination=[node], reply=True, timeout=2)
    assert reply == [{node: {"ok": f"add consumer {extra}"}}], reply
    names = sorted(q["name"] for q in inspect(client, node).active_queues()[node])
    assert names == sorted([unique_queue, extra])
    assert client.send_task("tasks.add", (5, 5), queue=extra).get(timeout=TIMEOUT) == 10

    reply = client.control.cancel_consumer(extra, destination=[node], reply=True, timeout=2)
    assert reply == [{node: {"ok": f"no longer consuming from {extra}"}}], reply
    assert [q["name"] for q in inspect(client, node).active_queues()[node]] == [unique_queue]


def test_rate_limit_and_time_limit_reply_as_celery(worker, node, client):
    reply = client.control.rate_limit("tasks.add", "10/m", destination=[node], reply=True, timeout=2)
    assert reply == [{node: {"ok": "new rate limit set successfully"}}], reply
    assert any(entry.startswith("tasks.add [rate_limit=10/m version=")
               for entry in inspect(client, node).registered()[node])
    reply = client.control.rate_limit("tasks.nope", "1/s", destination=[node], reply=True, timeout=2)
    assert reply == [{node: {"error": "unknown task"}}], reply
    reply = client.control.time_limit("tasks.add", soft=5, hard=10, destination=[node], reply=True, timeout=2)
    assert reply == [{node: {"ok": "time limits set successfully"}}], reply


def test_enable_and_disable_events_answer_already_with_dash_e(worker, node, client):
    reply = client.control.enable_events(destination=[node], reply=True, timeout=2)
    assert reply == [{node: {"ok": "task events already enabled"}}], reply


def test_shutdown_stops_the_worker_warmly(start, unique_queue, node, client):
    worker = start(unique_queue, "-n", node)
    running = client.send_task("tasks.sleep", (2,))
    wait_until(lambda: (inspect(client, node).active() or {}).get(node), "task running", worker)
    client.control.shutdown(destination=[node])
    worker.process.wait(timeout=TIMEOUT)
    assert worker.process.returncode == 0, worker.output()
    assert "Got shutdown from remote" in worker.output()
    assert running.get(timeout=TIMEOUT) == 2, "the running task finished first"


def test_pool_grow_and_shrink_stay_within_the_room_of_the_instance_pool(start, unique_queue,
                                                                        node, client):
    """pool_grow adds slots while --max-instances has room for them (one instance stays
    free for loading a component); beyond that the worker answers with an error, as Celery
    does for a command it cannot carry out. pool_shrink takes slots away."""
    start(unique_queue, "-n", node, "--max-instances", "6", concurrency=2)

    def command(name, n):
        return getattr(client.control, name)(n=n, destination=[node], reply=True, timeout=2)

    def slots():
        return inspect(client, node).stats()[node]["pool"]["max-concurrency"]

    assert command("pool_grow", 2) == [{node: {"ok": "pool will grow"}}]
    assert slots() == 4
    (refused,) = command("pool_grow", 2)
    assert "room for 5 tasks at once" in refused[node]["error"], refused
    assert slots() == 4
    assert command("pool_grow", 1) == [{node: {"ok": "pool will grow"}}]
    assert command("pool_shrink", 2) == [{node: {"ok": "pool will shrink"}}]
    assert slots() == 3
    assert client.send_task("tasks.add", (2, 2)).get(timeout=TIMEOUT) == 4


def registered_names(client, node):
    return {entry.split()[0] for entry in inspect(client, node).registered()[node]}


def test_pool_restart_reloads_the_components_of_a_worker_that_does_not_watch(
        start, unique_queue, node, client, tmp_path):
    """With `--no-watch`, files changed in the tasks directory are taken by `pool_restart`
    (Flower's "Restart pool" button): an added component is loaded, a removed one dropped."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(TASKS / "tasks.wasm", tasks / "tasks.wasm")
    worker = start(unique_queue, "-n", node, "--no-watch", tasks_dir=tasks)
    shutil.copy(TASKS / "rs_tasks.wasm", tasks / "rs_tasks.wasm")
    time.sleep(1.5)  # longer than the watcher would need, were it on
    assert "rs.add" not in registered_names(client, node)

    reply = client.control.pool_restart(destination=[node], reply=True, timeout=2)
    assert reply == [{node: {"ok": "reload started"}}], reply
    wait_until(lambda: "rs.add" in registered_names(client, node), "rs.add registered", worker)
    assert client.send_task("rs.add", (2, 3)).get(timeout=TIMEOUT) == 5

    (tasks / "tasks.wasm").unlink()
    reply = client.control.pool_restart(modules=["tasks.wasm"], destination=[node], reply=True,
                                        timeout=2)
    assert reply == [{node: {"ok": "reload started"}}], reply
    wait_until(lambda: "tasks.add" not in registered_names(client, node),
               "tasks.add unregistered", worker)
    assert "rs.add" in registered_names(client, node)
    # The summary is logged once the whole reload is done, which may be just after the
    # swap that inspect already shows.
    wait_until(lambda: "1 removed" in worker.output(), "the pool_restart summary", worker)


class EventCapture:
    """An `app.events.Receiver` (what Flower and `celery events` use) on its own thread,
    keeping every event of one node. Starting, it broadcasts the `heartbeat` command as
    every receiver does (`wakeup_workers`)."""

    def __init__(self, app, node):
        self.node = node
        self.events = []
        ready = threading.Event()

        class Receiver(app.events.Receiver):
            def on_consume_ready(self, *args, **kwargs):
                super().on_consume_ready(*args, **kwargs)
                ready.set()

        self.connection = app.connection()
        self.receiver = Receiver(self.connection, handlers={"*": self._keep})
        self.thread = threading.Thread(target=self.receiver.capture, daemon=True)
        self.thread.start()
        assert ready.wait(10), "receiver did not start"

    def _keep(self, event):
        if event.get("hostname") == self.node:
            self.events.append(event)

    def of_type(self, kind):
        return [e for e in self.events if e["type"] == kind]

    def close(self):
        self.receiver.should_stop = True
        self.thread.join(timeout=5)
        self.connection.close()


STANDARD_FIELDS = {"type": str, "hostname": str, "utcoffset": int, "pid": int, "clock": int,
                   "timestamp": float}
WORKER_FIELDS = {**STANDARD_FIELDS, "freq": float, "active": int, "processed": int,
                 "loadavg": list, "sw_ident": str, "sw_ver": str, "sw_sys": str}


def check_fields(event, fields):
    for name, kind in fields.items():
        assert name in event, f"{event['type']} has no {name}: {event}"
        assert isinstance(event[name], kind) and not isinstance(event[name], bool), (name, event)


def test_events_carry_celerys_fields_and_types(start, unique_queue, node, client):
    capture = EventCapture(client, node)
    try:
        worker = start(unique_queue, "-n", node, "-E")
        ok = client.send_task("tasks.add", (2, 3))
        failed = client.send_task("tasks.fail", ("boom",))
        assert ok.get(timeout=TIMEOUT) == 5
        with pytest.raises(ValueError):
            failed.get(timeout=TIMEOUT)
        wait_until(lambda: len(capture.of_type("worker-heartbeat")) >= 2, "two heartbeats", worker)
        wait_until(lambda: capture.of_type("task-failed"), "task-failed", worker)
    finally:
        capture.close()

    online = capture.of_type("worker-online")
    assert online, capture.events
    for event in online + capture.of_type("worker-heartbeat"):
        check_fields(event, WORKER_FIELDS)
        assert event["freq"] == 2.0 and len(event["loadavg"]) == 3
    beats = [e["timestamp"] for e in capture.of_type("worker-heartbeat")]
    assert all(b - a < 4.0 for a, b in zip(beats, beats[1:])), beats

    by_task = {}
    for event in capture.events:
        if event["type"].startswith("task-"):
            check_fields(event, STANDARD_FIELDS)
            by_task.setdefault(event["uuid"], []).append(event)
    kinds = [e["type"] for e in by_task[ok.id]]
    assert kinds == ["task-received", "task-started", "task-succeeded"], kinds
    received, _, succeeded = by_task[ok.id]
    assert received["name"] == "tasks.add" and received["args"] == "(2, 3)"
    assert received["kwargs"] == "{}" and received["retries"] == 0
    assert succeeded["result"] == "5" and isinstance(succeeded["runtime"], float)
    fail = by_task[failed.id][-1]
    assert fail["type"] == "task-failed"
    assert fail["exception"] == "ValueError('boom')"
    assert isinstance(fail["traceback"], str)
    clocks = [e["clock"] for e in capture.events]
    assert clocks == sorted(clocks), "the Lamport clock only moves on"


def test_worker_offline_is_sent_at_shutdown(start, unique_queue, node, client):
    capture = EventCapture(client, node)
    try:
        worker = start(unique_queue, "-n", node)
        wait_until(lambda: capture.of_type("worker-online"), "worker-online", worker)
        worker.stop()
        wait_until(lambda: capture.of_type("worker-offline"), "worker-offline", worker, timeout=5)
    finally:
        capture.close()
    check_fields(capture.of_type("worker-offline")[0], WORKER_FIELDS)


def test_task_events_follow_enable_events_without_dash_e(start, unique_queue, node, client):
    capture = EventCapture(client, node)
    try:
        worker = start(unique_queue, "-n", node)
        quiet = client.send_task("tasks.add", (1, 1))
        assert quiet.get(timeout=TIMEOUT) == 2
        reply = client.control.enable_events(destination=[node], reply=True, timeout=2)
        assert reply == [{node: {"ok": "task events enabled"}}], reply
        loud = client.send_task("tasks.add", (1, 2))
        assert loud.get(timeout=TIMEOUT) == 3
        wait_until(lambda: [e for e in capture.of_type("task-succeeded") if e["uuid"] == loud.id],
                   "task-succeeded after enable_events", worker)
    finally:
        capture.close()
    assert not [e for e in capture.events if e.get("uuid") == quiet.id], "no task events before"


def test_a_python_worker_on_the_same_broker_keeps_working(start, unique_queue, node, client, broker_url):
    celeriac = start(unique_queue, "-n", node, "-E")
    py_queue = f"{unique_queue}-py"
    argv = [str(CELERY), "-A", "tasks", "-b", broker_url, "--result-backend", REDIS_URL, "worker",
            "-P", "threads", "-c", "1", "-Q", py_queue, "-n", f"py-{uuid.uuid4().hex[:8]}@%h",
            "-l", "info"]
    env = worker_env({"PYTHONPATH": str(ROOT / "examples" / "python"), "PYTHONUNBUFFERED": "1"})
    python = WorkerProcess("celery worker", argv, env).wait_ready()
    try:
        for i in range(3):
            assert client.send_task("tasks.add", (i, i)).get(timeout=TIMEOUT) == 2 * i
            assert client.send_task("tasks.add", (i, 1), queue=py_queue).get(timeout=TIMEOUT) == i + 1
        time.sleep(5)  # heartbeats, which the Python worker's gossip consumes
        assert client.send_task("tasks.add", (7, 1), queue=py_queue).get(timeout=TIMEOUT) == 8
    finally:
        python.stop()
    log = python.output()
    for sign in ("Traceback", "KeyError", "Connection to broker lost", "Substantial drift"):
        assert sign not in log, log[-6000:]
    assert f"missed heartbeat from {node}" not in log
    assert celeriac.process.poll() is None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_get(url):
    """(status, body) of a GET."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def metric(text, line_prefix):
    """The value of the sample line starting with `line_prefix`, or 0 when absent."""
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_health_and_readiness(start, unique_queue, node, client):
    port = free_port()
    worker = start(unique_queue, "-n", node, "--metrics-addr", f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    assert http_get(f"{base}/healthz") == (200, "ok\n")
    assert wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, "ready", worker)
    assert http_get(f"{base}/nope")[0] == 404

    succeeded = 'celeriac_tasks_total{name="tasks.add",state="SUCCESS"}'
    failed = 'celeriac_tasks_total{name="tasks.fail",state="FAILURE"}'
    before = http_get(f"{base}/metrics")[1]
    for i in range(3):
        assert client.send_task("tasks.add", (i, i)).get(timeout=TIMEOUT) == 2 * i
    with pytest.raises(ValueError):
        client.send_task("tasks.fail", ("x",)).get(timeout=TIMEOUT)
    # The result is stored before the task leaves the in-flight gauge: wait for both.
    after = wait_until(
        lambda: (lambda t: t if metric(t, failed) == metric(before, failed) + 1
                 and metric(t, "celeriac_tasks_in_flight") == 0 else None)(
            http_get(f"{base}/metrics")[1]),
        "the failure counted and nothing in flight", worker)
    assert metric(after, succeeded) == metric(before, succeeded) + 3
    assert metric(after, 'celeriac_task_runtime_seconds_count{name="tasks.add"}') == 3
    assert metric(after, 'celeriac_sandbox_instantiate_seconds_count{name="tasks.add"}') == 3, \
        "each task ran in a fresh instance"
    assert 0 < metric(after, 'celeriac_sandbox_instantiate_seconds_sum{name="tasks.add"}') < 3
    assert metric(after, "celeriac_task_queue_wait_seconds_count") == 4
    assert 'celeriac_component_info{component="tasks.wasm"' in after
    assert after.endswith("# EOF\n")


def test_flower_lists_the_worker_online_and_shows_its_task(start_celeriac_worker, unique_queue, node,
                                                           make_client):
    """Flower (on Redis), started headless, builds its worker list from events and its
    worker page from inspect replies; a worker started without -E gets task events turned
    on by Flower's periodic enable_events."""
    broker_url = REDIS_URL
    client = make_client(task_default_queue=unique_queue)
    port = free_port()
    env = worker_env({"FLOWER_UNAUTHENTICATED_API": "true", "PYTHONUNBUFFERED": "1"})
    python = ROOT / "target" / "interop-venv" / "bin" / "python"
    flower = WorkerProcess("flower", [str(python), "-m", "celery", "-b", broker_url,
                                      "--result-backend", REDIS_URL, "flower",
                                      "--address=127.0.0.1", f"--port={port}"], env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get_json(f"{base}/api/workers?status=true") is not None, "Flower up", flower)
        worker = start_celeriac_worker(unique_queue, "-n", node)
        wait_until(lambda: (_get_json(f"{base}/api/workers?status=true") or {}).get(node) is True,
                   "Flower lists the worker online", flower)
        info = _get_json(f"{base}/api/workers?refresh=1&workername={node}")[node]
        assert info["stats"]["total"] == {} and "broker" in info["stats"]
        assert any(q["name"] == unique_queue for q in info["active_queues"])
        # Flower turns task events on within 5 s; wait for the worker to say so.
        wait_until(lambda: "Events of group {task} enabled by remote." in worker.output(),
                   "enable_events from Flower", worker)
        result = client.send_task("tasks.add", (20, 22))
        assert result.get(timeout=TIMEOUT) == 42
        wait_until(
            lambda: (_get_json(f"{base}/api/tasks?workername={node}") or {}).get(result.id),
            "Flower shows the task", flower)
        wait_until(lambda: _get_json(f"{base}/api/tasks?workername={node}")[result.id]["state"] == "SUCCESS",
                   "the task SUCCESS in Flower", flower)
        task = _get_json(f"{base}/api/tasks?workername={node}")[result.id]
        assert task["name"] == "tasks.add" and task["result"] == "42"
    finally:
        flower.stop()


def _get_json(url):
    import json

    try:
        status, body = http_get(url)
    except OSError:
        return None
    return json.loads(body) if status == 200 else None
