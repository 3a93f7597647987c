"""Celery's exception classes, as a celeriac guest sees them.

The names, base classes and ``__module__`` values match Celery's, so a failure that crosses
the host (``exc_module`` + ``exc_type``) is re-raised as the same class by a Python client:
``SoftTimeLimitExceeded`` and friends live in ``billiard.exceptions`` and ``EncodeError`` /
``DecodeError`` / ``OperationalError`` in ``kombu.exceptions``, as in a real worker.
"""

import numbers
from datetime import datetime


def _billiard(cls):
    """Gives ``cls`` the ``__module__`` it has under real Celery (the pool's package)."""
    cls.__module__ = "billiard.exceptions"
    return cls


def _kombu(cls):
    """Gives ``cls`` the ``__module__`` it has under real Celery (the messaging package)."""
    cls.__module__ = "kombu.exceptions"
    return cls


# -- billiard (the worker pool) ----------------------------------------------------------
@_billiard
class SoftTimeLimitExceeded(Exception):
    """The soft time limit has been exceeded."""


@_billiard
class TimeLimitExceeded(Exception):
    """The hard time limit has been exceeded; the task was killed."""


@_billiard
class WorkerLostError(Exception):
    """The process running the task went away."""


@_billiard
class Terminated(Exception):
    """The task was terminated."""


# -- kombu (messaging and serialization) -------------------------------------------------
@_kombu
class KombuError(Exception):
    """Base class for kombu's errors."""


@_kombu
class OperationalError(KombuError):
    """Recoverable messaging error."""


@_kombu
class SerializationError(KombuError):
    """Failed to serialize or deserialize content."""


@_kombu
class EncodeError(SerializationError):
    """Could not serialize a value (e.g. a task result that JSON cannot carry)."""


@_kombu
class DecodeError(SerializationError):
    """Could not deserialize a message."""


# -- celery ------------------------------------------------------------------------------
class CeleryWarning(UserWarning):
    """Base class for Celery's warnings."""


class AlwaysEagerIgnored(CeleryWarning):
    """A send-task option was ignored because the task ran eagerly."""


class DuplicateNodenameWarning(CeleryWarning):
    """Several workers share a node name."""


class FixupWarning(CeleryWarning):
    """A fixup failed."""


class NotConfigured(CeleryWarning):
    """Celery has not been configured."""


class SecurityWarning(CeleryWarning):
    """A potential security issue."""


class CDeprecationWarning(DeprecationWarning):
    """A Celery API is deprecated."""


class CPendingDeprecationWarning(PendingDeprecationWarning):
    """A Celery API will be deprecated."""


class CeleryError(Exception):
    """Base class for Celery's errors."""


class TaskPredicate(CeleryError):
    """Base class for the exceptions that steer what happens to a task (retry, ignore, reject)."""


class Retry(TaskPredicate):
    """The task is to be retried.

    Raised by ``Task.retry()``; raising it yourself also retries the task. ``when`` is a
    countdown in seconds (a number) or an ETA (a ``datetime`` or an ISO 8601 string).
    """

    #: Optional message describing the context of the retry.
    message = None
    #: The exception that caused the retry, if any.
    exc = None
    #: Countdown (number) or ETA (datetime / ISO string) of the retry.
    when = None
    #: The signature of the retry; always ``None`` in a celeriac guest.
    sig = None
    #: celeriac: the per-call ``max_retries`` given to ``Task.retry`` (``None``: the task's).
    max_retries = None

    def __init__(self, message=None, exc=None, when=None, is_eager=False, sig=None, **kwargs):
        if isinstance(exc, str):
            self.exc, self.excs = None, exc
        else:
            self.exc, self.excs = exc, (_safe_repr(exc) if exc is not None else None)
        self.message = message
        self.when = when
        self.is_eager = is_eager
        self.sig = sig
        self.max_retries = kwargs.pop("max_retries", None)
        super().__init__(message, exc, when)

    def humanize(self):
        if isinstance(self.when, numbers.Number):
            return "in %ss" % (self.when,)
        if isinstance(self.when, datetime):
            return "at %s" % (self.when.isoformat(),)
        if self.when is None:
            return "with the default delay"
        return "at %s" % (self.when,)

    def __str__(self):
        if self.message:
            return self.message
        if self.excs:
            return "Retry %s: %s" % (self.humanize(), self.excs)
        return "Retry %s" % (self.humanize(),)


