"""celeriac's stand-in for the ``celery`` package, for task modules built into components.

It lets an unmodified Celery task module (``app = Celery(...)``, ``@app.task``,
``@shared_task``, ``bind=True``, ``self.retry``, ``self.update_state``, ``Ignore``,
``Reject``, ``get_task_logger``, ``states``...) compile with componentize-py and run inside
the celeriac worker. Only the task-side API is here: there is no broker, so sending tasks
(``delay``, ``apply_async``, ``send_task``, canvas ``apply_async``) raises
``NotImplementedError``. Pure Python only: C extension modules cannot be loaded in a
component. See ``guest-sdk/python/README.md``.
"""

from celery import states  # noqa: F401  (``from celery import states``)
from celery._state import current_app, current_task
from celery.app import shared_task
from celery.app.base import Celery
from celery.app.task import Task
from celery.canvas import chain, chord, group, maybe_signature, signature, subtask, Signature
from celery.utils import uuid

#: The Celery API version this shim follows.
__version__ = "5.5.0"
VERSION = (5, 5, 0)

__all__ = [
    "Celery", "Task", "shared_task", "current_app", "current_task", "states",
    "Signature", "signature", "subtask", "maybe_signature", "chain", "chord", "group", "uuid",
]
