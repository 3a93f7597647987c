"""Resilience on RabbitMQ: a Python worker and a celeriac worker sharing an AMQP queue run
each task once; the tasks a killed celeriac worker held (acked late) come back at once
(RabbitMQ requeues a closed channel's unacked messages) and run once more, nothing lost; and
a worker whose RabbitMQ restarts (`rabbitmqctl stop_app`/`start_app` on a node of the test's
own) reconnects by itself and finishes every task.

Results go to a Redis server of the test's own (`start_redis`), so they can be counted."""

import collections
import time
import uuid

import kombu
import pytest
from celery import Celery

from conftest import AMQP_URL, start_celeriac
from rabbit import RabbitNode
from test_amqp import amqp_client, start_amqp_worker
from test_resilience import (  # noqa: F401 (start_python_worker is a fixture)
    run_1000_adds_on_both,
    start_python_worker,
    stored_results,
    wait_for_results,
    wait_until,
)


def messages_left(task_queue):
    """Messages ready or unacked in `task_queue` (a passive declare counts the ready ones;
    with every consumer gone, unacked ones are ready again)."""
    with kombu.Connection(AMQP_URL) as connection:
        _, count, _ = connection.default_channel.queue_declare(task_queue, passive=True)
        return count


def test_a_python_and_a_celeriac_worker_sharing_an_amqp_queue_run_each_task_exactly_once(
    start_redis, rabbitmq_queue, start_python_worker
):
    backend = start_redis()
    celeriac = start_amqp_worker(rabbitmq_queue, backend.url, concurrency=4)
    python = start_python_worker(rabbitmq_queue, AMQP_URL, backend.url)
    app = amqp_client(rabbitmq_queue, backend.url)

    run_1000_adds_on_both(app, backend, celeriac, python)
    assert messages_left(rabbitmq_queue) == 0


def test_the_tasks_a_killed_celeriac_worker_held_on_amqp_come_back_at_once(start_redis, rabbitmq_queue):
    backend = start_redis()
    concurrency = 4
    first = start_amqp_worker(rabbitmq_queue, backend.url, "--acks-late", concurrency=concurrency)
    app = amqp_client(rabbitmq_queue, backend.url)
    expected = {app.send_task("tasks.sleep", args=(0.1,)).id: 0.1 for _ in range(200)}

    wait_until(lambda: len(first.task_ids("succeeded")) >= 40, "40 tasks to succeed", first)
    first.kill()
    done_before = set(stored_results(backend, list(expected)))
    started_by_first = set(first.task_ids("received"))

    second = start_amqp_worker(rabbitmq_queue, backend.url, "--acks-late", concurrency=concurrency)
    wait_for_results(backend, expected, second)
    second.stop()

    reruns = collections.Counter(second.task_ids("succeeded"))
    assert {i: n for i, n in reruns.items() if n != 1} == {}, "tasks that ran twice in the new worker"
    assert set(reruns) | done_before == set(expected)
    # Only what the killed worker held unacked runs twice: at most its prefetch window
    # (concurrency x the default multiplier 4), and at least one task it had in hand.
    twice = set(reruns) & started_by_first
    assert 0 < len(twice) <= concurrency * 4, f"{len(twice)} tasks ran in both workers"
    assert messages_left(rabbitmq_queue) == 0


@pytest.fixture
def rabbit_node(tmp_path_factory):
    """A RabbitMQ node of the test's own (tests/interop/rabbit.py), stopped at the end."""
    # Under /tmp: the node's data directory must be reachable by the `rabbitmq` user.
    directory = tmp_path_factory.mktemp("rabbit")
    directory.chmod(0o755)
    for parent in directory.parents:
        if parent == parent.parent or str(parent) == "/tmp":
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    node = RabbitNode(directory / "node").start()
    yield node
    node.stop()


def test_celeriac_resumes_by_itself_after_rabbitmq_restarts_and_loses_no_task(start_redis, rabbit_node):
    backend = start_redis()
    task_queue = f"resilience-amqp-{uuid.uuid4()}"
    env = {"CELERY_BROKER_URL": rabbit_node.url, "CELERY_RESULT_BACKEND": backend.url}
    worker = start_celeriac(task_queue, "--acks-late", concurrency=4, env_overrides=env)
    app = Celery("amqp-restart", broker=rabbit_node.url, backend=backend.url)
    app.conf.task_default_queue = task_queue
    expected = {app.send_task("tasks.sleep", args=(0.05,)).id: 0.05 for _ in range(300)}
    app.close()

    wait_until(lambda: len(worker.task_ids("succeeded")) >= 60, "60 tasks to succeed", worker)
    before_restart = len(worker.log)
    rabbit_node.stop_app()
    time.sleep(1)
    rabbit_node.start_app()

    wait_for_results(backend, expected, worker)
    worker.stop()
    lost = [line for line in worker.log[before_restart:] if "onnection" in line]
    assert lost, "the worker did not log the lost connection:\n" + worker.output()[-6000:]
    with kombu.Connection(rabbit_node.url) as connection:
        _, left, _ = connection.default_channel.queue_declare(task_queue, passive=True)
    assert left == 0


def test_a_task_waiting_for_an_eta_beyond_the_consumer_timeout_does_not_cost_the_connection(
    start_redis, rabbit_node
):
    # RabbitMQ closes a channel whose delivery stays unacked past consumer_timeout, checked
    # every channel tick: 3 s and 1 s here instead of 30 min and 1 min.
    rabbit_node.set_env("consumer_timeout", 3000)
    rabbit_node.set_env("channel_tick_interval", 1000)
    backend = start_redis()
    task_queue = f"consumer-timeout-{uuid.uuid4()}"
    env = {"CELERY_BROKER_URL": rabbit_node.url, "CELERY_RESULT_BACKEND": backend.url}
    worker = start_celeriac(task_queue, "--broker-consumer-timeout", "3", env_overrides=env)
    app = Celery("consumer-timeout", broker=rabbit_node.url, backend=backend.url)
    app.conf.task_default_queue = task_queue

    sent = time.monotonic()
    later = app.send_task("tasks.add", args=(20, 22), countdown=10)
    meanwhile = [app.send_task("tasks.add", args=(i, i)) for i in range(20)]
    assert [r.get(timeout=20) for r in meanwhile] == [2 * i for i in range(20)]
    assert later.get(timeout=30) == 42
    assert time.monotonic() - sent >= 10
    app.close()
    worker.stop()

    handed_over = [line for line in worker.log if "sent back to the queue to wait" in line]
    assert len(handed_over) >= 2, worker.output()[-6000:]
    assert worker.task_ids("succeeded").count(later.id) == 1
    trouble = [line for line in worker.log if "PRECONDITION_FAILED" in line or "onnection" in line]
    assert not trouble, f"the channel was closed over the held message: {trouble}"
