"""States a Celery 5.7 client sees besides SUCCESS and FAILURE: STARTED for a task declared
with `track_started=True`, and REVOKED for a message whose `expires` has passed."""

import datetime as dt
import time

import pytest
from celery.exceptions import TaskRevokedError

from conftest import TIMEOUT, wait_until


def received(log, task_id):
    return any(f"[{task_id}] received" in line for line in list(log))


def test_a_track_started_task_reports_started_while_it_runs(app, celeriac_worker):
    result = app.send_task("tasks.tracked_sleep", args=(3,))
    wait_until(lambda: result.state != "PENDING", f"{result.id} to leave PENDING")
    assert result.state == "STARTED"
    # What a Python worker stores with STARTED: its pid and node name.
    assert set(result.info) == {"pid", "hostname"}
    assert isinstance(result.info["pid"], int)
    assert result.info["hostname"].startswith("celery@")
    assert result.get(timeout=TIMEOUT) == 3
    assert result.state == "SUCCESS"


def test_a_task_without_track_started_stays_pending_while_it_runs(app, celeriac_worker):
    result = app.send_task("tasks.sleep", args=(2,))
    wait_until(lambda: received(celeriac_worker, result.id), f"{result.id} to be received")
    time.sleep(0.5)
    assert result.state == "PENDING"
    assert result.get(timeout=TIMEOUT) == 2
    assert result.state == "SUCCESS"


@pytest.mark.parametrize(
    "expires",
    [dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5), -60],
    ids=["datetime", "seconds"],
)
def test_an_expired_message_is_revoked_without_running(app, celeriac_worker, expires):
    result = app.send_task("tasks.add", args=(1, 2), expires=expires)
    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=TIMEOUT)
    assert result.state == "REVOKED"
    assert not any(f"[{result.id}] succeeded" in line for line in list(celeriac_worker))


def test_a_message_that_expires_later_runs(app, celeriac_worker):
    result = app.send_task("tasks.add", args=(1, 2), expires=60)
    assert result.get(timeout=TIMEOUT) == 3
    assert result.state == "SUCCESS"
