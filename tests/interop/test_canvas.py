"""Canvas with a real Celery 5.7 client against `celeriac worker` on Redis and on RabbitMQ
(results in Redis): chains, link callbacks, link_error errbacks, chain failure propagation,
groups, chords (one that fails, one shared with a Python worker), Celery's
map/starmap/chunks, and a four-stage pipeline with per-stage callbacks compared with what a
Python worker leaves.

Signatures the worker applies (callbacks, chain steps, errbacks, chord bodies) carry their
queue in their options: a worker, Python or celeriac, sends a signature without routing
options to Celery's default queue `celery`, which this session does not consume.
"""

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from celery import chain, chord, group
from celery.canvas import chunks, xmap, xstarmap
from celery.exceptions import ChordError
from celery.result import AsyncResult

from conftest import REDIS_URL, wait_until
from every_broker import on_every_broker  # noqa: F401  (the `broker` fixture: Redis, RabbitMQ)
from test_amqp import amqp_client, start_amqp_worker
from test_resilience import start_python_worker  # noqa: F401  (a fixture)

TIMEOUT = 30
META = "celery-task-meta-"
GROUP_META = "celery-taskset-meta-"


@pytest.fixture
def sig(app, task_queue):
    """`sig(name, *args, immutable=False, **options)`: a signature of `tasks.<name>` routed
    to the session queue."""

    def make(name, *args, immutable=False, **options):
        return app.signature(f"tasks.{name}", args=args, immutable=immutable, queue=task_queue, **options)

    return make


def meta(redis_client, task_id):
    raw = redis_client.get(META + task_id)
    assert raw is not None, f"no result stored for {task_id}"
    return json.loads(raw)


