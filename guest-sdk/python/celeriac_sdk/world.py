"""The component's exports: ``tasks()`` and ``run(request, args, kwargs)``.

Importing this module (the generated entry module does, after the task module) installs
the host log handler and imports the modules a Celery worker would import for the app
(``include=``, ``imports``, ``autodiscover_tasks``), so all their tasks are registered in the
snapshot componentize-py takes at build time.

``run`` does what Celery's tracer does for one message: it pushes ``self.request``, sends
``task_prerun``, calls the task (applying ``autoretry_for`` with Celery's backoff), calls
the ``on_success``/``on_retry``/``on_failure``/``after_return`` hooks and signals, and
encodes the outcome: the result as kombu JSON, or a WIT ``task-error``. A request marked
``inline-errback`` is Celery's direct errback call instead: ``task(request, exc, traceback,
*args)`` with the failed task's ``Context`` and exception rebuilt from the host's JSON.
"""

import inspect
import linecache
import logging
import os
import random
import sys

import wit_world
from componentize_py_types import Err
from wit_world.imports import types as wit

from celery import _state, signals, states
from celery.app.base import _import_task_modules
from celery.app.task import Context, Task
from celery.exceptions import (
    DecodeError,
    EncodeError,
    Ignore,
    NotRegistered,
    Reject,
    Retry,
    TaskPredicate,
)
from celery.utils.time import get_exponential_backoff_interval

from . import codec, errors, host, immortal
from . import log as _log

logger = logging.getLogger("celeriac_sdk")

_U32_MAX = 2 ** 32 - 1

#: ``Task`` attribute -> the app setting that supplies it when the task does not set it.
_CONF_FALLBACK = {
    "rate_limit": "task_default_rate_limit",
    "time_limit": "task_time_limit",
    "soft_time_limit": "task_soft_time_limit",
    "acks_late": "task_acks_late",
    "ignore_result": "task_ignore_result",
    "track_started": "task_track_started",
}


class ExceptionInfo:
    """What Celery passes as ``einfo`` to ``on_failure``/``on_retry`` (billiard's)."""

    def __init__(self, exc):
        self.exception = exc
        self.type = type(exc)
        self.tb = exc.__traceback__
        self.traceback = errors.format_traceback(exc)
        self.internal = False

    def __str__(self):
        return self.traceback

    def __repr__(self):
        return "<ExceptionInfo: %r>" % (self.exception,)


# -- options -------------------------------------------------------------------------------
def _u32(value):
    return max(0, min(int(value), _U32_MAX))


def _float(value):
    return None if value is None else float(value)


def _bool(value):
    return None if value is None else bool(value)


def _option(task, attr):
    """The author's value for ``attr`` (task, base class, then app setting), else unset."""
    explicit, value = task._explicit(attr) if isinstance(task, Task) else (False, None)
    if explicit:
        return True, value
    conf_key = _CONF_FALLBACK.get(attr)
    app = _state.get_current_app() if getattr(task, "_shared", False) else task.app
    conf = getattr(app, "conf", None)
    if conf_key and conf is not None and conf.get(conf_key) is not None:
        return True, conf[conf_key]
    return False, None


def _class_name(cls):
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return "%s.%s" % (cls.__module__, cls.__qualname__)


