"""Runs the SDK and the ``celery`` shim under the host's CPython, with the component's
bindings (``wit_world``, ``componentize_py_types``) replaced by stubs that record host
calls. Covers examples/python/tasks.py and the Celery semantics the SDK implements.

Run: python3 -m unittest discover guest-sdk/python/tests
"""

import enum
import json
import math
import os
import sys
import tempfile
import types
import unittest
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
SDK_DIR = os.path.dirname(HERE)
EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(SDK_DIR)), "examples", "python")


# -- stub bindings, mirroring `componentize-py -d wit -w task bindings` --------------------
def _install_stub_bindings():
    cpt = types.ModuleType("componentize_py_types")

    @dataclass(frozen=True)
    class Err(Exception):
        value: object

    cpt.Err = Err
    sys.modules["componentize_py_types"] = cpt

    t = types.ModuleType("wit_world.imports.types")

    @dataclass
    class TaskOptions:
        max_retries: Optional[int]
        retry_forever: bool
        default_retry_delay: Optional[float]
        rate_limit: Optional[str]
        time_limit: Optional[float]
        soft_time_limit: Optional[float]
        acks_late: Optional[bool]
        ignore_result: Optional[bool]
        track_started: Optional[bool]
        autoretry_for: List[str]
        retry_backoff: Optional[int]
        retry_backoff_max: Optional[int]
        retry_jitter: Optional[bool]

    @dataclass
    class Parameters:
        positional: List[str]
        positional_only: int
        keyword_only: List[str]
        var_positional: bool
        var_keyword: bool

    @dataclass
    class TaskInfo:
        name: str
        options: TaskOptions
        errback_parameters: Optional[Parameters]

    @dataclass
    class DeliveryInfo:
        exchange: str
        routing_key: str
        priority: Optional[int]
        redelivered: bool

    @dataclass
    class Request:
        id: str
        task: str
        retries: int
        root_id: Optional[str]
        parent_id: Optional[str]
        group: Optional[str]
        group_index: Optional[int]
        eta: Optional[str]
        expires: Optional[str]
        hostname: str
        origin: Optional[str]
        correlation_id: Optional[str]
        reply_to: Optional[str]
        delivery_info: DeliveryInfo
        is_eager: bool
        inline_errback: bool

    @dataclass
    class Exception_:
        exc_type: str
        exc_module: str
        exc_args: str
        message: str
        traceback: Optional[str]

    @dataclass
    class RetryRequest:
        countdown: Optional[float]
        eta: Optional[str]
        max_retries: Optional[int]
        exc: Optional[Exception_]

    @dataclass
    class RejectRequest:
        reason: Optional[str]
        requeue: bool

    @dataclass
    class TaskError_Raised:
        value: Exception_

    @dataclass
    class TaskError_Retry:
        value: RetryRequest

    @dataclass
    class TaskError_Reject:
        value: RejectRequest

    @dataclass
    class TaskError_Ignore:
        pass

    class LogLevel(enum.Enum):
        DEBUG = 0
        INFO = 1
        WARNING = 2
        ERROR = 3
        CRITICAL = 4

    for cls in (TaskOptions, Parameters, TaskInfo, DeliveryInfo, Request, RetryRequest, RejectRequest,
                TaskError_Raised, TaskError_Retry, TaskError_Reject, TaskError_Ignore, LogLevel):
        setattr(t, cls.__name__, cls)
    t.Exception = Exception_

    ctx = types.ModuleType("wit_world.imports.context")
    ctx.calls = []
    ctx.time_left = None
    ctx.log = lambda level, message: ctx.calls.append(("log", level, message))
    ctx.update_state = lambda state, meta: ctx.calls.append(("update_state", state, meta))
    ctx.time_left_ms = lambda: ctx.time_left

    imports = types.ModuleType("wit_world.imports")
    imports.types = t
    imports.context = ctx
    world = types.ModuleType("wit_world")

    class WitWorld:  # the generated Protocol
        pass

    world.WitWorld = WitWorld
    world.imports = imports
    sys.modules.update({
        "wit_world": world,
        "wit_world.imports": imports,
        "wit_world.imports.types": t,
        "wit_world.imports.context": ctx,
    })
    return t, ctx


