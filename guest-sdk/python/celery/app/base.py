"""The ``Celery`` application object, reduced to what a task module uses.

Configuration is kept (``app.conf``) but a guest does not connect anywhere: ``broker=`` and
``backend=`` are stored and otherwise ignored. ``include=``, the ``imports`` setting and
``autodiscover_tasks`` are honoured when the component is built: the SDK imports those
modules so their tasks are registered too.
"""

import importlib
import inspect
import logging
import sys
import types

from celery import _state
from celery.app.task import Task
from celery.exceptions import NotRegistered
from celery.signals import Signal

logger = logging.getLogger("celery.app")

_NO_BROKER = "{} is not available inside a celeriac guest: a task component has no broker."


class Settings(dict):
    """``app.conf``: a dict whose keys can also be read and written as attributes.

    Unknown lowercase settings read as ``None``.
    """

    def __getattr__(self, key):
        if key.startswith("__"):
            raise AttributeError(key)
        return self.get(key)

    def __setattr__(self, key, value):
        self[key] = value

    def __delattr__(self, key):
        try:
            del self[key]
        except KeyError:
            raise AttributeError(key) from None

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        return super().setdefault(key, default)

    def find_option(self, name, namespace=""):
        return namespace, name, self.get(name)

    def get_by_parts(self, *parts):
        return self.get("_".join(part for part in parts if part))


def _symbol_by_name(name):
    """``"pkg.module:Attr"`` or ``"pkg.module.Attr"`` -> the object."""
    if not isinstance(name, str):
        return name
    module_name, sep, attr = name.partition(":")
    if not sep:
        module_name, _, attr = name.rpartition(".")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def gen_task_name(app, name, module_name):
    """Celery's default task name: ``module.function`` (``main.function`` for ``__main__``)."""
    module_name = module_name or "__main__"
    module = sys.modules.get(module_name)
    if module is not None:
        module_name = module.__name__
    if module_name == "__main__" and app.main:
        return "%s.%s" % (app.main, name)
    return ".".join(part for part in (module_name, name) if part)


