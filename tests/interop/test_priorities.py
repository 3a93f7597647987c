"""Message priorities on Redis, as kombu lays them out: a Celery 5.7 client's priority 0 is
the highest, so a `celeriac worker` with one slot runs priority 0, then 5, then 9."""

import time

from conftest import PRIORITY_SEP

TIMEOUT = 30
ONE_SLOT = ("--prefetch-multiplier", "1")


def send_by_priority(app, task_queue, priorities):
    """Sends `tasks.echo(p)` with priority p for each p, in order; returns {p: result}."""
    return {
        priority: app.send_task("tasks.echo", args=(priority,), queue=task_queue, priority=priority)
        for priority in priorities
    }


def assert_ran_in_order(worker, results, order):
    """Waits for every result and checks the worker finished them in `order` (priorities);
    returns their ids in that order."""
    for priority, result in results.items():
        assert result.get(timeout=TIMEOUT) == {"args": [priority], "kwargs": {}}
    expected = [results[priority].id for priority in order]
    ran = [task_id for task_id in worker.wait_logged("succeeded", expected) if task_id in expected]
    assert ran == expected, worker.output()
    return expected


def wait_for_log(worker, event, task_id):
    deadline = time.monotonic() + TIMEOUT
    while task_id not in worker.task_ids(event):
        assert time.monotonic() < deadline, f"no {event} line for {task_id}:\n{worker.output()}"
        time.sleep(0.05)


def test_queued_priorities_run_lowest_number_first(
    app, redis_client, unique_queue, start_celeriac_worker
):
    results = send_by_priority(app, unique_queue, (9, 5, 0))
    # The client put each message in its own priority list (the premise of the order):
    # kombu's steps are 0, 3, 6, 9 and a priority goes to the largest step not above it.
    lists = [unique_queue, f"{unique_queue}{PRIORITY_SEP}3", f"{unique_queue}{PRIORITY_SEP}9"]
    assert [redis_client.llen(key) for key in lists] == [1, 1, 1]

    worker = start_celeriac_worker(unique_queue, *ONE_SLOT, concurrency=1)
    expected = assert_ran_in_order(worker, results, (0, 5, 9))
    assert worker.task_ids("received") == expected
    assert [redis_client.llen(key) for key in lists] == [0, 0, 0]


def test_priorities_queued_behind_a_running_task_run_lowest_number_first(
    app, unique_queue, start_celeriac_worker
):
    # With late acks, the one prefetch slot stays taken while the first task runs, so the
    # worker fetches nothing until it ends; by then all three are waiting.
    worker = start_celeriac_worker(unique_queue, *ONE_SLOT, "--acks-late", concurrency=1)
    busy = app.send_task("tasks.sleep", args=(2,), queue=unique_queue)
    wait_for_log(worker, "received", busy.id)
    results = send_by_priority(app, unique_queue, (9, 5, 0))
    assert busy.get(timeout=TIMEOUT) == 2
    expected = assert_ran_in_order(worker, results, (0, 5, 9))
    assert worker.task_ids("received") == [busy.id] + expected
