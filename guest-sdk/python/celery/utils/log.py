"""Celery's logger helpers. Records reach the host through the root logger's handler,
which ``celeriac_sdk`` installs; the host adds the task's id and name to each line."""

import logging

#: The parent of every task logger, as in Celery.
task_logger = logging.getLogger("celery.task")
#: Celery's own logger.
logger = logging.getLogger("celery")
worker_logger = logging.getLogger("celery.worker")

_RESERVED = {"celery", "celery.task"}


def get_logger(name):
    """``logging.getLogger(name)``."""
    return name if isinstance(name, logging.Logger) else logging.getLogger(name)


def get_task_logger(name):
    """A logger for a task module; its parent is the ``celery.task`` logger."""
    if name in _RESERVED:
        raise RuntimeError("Logger name {!r} is reserved!".format(name))
    log = get_logger(name)
    if log.parent is logging.getLogger() or log.parent is None:
        log.parent = task_logger
    return log
