"""A real Celery 5.7 client against `celeriac worker` on Redis: results, failures and
unknown tasks come back exactly as a Python worker would leave them."""

import time

import pytest
from celery.exceptions import NotRegistered

TIMEOUT = 20


@pytest.mark.parametrize("name", ["tasks.add", "rs.add"])
def test_add_returns_the_sum(app, celeriac_worker, name):
    assert app.send_task(name, args=(2, 3)).get(timeout=TIMEOUT) == 5


def test_a_failing_task_reraises_its_exception_in_the_client(app, celeriac_worker):
    result = app.send_task("tasks.fail", args=("it broke",))
    with pytest.raises(ValueError, match="it broke"):
        result.get(timeout=TIMEOUT)
    assert result.state == "FAILURE"
    assert "ValueError" in result.traceback


def test_an_unknown_task_is_not_registered(app, celeriac_worker):
    result = app.send_task("tasks.no_such_task", args=())
    with pytest.raises(NotRegistered):
        result.get(timeout=TIMEOUT)


def test_kwargs_and_unicode_reach_the_task(app, celeriac_worker):
    result = app.send_task("tasks.echo", args=(1, "ünïcode"), kwargs={"k": [True, None]})
    assert result.get(timeout=TIMEOUT) == {"args": [1, "ünïcode"], "kwargs": {"k": [True, None]}}


def test_the_worker_logs_like_celery(app, celeriac_worker):
    result = app.send_task("tasks.add", args=(20, 22))
    assert result.get(timeout=TIMEOUT) == 42
    # The log is written by a thread of its own, so the line may trail the stored result.
    deadline = time.monotonic() + 5
    while f"Task tasks.add[{result.id}] succeeded in" not in "".join(celeriac_worker):
        assert time.monotonic() < deadline, "no 'succeeded' line:\n" + "".join(celeriac_worker)
        time.sleep(0.02)
    assert f"Task tasks.add[{result.id}] received" in "".join(celeriac_worker)