def task_options(task):
    """The WIT ``task-options`` of a task: what its author set, ``none`` for the rest."""
    has_max, max_retries = _option(task, "max_retries")
    _, delay = _option(task, "default_retry_delay")
    _, rate_limit = _option(task, "rate_limit")
    _, time_limit = _option(task, "time_limit")
    _, soft_time_limit = _option(task, "soft_time_limit")
    _, acks_late = _option(task, "acks_late")
    _, ignore_result = _option(task, "ignore_result")
    _, track_started = _option(task, "track_started")
    has_backoff, backoff = _option(task, "retry_backoff")
    _, backoff_max = _option(task, "retry_backoff_max")
    _, jitter = _option(task, "retry_jitter")
    return wit.TaskOptions(
        max_retries=_u32(max_retries) if has_max and max_retries is not None else None,
        retry_forever=has_max and max_retries is None,
        default_retry_delay=_float(delay),
        rate_limit=None if rate_limit is None else str(rate_limit),
        time_limit=_float(time_limit),
        soft_time_limit=_float(soft_time_limit),
        acks_late=_bool(acks_late),
        ignore_result=_bool(ignore_result),
        track_started=_bool(track_started),
        autoretry_for=[_class_name(cls) for cls in tuple(task.autoretry_for or ())],
        retry_backoff=(_u32(max(1.0, float(backoff))) if backoff else 0) if has_backoff else None,
        retry_backoff_max=None if backoff_max is None else _u32(backoff_max),
        retry_jitter=_bool(jitter),
    )


def errback_parameters(task):
    """The WIT ``parameters`` of a task Celery may call inline as an errback: one made with
    ``@app.task`` from a function without ``bind=True`` (Celery's ``__header__`` test);
    ``None`` for any other task."""
    # Read from the class: through the instance the function would come back bound.
    fun = getattr(type(task), "_celeriac_fun", None)
    if fun is None or getattr(task, "_celeriac_bound", False):
        return None
    try:
        spec = inspect.getfullargspec(fun)
        kinds = [p.kind for p in inspect.signature(fun).parameters.values()]
    except (TypeError, ValueError):
        return None
    return wit.Parameters(
        positional=list(spec.args),
        positional_only=kinds.count(inspect.Parameter.POSITIONAL_ONLY),
        keyword_only=list(spec.kwonlyargs),
        var_positional=spec.varargs is not None,
        var_keyword=spec.varkw is not None,
    )


# -- running one task ----------------------------------------------------------------------
def _request_context(request, args, kwargs):
    info = request.delivery_info
    return Context(
        id=request.id,
        task=request.task,
        retries=request.retries,
        root_id=request.root_id,
        parent_id=request.parent_id,
        group=request.group,
        group_index=request.group_index,
        eta=request.eta,
        expires=request.expires,
        hostname=request.hostname,
        origin=request.origin,
        correlation_id=request.correlation_id,
        reply_to=request.reply_to,
        delivery_info={
            "exchange": info.exchange,
            "routing_key": info.routing_key,
            "priority": info.priority,
            "redelivered": info.redelivered,
        },
        is_eager=request.is_eager,
        args=args,
        kwargs=kwargs,
        called_directly=False,
    )


def _call(task, args, kwargs):
    """Calls the task body as Celery's worker does, with ``autoretry_for`` applied."""
    custom_call = type(task).__call__ is not Task.__call__
    if custom_call:
        task._worker_call = True  # let it run, without a new request
        body = task
    else:
        body = task.run
    autoretry_for = tuple(task.autoretry_for or ())
    try:
        if not autoretry_for:
            return body(*args, **kwargs)
        try:
            return body(*args, **kwargs)
        except TaskPredicate:
            raise
        except tuple(task.dont_autoretry_for or ()):
            raise
        except autoretry_for as exc:
            retry_kwargs = dict(task.retry_kwargs or {})
            if task.retry_backoff:
                retry_kwargs["countdown"] = get_exponential_backoff_interval(
                    factor=int(max(1.0, float(task.retry_backoff))),
                    retries=task.request.retries,
                    maximum=task.retry_backoff_max,
                    full_jitter=task.retry_jitter,
                )
            raise task.retry(exc=exc, **retry_kwargs)
    finally:
        # Only when set: a write to a snapshot object is a page the host copies.
        if custom_call:
            task._worker_call = False


def _safely(hook, *args, **kwargs):
    try:
        hook(*args, **kwargs)
    except Exception:  # noqa: BLE001 - Celery logs a failing hook and carries on
        logger.exception("%s raised", getattr(hook, "__qualname__", hook))