wit, host_ctx = _install_stub_bindings()
for path in (EXAMPLES_DIR, SDK_DIR):
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
for name in [m for m in sys.modules if m == "celery" or m.startswith("celery.")]:
    del sys.modules[name]  # a real Celery imported earlier must not be used

import celery  # noqa: E402
from celery import Celery, Task, shared_task, states  # noqa: E402
from celery.exceptions import (  # noqa: E402,F401  (the imports task modules use)
    Ignore, MaxRetriesExceededError, Reject, Retry, SoftTimeLimitExceeded,
)
from celery.utils.log import get_task_logger  # noqa: E402

import tasks  # noqa: E402  (examples/python/tasks.py)
import celeriac_sdk  # noqa: E402
from celeriac_sdk import codec  # noqa: E402
from celeriac_sdk.world import WitWorld  # noqa: E402
from componentize_py_types import Err  # noqa: E402

assert os.path.dirname(celery.__file__) == os.path.join(SDK_DIR, "celery"), celery.__file__


# -- task definitions exercising the SDK (names: test_sdk.<function>) ----------------------
class Boom(Exception):
    class Inner(Exception):
        pass


class Flaky(Exception):
    pass


class Unserializable:
    def __repr__(self):
        return "<Unserializable>"


calls = {"on_failure": [], "after_return": [], "on_success": []}


class Hooked(Task):
    max_retries = 7
    acks_late = True

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        calls["on_failure"].append((type(exc).__name__, task_id, tuple(args), einfo.type.__name__))

    def on_success(self, retval, task_id, args, kwargs):
        calls["on_success"].append((retval, task_id))

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        calls["after_return"].append(status)


app2 = Celery("other")
app2.conf.update(task_track_started=True)
log = get_task_logger(__name__)


@app2.task(bind=True, base=Hooked)
def hooked(self, ok):
    if not ok:
        raise KeyError("k")
    return "fine"


class StartsFirst(Task):
    def before_start(self, task_id, args, kwargs):
        self.seen = [task_id, list(args), kwargs]


@app2.task(bind=True, base=StartsFirst)
def started(self, x):
    return self.seen


@app2.task(bind=True)
def whoami(self):
    r = self.request
    return {
        "id": r.id, "task": r.task, "retries": r.retries, "root_id": r.root_id,
        "parent_id": r.parent_id, "group": r.group, "group_index": r.group_index,
        "eta": r.eta, "expires": r.expires, "hostname": r.hostname, "origin": r.origin,
        "correlation_id": r.correlation_id, "reply_to": r.reply_to,
        "delivery_info": r.delivery_info, "is_eager": r.is_eager, "args": r.args,
        "kwargs": r.kwargs, "called_directly": r.called_directly, "name": self.name,
    }


@app2.task(name="custom.name", max_retries=None, default_retry_delay=5, rate_limit="10/s",
           time_limit=30, soft_time_limit=20, ignore_result=True)
def named():
    return None


@shared_task
def shared(x):
    return x * 10


@shared_task(bind=True, autoretry_for=(Flaky,), retry_backoff=True, retry_jitter=False,
             retry_kwargs={"max_retries": 5})
def flaky(self):
    raise Flaky("try again")


@app2.task(autoretry_for=(Flaky,), retry_backoff=2, retry_backoff_max=5, retry_jitter=True)
def jittery():
    raise Flaky("jitter")


@app2.task(autoretry_for=(LookupError,), dont_autoretry_for=(KeyError,))
def picky(which):
    raise {"key": KeyError, "index": IndexError}[which](which)


@app2.task
def shaped(a, b, /, c, *, d=None):
    return [a, b, c, d]


@app2.task
def ignore_me():
    raise Ignore()


