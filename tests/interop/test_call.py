"""`celeriac call` publishes task messages a Celery worker accepts and reads results a Celery
client wrote, like `celery call`: here against `celeriac worker`, checked from both ends."""

import subprocess

from conftest import CELERIAC, worker_env

TIMEOUT = 20


def celeriac_call(*argv):
    return subprocess.run(
        [str(CELERIAC), "call", *argv],
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 10,
    )


def test_call_with_wait_prints_the_result(celeriac_worker, task_queue):
    done = celeriac_call("tasks.add", "-a", "[2, 3]", "-Q", task_queue, "--wait", str(TIMEOUT))
    assert (done.returncode, done.stdout.strip()) == (0, "5"), done.stderr


def test_call_without_wait_prints_an_id_a_celery_client_can_follow(app, celeriac_worker, task_queue):
    done = celeriac_call("tasks.echo", "-a", '["ü", 1]', "-k", '{"k": null}', "-Q", task_queue)
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    result = app.AsyncResult(task_id)
    assert result.get(timeout=TIMEOUT) == {"args": ["ü", 1], "kwargs": {"k": None}}


def test_call_reports_a_failure_like_celery_and_exits_nonzero(celeriac_worker, task_queue):
    done = celeriac_call("tasks.fail", "-a", '["it broke"]', "-Q", task_queue, "--wait", str(TIMEOUT))
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == "ValueError: it broke"


def test_call_with_a_past_expiry_ends_revoked(celeriac_worker, task_queue):
    done = celeriac_call(
        "tasks.add", "-a", "[1, 1]", "-Q", task_queue, "--expires", "0", "--wait", str(TIMEOUT)
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == "TaskRevokedError: expired"
