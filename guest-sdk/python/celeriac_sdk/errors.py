"""Turns what a task raised into the WIT ``task-error`` the host expects.

* any exception -> ``raised(exception)``, encoded as Celery's result backend stores one:
  ``exc-type`` = the class ``__qualname__``, ``exc-module`` = its ``__module__``,
  ``exc-args`` = ``exc.args`` as a JSON array in which every argument JSON cannot carry is
  replaced by its ``repr``, ``message`` = ``str(exc)``, ``traceback`` = the formatted
  traceback without the SDK's own frames;
* ``celery.exceptions.Retry`` -> ``retry(retry-request)``;
* ``celery.exceptions.Reject`` -> ``reject(reject-request)``;
* ``celery.exceptions.Ignore`` -> ``ignore``.

It also turns an exception the host sends (an inline errback's ``exc``) back into an instance.
"""

import importlib
import json
import numbers
import os
import sys
import traceback as _traceback
from datetime import datetime

from wit_world.imports import types as wit

from celery.exceptions import Ignore, Reject, Retry

from . import codec

_SDK_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (__file__, Retry.__init__.__code__.co_filename)
)


def _safe_repr(obj):
    try:
        return repr(obj)
    except Exception:  # noqa: BLE001
        return object.__repr__(obj)


def _safe_str(exc):
    try:
        return str(exc)
    except Exception:  # noqa: BLE001
        return _safe_repr(exc)


def exc_args_json(exc):
    """``exc.args`` as a JSON array; arguments JSON cannot carry become their ``repr``."""
    args = getattr(exc, "args", ())
    if not isinstance(args, (tuple, list)):
        args = (args,)
    items = []
    for arg in args:
        try:
            items.append(codec.dumps(arg))
        except Exception:  # noqa: BLE001 - any failure to encode means "use the repr"
            items.append(json.dumps(_safe_repr(arg)))
    return "[" + ", ".join(items) + "]"


def _is_sdk_frame(tb):
    filename = tb.tb_frame.f_code.co_filename
    return os.path.abspath(filename).startswith(_SDK_DIRS)


def format_traceback(exc):
    """The traceback text of ``exc``, starting at the first frame outside the SDK."""
    tb = exc.__traceback__
    while tb is not None and _is_sdk_frame(tb):
        tb = tb.tb_next
    if tb is None:
        tb = exc.__traceback__
    try:
        return "".join(_traceback.format_exception(type(exc), exc, tb))
    except Exception:  # noqa: BLE001
        return "%s: %s\n" % (type(exc).__qualname__, _safe_str(exc))


def exception_record(exc, with_traceback=True):
    """The WIT ``exception`` record for ``exc``."""
    cls = type(exc)
    return wit.Exception(
        exc_type=cls.__qualname__,
        exc_module=cls.__module__ or "builtins",
        exc_args=exc_args_json(exc),
        message=_safe_str(exc),
        traceback=format_traceback(exc) if with_traceback else None,
    )


def retry_request(retry):
    """The WIT ``retry-request`` for a raised ``Retry``."""
    countdown = eta = None
    when = retry.when
    if isinstance(when, datetime):
        eta = when.isoformat()
    elif isinstance(when, str):
        eta = when
    elif isinstance(when, numbers.Real) and not isinstance(when, bool):
        countdown = float(when)
    max_retries = getattr(retry, "max_retries", None)
    exc = retry.exc
    return wit.RetryRequest(
        countdown=countdown,
        eta=eta,
        max_retries=int(max_retries) if max_retries is not None else None,
        exc=exception_record(exc) if isinstance(exc, BaseException) else None,
    )


def task_error(exc):
    """The WIT ``task-error`` for anything a task raised."""
    if isinstance(exc, Retry):
        return wit.TaskError_Retry(retry_request(exc))
    if isinstance(exc, Reject):
        reason = exc.reason
        return wit.TaskError_Reject(
            wit.RejectRequest(
                reason=None if reason is None else _safe_str(reason),
                requeue=bool(exc.requeue),
            )
        )
    if isinstance(exc, Ignore):
        return wit.TaskError_Ignore()
    return wit.TaskError_Raised(exception_record(exc))


def _exception_class(exc_type, exc_module):
    """The class ``exc_module.exc_type`` if the guest has it, else a stand-in subclass of
    ``Exception`` with that name and module (as Celery's ``create_exception_cls``)."""
    try:
        module = sys.modules.get(exc_module) or importlib.import_module(exc_module)
        cls = module
        for part in exc_type.split("."):
            cls = getattr(cls, part)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return cls
    except Exception:  # noqa: BLE001 - any lookup failure means "make a stand-in"
        pass
    return type(exc_type.rsplit(".", 1)[-1], (Exception,), {"__module__": exc_module})


def exception_from_dict(meta):
    """An exception instance from Celery's stored form
    (``{"exc_type", "exc_message", "exc_module"}``)."""
    cls = _exception_class(str(meta.get("exc_type")), str(meta.get("exc_module") or "builtins"))
    args = meta.get("exc_message")
    if not isinstance(args, (list, tuple)):
        args = (args,)
    try:
        return cls(*args)
    except Exception:  # noqa: BLE001 - a class that refuses its args still gets them
        exc = Exception.__new__(cls)
        exc.args = tuple(args)
        return exc
