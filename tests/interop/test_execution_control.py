"""Execution control seen from an unmodified Celery 5.7 client, on Redis and on RabbitMQ:
retries (explicit, past max_retries, autoretry with backoff), countdown, hard and soft time
limits (from the message and from the worker's flags), per-task rate limits, and ids revoked
in a `--statedb` file, and the REVOKED document of a message that expired while it waited,
compared with a Python worker's. Messages expired on arrival are covered in
test_task_states.py; revoke itself (which needs the remote-control broadcast) in the Rust
worker tests and test_control.py."""

import datetime as dt
import json
import re
import time

import pytest
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.exceptions import MaxRetriesExceededError, TaskRevokedError

from conftest import REDIS_URL, TIMEOUT, wait_until
from every_broker import on_every_broker  # noqa: F401  (the `broker` fixture: Redis, RabbitMQ)
from test_resilience import start_python_worker  # noqa: F401  (a fixture)


def lines_about(log, task_id):
    return [line for line in list(log) if f"[{task_id}]" in line]


@pytest.fixture
def own_worker(start_celeriac_worker, unique_queue, make_client):
    """`own_worker(*options, **kw)`: a worker of this test's own, started with `options`,
    and a client sending to its queue."""

    def start(*options, **kw):
        worker = start_celeriac_worker(unique_queue, *options, **kw)
        return worker, make_client(task_default_queue=unique_queue)

    return start


def test_retry_until_three_ends_with_three_after_three_retries(own_worker):
    worker, client = own_worker("--result-extended")
    result = client.send_task("tasks.retry_until", args=(3,))
    assert result.get(timeout=TIMEOUT) == 3
    assert result.state == "SUCCESS"
    assert result.retries == 3
    wait_until(
        lambda: len([line for line in lines_about(worker.log, result.id) if " retry: " in line]) == 3,
        "three retries to be logged",
        timeout=5,
    )
    retried = [line for line in lines_about(worker.log, result.id) if " retry: " in line]
    assert all("retry: Retry in 0.1s" in line for line in retried), retried


def test_past_max_retries_the_client_gets_max_retries_exceeded(app, celeriac_worker):
    # retry_until(5) keeps retrying; the default max_retries (3) stops it.
    result = app.send_task("tasks.retry_until", args=(5,))
    with pytest.raises(MaxRetriesExceededError) as raised:
        result.get(timeout=TIMEOUT)
    assert str(raised.value) == f"Can't retry tasks.retry_until[{result.id}] args:(5,) kwargs:{{}}"
    assert result.state == "FAILURE"


def test_autoretry_backs_off_one_then_two_seconds_then_fails_with_the_error(app, celeriac_worker):
    sent = time.monotonic()
    result = app.send_task("tasks.flaky_backoff", args=("flaky",))
    with pytest.raises(ValueError, match="flaky"):
        result.get(timeout=TIMEOUT)
    assert time.monotonic() - sent >= 3.0
    retried = [line for line in lines_about(celeriac_worker, result.id) if " retry: " in line]
    assert [re.search(r"retry: (.*)$", line).group(1) for line in retried] == [
        "Retry in 1s: ValueError('flaky')",
        "Retry in 2s: ValueError('flaky')",
    ]


def test_a_countdown_task_runs_no_sooner_than_asked(app, celeriac_worker):
    sent = dt.datetime.now(dt.timezone.utc)
    result = app.send_task("tasks.add", args=(2, 2), countdown=2)
    time.sleep(1)
    assert result.state == "PENDING"
    assert result.get(timeout=TIMEOUT) == 4
    done = result.date_done
    if done.tzinfo is None:  # Celery's backends store UTC
        done = done.replace(tzinfo=dt.timezone.utc)
    assert done - sent >= dt.timedelta(seconds=2)


def test_the_hard_time_limit_fails_the_task_and_others_keep_running(app, celeriac_worker):
    spinning = app.send_task("tasks.spin", time_limit=2)
    wait_until(
        lambda: any("received" in line for line in lines_about(celeriac_worker, spinning.id)),
        "tasks.spin to be received",
    )
    # The second slot keeps serving at full speed while the first spins.
    started = time.monotonic()
    assert [app.send_task("tasks.add", args=(i, i)).get(timeout=TIMEOUT) for i in range(5)] == [
        0, 2, 4, 6, 8,
    ]
    assert time.monotonic() - started < 1.5
    with pytest.raises(TimeLimitExceeded) as raised:
        spinning.get(timeout=TIMEOUT)
    assert raised.value.args == (2,)
    assert spinning.state == "FAILURE"
    assert spinning.traceback is None
    # Log lines may trail the stored result by a moment.
    wait_until(
        lambda: any(f"Hard time limit (2s) exceeded for tasks.spin[{spinning.id}]" in line
                    for line in lines_about(celeriac_worker, spinning.id)),
        "the hard limit to be logged",
        timeout=5,
    )
    assert any("Task handler raised error: TimeLimitExceeded(2)" in line for line in list(celeriac_worker))


