"""A real Celery 5.7 client against `celeriac worker` on RabbitMQ: results through the Redis
result backend and through `rpc://`, failures, unknown tasks, retries, and priorities on a
queue declared with `x-max-priority`. Every queue a test declares (and the exchange Celery
declares beside it) is deleted afterwards."""

from datetime import datetime, timedelta, timezone

import kombu
import pytest
from celery.exceptions import NotRegistered, TaskRevokedError

from conftest import AMQP_URL, RABBITMQ, REDIS_URL, start_celeriac

TIMEOUT = 20
#: What the worker logs when a queue exists with other arguments than it declares.
DECLARED_OTHERWISE = "consuming it as it is"


@pytest.fixture(scope="module")
def broker():
    """Every test here is about RabbitMQ."""
    return RABBITMQ


@pytest.fixture(scope="module")
def amqp_queue(make_queue):
    """Makes queue names for the module (`amqp_queue()`); each queue and its exchange are
    deleted at the end."""
    return lambda: make_queue("interop-amqp")


def amqp_client(task_queue, backend, **settings):
    """A Celery client on the test RabbitMQ sending to `task_queue`, results from `backend`."""
    return RABBITMQ.client(task_queue, backend, **settings)


def start_amqp_worker(task_queue, backend, *options, **kw):
    """`celeriac worker` on the test RabbitMQ, storing results in `backend`."""
    return start_celeriac(task_queue, *options, env_overrides=RABBITMQ.env(backend), **kw)


@pytest.fixture(scope="module", params=["redis", "rpc"])
def served(request, amqp_queue):
    """(client, worker) on one queue, with the Redis result backend or `rpc://`."""
    backend = REDIS_URL if request.param == "redis" else "rpc://"
    task_queue = amqp_queue()
    worker = start_amqp_worker(task_queue, backend)
    client = amqp_client(task_queue, backend)
    yield client, worker
    client.close()
    worker.stop()


@pytest.mark.parametrize("name", ["tasks.add", "rs.add"])
def test_delay_get_returns_the_sum(served, name):
    client, _ = served
    assert client.send_task(name, args=(2, 3)).get(timeout=TIMEOUT) == 5


def test_a_failing_task_reraises_value_error(served):
    client, _ = served
    result = client.send_task("tasks.fail", args=("it broke",))
    with pytest.raises(ValueError, match="it broke"):
        result.get(timeout=TIMEOUT)
    assert result.state == "FAILURE"
    assert "ValueError" in result.traceback


@pytest.mark.parametrize("serializer", ["json", "msgpack", "yaml"])
@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_every_serializer_and_compression_round_trips(served, serializer, compression):
    client, _ = served
    result = client.send_task(
        "tasks.echo", args=(1, "two", [3.5]), kwargs={"k": None},
        serializer=serializer, compression=compression,
    )
    assert result.get(timeout=TIMEOUT) == {"args": [1, "two", [3.5]], "kwargs": {"k": None}}


def test_a_message_sent_already_expired_is_revoked_without_running(served):
    # Celery sends it with the AMQP expiration 0: RabbitMQ hands it to a consumer that is
    # ready at once (ours has free prefetch) or drops it; the worker must then store REVOKED.
    client, worker = served
    result = client.send_task(
        "tasks.add", args=(1, 2), expires=datetime.now(timezone.utc) - timedelta(seconds=5)
    )
    with pytest.raises(TaskRevokedError):
        result.get(timeout=TIMEOUT)
    assert result.state == "REVOKED"
    assert result.id not in worker.task_ids("succeeded")


def test_an_unknown_task_is_not_registered(served):
    client, worker = served
    result = client.send_task("tasks.no_such_task", args=())
    with pytest.raises(NotRegistered):
        result.get(timeout=TIMEOUT)


def test_retries_are_republished_and_the_result_still_arrives(served):
    client, worker = served
    result = client.send_task("tasks.retry_until", args=(2,))
    assert result.get(timeout=TIMEOUT) == 2
    assert worker.task_ids("received").count(result.id) == 3, worker.output()


def test_custom_states_reach_the_client(served):
    client, _ = served
    seen = []
    result = client.send_task("tasks.progress", args=(3,))
    assert result.get(timeout=TIMEOUT, on_message=lambda meta: seen.append(meta["status"])) == 3
    # rpc:// delivers every state; the Redis backend publishes every state too.
    assert seen.count("PROGRESS") == 3, seen
    assert seen[-1] == "SUCCESS", seen


