"""``celery.app``: the app class and ``shared_task``."""

from celery import _state
from celery._state import current_app, current_task
from celery.app.base import Celery


def shared_task(*args, **kwargs):
    """A task usable with any app (``@shared_task``, ``@shared_task(**options)``).

    A guest has a single registry, so this registers the task with the current app.
    """

    def create(fun):
        return _state.get_current_app()._task_from_fun(fun, _shared=True, **kwargs)

    if len(args) == 1 and callable(args[0]):
        return create(args[0])
    if args:
        raise TypeError("@shared_task() takes exactly 1 argument")
    return create


__all__ = ["Celery", "shared_task", "current_app", "current_task"]