@app2.task
def reject_me(requeue):
    raise Reject("bad message", requeue=requeue)


@app2.task
def retry_at():
    raise Retry(exc=Flaky("x"), when=datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc))


@app2.task(bind=True)
def retry_override(self):
    raise self.retry(max_retries=10, eta=datetime(2030, 1, 1, tzinfo=timezone.utc))


@app2.task(bind=True)
def retry_exc(self):
    try:
        raise Flaky("root cause")
    except Flaky as exc:
        raise self.retry(exc=exc, countdown=3)


@app2.task
def nested_error():
    raise Boom.Inner("deep", 42, Unserializable(), datetime(2024, 1, 2, tzinfo=timezone.utc))


@app2.task
def returns_set():
    return {1, 2}


@app2.task
def returns_types():
    return {
        "dt": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        "d": date(2024, 1, 2), "t": time(3, 4, 5), "dec": Decimal("1.10"),
        "u": uuid.UUID("12345678123456781234567812345678"), "b": b"abc", "raw": b"\xff\x00",
        "tuple": (1, 2), "nan": float("nan"),
    }


@app2.task
def printer():
    print("hello from print")
    log.warning("warned %s", "here")
    log.debug("debugging")
    return True


@app2.task
def delayer():
    return tasks.add.delay(1, 2)


@app2.task
def calls_bound_directly():
    # A bound task called directly: called_directly=True and retry re-raises.
    return tasks.retry_until(0)


@app2.task
def time_check():
    return celeriac_sdk.time_left()


@app2.task
def soft_limit():
    celeriac_sdk.check_soft_time_limit()
    return "not reached"


# -- helpers ---------------------------------------------------------------------------------
def request(task, retries=0, **fields):
    values = dict(
        id="T-1", task=task, retries=retries, root_id="R-1", parent_id=None, group=None,
        group_index=None, eta=None, expires=None, hostname="celery@test", origin="gen1@client",
        correlation_id="T-1", reply_to="reply-q",
        delivery_info=wit.DeliveryInfo("celery", "celery", None, False), is_eager=False,
        inline_errback=False,
    )
    values.update(fields)
    return wit.Request(**values)


def run(task, args=(), kwargs=None, raw_args=None, **req):
    """Runs a task through WitWorld.run; returns ("ok", value) or ("err", task_error)."""
    host_ctx.calls.clear()
    args_json = raw_args if raw_args is not None else json.dumps(list(args))
    try:
        out = WitWorld().run(request(task, **req), args_json, json.dumps(kwargs or {}))
    except Err as err:
        return "err", err.value
    return "ok", codec.loads(out)


