"""Celery's ``Task`` base class and the ``Context`` behind ``self.request``.

Faithful to Celery where a guest can be: attributes and their defaults, ``self.request``,
``retry`` (with Celery's ``max_retries`` rules), ``update_state``, the ``on_*`` hooks and
direct calls. A guest has no broker, so ``delay``/``apply_async``/``apply`` raise
``NotImplementedError``; the host republishes retries.
"""

import logging

from celery import _state
from celery import states
from celery.exceptions import MaxRetriesExceededError, Retry

logger = logging.getLogger("celery.app.task")

_NO_BROKER = (
    "{what} is not available inside a celeriac guest: a task component has no broker. "
    "Return the data and chain tasks from the client (or a canvas) instead."
)


class Context:
    """The request of a running task (``self.request``).

    In the worker the SDK fills it from the message; a direct call (``add(2, 3)``) gets one
    with only ``args``/``kwargs`` and ``called_directly=True``.
    """

    id = None
    task = None
    args = None
    kwargs = None
    retries = 0
    root_id = None
    parent_id = None
    group = None
    group_index = None
    eta = None
    expires = None
    hostname = None
    origin = None
    correlation_id = None
    reply_to = None
    delivery_info = None
    is_eager = False
    called_directly = True
    callbacks = None
    errbacks = None
    chain = None
    chord = None
    headers = None
    properties = None
    ignore_result = False
    lang = "py"
    utc = True
    timelimit = None
    taskset = None
    shadow = None
    stamps = None
    stamped_headers = None
    replaced_task_nesting = 0
    loglevel = None
    logfile = None

    def __init__(self, *args, **kwargs):
        self.update(*args, **kwargs)

    def update(self, *args, **kwargs):
        if args and isinstance(args[0], Context):  # dict.update takes one positional
            args = (vars(args[0]),) + args[1:]
        return self.__dict__.update(*args, **kwargs)

    def clear(self):
        return self.__dict__.clear()

    def get(self, key, default=None):
        return getattr(self, key, default)

    def as_dict(self):
        return dict(self.__dict__)

    def __repr__(self):
        return "<Context: {!r}>".format(vars(self))


