"""Resilience: no task is lost or run twice when a Python worker and a celeriac worker
share a queue, when a celeriac worker is killed with SIGKILL, or when Redis restarts.

Each test runs its own `redis-server` on a free port: restoring unacked messages works on
the server-wide `unacked` hash, and a restart must never hit the shared server.
"""

import collections
import json
import os
import pathlib
import subprocess
import time
import uuid

import pytest
import redis
from celery import Celery

from conftest import PYTHON_WORKER_SETTINGS, ROOT, WorkerProcess, worker_env

CELERY = ROOT / "target" / "interop-venv" / "bin" / "celery"
INTEROP = pathlib.Path(__file__).resolve().parent
RESULTS_TIMEOUT = 30
#: What a lost Redis connection looks like in the worker's log.
CONNECTION_ERRORS = ("Connection refused", "Connection reset by peer", "broken pipe")


@pytest.fixture
def start_python_worker():
    """Starts `celery -A tasks worker` (examples/python/tasks.py, thread pool of 2) for one
    test: `start_python_worker(queue, broker_url, backend_url=broker_url, **settings)`, with
    extra Celery `settings` (through configured_tasks.py); every worker it started is stopped
    at the end."""
    started = []

    def start(task_queue, url, backend=None, **settings):
        app = "configured_tasks" if settings else "tasks"
        argv = [str(CELERY), "-A", app, "-b", url, "--result-backend", backend or url, "worker",
                "-P", "threads", "-c", "2", "-Q", task_queue, "-n", f"py-{uuid.uuid4().hex[:8]}@%h",
                "-l", "info"]
        python_path = os.pathsep.join(str(path) for path in (ROOT / "examples" / "python", INTEROP))
        env = worker_env({"PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1",
                          PYTHON_WORKER_SETTINGS: json.dumps(settings)})
        worker = WorkerProcess("celery worker", argv, env)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()


def client(url, task_queue):
    app = Celery("resilience", broker=url, backend=url)
    app.conf.task_default_queue = task_queue
    return app


def tails(workers):
    return "".join(f"\n--- {w.name} ---\n{w.output()[-6000:]}" for w in workers)