def _custom(task, name):
    """``task``'s own ``name`` method, or ``None`` when it is ``Task``'s do-nothing one."""
    if getattr(type(task), name) is getattr(Task, name):
        return None
    return getattr(task, name)


def trace(task, request, args, kwargs):
    """Runs ``task`` for ``request``; returns ``(state, retval_or_exception)``.

    As in Celery's ``build_tracer``, a signal without receivers is not sent and a hook the
    task does not override is not called: each would cost more than a small task's body.
    """
    task_id = request.id
    task.push_request(request)
    _state.push_task(task)
    try:
        if signals.task_prerun.receivers:
            signals.task_prerun.send(
                sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs
            )
        try:
            before_start = _custom(task, "before_start")
            if before_start is not None:
                before_start(task_id, args, kwargs)
            retval = _call(task, args, kwargs)
        except Reject as exc:
            state, retval = states.REJECTED, exc
        except Ignore as exc:
            state, retval = states.IGNORED, exc
        except Retry as exc:
            state, retval = states.RETRY, exc
            einfo = ExceptionInfo(exc)
            _safely(task.on_retry, exc.exc, task_id, args, kwargs, einfo)
            signals.task_retry.send(sender=task, request=request, reason=exc, einfo=einfo)
        except BaseException as exc:  # noqa: BLE001 - every failure is reported
            state, retval = states.FAILURE, exc
            einfo = ExceptionInfo(exc)
            _safely(task.on_failure, exc, task_id, args, kwargs, einfo)
            signals.task_failure.send(
                sender=task, task_id=task_id, exception=exc, args=args, kwargs=kwargs,
                traceback=exc.__traceback__, einfo=einfo,
            )
        else:
            state = states.SUCCESS
            on_success = _custom(task, "on_success")
            if on_success is not None:
                _safely(on_success, retval, task_id, args, kwargs)
            if signals.task_success.receivers:
                signals.task_success.send(sender=task, result=retval)
        after_return = _custom(task, "after_return")
        if after_return is not None:
            _safely(after_return, state, retval, task_id, args, kwargs, None)
        if signals.task_postrun.receivers:
            signals.task_postrun.send(
                sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs,
                retval=retval, state=state,
            )
        return state, retval
    finally:
        task.pop_request()
        _state.pop_task()


def _raised(exc, traceback=True):
    return Err(wit.TaskError_Raised(errors.exception_record(exc, with_traceback=traceback)))


def _loads_or_empty(text, empty_literal, empty):
    """``text`` decoded; a new ``empty()`` for blank text or ``empty_literal`` (most tasks
    have no kwargs: this skips the decoder for them)."""
    if text == empty_literal or not text.strip():
        return empty()
    return codec.loads(text)


def _decode_arguments(args, kwargs):
    try:
        args_value = _loads_or_empty(args, "[]", list)
        kwargs_value = _loads_or_empty(kwargs, "{}", dict)
    except ValueError as exc:
        raise _raised(DecodeError(str(exc)), traceback=False) from None
    if not isinstance(args_value, list):
        raise _raised(DecodeError("task args must be a JSON array"), traceback=False)
    if not isinstance(kwargs_value, dict):
        raise _raised(DecodeError("task kwargs must be a JSON object"), traceback=False)
    return args_value, kwargs_value


def _call_errback(task, args, kwargs):
    """Celery's inline errback call, ``errback(request, exc, traceback, *args)``: a direct
    call of the task (no tracing, hooks or signals); the return value is dropped."""
    if len(args) < 3 or not isinstance(args[0], dict) or not isinstance(args[1], dict):
        raise _raised(
            DecodeError("an inline errback call needs (request, exc, traceback)"), traceback=False
        )
    failed_request = Context(args[0])
    exc = errors.exception_from_dict(args[1])
    with _log.redirect_stdouts():
        task(failed_request, exc, args[2], *args[3:], **kwargs)
    return "null"