class ExampleTasks(unittest.TestCase):
    def test_registered_names(self):
        infos = {i.name: i for i in WitWorld().tasks()}
        for name in ("add", "mul", "xsum", "echo", "fail", "sleep", "spin", "hog",
                     "retry_until", "progress", "read_file"):
            self.assertIn("tasks." + name, infos)
        opts = infos["tasks.add"].options
        self.assertEqual(opts, wit.TaskOptions(None, False, None, None, None, None, None, None,
                                               None, [], None, None, None))

    def test_errback_parameters(self):
        infos = {i.name: i for i in WitWorld().tasks()}
        self.assertEqual(infos["tasks.log_error"].errback_parameters,
                         wit.Parameters(["request", "exc", "traceback"], 0, [], False, False))
        self.assertEqual(infos["tasks.echo"].errback_parameters,
                         wit.Parameters([], 0, [], True, True))
        self.assertEqual(infos["test_sdk.shaped"].errback_parameters,
                         wit.Parameters(["a", "b", "c"], 2, ["d"], False, False))
        # Bound tasks are never called inline (Celery's __header__ is a partial for them).
        self.assertIsNone(infos["tasks.retry_until"].errback_parameters)

    def test_inline_errback_call(self):
        failed = {"id": "T-9", "task": "tasks.fail", "args": ["boom"], "kwargs": {}}
        exc = {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}
        traceback = "Traceback (most recent call last):\n  ...\nValueError: boom\n"
        self.assertEqual(
            run("tasks.log_error", [failed, exc, traceback], inline_errback=True), ("ok", None))
        self.assertEqual(host_ctx.calls, [(
            "log", wit.LogLevel.WARNING,
            "Task T-9 raised exception: ValueError('boom'); traceback ends with: ValueError: boom",
        )])
        # Without the flag it is an ordinary call whose first argument is a plain dict.
        state, error = run("tasks.log_error", [failed, exc, traceback])
        self.assertEqual(state, "err")
        self.assertEqual(error.value.exc_type, "AttributeError")

    def test_inline_errback_exceptions_are_rebuilt(self):
        from celeriac_sdk.errors import exception_from_dict

        known = exception_from_dict({"exc_type": "KeyError", "exc_message": ["k"], "exc_module": "builtins"})
        self.assertIs(type(known), KeyError)
        self.assertEqual(known.args, ("k",))
        from celery.exceptions import ChordError

        chord = exception_from_dict({"exc_type": "ChordError", "exc_message": ["Dependency x"],
                                     "exc_module": "celery.exceptions"})
        self.assertIs(type(chord), ChordError)
        stand_in = exception_from_dict({"exc_type": "Gone", "exc_message": [1, 2], "exc_module": "app.errors"})
        self.assertEqual((type(stand_in).__name__, type(stand_in).__module__, stand_in.args),
                         ("Gone", "app.errors", (1, 2)))
        self.assertIsInstance(stand_in, Exception)

    def test_add_mul_xsum(self):
        self.assertEqual(run("tasks.add", [2, 3]), ("ok", 5))
        self.assertEqual(run("tasks.mul", [4, 5]), ("ok", 20))
        self.assertEqual(run("tasks.xsum", [[1, 2, 3.5]]), ("ok", 6.5))
        self.assertEqual(run("tasks.add", kwargs={"x": 2**70, "y": 1}), ("ok", 2**70 + 1))

    def test_echo(self):
        self.assertEqual(run("tasks.echo", [1, "a"], {"k": [None]}),
                         ("ok", {"args": [1, "a"], "kwargs": {"k": [None]}}))

    def test_fail(self):
        kind, err = run("tasks.fail", ["msg"])
        self.assertEqual(kind, "err")
        self.assertIsInstance(err, wit.TaskError_Raised)
        exc = err.value
        self.assertEqual((exc.exc_type, exc.exc_module, exc.exc_args, exc.message),
                         ("ValueError", "builtins", '["msg"]', "msg"))
        self.assertTrue(exc.traceback.startswith("Traceback (most recent call last):"))
        self.assertIn("tasks.py", exc.traceback)
        self.assertIn("raise ValueError(message)", exc.traceback)
        self.assertTrue(exc.traceback.endswith("ValueError: msg\n"))
        self.assertNotIn("celeriac_sdk", exc.traceback)

    def test_sleep_hog(self):
        self.assertEqual(run("tasks.sleep", [0.01]), ("ok", 0.01))
        self.assertEqual(run("tasks.hog", [2]), ("ok", 2))

    def test_retry_until(self):
        kind, err = run("tasks.retry_until", [2], retries=0)
        self.assertEqual(kind, "err")
        self.assertEqual(err, wit.TaskError_Retry(wit.RetryRequest(0.1, None, None, None)))
        self.assertIn(("log", wit.LogLevel.INFO, "retry 1 of 2"), host_ctx.calls)
        self.assertEqual(run("tasks.retry_until", [2], retries=2), ("ok", 2))
        # max_retries defaults to 3: the fourth retry is refused.
        kind, err = run("tasks.retry_until", [5], retries=3)
        self.assertIsInstance(err, wit.TaskError_Raised)
        self.assertEqual((err.value.exc_type, err.value.exc_module),
                         ("MaxRetriesExceededError", "celery.exceptions"))
        self.assertEqual(err.value.message, "Can't retry tasks.retry_until[T-1] args:(5,) kwargs:{}")

    def test_progress(self):
        self.assertEqual(run("tasks.progress", [3]), ("ok", 3))
        updates = [c for c in host_ctx.calls if c[0] == "update_state"]
        self.assertEqual(updates, [
            ("update_state", "PROGRESS", '{"current": %d, "total": 3}' % i) for i in range(3)
        ])

    def test_read_file(self):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("contents\n")
        try:
            self.assertEqual(run("tasks.read_file", [f.name]), ("ok", "contents\n"))
        finally:
            os.unlink(f.name)
        kind, err = run("tasks.read_file", ["/nonexistent/x"])
        self.assertEqual((err.value.exc_type, err.value.exc_module),
                         ("FileNotFoundError", "builtins"))
        self.assertEqual(json.loads(err.value.exc_args),
                         [2, "No such file or directory"])

    def test_direct_calls(self):
        self.assertEqual(tasks.add(2, 3), 5)
        self.assertEqual(tasks.retry_until(0), 0)
        with self.assertRaises(Retry):  # called directly, Celery raises Retry
            tasks.retry_until(1)
        with self.assertRaises(NotImplementedError) as cm:
            tasks.add.delay(1, 2)
        self.assertIn("no broker", str(cm.exception))
        with self.assertRaises(NotImplementedError):
            tasks.add.apply_async((1, 2))
        tasks.progress(2)  # update_state without a worker request: ignored
        self.assertEqual(tasks.add.s(1, 2)(), 3)
        self.assertEqual(tasks.add.s(2)(5), 7)


