"""Fixtures for the interoperability tests: a real `celeriac worker` on the machine's Redis,
serving the example components, and an unmodified Celery client pointed at it.

Each test session uses its own queue, so nothing else on the Redis server is touched.
"""

import os
import pathlib
import queue
import subprocess
import threading
import time
import uuid

import pytest
from celery import Celery

ROOT = pathlib.Path(__file__).resolve().parents[2]
CELERIAC = ROOT / "target" / "release" / "celeriac"
TASKS = ROOT / "target" / "wasm-tasks"
REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
READY_TIMEOUT = 90


@pytest.fixture(scope="session")
def task_queue():
    return f"interop-{uuid.uuid4()}"


@pytest.fixture(scope="session")
def celeriac_worker(task_queue):
    """A `celeriac worker` consuming `task_queue`; its log lines are kept for assertions."""
    assert CELERIAC.is_file(), f"{CELERIAC} is missing: run scripts/test.sh (it builds it)"
    assert (TASKS / "tasks.wasm").is_file(), f"{TASKS} has no tasks.wasm: run scripts/build-examples.sh"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "CELERIAC_"))}
    env["CELERY_BROKER_URL"] = REDIS_URL
    env["CELERY_RESULT_BACKEND"] = REDIS_URL
    env["CELERIAC_CACHE_DIR"] = str(ROOT / "target" / "test-compile-cache")
    process = subprocess.Popen(
        [str(CELERIAC), "worker", "--tasks", str(TASKS), "-Q", task_queue, "-c", "2", "-l", "info"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = queue.Queue()
    log = []

    def pump():
        for line in process.stdout:
            log.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            process.kill()
            raise AssertionError("celeriac worker did not become ready:\n" + "".join(log))
        try:
            if "ready." in lines.get(timeout=min(remaining, 1.0)):
                break
        except queue.Empty:
            continue
    yield log
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("celeriac worker did not stop within 30 s of SIGTERM:\n" + "".join(log))


@pytest.fixture(scope="session")
def app(task_queue):
    """An unmodified Celery client on the same Redis, sending to the worker's queue."""
    client = Celery("interop", broker=REDIS_URL, backend=REDIS_URL)
    client.conf.task_default_queue = task_queue
    client.conf.result_expires = 600
    yield client
    client.close()
