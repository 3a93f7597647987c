"""celeriac's Python guest SDK: runs Celery task modules as WebAssembly components.

A task module is written for Celery (``from celery import Celery``); the ``celery`` package
beside this one stands in for the real one inside the component. ``celeriac build
tasks.py -o tasks.wasm`` compiles the module with componentize-py, together with:

* :mod:`celeriac_sdk.world` - the component's exports (``tasks``, ``run``);
* :mod:`celeriac_sdk.codec` - kombu's JSON with its ``__type__`` markers;
* :mod:`celeriac_sdk.errors` - exceptions -> the WIT ``task-error``;
* :mod:`celeriac_sdk.log` - logging, ``print`` and stderr -> the host's log;
* :mod:`celeriac_sdk.immortal` - the table of build-time objects the host makes immortal.

Only pure-Python code can be compiled in: C extension modules (``numpy``, ``lxml``, ...)
cannot be loaded by the CPython inside a component.

Tasks may use the helpers below; they are celeriac-specific (not in Celery).
"""

from . import codec, host


def time_left():
    """Seconds left before the task's soft time limit (the hard one when no soft limit is
    set); ``None`` when the task has no time limit or no task is running."""
    ms = host.time_left_ms()
    return None if ms is None else ms / 1000.0


def check_soft_time_limit():
    """Raises ``SoftTimeLimitExceeded`` when the soft time limit has passed.

    Call it from long loops to clean up and stop in time; the host ends the instance at the
    hard limit in any case.
    """
    from celery.exceptions import SoftTimeLimitExceeded

    ms = host.time_left_ms()
    if ms is not None and ms <= 0:
        raise SoftTimeLimitExceeded()


def _update_state(state, meta):
    """``Task.update_state`` for the running task: the host stores ``state`` with ``meta``."""
    from celery.exceptions import EncodeError

    try:
        meta_json = codec.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise EncodeError(str(exc)) from exc
    host.update_state(str(state), meta_json)


__all__ = ["time_left", "check_soft_time_limit"]
