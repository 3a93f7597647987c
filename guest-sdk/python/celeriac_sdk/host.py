"""The host's ``context`` interface, usable only while a task runs.

Host functions cannot be called while componentize-py snapshots the module (at build time),
so every call checks that a task is running; outside one, log lines go to ``sys.__stderr__``
and ``update_state`` / ``time_left_ms`` have nothing to talk to.
"""

import sys

from wit_world.imports import context as _context
from wit_world.imports import types as _types

#: True while ``WitWorld.run`` is executing a task, the only time the host answers.
active = False


def log_level(levelno):
    """The WIT ``log-level`` for a ``logging`` level number."""
    if levelno >= 50:
        return _types.LogLevel.CRITICAL
    if levelno >= 40:
        return _types.LogLevel.ERROR
    if levelno >= 30:
        return _types.LogLevel.WARNING
    if levelno >= 20:
        return _types.LogLevel.INFO
    return _types.LogLevel.DEBUG


def log(levelno, message):
    """Sends one log line to the host (to stderr when no task is running)."""
    if active:
        _context.log(log_level(levelno), message)
    else:
        stream = sys.__stderr__
        if stream is not None:
            stream.write(message + "\n")
            stream.flush()


def update_state(state, meta_json):
    """Celery's ``update_state`` for the running task; ``False`` when no task is running."""
    if not active:
        return False
    _context.update_state(state, meta_json)
    return True


def time_left_ms():
    """Milliseconds before the (soft) time limit, or ``None`` (no limit, or no task running)."""
    if not active:
        return None
    return _context.time_left_ms()
