"""Celery's task state names (``from celery import states``)."""

#: The task is waiting to run, or is unknown.
PENDING = "PENDING"
#: The task was received by a worker (only with events).
RECEIVED = "RECEIVED"
#: The task has started (only with ``track_started``).
STARTED = "STARTED"
#: The task succeeded.
SUCCESS = "SUCCESS"
#: The task failed.
FAILURE = "FAILURE"
#: The task was revoked.
REVOKED = "REVOKED"
#: The task was rejected (only used in events).
REJECTED = "REJECTED"
#: The task is waiting to be retried.
RETRY = "RETRY"
IGNORED = "IGNORED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED})

#: The order Celery ranks states in; custom states rank like "unknown" (just below FAILURE).
PRECEDENCE = [SUCCESS, FAILURE, None, REVOKED, STARTED, RECEIVED, REJECTED, RETRY, PENDING]
_PRECEDENCE_INDEX = {state: index for index, state in enumerate(PRECEDENCE)}
_UNKNOWN_INDEX = PRECEDENCE.index(None)


def precedence(state):
    """The precedence index of ``state``; lower means more important."""
    return _PRECEDENCE_INDEX.get(state, _UNKNOWN_INDEX)


class state(str):
    """A state name that compares by precedence (``state(SUCCESS) > state(PENDING)``)."""

    def __gt__(self, other):
        return precedence(self) < precedence(other)

    def __ge__(self, other):
        return precedence(self) <= precedence(other)

    def __lt__(self, other):
        return precedence(self) > precedence(other)

    def __le__(self, other):
        return precedence(self) >= precedence(other)
