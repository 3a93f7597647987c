"""Example Celery tasks, written for plain Celery.

This module runs unchanged under a real Celery worker (``celery -A tasks worker``) and
compiles to a celeriac task component (``celeriac build tasks.py -o tasks.wasm``). Task
names follow Celery's default, ``<module>.<function>``: ``tasks.add``, ``tasks.echo``, ...
"""

import time

from celery import Celery
from celery.utils.log import get_task_logger

app = Celery("tasks", broker="redis://localhost:6379/0", backend="redis://localhost:6379/0")

logger = get_task_logger(__name__)


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def xsum(numbers):
    return sum(numbers)


@app.task
def echo(*args, **kwargs):
    """Returns its arguments: ``{"args": [...], "kwargs": {...}}``."""
    return {"args": list(args), "kwargs": kwargs}


@app.task
def fail(message):
    raise ValueError(message)


@app.task
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(track_started=True)
def tracked_sleep(seconds):
    """Like ``sleep``, but the worker reports ``STARTED`` while it runs (``track_started``)."""
    time.sleep(seconds)
    return seconds


@app.task
def spin():
    """Never returns: a pure-Python busy loop, for time-limit tests."""
    n = 0
    while True:
        n += 1


@app.task
def hog(megabytes):
    """Allocates ``megabytes`` MB and touches every page, for memory-limit tests."""
    block = bytearray(megabytes * 1024 * 1024)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    return megabytes


@app.task(bind=True)
def retry_until(self, n):
    """Retries itself until it has been retried ``n`` times, then returns ``n``."""
    if self.request.retries < n:
        logger.info("retry %d of %d", self.request.retries + 1, n)
        raise self.retry(countdown=0.1)
    return n


@app.task(bind=True)
def progress(self, steps):
    """Reports ``PROGRESS`` once per step, then returns ``steps``."""
    for i in range(steps):
        self.update_state(state="PROGRESS", meta={"current": i, "total": steps})
    return steps


@app.task
def read_file(path):
    with open(path) as f:
        return f.read()


@app.task(rate_limit="5/s")
def limited_clock():
    """Returns the wall-clock time it started at; at most 5 start per second (``rate_limit``)."""
    return time.time()


@app.task(autoretry_for=(ValueError,), retry_backoff=True, retry_jitter=False, max_retries=2)
def flaky_backoff(message):
    """Always raises ValueError, retried by ``autoretry_for`` after 1 s, then 2 s (backoff
    without jitter), then failing with that ValueError."""
    raise ValueError(message)


# A training pipeline, for canvas tests: `chain(preprocess, train, evaluate, cleanup)`, each
# stage an immutable signature with `link=on_stage_success.s(pipeline_id, stage)` and
# `link_error=on_stage_error.s(pipeline_id, stage)`.


@app.task
def preprocess(pipeline_id):
    return {"pipeline": pipeline_id, "rows": 100}


@app.task
def train(pipeline_id, fail=False):
    if fail:
        raise RuntimeError(f"training of {pipeline_id} diverged")
    return {"pipeline": pipeline_id, "accuracy": 0.9}


@app.task
def evaluate(pipeline_id):
    return {"pipeline": pipeline_id, "score": 0.875}


@app.task
def cleanup(pipeline_id):
    return {"pipeline": pipeline_id, "cleaned": True}


@app.task
def on_stage_success(result, pipeline_id, stage):
    """A link callback: gets the stage's result first."""
    return {"pipeline": pipeline_id, "stage": stage, "status": "ok", "result": result}


@app.task
def on_stage_error(failed_task_id, pipeline_id, stage):
    """A link_error errback: gets the failed task's id first."""
    return {"pipeline": pipeline_id, "stage": stage, "status": "failed", "failed_task": failed_task_id}


@app.task
def log_error(request, exc, traceback):
    """A "new style" errback: with more than one positional parameter, the worker in which
    the task failed calls it inline with the failed request, its exception and traceback
    (none for a chord error); it is not sent as a message and nothing is stored."""
    last_line = (traceback or "").strip().splitlines()[-1:] or ["no traceback"]
    print(f"Task {request.id} raised exception: {exc!r}; traceback ends with: {last_line[0]}")
