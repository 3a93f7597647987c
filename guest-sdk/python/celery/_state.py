"""Process-wide state of the shim: the task registry, the current app and the task stack.

A guest is one process serving every task its module registers, whatever app registered it,
so there is a single registry shared by all ``Celery`` instances and ``shared_task``.
"""

from .local import Proxy

#: Every registered task, by Celery name.
tasks = {}

#: Every ``Celery`` instance created, oldest first.
apps = []

_current_app = None
_task_stack = []


def set_current_app(app):
    global _current_app
    _current_app = app


def get_current_app():
    """The current app; a default one is created when the module made none."""
    if _current_app is None:
        from .app.base import Celery

        Celery("default", set_as_current=True)
    return _current_app


def get_current_task():
    """The task whose body is running (``None`` outside a task)."""
    return _task_stack[-1] if _task_stack else None


def push_task(task):
    _task_stack.append(task)


def pop_task():
    if _task_stack:
        _task_stack.pop()


current_app = Proxy(get_current_app, "current_app")
current_task = Proxy(get_current_task, "current_task")