#: Celery's old name for :class:`Retry`.
RetryTaskError = Retry


class Ignore(TaskPredicate):
    """The task ends without storing any state."""


class Reject(TaskPredicate):
    """The message is rejected (dead-lettered), or requeued if ``requeue`` is true."""

    def __init__(self, reason=None, requeue=False):
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)

    def __repr__(self):
        return "reject requeue=%s: %s" % (self.requeue, self.reason)


class ImproperlyConfigured(CeleryError):
    """Celery is configured in a way that cannot work."""


class SecurityError(CeleryError):
    """A security violation (e.g. a forbidden exception class in a result)."""


class TaskError(CeleryError):
    """A task-related error."""


class QueueNotFound(KeyError, TaskError):
    """The task was routed to a queue that does not exist."""


class IncompleteStream(TaskError):
    """A message stream ended too early."""


class NotRegistered(KeyError, TaskError):
    """The task is not registered."""

    def __repr__(self):
        return "NotRegistered(%r)" % (self.args[0] if self.args else None,)


class AlreadyRegistered(TaskError):
    """The task is already registered."""


class TimeoutError(TaskError):
    """The operation timed out."""


class MaxRetriesExceededError(TaskError):
    """The task has been retried ``max_retries`` times already."""

    def __init__(self, *args, **kwargs):
        self.task_args = kwargs.pop("task_args", [])
        self.task_kwargs = kwargs.pop("task_kwargs", {})
        super().__init__(*args, **kwargs)


class TaskRevokedError(TaskError):
    """The task has been revoked, so no result is available."""


class InvalidTaskError(TaskError):
    """The task message is malformed."""


class ChordError(TaskError):
    """A task in a chord failed."""


class BackendError(Exception):
    """An issue writing to or reading from the result backend."""


class BackendGetMetaError(BackendError):
    """An issue reading from the result backend."""

    def __init__(self, *args, **kwargs):
        self.task_id = kwargs.get("task_id")
        super().__init__(*args)


class BackendStoreError(BackendError):
    """An issue writing to the result backend."""

    def __init__(self, *args, **kwargs):
        self.state = kwargs.get("state")
        self.task_id = kwargs.get("task_id")
        super().__init__(*args)


class WorkerTerminate(SystemExit):
    """Signals that the worker should terminate immediately."""


#: Celery's alias for :class:`WorkerTerminate`.
SystemTerminate = WorkerTerminate


class WorkerShutdown(SystemExit):
    """Signals that the worker should perform a warm shutdown."""


def _safe_repr(obj):
    try:
        return repr(obj)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        return object.__repr__(obj)


__all__ = [
    "CeleryWarning", "AlwaysEagerIgnored", "DuplicateNodenameWarning", "FixupWarning",
    "NotConfigured", "SecurityWarning", "CDeprecationWarning", "CPendingDeprecationWarning",
    "CeleryError", "TaskPredicate", "Retry", "RetryTaskError", "Ignore", "Reject",
    "ImproperlyConfigured", "SecurityError", "TaskError", "QueueNotFound", "IncompleteStream",
    "NotRegistered", "AlreadyRegistered", "TimeoutError", "MaxRetriesExceededError",
    "TaskRevokedError", "InvalidTaskError", "ChordError", "BackendError", "BackendGetMetaError",
    "BackendStoreError", "WorkerTerminate", "SystemTerminate", "WorkerShutdown",
    "SoftTimeLimitExceeded", "TimeLimitExceeded", "WorkerLostError", "Terminated",
    "KombuError", "OperationalError", "SerializationError", "EncodeError", "DecodeError",
]