def wait_until(condition, what, *workers, timeout=RESULTS_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{tails(workers)}")
        time.sleep(0.05)


def stored_results(server, ids):
    """task id -> stored result meta, for the ids that have one; {} while Redis is down."""
    try:
        values = server.client().mget([f"celery-task-meta-{i}" for i in ids])
    except redis.ConnectionError:
        return {}
    return {i: json.loads(v) for i, v in zip(ids, values) if v is not None}


def wait_for_results(server, expected, *workers):
    """Waits until every task in `expected` (id -> result) has a stored result, then checks
    that each is SUCCESS with its expected value."""
    done = {}

    def all_done():
        done.update(stored_results(server, [i for i in expected if i not in done]))
        return len(done) == len(expected)

    deadline = time.monotonic() + RESULTS_TIMEOUT
    while not all_done():
        if time.monotonic() > deadline:
            missing = [i for i in expected if i not in done]
            unacked = server.client().hkeys("unacked")
            # The lines about those tasks, and every error (a delivery tag is named only there).
            about = "".join(
                f"{w.name}: {line}" for w in workers for line in w.log
                if "ERROR" in line or any(i in line for i in missing[:5])
            )
            # And how each log ends: a worker that went quiet shows what it did last.
            endings = "".join(f"\n--- {w.name}, last lines ---\n{''.join(w.log[-15:])}" for w in workers)
            raise AssertionError(
                f"{len(missing)} of {len(expected)} tasks have no result after {RESULTS_TIMEOUT} s, "
                f"e.g. {missing[:5]}; unacked delivery tags: {unacked}\n{about}{endings}"
            )
        time.sleep(0.2)
    wrong = {i: m for i, m in done.items() if (m["status"], m["result"]) != ("SUCCESS", expected[i])}
    assert not wrong, f"{len(wrong)} tasks have the wrong outcome, e.g. {list(wrong.items())[:3]}"


def assert_nothing_left(server, task_queue):
    """No message waiting in the queue and none left unacked."""
    r = server.client()
    left = (r.llen(task_queue), r.hlen("unacked"), r.zcard("unacked_index"))
    assert left == (0, 0, 0), f"left behind (queued, unacked, unacked_index): {left}: {r.hgetall('unacked')}"


def run_1000_adds_on_both(app, server, celeriac, python):
    """Sends 1,000 `tasks.add` through `app`, waits for every result in `server` (the
    results' Redis), stops both workers, and checks that each task ran exactly once and
    that both workers ran some."""
    expected = {app.send_task("tasks.add", args=(i, 1000 * i)).id: 1001 * i for i in range(1000)}
    wait_for_results(server, expected, celeriac, python)
    celeriac.stop()
    python.stop()

    by_celeriac, by_python = celeriac.task_ids("succeeded"), python.task_ids("succeeded")
    runs = collections.Counter(by_celeriac + by_python)
    assert {i: n for i, n in runs.items() if n != 1} == {}, "tasks that ran more than once"
    assert set(runs) == set(expected)
    assert by_celeriac and by_python, f"celeriac ran {len(by_celeriac)}, Python ran {len(by_python)}"


def test_a_python_and_a_celeriac_worker_sharing_a_queue_run_each_task_exactly_once(
    start_redis, start_celeriac_worker, start_python_worker
):
    server = start_redis()
    task_queue = f"resilience-{uuid.uuid4()}"
    celeriac = start_celeriac_worker(task_queue, env_overrides=server.env())
    python = start_python_worker(task_queue, server.url)
    app = client(server.url, task_queue)

    run_1000_adds_on_both(app, server, celeriac, python)
    assert_nothing_left(server, task_queue)


def test_the_tasks_a_killed_celeriac_worker_held_run_once_more_after_the_visibility_timeout(
    start_redis, start_celeriac_worker
):
    visibility_timeout = 5
    server = start_redis()
    task_queue = f"resilience-{uuid.uuid4()}"
    options = ("--acks-late", "--visibility-timeout", str(visibility_timeout))
    first = start_celeriac_worker(task_queue, *options, concurrency=4, env_overrides=server.env())
    app = client(server.url, task_queue)
    expected = {app.send_task("tasks.sleep", args=(0.1,)).id: 0.1 for _ in range(200)}

    wait_until(lambda: len(first.task_ids("succeeded")) >= 40, "40 tasks to succeed", first)
    first.kill()

    # What the killed worker left: each task is done, still queued or unacked. It can be
    # both done and unacked: its result was stored, its late ack never sent.
    r = server.client()
    unacked_ids = [json.loads(v)[0]["headers"]["id"] for v in r.hvals("unacked")]
    queued_ids = [json.loads(m)["headers"]["id"] for m in r.lrange(task_queue, 0, -1)]
    done_ids = set(stored_results(server, list(expected)))
    assert unacked_ids, "the killed worker held no unacked message"
    assert not set(unacked_ids) & set(queued_ids)
    lost = set(expected) - done_ids - set(queued_ids) - set(unacked_ids)
    assert not lost, f"{len(lost)} tasks vanished with the worker: {sorted(lost)[:5]}"

    # Restarted at once, like a supervisor would: the new worker's periodic sweep restores
    # the unacked messages once they are past the visibility timeout.
    second = start_celeriac_worker(task_queue, *options, concurrency=4, env_overrides=server.env())
    wait_for_results(server, expected, second)
    second.stop()

    restored = sum(
        int(line.split("restored ")[1].split()[0]) for line in second.log if "unacked message(s)" in line
    )
    assert restored == len(unacked_ids), second.output()
    reruns = collections.Counter(second.task_ids("succeeded"))
    assert {i: n for i, n in reruns.items() if n != 1} == {}, "tasks that ran twice in the new worker"
    assert set(reruns) == set(queued_ids) | set(unacked_ids)
    assert_nothing_left(server, task_queue)


def test_celeriac_resumes_by_itself_after_redis_restarts_and_loses_no_task(
    start_redis, start_celeriac_worker
):
    server = start_redis(persistent=True)
    task_queue = f"resilience-{uuid.uuid4()}"
    # A fetch whose reply the restart cut off leaves its messages in `unacked` (recorded, never
    # delivered). The default visibility timeout (an hour) would bring them back too late for
    # this test: the worker's fetch journal must restore them as soon as Redis is back.
    worker = start_celeriac_worker(task_queue, "--acks-late", concurrency=4, env_overrides=server.env())
    app = client(server.url, task_queue)
    expected = {app.send_task("tasks.sleep", args=(0.05,)).id: 0.05 for _ in range(300)}

    wait_until(lambda: len(worker.task_ids("succeeded")) >= 60, "60 tasks to succeed", worker)
    before_restart = len(worker.log)
    server.stop()
    time.sleep(1)
    server.start()
    assert server.client().llen(task_queue) > 0, "the queue did not survive the restart"

    wait_for_results(server, expected, worker)
    worker.stop()
    errors = [line for line in worker.log[before_restart:] if any(e in line for e in CONNECTION_ERRORS)]
    assert errors, "the worker did not log the lost connection:\n" + worker.output()[-6000:]
    assert_nothing_left(server, task_queue)


def test_a_one_slot_worker_keeps_consuming_after_redis_restarts_during_a_task(
    start_redis, start_celeriac_worker
):
    server = start_redis(persistent=True)
    task_queue = f"resilience-{uuid.uuid4()}"
    worker = start_celeriac_worker(
        task_queue, "--acks-late", "--prefetch-multiplier", "1", concurrency=1, env_overrides=server.env()
    )
    app = client(server.url, task_queue)
    running = app.send_task("tasks.sleep", args=(2,)).id
    wait_until(lambda: running in worker.task_ids("received"), "the task to start", worker)

    server.stop()
    server.start()
    # Sent once Redis is back: it runs only if the worker still has its prefetch slot.
    after = app.send_task("tasks.add", args=(1, 2)).id

    wait_for_results(server, {running: 2, after: 3}, worker)
    worker.stop()
    assert_nothing_left(server, task_queue)