def run_request(request, args, kwargs):
    """``run`` without the host bookkeeping: returns the result JSON or raises ``Err``."""
    task = _state.tasks.get(request.task)
    if task is None:
        raise _raised(NotRegistered(request.task), traceback=False)
    args_value, kwargs_value = _decode_arguments(args, kwargs)
    if request.inline_errback:
        return _call_errback(task, args_value, kwargs_value)
    context = _request_context(request, args_value, kwargs_value)
    with _log.redirect_stdouts():
        state, outcome = trace(task, context, args_value, kwargs_value)
    if state != states.SUCCESS:
        raise Err(errors.task_error(outcome))
    try:
        return codec.dumps(outcome)
    except (TypeError, ValueError) as exc:
        raise _raised(EncodeError(str(exc)), traceback=False) from None


_process_initialised = False


def _start_instance():
    """Once per instance: Celery's ``worker_process_init``. (componentize-py reseeds
    ``random`` itself before an instance's first call, so the snapshot's state is not
    shared.)"""
    global _process_initialised
    if _process_initialised:
        return
    _process_initialised = True
    signals.worker_process_init.send(sender=None)


class WitWorld(wit_world.WitWorld):
    """The exports of the ``task`` world."""

    def tasks(self):
        return [
            wit.TaskInfo(
                name=name, options=task_options(task), errback_parameters=errback_parameters(task)
            )
            for name, task in sorted(_state.tasks.items())
        ]

    def run(self, request, args, kwargs):
        host.active = True
        try:
            _start_instance()
            return run_request(request, args, kwargs)
        except Err:
            raise
        except BaseException as exc:  # noqa: BLE001 - an SDK failure is still a task failure
            raise _raised(exc) from None
        finally:
            host.active = False


def _keep_sources():
    """Puts the source of every non-stdlib module in ``linecache`` (build time).

    At run time the guest cannot read the files, so without this, tracebacks would have no
    source lines. Entries without an mtime are never re-checked against the filesystem.
    """
    # componentize-py keeps the standard library in two places (os and random differ).
    stdlib = tuple({os.path.dirname(m.__file__) + os.sep for m in (os, random, logging)})
    for name, module in list(sys.modules.items()):
        filename = getattr(module, "__file__", None)
        if (
            not filename
            or not filename.endswith(".py")
            or filename.startswith(stdlib)
            or name.startswith(("wit_world", "componentize_py"))
        ):
            continue
        try:
            with open(filename, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        linecache.cache[filename] = (len(text), None, lines, filename)


def _warm_up():
    """Runs the SDK's side of one task (no task code, no signals) at build time.

    componentize-py snapshots the interpreter after this module is imported, so what runs
    here is done once for every instance to come: the ``json`` codec and its hooks, the
    request ``Context`` and the stdout redirection get their first-call work (lazy
    initialisation, specialised bytecode, attribute caches) into the snapshot. Measured on
    ``add(2, 3)``, a fresh instance's first ``run`` then faults in ~280 memory pages instead
    of 344 (each a copy-on-write fault on the host) and takes ~100 µs less.
    """
    args, kwargs = _decode_arguments("[2, 3.5, \"text\", null, true]", "{\"key\": [1]}")
    codec.dumps({"result": args, "kwargs": kwargs})
    Context(id="warm-up", task="warm-up", args=args, kwargs=kwargs, delivery_info={})
    with _log.redirect_stdouts():
        pass
    # A private signal warms Signal.send without calling anyone's receivers; each task's
    # request stack is created here rather than on its first run.
    signals.Signal(name="celeriac.warm-up").send(sender=None, task_id="warm-up")
    for task in list(_state.tasks.values()):
        task.push_request(id="warm-up")
        _state.push_task(task)
        _state.pop_task()
        task.pop_request()


_log.install()
_import_task_modules()
_warm_up()
_keep_sources()
immortal.leave_table()