def test_the_hard_time_limit_stops_a_task_that_sleeps_in_the_host(app, celeriac_worker):
    # No guest code runs during time.sleep, so the epoch check cannot stop it; the limit
    # must still fire on time.
    sent = time.monotonic()
    result = app.send_task("tasks.sleep", args=(20,), time_limit=1)
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=TIMEOUT)
    assert time.monotonic() - sent < 5


def test_the_soft_time_limit_fails_a_task_that_does_not_handle_it(app, celeriac_worker):
    result = app.send_task("tasks.spin", soft_time_limit=1, time_limit=10)
    with pytest.raises(SoftTimeLimitExceeded) as raised:
        result.get(timeout=TIMEOUT)
    assert raised.value.args == ()
    assert result.state == "FAILURE"
    wait_until(
        lambda: any("raised unexpected: SoftTimeLimitExceeded()" in line
                    for line in lines_about(celeriac_worker, result.id)),
        "the failure to be logged",
        timeout=5,
    )
    assert any(f"Soft time limit (1s) exceeded for tasks.spin[{result.id}]" in line
               for line in lines_about(celeriac_worker, result.id))


def test_the_worker_flags_set_the_default_time_limits(own_worker):
    worker, client = own_worker("--time-limit", "1")
    result = client.send_task("tasks.spin")
    with pytest.raises(TimeLimitExceeded) as raised:
        result.get(timeout=TIMEOUT)
    # Celery's CLI gives the limit as a float.
    assert raised.value.args == (1.0,)
    worker.stop()

    _, client = own_worker("--soft-time-limit", "1")
    result = client.send_task("tasks.spin")
    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=TIMEOUT)


def test_a_rate_limit_of_five_a_second_spaces_the_starts(own_worker):
    _, client = own_worker(concurrency=4)
    results = [client.send_task("tasks.limited_clock") for _ in range(10)]
    starts = sorted(result.get(timeout=TIMEOUT) for result in results)
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    # One token at once, then one every 0.2 s. Each start is read inside a fresh instance,
    # so a start delayed by a busy machine lengthens one gap and shortens the next (seen:
    # 0.30 then 0.09): two gaps in a row still span two intervals.
    assert min(gaps) >= 0.05, gaps
    assert min(a + b for a, b in zip(gaps, gaps[1:])) >= 0.3, gaps
    assert starts[-1] - starts[0] >= 9 * 0.2 * 0.95, starts


def test_ids_in_the_statedb_are_revoked_at_start(own_worker, tmp_path):
    # celeriac's state db format (host/src/worker/statedb.rs), as a previous run left it.
    revoked_id = f"revoked-{time.time_ns()}"
    statedb = tmp_path / "worker.state"
    statedb.write_text(
        '{"format": "celeriac-statedb", "version": 1, "revoked": [["%s", %f]]}'
        % (revoked_id, time.time() - 60)
    )
    worker, client = own_worker("--statedb", str(statedb))
    result = client.send_task("tasks.add", args=(1, 2), task_id=revoked_id)
    with pytest.raises(TaskRevokedError, match="revoked"):
        result.get(timeout=TIMEOUT)
    assert client.send_task("tasks.add", args=(1, 2)).get(timeout=TIMEOUT) == 3
    assert not any("succeeded" in line for line in lines_about(worker.log, revoked_id))
    worker.stop()
    # Saved again at shutdown, with the id still there.
    assert revoked_id in statedb.read_text()


def expired_while_waiting(client, redis_client):
    """The REVOKED document stored for a message of a group, with a parent and a root, that
    expires (after 1 s) while it waits for its countdown (2 s); the fields that differ
    between runs and workers are named, not given."""
    result = client.send_task(
        "tasks.add", args=(1, 2), countdown=2, expires=1, group_id="revoked-group", group_index=0,
        parent_id="revoked-parent", root_id="revoked-root",
    )
    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=TIMEOUT)
    stored = json.loads(redis_client.get(f"celery-task-meta-{result.id}"))
    varying = {"task_id": "<id>", "date_done": "<date>", "worker": "<worker>"}
    return {key: varying.get(key, value) for key, value in stored.items()}


def test_a_revoked_result_carries_the_request_fields_a_python_worker_stores(
    own_worker, broker, unique_queue, redis_client, start_python_worker,  # noqa: F811
):
    worker, client = own_worker("--result-extended")
    by_celeriac = expired_while_waiting(client, redis_client)
    worker.stop()
    start_python_worker(unique_queue, broker.url, REDIS_URL, result_extended=True)
    assert expired_while_waiting(client, redis_client) == by_celeriac
    assert by_celeriac == {
        "status": "REVOKED", "traceback": None, "children": [], "date_done": "<date>", "task_id": "<id>",
        "result": {"exc_type": "TaskRevokedError", "exc_message": ["expired"],
                   "exc_module": "celery.exceptions"},
        "group_id": "revoked-group", "parent_id": "revoked-parent", "name": "tasks.add", "args": [1, 2],
        "kwargs": {}, "worker": "<worker>", "retries": 0, "queue": unique_queue,
    }