def wait_for_meta(redis_client, task_id, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while (raw := redis_client.get(META + task_id)) is None or json.loads(raw)["status"] not in (
        "SUCCESS", "FAILURE", "REVOKED"
    ):
        assert time.monotonic() < deadline, f"{task_id} did not finish"
        time.sleep(0.05)
    return json.loads(raw)


def children_of(redis_client, task_id):
    """The ids in a task's stored `children` (tasks, and the members of groups)."""
    ids = []
    for (child_id, _parent), members in meta(redis_client, task_id)["children"]:
        if members is None:
            ids.append(child_id)
        else:
            ids.extend(member_id for (member_id, _), _ in members)
    return ids


def results_with_parent(redis_client, parent_id, count, timeout=TIMEOUT):
    """The stored metas whose `parent_id` is `parent_id` (errbacks are not in the failed
    task's children: they are sent after its FAILURE is stored); waits for `count` of them."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for key in redis_client.scan_iter(match=META + "*", count=1000):
            raw = redis_client.get(key)
            if raw and f'"parent_id": "{parent_id}"' in raw.decode():
                doc = json.loads(raw)
                if doc["status"] in ("SUCCESS", "FAILURE"):
                    found.append(doc)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_chain_of_three_with_an_immutable_middle_step(app, celeriac_worker, sig, redis_client):
    result = chain(sig("add", 1, 1), sig("add", 5, 5, immutable=True), sig("add", 10)).apply_async()
    assert result.get(timeout=TIMEOUT) == 20
    second, first = result.parent, result.parent.parent
    assert first.get(timeout=TIMEOUT) == 2 and second.get(timeout=TIMEOUT) == 10
    assert meta(redis_client, first.id)["children"] == [[[second.id, None], None]]
    assert meta(redis_client, second.id)["parent_id"] == first.id
    assert meta(redis_client, result.id)["parent_id"] == second.id
    assert [r.state for r in (first, second, result)] == ["SUCCESS"] * 3


def test_a_link_callback_receives_the_result(app, celeriac_worker, sig, redis_client):
    result = sig("add", 1, 1).apply_async(link=sig("add", 10))
    assert result.get(timeout=TIMEOUT) == 2
    (callback,) = result.children
    assert callback.get(timeout=TIMEOUT) == 12
    assert meta(redis_client, callback.id)["parent_id"] == result.id


def test_two_link_callbacks_are_sent_as_one_group(app, celeriac_worker, sig, redis_client):
    result = sig("add", 1, 1).apply_async(link=[sig("add", 10), sig("mul", 10)])
    assert result.get(timeout=TIMEOUT) == 2
    (callbacks,) = result.children
    assert callbacks.get(timeout=TIMEOUT) == [12, 20]
    member = meta(redis_client, callbacks.results[0].id)
    assert member["group_id"] == callbacks.id and member["parent_id"] == result.id


def test_a_link_error_errback_receives_the_failed_task_id(app, celeriac_worker, sig, redis_client):
    failing = sig("fail", "boom").apply_async(link_error=sig("on_stage_error", "p-1", "train"))
    with pytest.raises(ValueError, match="boom"):
        failing.get(timeout=TIMEOUT)
    (errback,) = results_with_parent(redis_client, failing.id, 1)
    assert errback["status"] == "SUCCESS"
    assert errback["result"] == {"pipeline": "p-1", "stage": "train", "status": "failed",
                                 "failed_task": failing.id}
    assert errback["group_id"], "errbacks are sent as a group, as Celery sends them"


@pytest.mark.parametrize("worker_kind", ["celeriac", "python"])
def test_a_new_style_errback_is_called_inline_and_an_old_style_one_is_sent(
    app, broker, unique_queue, redis_client, start_celeriac_worker, start_python_worker,  # noqa: F811
    worker_kind,
):
    """`log_error(request, exc, traceback)` runs inside the worker where the task failed (its
    print is in that worker's log, it is never received as a message, nothing is stored);
    `on_stage_error.s(pipeline, stage)` leaves one free parameter and is sent, as Celery 5.7
    decides per errback."""
    if worker_kind == "celeriac":
        worker = start_celeriac_worker(unique_queue)
    else:
        worker = start_python_worker(unique_queue, broker.url, REDIS_URL)

    def s(name, *args):
        return app.signature(f"tasks.{name}", args=args, queue=unique_queue)

    failing = s("fail", "boom").apply_async(
        link_error=[s("log_error"), s("on_stage_error", "p-1", "train")])
    with pytest.raises(ValueError, match="boom"):
        failing.get(timeout=TIMEOUT)
    printed = (f"Task {failing.id} raised exception: ValueError('boom'); "
               "traceback ends with: ValueError: boom")
    wait_until(lambda: printed in worker.output(), f"the inline errback's line in:\n{worker.output()}")
    (errback,) = results_with_parent(redis_client, failing.id, 1)
    assert errback["result"]["failed_task"] == failing.id
    assert errback["status"] == "SUCCESS"
    assert "Task tasks.log_error[" not in worker.output(), "the new-style errback was sent as a message"


def test_an_unbound_rust_task_is_a_new_style_errback_too(app, celeriac_worker, task_queue):
    failing = app.signature("rs.fail", ("boom",), queue=task_queue).apply_async(
        link_error=app.signature("rs.log_error", queue=task_queue))
    with pytest.raises(ValueError, match="boom"):
        failing.get(timeout=TIMEOUT)
    printed = f'Task {failing.id} raised ValueError: ["boom"]; traceback ends with: '
    wait_until(lambda: printed in "".join(celeriac_worker), "the Rust inline errback's line")
    assert "Task rs.log_error[" not in "".join(celeriac_worker)


def test_a_failing_step_fails_every_later_step_of_its_chain(app, celeriac_worker, sig, redis_client):
    result = chain(sig("fail", "first"), sig("add", 1), sig("add", 2)).apply_async()
    with pytest.raises(ValueError, match="first"):
        result.get(timeout=TIMEOUT)
    first, second = result.parent.parent, result.parent
    failed = meta(redis_client, first.id)
    # get() raises as soon as the first step's FAILURE is stored (it follows parents); the
    # worker stores the later steps' FAILURE just after, as Celery's worker does.
    for later in (second, result):
        stored = wait_for_meta(redis_client, later.id)
        assert stored["status"] == "FAILURE"
        assert stored["result"] == failed["result"] == {
            "exc_type": "ValueError", "exc_message": ["first"], "exc_module": "builtins"}


def test_a_group_stores_its_id_in_every_member(app, celeriac_worker, sig, redis_client):
    result = group(sig("add", i, i) for i in range(10)).apply_async()
    assert result.get(timeout=TIMEOUT) == [2 * i for i in range(10)]
    for member in result.results:
        assert meta(redis_client, member.id)["group_id"] == result.id


def test_a_chord_of_ten_joins_in_order_and_cleans_up(app, celeriac_worker, sig, redis_client):
    result = chord((sig("add", i, i) for i in range(10)), sig("echo")).apply_async()
    assert result.get(timeout=TIMEOUT) == {"args": [[2 * i for i in range(10)]], "kwargs": {}}
    group_id = result.parent.id
    prefix = GROUP_META + group_id
    # Celery's order: the body is published, then the chord's state is dropped; the body
    # can finish (on RabbitMQ it often does) before that.
    wait_until(lambda: redis_client.get(prefix + ".c") == b"done", "the chord to be marked done",
               timeout=5)
    assert not any(redis_client.exists(prefix + s) for s in (".j", ".t", ".s", ".d"))
    assert meta(redis_client, result.id)["group_id"] == group_id


def test_a_chain_through_a_chord(app, celeriac_worker, sig):
    header = [sig("add", 1), sig("add", 2)]
    result = chain(sig("add", 1, 1), chord(header, sig("xsum")), sig("add", 10)).apply_async()
    assert result.get(timeout=TIMEOUT) == 17


def test_a_chord_with_a_failing_header_fails_its_body_and_calls_its_errbacks(
    app, celeriac_worker, sig, redis_client
):
    body = sig("xsum", link_error=sig("on_stage_error", "p-chord", "body"))
    result = chord([sig("add", 1, 1), sig("fail", "hdr")], body).apply_async()
    with pytest.raises(ValueError, match="hdr"):
        result.get(timeout=TIMEOUT)
    with pytest.raises(ChordError) as raised:
        result.get(timeout=TIMEOUT, follow_parents=False)
    failed_id = result.parent.results[1].id
    assert str(raised.value).startswith("Dependency ") and failed_id in str(raised.value)
    assert "ValueError('hdr')" in str(raised.value)
    assert isinstance(AsyncResult(result.id, app=app).result, ChordError)
    (errback,) = results_with_parent(redis_client, result.id, 1)
    assert errback["result"]["failed_task"] == result.id


def test_a_chord_error_calls_the_body_s_new_style_errback_inline(app, celeriac_worker, sig):
    body = sig("xsum", link_error=sig("log_error"))
    result = chord([sig("add", 1, 1), sig("fail", "hdr")], body).apply_async()
    with pytest.raises(ValueError, match="hdr"):
        result.get(timeout=TIMEOUT)
    failed_id = result.parent.results[1].id
    # Celery passes the chord error with no traceback, and a request made from the body.
    printed = (f"Task {result.id} raised exception: ChordError(\"Dependency {failed_id} raised "
               "ValueError('hdr')\"); traceback ends with: no traceback")
    wait_until(lambda: printed in "".join(celeriac_worker), "the inline errback's line")


def test_map_starmap_and_chunks(app, celeriac_worker):
    add, xsum = app.signature("tasks.add"), app.signature("tasks.xsum")
    assert xstarmap(add, zip(range(5), range(5)), app=app).apply_async().get(timeout=TIMEOUT) == [0, 2, 4, 6, 8]
    assert xmap(xsum, [[1, 2], [3, 4]], app=app).apply_async().get(timeout=TIMEOUT) == [3, 7]
    chunked = chunks(add, zip(range(10), range(10)), 2, app=app).group().apply_async()
    assert chunked.get(timeout=TIMEOUT) == [[0, 2], [4, 6], [8, 10], [12, 14], [16, 18]]


def test_celery_accumulate_returns_its_arguments(app, celeriac_worker):
    assert app.send_task("celery.accumulate", args=(1, 2, 3)).get(timeout=TIMEOUT) == [1, 2, 3]
    assert app.send_task("celery.accumulate", args=(1, 2, 3), kwargs={"index": 1}).get(timeout=TIMEOUT) == 2


def test_a_chord_shared_by_a_python_and_a_celeriac_worker_completes_once_in_order(
    app, broker, unique_queue, start_celeriac_worker, start_python_worker  # noqa: F811
):
    celeriac = start_celeriac_worker(unique_queue, concurrency=2)
    python = start_python_worker(unique_queue, broker.url, REDIS_URL)
    header = [app.signature("tasks.add", (i, i), queue=unique_queue) for i in range(60)]
    body = app.signature("tasks.echo", queue=unique_queue)
    result = chord(header, body).apply_async()
    assert result.get(timeout=60) == {"args": [[2 * i for i in range(60)]], "kwargs": {}}
    header_ids = [r.id for r in result.parent.results]
    by_celeriac = set(celeriac.task_ids("succeeded"))
    by_python = set(python.task_ids("succeeded"))
    assert by_celeriac & set(header_ids) and by_python & set(header_ids), "both ran header tasks"
    time.sleep(1)  # a second body would have been sent by now
    runs = celeriac.task_ids("succeeded").count(result.id) + python.task_ids("succeeded").count(result.id)
    assert runs == 1


# The pipeline of the "Done when": run once against celeriac and once against a
# Python worker, and compare what each leaves.

STAGES = ("preprocess", "train", "evaluate", "cleanup")


def run_pipeline(app, task_queue, redis_client, train_fails):
    pipeline_id = f"pipe-{uuid.uuid4().hex[:8]}"

    def stage(name, *args):
        return app.signature(
            f"tasks.{name}", args=(pipeline_id, *args), immutable=True, queue=task_queue,
            link=app.signature("tasks.on_stage_success", (pipeline_id, name), queue=task_queue),
            link_error=app.signature("tasks.on_stage_error", (pipeline_id, name), queue=task_queue),
        )

    train_args = (True,) if train_fails else ()
    result = chain(stage("preprocess"), stage("train", *train_args), stage("evaluate"),
                   stage("cleanup")).apply_async()
    if train_fails:
        with pytest.raises(RuntimeError):
            result.get(timeout=TIMEOUT)
    else:
        result.get(timeout=TIMEOUT)
    ids, step = [], result
    while step is not None:
        ids.insert(0, step.id)
        step = step.parent
    outcome, failed_before = {}, False
    for name, task_id in zip(STAGES, ids):
        stored = wait_for_meta(redis_client, task_id)
        callbacks = []
        for child in children_of(redis_client, task_id):
            if child not in ids:
                callbacks.append(wait_for_meta(redis_client, child)["result"])
        if stored["status"] == "FAILURE":
            # The step that failed sends its errback, which a busy machine may run late; the
            # steps after it only get its FAILURE, so for them 5 s without one must do.
            wait = 5 if failed_before else TIMEOUT
            failed_before = True
            callbacks += [doc["result"] for doc in results_with_parent(redis_client, task_id, 1, timeout=wait)]
        outcome[name] = {"status": stored["status"], "result": stored["result"], "callbacks": callbacks}
    # Ids differ between runs: name them by stage.
    text = json.dumps(outcome)
    for name, task_id in zip(STAGES, ids):
        text = text.replace(task_id, f"<{name} id>")
    return json.loads(text.replace(pipeline_id, "<pipeline>"))


EXPECTED_SUCCESS = {
    "preprocess": {"status": "SUCCESS", "result": {"pipeline": "<pipeline>", "rows": 100},
                   "callbacks": [{"pipeline": "<pipeline>", "stage": "preprocess", "status": "ok",
                                  "result": {"pipeline": "<pipeline>", "rows": 100}}]},
    "train": {"status": "SUCCESS", "result": {"pipeline": "<pipeline>", "accuracy": 0.9},
              "callbacks": [{"pipeline": "<pipeline>", "stage": "train", "status": "ok",
                             "result": {"pipeline": "<pipeline>", "accuracy": 0.9}}]},
    "evaluate": {"status": "SUCCESS", "result": {"pipeline": "<pipeline>", "score": 0.875},
                 "callbacks": [{"pipeline": "<pipeline>", "stage": "evaluate", "status": "ok",
                                "result": {"pipeline": "<pipeline>", "score": 0.875}}]},
    "cleanup": {"status": "SUCCESS", "result": {"pipeline": "<pipeline>", "cleaned": True},
                "callbacks": [{"pipeline": "<pipeline>", "stage": "cleanup", "status": "ok",
                               "result": {"pipeline": "<pipeline>", "cleaned": True}}]},
}

TRAIN_ERROR = {"exc_type": "RuntimeError", "exc_message": ["training of <pipeline> diverged"],
               "exc_module": "builtins"}

EXPECTED_TRAIN_FAILS = {
    "preprocess": EXPECTED_SUCCESS["preprocess"],
    "train": {"status": "FAILURE", "result": TRAIN_ERROR,
              "callbacks": [{"pipeline": "<pipeline>", "stage": "train", "status": "failed",
                             "failed_task": "<train id>"}]},
    "evaluate": {"status": "FAILURE", "result": TRAIN_ERROR, "callbacks": []},
    "cleanup": {"status": "FAILURE", "result": TRAIN_ERROR, "callbacks": []},
}


@pytest.mark.parametrize("train_fails", [False, True], ids=["all-succeed", "train-fails"])
def test_the_training_pipeline_leaves_what_a_python_worker_leaves(
    app, broker, unique_queue, redis_client, start_celeriac_worker, start_python_worker,  # noqa: F811
    train_fails,
):
    expected = EXPECTED_TRAIN_FAILS if train_fails else EXPECTED_SUCCESS
    celeriac = start_celeriac_worker(unique_queue)
    assert run_pipeline(app, unique_queue, redis_client, train_fails) == expected
    celeriac.stop()
    start_python_worker(unique_queue, broker.url, REDIS_URL)
    assert run_pipeline(app, unique_queue, redis_client, train_fails) == expected


def test_an_expired_header_task_fails_its_chord(app, celeriac_worker, sig):
    past = datetime.now(timezone.utc) - timedelta(seconds=10)
    result = chord([sig("add", 1, 1), sig("add", 2, 2, expires=past)], sig("xsum")).apply_async()
    with pytest.raises(ChordError) as raised:
        result.get(timeout=TIMEOUT, follow_parents=False)
    expired_id = result.parent.results[1].id
    assert f"Dependency {expired_id} raised TaskRevokedError('expired')" == str(raised.value)


# Nested groups in a chord header, as Celery 5.7 joins them: the client flattens a group in
# the header into the header itself (its members in reverse order: `_freeze_unroll` pushes
# them with `extendleft`); a chain ending in a group keeps its place, and Celery's client
# saves the header's GroupResult so the join hands that group's results on as one list.


def nested_header_outcomes(app, task_queue):
    """What the body of each nested-header chord receives (or the ChordError it gets)."""

    def s(name, *args, **options):
        return app.signature(f"tasks.{name}", args=args, queue=task_queue, **options)

    chords = {
        "group in the header": chord([group(s("add", 1, 1), s("add", 2, 2)), s("add", 3, 3)], s("echo")),
        "chain ending in a group": chord(
            [chain(s("add", 1, 1), group(s("add", 10), s("add", 20))), s("add", 3, 3)], s("echo")),
        "failure inside the nested group": chord(
            [chain(s("add", 1, 1), group(s("fail", "deep", immutable=True), s("add", 20))), s("add", 3, 3)],
            s("echo")),
        "chord applied by the worker": chain(
            s("add", 1, 1), chord([group(s("add", 10), s("add", 20)), s("add", 30)], s("echo"))),
    }
    outcomes = {}
    for name, canvas in chords.items():
        result = canvas.apply_async()
        try:
            outcomes[name] = result.get(timeout=TIMEOUT, follow_parents=False)["args"]
        except ChordError as error:
            outcomes[name] = str(error)
    return outcomes


NESTED_HEADER_OUTCOMES = {
    "group in the header": [[4, 2, 6]],
    "chain ending in a group": [[[12, 22], 6]],
    "failure inside the nested group": "Join error: ValueError('deep')",
    "chord applied by the worker": [[22, 12, 32]],
}


def test_nested_groups_in_a_chord_header_join_as_a_python_worker_joins_them(
    app, broker, unique_queue, start_celeriac_worker, start_python_worker,  # noqa: F811
):
    celeriac = start_celeriac_worker(unique_queue)
    assert nested_header_outcomes(app, unique_queue) == NESTED_HEADER_OUTCOMES
    celeriac.stop()
    start_python_worker(unique_queue, broker.url, REDIS_URL)
    assert nested_header_outcomes(app, unique_queue) == NESTED_HEADER_OUTCOMES


# `result_backend_transport_options={"result_chord_ordered": False}`: Celery's Redis backend
# then keeps a chord's header results in a list, in arrival order, and a worker configured
# so pushes to it (RPUSH) even where another worker made a sorted set: every worker sharing
# chords needs the same setting, which celeriac takes as `--result-chord-ordered false`.

UNORDERED = {"result_backend_transport_options": {"result_chord_ordered": False}}


def test_an_unordered_chord_shared_by_a_python_and_a_celeriac_worker_completes_once(
    make_client, broker, unique_queue, redis_client, start_celeriac_worker, start_python_worker,  # noqa: F811
):
    celeriac = start_celeriac_worker(unique_queue, "--result-chord-ordered", "false", concurrency=2)
    python = start_python_worker(unique_queue, broker.url, REDIS_URL, **UNORDERED)
    client = make_client(task_default_queue=unique_queue, **UNORDERED)
    header = [client.signature("tasks.add", (i, i), queue=unique_queue) for i in range(60)]
    # The last header task waits for its countdown, so the chord's state can be looked at.
    header.append(client.signature("tasks.add", (60, 60), queue=unique_queue, countdown=5))
    result = chord(header, client.signature("tasks.echo", queue=unique_queue)).apply_async()
    joined = f"{GROUP_META}{result.parent.id}.j"
    wait_until(lambda: redis_client.type(joined) == b"list", "the header results to be kept in a list")
    (results,) = result.get(timeout=60)["args"]
    assert sorted(results) == [2 * i for i in range(61)]
    header_ids = {r.id for r in result.parent.results}
    assert set(celeriac.task_ids("succeeded")) & header_ids, "celeriac ran header tasks"
    assert set(python.task_ids("succeeded")) & header_ids, "the Python worker ran header tasks"
    time.sleep(1)  # a second body would have been sent by now
    runs = celeriac.task_ids("succeeded").count(result.id) + python.task_ids("succeeded").count(result.id)
    assert runs == 1
    assert "WRONGTYPE" not in python.output() + celeriac.output()


def test_a_chain_with_a_link_on_rabbitmq_with_rpc_results(rabbitmq_queue):
    # rpc:// has no chord join, but chains and links need none: the worker publishes each
    # step and callback over AMQP and replies to the client's queue.
    task_queue = rabbitmq_queue
    worker = start_amqp_worker(task_queue, "rpc://")
    client = amqp_client(task_queue, "rpc://")
    try:
        def s(name, *args, immutable=False, **options):
            return client.signature(f"tasks.{name}", args=args, immutable=immutable, queue=task_queue,
                                    **options)

        result = chain(s("add", 1, 1, link=s("mul", 100)), s("add", 5, 5, immutable=True),
                       s("add", 10)).apply_async()
        assert result.get(timeout=TIMEOUT) == 20
        with pytest.raises(ValueError, match="first"):
            chain(s("fail", "first"), s("add", 1)).apply_async().get(timeout=TIMEOUT)
    finally:
        client.close()
        worker.stop()