class Celery:
    """A Celery app. Every app in a guest shares one task registry (``app.tasks``)."""

    def __init__(self, main=None, loader=None, backend=None, amqp=None, events=None, log=None,
                 control=None, set_as_current=True, tasks=None, broker=None, include=None,
                 changes=None, config_source=None, fixups=None, task_cls=None,
                 autofinalize=True, namespace=None, strict_typing=True, **kwargs):
        self.main = main
        self.namespace = namespace
        self.strict_typing = strict_typing
        self.conf = Settings(changes or {})
        for key, value in kwargs.items():
            self.conf[key] = value
        if broker is not None:
            self.conf["broker_url"] = broker
        if backend is not None:
            self.conf["result_backend"] = backend
        if include:
            self.conf["include"] = tuple(include)
        self._autodiscover = []
        base = _symbol_by_name(task_cls) if task_cls is not None else Task
        self.Task = type("Task", (base,), {"app": self, "__module__": base.__module__,
                                           "__qualname__": base.__qualname__})
        self.on_configure = Signal("app.on_configure")
        self.on_after_configure = Signal("app.on_after_configure")
        self.on_after_finalize = Signal("app.on_after_finalize")
        self.on_after_fork = Signal("app.on_after_fork")
        self.finalized = False
        self.periodic_tasks = []
        if config_source is not None:
            self.config_from_object(config_source)
        _state.apps.append(self)
        if set_as_current or _state._current_app is None:
            _state.set_current_app(self)

    # -- configuration (kept; nothing connects) -------------------------------------------
    def config_from_object(self, obj, silent=False, force=False, namespace=None):
        """Copies the public attributes of ``obj`` (a module, an object or its import path)."""
        if isinstance(obj, str):
            try:
                obj = _symbol_by_name(obj)
            except (ImportError, AttributeError) as exc:
                if not silent:
                    logger.warning("config_from_object(%r) ignored: %s", obj, exc)
                return False
        prefix = "%s_" % namespace if namespace else ""
        for key in dir(obj):
            if key.startswith("_") or not key.startswith(prefix):
                continue
            value = getattr(obj, key)
            if isinstance(obj, types.ModuleType) and (
                inspect.ismodule(value) or inspect.isfunction(value) or inspect.isclass(value)
            ):
                continue  # what a config module imports or defines, not settings
            name = key[len(prefix):]
            self.conf[name.lower() if prefix else name] = value
        return True

    def config_from_envvar(self, variable_name, silent=False, force=False):
        return False

    def config_from_cmdline(self, argv, namespace="celery"):
        return None

    def add_defaults(self, fun):
        if callable(fun):
            fun = fun()
        self.conf.update(fun)

    def autodiscover_tasks(self, packages=None, related_name="tasks", force=False):
        """Remembers the packages; the SDK imports ``<package>.<related_name>`` at build time."""
        self._autodiscover.append((packages, related_name))

    def setup_security(self, *args, **kwargs):
        pass

    # -- tasks ----------------------------------------------------------------------------
    @property
    def tasks(self):
        """The task registry: name -> task."""
        return _state.tasks

    def task(self, *args, **opts):
        """``@app.task``, ``@app.task(**options)`` or ``app.task(fun, **options)``."""
        if len(args) == 1 and callable(args[0]):
            return self._task_from_fun(args[0], **opts)
        if args:
            raise TypeError(
                "@task() takes exactly 1 argument ({} given)".format(sum([len(args), len(opts)]))
            )

        def decorator(fun):
            return self._task_from_fun(fun, **opts)

        return decorator

    def _task_from_fun(self, fun, name=None, base=None, bind=False, shared=True, filter=None,
                       lazy=True, **options):
        name = name or gen_task_name(self, fun.__name__, fun.__module__)
        existing = _state.tasks.get(name)
        if existing is not None and getattr(type(existing), "_celeriac_fun", None) is fun:
            return existing
        base = _symbol_by_name(base) if base is not None else self.Task
        run = fun if bind else staticmethod(fun)
        attrs = dict(options)
        attrs.update(
            app=self,
            name=name,
            run=run,
            _decorated=True,
            _celeriac_fun=fun,
            _celeriac_bound=bool(bind),
            __doc__=fun.__doc__,
            __module__=fun.__module__,
            __qualname__=getattr(fun, "__qualname__", fun.__name__),
            __wrapped__=run,
        )
        task = type(fun.__name__, (base,), attrs)()
        task.__name__ = fun.__name__
        _state.tasks[name] = task
        return task

    def register_task(self, task, **options):
        """Registers a class-based task (an instance or a ``Task`` subclass)."""
        if isinstance(task, type):
            task = task()
        if task.name is None:
            task.name = gen_task_name(self, type(task).__name__, type(task).__module__)
        if task.app is None:
            task.app = self
        _state.tasks[task.name] = task
        return task

    def signature(self, *args, **kwargs):
        from celery.canvas import signature

        return signature(*args, **kwargs)

    def send_task(self, name, args=None, kwargs=None, **options):
        raise NotImplementedError(_NO_BROKER.format("app.send_task(%r)" % (name,)))

    def AsyncResult(self, task_id, **kwargs):
        raise NotImplementedError(_NO_BROKER.format("AsyncResult"))

    def add_periodic_task(self, schedule, sig, args=(), kwargs=(), name=None, **opts):
        """Kept for inspection; celeriac does not run beat."""
        self.periodic_tasks.append((schedule, sig, name))
        return name

    # -- lifecycle ------------------------------------------------------------------------
    def finalize(self, auto=False):
        self.finalized = True

    def set_current(self):
        _state.set_current_app(self)

    def set_default(self):
        _state.set_current_app(self)

    def close(self):
        pass

    def start(self, argv=None):
        raise NotImplementedError("app.start() has no meaning in a celeriac guest")

    def worker_main(self, argv=None):
        raise NotImplementedError("app.worker_main() has no meaning in a celeriac guest")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return "<Celery {} at {:#x}>".format(self.main or "__main__", id(self))

    # -- used by the SDK ------------------------------------------------------------------
    def _modules_to_import(self):
        """Module names that a worker would import for this app."""
        names = list(self.conf.get("include") or ()) + list(self.conf.get("imports") or ())
        for packages, related_name in self._autodiscover:
            if callable(packages):
                try:
                    packages = packages()
                except Exception as exc:  # noqa: BLE001
                    logger.warning("autodiscover_tasks: %s", exc)
                    continue
            for package in packages or ():
                names.append((package, related_name))
        return names


def _import_task_modules():
    """Imports every app's ``include``/``imports``/autodiscovered modules (build time)."""
    for app in list(_state.apps):
        for entry in app._modules_to_import():
            if isinstance(entry, tuple):
                package, related_name = entry
                name = "%s.%s" % (package, related_name) if related_name else package
                try:
                    importlib.import_module(name)
                except ModuleNotFoundError as exc:
                    # Like Celery: a package without a tasks module is fine.
                    if exc.name not in (name, package):
                        raise
            else:
                importlib.import_module(entry)


__all__ = ["Celery", "Settings", "gen_task_name", "NotRegistered"]
