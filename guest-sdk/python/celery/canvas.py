"""Signatures and canvas primitives, reduced to what a guest can do with them.

A signature can be built, inspected, called (which runs the task here, directly) and
returned as a result (it is a ``dict``, as in Celery, so it serializes to Celery's JSON).
Sending one (``delay``/``apply_async``) needs a broker, which a guest does not have.
"""

from celery import _state

_NO_BROKER = (
    "{} is not available inside a celeriac guest: a task component has no broker. "
    "Build the canvas in the client instead."
)


class Signature(dict):
    """A task call: name, args, kwargs and options (Celery's ``Signature``)."""

    def __init__(self, task=None, args=None, kwargs=None, options=None, type=None,
                 subtask_type=None, immutable=False, **ex):
        if isinstance(task, dict) and args is None:
            super().__init__(task)
            return
        name = getattr(task, "name", task)
        super().__init__(
            task=name,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}, **ex),
            subtask_type=subtask_type,
            immutable=immutable,
        )
        self._type = type if type is not None and not isinstance(type, str) else None

    @property
    def name(self):
        return self.get("task")

    @property
    def args(self):
        return self.get("args", ())

    @property
    def kwargs(self):
        return self.get("kwargs", {})

    @property
    def options(self):
        return self.get("options", {})

    @property
    def immutable(self):
        return self.get("immutable", False)

    @property
    def type(self):
        task = getattr(self, "_type", None)
        if task is None:
            task = _state.tasks[self.name]
        return task

    def __call__(self, *partial_args, **partial_kwargs):
        """Runs the task here, directly, like Celery's ``Signature.__call__``."""
        args = tuple(self.args) if self.immutable else tuple(partial_args) + tuple(self.args)
        kwargs = dict(self.kwargs) if self.immutable else dict(self.kwargs, **partial_kwargs)
        return self.type(*args, **kwargs)

    def clone(self, args=None, kwargs=None, **opts):
        sig = Signature(dict(self))
        sig._type = getattr(self, "_type", None)
        if args:
            sig["args"] = tuple(args) + tuple(self.args)
        if kwargs:
            sig["kwargs"] = dict(self.kwargs, **kwargs)
        if opts:
            sig["options"] = dict(self.options, **opts)
        return sig

    def set(self, immutable=None, **options):
        if immutable is not None:
            self["immutable"] = immutable
        self["options"] = dict(self.options, **options)
        return self

    def delay(self, *args, **kwargs):
        raise NotImplementedError(_NO_BROKER.format("Signature.delay()"))

    def apply_async(self, args=None, kwargs=None, **options):
        raise NotImplementedError(_NO_BROKER.format("Signature.apply_async()"))

    def apply(self, args=None, kwargs=None, **options):
        raise NotImplementedError(_NO_BROKER.format("Signature.apply()"))

    def link(self, callback):
        self.setdefault("options", {}).setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback):
        self.setdefault("options", {}).setdefault("link_error", []).append(errback)
        return errback

    def __or__(self, other):
        return chain(self, other)

    def __json__(self):
        return dict(self)

    def __repr__(self):
        return "%s(%s, *%r, **%r)" % (type(self).__name__, self.name, tuple(self.args), self.kwargs)


def _flatten(tasks):
    if len(tasks) == 1 and not isinstance(tasks[0], dict) and hasattr(tasks[0], "__iter__"):
        return list(tasks[0])
    return list(tasks)


class chain(Signature):
    """Tasks run one after another (build only, in a guest)."""

    def __init__(self, *tasks, **options):
        super().__init__("celery.chain", (), {"tasks": _flatten(tasks)}, options,
                         subtask_type="chain")

    @property
    def tasks(self):
        return self.kwargs["tasks"]

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(_NO_BROKER.format("chain()"))


class group(Signature):
    """Tasks run in parallel (build only, in a guest)."""

    def __init__(self, *tasks, **options):
        super().__init__("celery.group", (), {"tasks": _flatten(tasks)}, options,
                         subtask_type="group")

    @property
    def tasks(self):
        return self.kwargs["tasks"]

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(_NO_BROKER.format("group()"))


class chord(Signature):
    """A group with a callback (build only, in a guest)."""

    def __init__(self, header, body=None, **options):
        super().__init__("celery.chord", (), {"header": _flatten([header]), "body": body},
                         options, subtask_type="chord")

    def __call__(self, body=None, **kwargs):
        raise NotImplementedError(_NO_BROKER.format("chord()"))


def signature(varies, *args, **kwargs):
    """A :class:`Signature` from a task, a task name or a signature dict."""
    if isinstance(varies, dict) and not args and not kwargs:
        return varies if isinstance(varies, Signature) else Signature(varies)
    return Signature(varies, *args, **kwargs)


subtask = signature


def maybe_signature(d, app=None, clone=False):
    if d is None:
        return None
    if isinstance(d, dict) and not isinstance(d, Signature):
        return Signature(d)
    return d.clone() if clone else d