class Semantics(unittest.TestCase):
    def test_unknown_task(self):
        kind, err = run("nope.nothing")
        self.assertEqual((err.value.exc_type, err.value.exc_module, err.value.exc_args),
                         ("NotRegistered", "celery.exceptions", '["nope.nothing"]'))

    def test_bad_arguments(self):
        kind, err = run("tasks.add", raw_args='{"x": 1}')
        self.assertEqual((err.value.exc_type, err.value.exc_module),
                         ("DecodeError", "kombu.exceptions"))
        kind, err = run("tasks.add", [1])
        self.assertEqual(err.value.exc_type, "TypeError")

    def test_request_fields(self):
        kind, value = run("test_sdk.whoami", [], {}, retries=2, group="G", group_index=3,
                          eta="2030-01-01T00:00:00+00:00", is_eager=False,
                          delivery_info=wit.DeliveryInfo("ex", "rk", 5, True))
        self.assertEqual(value, {
            "id": "T-1", "task": "test_sdk.whoami", "retries": 2, "root_id": "R-1",
            "parent_id": None, "group": "G", "group_index": 3,
            "eta": "2030-01-01T00:00:00+00:00", "expires": None, "hostname": "celery@test",
            "origin": "gen1@client", "correlation_id": "T-1", "reply_to": "reply-q",
            "delivery_info": {"exchange": "ex", "routing_key": "rk", "priority": 5,
                              "redelivered": True},
            "is_eager": False, "args": [], "kwargs": {}, "called_directly": False,
            "name": "test_sdk.whoami",
        })
        self.assertTrue(tasks.add.request.called_directly)  # nothing left on the stack

    def test_options(self):
        infos = {i.name: i.options for i in WitWorld().tasks()}
        self.assertIn("test_sdk.shared", infos)
        named = infos["custom.name"]
        self.assertEqual((named.max_retries, named.retry_forever, named.default_retry_delay,
                          named.rate_limit, named.time_limit, named.soft_time_limit,
                          named.ignore_result),
                         (None, True, 5.0, "10/s", 30.0, 20.0, True))
        self.assertEqual(named.track_started, True)  # app2.conf.task_track_started
        hooked = infos["test_sdk.hooked"]
        self.assertEqual((hooked.max_retries, hooked.retry_forever, hooked.acks_late),
                         (7, False, True))
        flaky = infos["test_sdk.flaky"]
        self.assertEqual((flaky.autoretry_for, flaky.retry_backoff, flaky.retry_jitter,
                          flaky.retry_backoff_max),
                         (["test_sdk.Flaky"], 1, False, None))
        jittery = infos["test_sdk.jittery"]
        self.assertEqual((jittery.retry_backoff, jittery.retry_backoff_max), (2, 5))
        self.assertEqual(infos["test_sdk.picky"].autoretry_for, ["LookupError"])
        # shared tasks follow the current app (app2: task_track_started=True).
        self.assertEqual(infos["test_sdk.shared"].track_started, True)
        self.assertEqual(infos["tasks.add"].track_started, None)

    def test_hooks(self):
        calls["on_failure"].clear()
        calls["after_return"].clear()
        self.assertEqual(run("test_sdk.hooked", [True]), ("ok", "fine"))
        kind, err = run("test_sdk.hooked", [False])
        self.assertEqual((err.value.exc_type, err.value.exc_args, err.value.message),
                         ("KeyError", '["k"]', "'k'"))
        self.assertEqual(calls["on_failure"], [("KeyError", "T-1", (False,), "KeyError")])
        self.assertEqual(calls["after_return"], [states.SUCCESS, states.FAILURE])
        self.assertEqual(calls["on_success"][-1], ("fine", "T-1"))

    def test_signals(self):
        from celery import signals
        sent = []

        def on_prerun(signal, sender, task_id, task, args, kwargs):
            sent.append(("prerun", sender.name, task_id, tuple(args), kwargs))

        def on_success(signal, sender, result):
            sent.append(("success", sender.name, result))

        def on_postrun(signal, sender, task_id, task, args, kwargs, retval, state):
            sent.append(("postrun", sender.name, retval, state))

        def on_failure(signal, sender, task_id, exception, args, kwargs, traceback, einfo):
            sent.append(("failure", sender.name, type(exception).__name__))

        pairs = [(signals.task_prerun, on_prerun), (signals.task_success, on_success),
                 (signals.task_postrun, on_postrun), (signals.task_failure, on_failure)]
        for signal, receiver in pairs:
            signal.connect(receiver)
        try:
            self.assertEqual(run("tasks.add", [2, 3]), ("ok", 5))
            self.assertEqual(run("tasks.fail", ["no"])[0], "err")
        finally:
            for signal, receiver in pairs:
                signal.disconnect(receiver)
        self.assertEqual(sent[:5], [
            ("prerun", "tasks.add", "T-1", (2, 3), {}),
            ("success", "tasks.add", 5),
            ("postrun", "tasks.add", 5, states.SUCCESS),
            ("prerun", "tasks.fail", "T-1", ("no",), {}),
            ("failure", "tasks.fail", "ValueError"),
        ])
        (kind, name, retval, state), = sent[5:]  # the failure's retval is the exception
        self.assertEqual((kind, name, repr(retval), state),
                         ("postrun", "tasks.fail", "ValueError('no')", states.FAILURE))
        sent.clear()
        self.assertEqual(run("tasks.add", [1, 1]), ("ok", 2))
        self.assertEqual(sent, [])  # disconnected: nothing sent

    def test_before_start(self):
        self.assertEqual(run("test_sdk.started", [4]), ("ok", ["T-1", [4], {}]))

    def test_empty_arguments(self):
        for raw_args, raw_kwargs in (("[]", "{}"), ("", " "), (" [] ", "{ }")):
            host_ctx.calls.clear()
            out = WitWorld().run(request("tasks.echo"), raw_args, raw_kwargs)
            self.assertEqual(codec.loads(out), {"args": [], "kwargs": {}})

    def test_autoretry_backoff(self):
        for retries, countdown in ((0, 1.0), (1, 2.0), (3, 8.0)):
            kind, err = run("test_sdk.flaky", retries=retries)
            self.assertIsInstance(err, wit.TaskError_Retry)
            self.assertEqual(err.value.countdown, countdown)
            self.assertEqual(err.value.max_retries, 5)
            self.assertEqual((err.value.exc.exc_type, err.value.exc.exc_module,
                              err.value.exc.exc_args),
                             ("Flaky", "test_sdk", '["try again"]'))
        kind, err = run("test_sdk.flaky", retries=5)  # retry_kwargs max_retries=5 reached
        self.assertEqual((err.value.exc_type, err.value.message), ("Flaky", "try again"))
        seen = set()
        for attempt in range(30):
            kind, err = run("test_sdk.jittery", retries=attempt % 3)
            self.assertTrue(0 <= err.value.countdown <= 5, err.value.countdown)
            self.assertEqual(err.value.countdown, int(err.value.countdown))
            seen.add(err.value.countdown)
        self.assertGreater(len(seen), 1)  # jitter is random
        kind, err = run("test_sdk.jittery", retries=3)  # default max_retries=3
        self.assertEqual(err.value.exc_type, "Flaky")

    def test_dont_autoretry_for(self):
        kind, err = run("test_sdk.picky", ["index"])
        self.assertIsInstance(err, wit.TaskError_Retry)
        self.assertEqual(err.value.countdown, 180.0)  # default_retry_delay
        kind, err = run("test_sdk.picky", ["key"])
        self.assertIsInstance(err, wit.TaskError_Raised)

    def test_predicates(self):
        self.assertEqual(run("test_sdk.ignore_me"), ("err", wit.TaskError_Ignore()))
        self.assertEqual(run("test_sdk.reject_me", [True]),
                         ("err", wit.TaskError_Reject(wit.RejectRequest("bad message", True))))
        kind, err = run("test_sdk.retry_at")
        self.assertEqual((err.value.eta, err.value.countdown),
                         ("2030-01-02T03:04:05+00:00", None))
        self.assertEqual(err.value.exc.exc_type, "Flaky")
        kind, err = run("test_sdk.retry_override", retries=5)
        self.assertEqual((err.value.eta, err.value.countdown, err.value.max_retries),
                         ("2030-01-01T00:00:00+00:00", None, 10))
        kind, err = run("test_sdk.retry_override", retries=10)
        self.assertEqual(err.value.exc_type, "MaxRetriesExceededError")
        kind, err = run("test_sdk.retry_exc")
        self.assertEqual((err.value.countdown, err.value.exc.message), (3.0, "root cause"))
        self.assertIn("raise Flaky(\"root cause\")", err.value.exc.traceback)
        kind, err = run("test_sdk.retry_exc", retries=3)  # exhausted: the exc itself
        self.assertEqual((err.value.exc_type, err.value.exc_module), ("Flaky", "test_sdk"))

    def test_exception_record(self):
        kind, err = run("test_sdk.nested_error")
        exc = err.value
        self.assertEqual((exc.exc_type, exc.exc_module), ("Boom.Inner", "test_sdk"))
        self.assertEqual(json.loads(exc.exc_args), [
            "deep", 42, "<Unserializable>",
            {"__type__": "datetime", "__value__": "2024-01-02T00:00:00+00:00"},
        ])

    def test_result_markers(self):
        kind, value = run("test_sdk.returns_types")
        self.assertEqual(kind, "ok")
        self.assertEqual(value["dt"], datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
        self.assertEqual((value["d"], value["t"], value["dec"]),
                         (date(2024, 1, 2), time(3, 4, 5), Decimal("1.10")))
        self.assertEqual(value["u"], uuid.UUID("12345678123456781234567812345678"))
        self.assertEqual((value["b"], value["raw"], value["tuple"]), (b"abc", b"\xff\x00", [1, 2]))
        self.assertTrue(math.isnan(value["nan"]))

    def test_result_not_serializable(self):
        kind, err = run("test_sdk.returns_set")
        self.assertEqual((err.value.exc_type, err.value.exc_module),
                         ("EncodeError", "kombu.exceptions"))
        self.assertIn("set", err.value.message)

    def test_logging_and_print(self):
        self.assertEqual(run("test_sdk.printer"), ("ok", True))
        logs = [(c[1], c[2]) for c in host_ctx.calls if c[0] == "log"]
        self.assertIn((wit.LogLevel.WARNING, "hello from print"), logs)
        self.assertIn((wit.LogLevel.WARNING, "warned here"), logs)
        self.assertIn((wit.LogLevel.DEBUG, "debugging"), logs)
        self.assertIs(sys.stdout, sys.__stdout__)  # restored

    def test_no_broker(self):
        kind, err = run("test_sdk.delayer")
        self.assertEqual(err.value.exc_type, "NotImplementedError")
        self.assertIn("no broker", err.value.message)

    def test_bound_task_called_directly_from_task(self):
        self.assertEqual(run("test_sdk.calls_bound_directly"), ("ok", 0))

    def test_time_left(self):
        host_ctx.time_left = 1500
        try:
            self.assertEqual(run("test_sdk.time_check"), ("ok", 1.5))
            host_ctx.time_left = 0
            kind, err = run("test_sdk.soft_limit")
            self.assertEqual((err.value.exc_type, err.value.exc_module),
                             ("SoftTimeLimitExceeded", "billiard.exceptions"))
        finally:
            host_ctx.time_left = None
        self.assertEqual(run("test_sdk.time_check"), ("ok", None))
        self.assertIsNone(celeriac_sdk.time_left())  # outside a task


class Codec(unittest.TestCase):
    def test_decode_markers(self):
        text = json.dumps([
            {"__type__": "datetime", "__value__": "2024-01-02T03:04:05+00:00"},
            {"__type__": "date", "__value__": "2024-01-02"},
            {"__type__": "time", "__value__": "03:04:05.250000"},
            {"__type__": "decimal", "__value__": "1.10"},
            {"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}},
            {"__type__": "bytes", "__value__": "abc"},
            {"__type__": "base64", "__value__": "/wA="},
            {"nested": {"__type__": "date", "__value__": "2024-01-02"}},
            {"__type__": "date", "__value__": "2024-01-02", "extra": 1},
        ])
        self.assertEqual(codec.loads(text), [
            datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc), date(2024, 1, 2),
            time(3, 4, 5, 250000), Decimal("1.10"),
            uuid.UUID("12345678123456781234567812345678"), b"abc", b"\xff\x00",
            {"nested": date(2024, 1, 2)},
            {"__type__": "date", "__value__": "2024-01-02", "extra": 1},
        ])

    def test_unknown_marker(self):
        with self.assertRaises(ValueError):
            codec.loads('{"__type__": "frobnicate", "__value__": 1}')

    def test_encode(self):
        self.assertEqual(codec.dumps(datetime(2024, 1, 2, 3, 4, 5, 6)),
                         '{"__type__": "datetime", "__value__": "2024-01-02T03:04:05.000006"}')
        self.assertEqual(codec.dumps(uuid.UUID(int=1)),
                         '{"__type__": "uuid", "__value__": {"hex": "%s"}}' % ("0" * 31 + "1"))
        self.assertEqual(codec.dumps([float("inf"), -float("inf")]), "[Infinity, -Infinity]")
        self.assertEqual(codec.dumps("é"), '"\\u00e9"')
        self.assertEqual(codec.dumps(tasks.add.s(1, 2))[:20], '{"task": "tasks.add"')
        with self.assertRaises(TypeError):
            codec.dumps({1, 2})

    def test_round_trip_through_echo(self):
        values = [datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=2))),
                  Decimal("-0.5"), uuid.uuid4(), b"\x00\x01\xfe", "plain", None, float("-inf")]
        out = WitWorld().run(request("tasks.echo"), codec.dumps(values), codec.dumps({"b": b"x"}))
        self.assertEqual(codec.loads(out), {"args": values, "kwargs": {"b": b"x"}})


if __name__ == "__main__":
    unittest.main()