def test_the_worker_declares_celerys_entities_without_a_mismatch(served):
    client, worker = served
    task_queue = client.conf.task_default_queue
    with kombu.Connection(AMQP_URL) as connection:
        channel = connection.default_channel
        # Passive declarations fail (and close the channel) if the entity is missing.
        channel.exchange_declare(task_queue, "direct", passive=True)
        channel.queue_declare(task_queue, passive=True)
        # The full declaration a Celery worker would make is accepted: no 406.
        kombu.Queue(task_queue, kombu.Exchange(task_queue, "direct"), routing_key=task_queue)(
            channel
        ).declare()
    assert DECLARED_OTHERWISE not in worker.output()


def send_by_priority(client, task_queue, priorities):
    return {
        priority: client.send_task("tasks.echo", args=(priority,), queue=task_queue, priority=priority)
        for priority in priorities
    }


def assert_ran_highest_first(worker, results):
    for priority, result in results.items():
        assert result.get(timeout=TIMEOUT) == {"args": [priority], "kwargs": {}}
    expected = [results[p].id for p in sorted(results, reverse=True)]
    assert worker.task_ids("received") == expected, worker.output()


@pytest.mark.parametrize("worker_knows_max_priority", [True, False])
def test_queued_priorities_run_highest_first(amqp_queue, worker_knows_max_priority):
    task_queue = amqp_queue()
    client = amqp_client(task_queue, REDIS_URL, task_queue_max_priority=10)
    try:
        # The client declares the queue with x-max-priority 10 as it sends.
        results = send_by_priority(client, task_queue, (0, 5, 9))
        options = ["--prefetch-multiplier", "1"]
        if worker_knows_max_priority:
            options += ["--queue-max-priority", "10"]
        worker = start_amqp_worker(task_queue, REDIS_URL, *options, concurrency=1)
        try:
            assert_ran_highest_first(worker, results)
            # Without the setting, the worker's plain declaration is refused by RabbitMQ;
            # it says so and consumes the queue as it is.
            assert (DECLARED_OTHERWISE in worker.output()) != worker_knows_max_priority
        finally:
            worker.stop()
    finally:
        client.close()


def test_a_worker_started_first_declares_what_a_celery_client_declares(amqp_queue):
    task_queue = amqp_queue()
    worker = start_amqp_worker(task_queue, REDIS_URL, "--queue-max-priority", "10")
    client = amqp_client(task_queue, REDIS_URL, task_queue_max_priority=10)
    try:
        # The client's own declaration (x-max-priority 10) must match the worker's.
        assert client.send_task("tasks.add", args=(1, 2), queue=task_queue).get(timeout=TIMEOUT) == 3
        assert DECLARED_OTHERWISE not in worker.output()
    finally:
        client.close()
        worker.stop()


def test_a_task_waiting_for_its_countdown_leaves_the_prefetch_slot_free(amqp_queue):
    # One slot, prefetch 1: the held countdown task raises basic.qos to 2 while it waits,
    # as Celery does, so the task sent after it runs first.
    task_queue = amqp_queue()
    worker = start_amqp_worker(task_queue, REDIS_URL, "--prefetch-multiplier", "1", concurrency=1)
    client = amqp_client(task_queue, REDIS_URL)
    try:
        later = client.send_task("tasks.add", args=(1, 1), countdown=3)
        now = client.send_task("tasks.add", args=(2, 2))
        assert now.get(timeout=TIMEOUT) == 4
        assert later.state == "PENDING", "the countdown task has not run yet"
        assert later.get(timeout=TIMEOUT) == 2
        assert worker.wait_logged("succeeded", [now.id, later.id]) == [now.id, later.id], worker.output()
    finally:
        client.close()
        worker.stop()


def test_a_quorum_queue_declared_by_the_client_is_consumed(amqp_queue):
    # Celery switches to per-consumer QoS for quorum queues: RabbitMQ refuses a consumer
    # on a quorum queue while its channel has a global prefetch limit.
    task_queue = amqp_queue()
    queue = kombu.Queue(
        task_queue, kombu.Exchange(task_queue), task_queue, queue_arguments={"x-queue-type": "quorum"}
    )
    client = amqp_client(task_queue, REDIS_URL, task_queues=[queue])
    with client.connection_for_write() as connection:
        queue.bind(connection.default_channel).declare()
    worker = start_amqp_worker(task_queue, REDIS_URL)
    try:
        results = [client.send_task("tasks.add", args=(i, i)) for i in range(10)]
        assert [r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(10)]
    finally:
        client.close()
        worker.stop()
    assert "quorum" in worker.output()