class Task:
    """A task: subclass it (``base=``) or let ``@app.task`` make one from a function."""

    #: The app the task belongs to.
    app = None
    #: The registered name, e.g. ``tasks.add``.
    name = None
    #: The arguments are checked against the signature when called (Python does it anyway).
    typing = True
    #: How many times ``retry`` may retry; ``None`` retries forever.
    max_retries = 3
    #: Seconds before a retry when ``retry`` is given neither ``countdown`` nor ``eta``.
    default_retry_delay = 3 * 60
    #: ``"10/s"``, ``"100/m"``, ... (applied by the worker).
    rate_limit = None
    #: Do not store the result.
    ignore_result = False
    trail = True
    send_events = True
    store_errors_even_if_ignored = False
    serializer = None
    #: Hard time limit in seconds (applied by the worker).
    time_limit = None
    #: Soft time limit in seconds (applied by the worker).
    soft_time_limit = None
    backend = None
    #: Store STARTED before the body runs (applied by the worker).
    track_started = False
    #: Acknowledge after the task ran, not before (applied by the worker).
    acks_late = False
    acks_on_failure_or_timeout = True
    reject_on_worker_lost = None
    throws = ()
    expires = None
    priority = None
    resultrepr_maxsize = 1024
    #: Exception classes that turn into ``self.retry(exc=...)`` (applied by the SDK).
    autoretry_for = ()
    #: Exception classes excluded from ``autoretry_for``.
    dont_autoretry_for = ()
    #: Keyword arguments for the automatic ``retry`` call (e.g. ``{"max_retries": 5}``).
    retry_kwargs = {}
    #: Exponential backoff for automatic retries: ``True`` (factor 1) or a factor in seconds.
    retry_backoff = False
    #: Upper bound of the backoff, seconds.
    retry_backoff_max = 600
    #: Randomise the backoff ("full jitter").
    retry_jitter = True
    #: Raised by ``retry`` when ``max_retries`` is exhausted and no ``exc`` was given.
    MaxRetriesExceededError = MaxRetriesExceededError

    #: Whether the class was made by ``@app.task`` from a function.
    _decorated = False
    _request_stack = None
    _worker_call = False
    #: Made by ``shared_task``: belongs to whichever app is current.
    _shared = False

    # -- calling ----------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        if self._worker_call:
            # The SDK dispatches through a custom __call__ and has pushed the request.
            self._worker_call = False
            return self.run(*args, **kwargs)
        _state.push_task(self)
        self.push_request(args=args, kwargs=kwargs)
        try:
            return self.run(*args, **kwargs)
        finally:
            self.pop_request()
            _state.pop_task()

    def run(self, *args, **kwargs):
        """The body of the task."""
        raise NotImplementedError("Tasks must define the run method.")

    def delay(self, *args, **kwargs):
        raise NotImplementedError(_NO_BROKER.format(what="%s.delay()" % self.name))

    def apply_async(self, args=None, kwargs=None, **options):
        raise NotImplementedError(_NO_BROKER.format(what="%s.apply_async()" % self.name))

    def apply(self, args=None, kwargs=None, **options):
        raise NotImplementedError(
            _NO_BROKER.format(what="%s.apply()" % self.name) + " To run it here, call it: task(*args)."
        )

    def AsyncResult(self, task_id, **kwargs):
        raise NotImplementedError(_NO_BROKER.format(what="AsyncResult"))

    def send_event(self, type_, retry=True, retry_policy=None, **fields):
        """Task events are not sent from a guest; this does nothing."""

    def replace(self, sig):
        raise NotImplementedError(_NO_BROKER.format(what="Task.replace()"))

    def add_to_chord(self, sig, lazy=False):
        raise NotImplementedError(_NO_BROKER.format(what="Task.add_to_chord()"))

    # -- signatures -------------------------------------------------------------------------
    def signature(self, args=None, *starargs, **starkwargs):
        from celery.canvas import signature

        return signature(self, args, *starargs, **starkwargs)

    subtask = signature

    def s(self, *args, **kwargs):
        return self.signature(args, kwargs)

    def si(self, *args, **kwargs):
        return self.signature(args, kwargs, immutable=True)

    # -- the request ------------------------------------------------------------------------
    @property
    def request_stack(self):
        if self.__dict__.get("_request_stack") is None:
            self._request_stack = []
        return self._request_stack

    def push_request(self, *args, **kwargs):
        self.request_stack.append(Context(*args, **kwargs))

    def pop_request(self):
        if self.request_stack:
            self.request_stack.pop()

    @property
    def request(self):
        """The request of the running call (an empty one with ``called_directly=True`` if none)."""
        stack = self.request_stack
        return stack[-1] if stack else Context()

    # -- retry ------------------------------------------------------------------------------
    def retry(self, args=None, kwargs=None, exc=None, throw=True, eta=None, countdown=None,
              max_retries=None, **options):
        """Retries the task (Celery's ``Task.retry``).

        Raises ``Retry``, which the SDK reports to the host (it republishes the message with
        ``retries + 1``). When ``max_retries`` (the argument, else the task's) is not ``None``
        and ``request.retries`` has reached it, re-raises ``exc`` if given, else raises
        ``MaxRetriesExceededError``. Called directly (not by the worker), raises ``exc`` or a
        ``Retry``, as Celery does.

        Not available in a guest: new ``args``/``kwargs`` and ``throw=False`` (the host
        republishes the original arguments after the task ended); other ``options``
        (``queue``, ``priority``, ...) are ignored with a warning.
        """
        request = self.request
        if request.called_directly:
            if exc is not None:
                raise exc
            raise Retry("Task can be retried", None)
        if args is not None and list(args) != list(request.args or ()):
            raise NotImplementedError(
                "retry(args=...) with new arguments is not supported by celeriac: "
                "the retry reuses the message's arguments"
            )
        if kwargs is not None and dict(kwargs) != dict(request.kwargs or {}):
            raise NotImplementedError(
                "retry(kwargs=...) with new arguments is not supported by celeriac: "
                "the retry reuses the message's arguments"
            )
        if not throw:
            raise NotImplementedError(
                "retry(throw=False) is not supported by celeriac: the host republishes the "
                "task only when it ends with the Retry; use `raise self.retry(...)`"
            )
        if options:
            logger.warning(
                "%s: retry options %s are ignored by celeriac", self.name, sorted(options)
            )
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            # Celery formats the retried signature's arguments: a tuple and a dict.
            task_args, task_kwargs = tuple(request.args or ()), dict(request.kwargs or {})
            raise self.MaxRetriesExceededError(
                "Can't retry {}[{}] args:{} kwargs:{}".format(
                    self.name, request.id, task_args, task_kwargs
                ),
                task_args=task_args,
                task_kwargs=task_kwargs,
            )
        if not eta and countdown is None:
            countdown = self.default_retry_delay
        raise Retry(
            exc=exc,
            when=eta or countdown,
            is_eager=request.is_eager,
            max_retries=max_retries,
        )

    # -- state ------------------------------------------------------------------------------
    def update_state(self, task_id=None, state=None, meta=None, **kwargs):
        """Stores ``state`` with ``meta`` (JSON-serializable) for the running task.

        Only the running task's own state can be updated from a guest. In a direct call
        (no worker request) there is no task id, and nothing is stored.
        """
        request = self.request
        if task_id is not None and task_id != request.id:
            raise NotImplementedError(
                "update_state(task_id=...) for another task is not supported by celeriac"
            )
        if request.called_directly or request.id is None:
            logger.debug("%s: update_state(%r) outside a worker request: ignored", self.name, state)
            return
        from celeriac_sdk import _update_state

        _update_state(state, meta)

    # -- hooks (Celery calls them; override in a base class) --------------------------------
    def before_start(self, task_id, args, kwargs):
        """Runs before the body."""

    def on_success(self, retval, task_id, args, kwargs):
        """Runs after the body returned."""

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        """Runs when the task is to be retried."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        """Runs when the body raised."""

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        """Runs after every outcome."""

    # -- celeriac ---------------------------------------------------------------------------
    def _explicit(self, attr):
        """``(True, value)`` when the author set ``attr`` (decorator or base class)."""
        for cls in type(self).__mro__:
            if cls is Task:
                break
            if attr in cls.__dict__:
                return True, cls.__dict__[attr]
        return False, None

    def __repr__(self):
        return "<@task: {} of {}>".format(self.name, getattr(self.app, "main", None))


#: Celery's old name.
BaseTask = Task

__all__ = ["Context", "Task", "BaseTask", "states"]
