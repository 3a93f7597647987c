"""Utilities of Celery's that task modules import."""

import uuid as _uuid


def uuid():
    """A new task id (a random UUID4 as text)."""
    return str(_uuid.uuid4())


gen_unique_id = uuid
