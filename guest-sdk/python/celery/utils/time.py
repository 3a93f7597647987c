"""Time helpers of Celery's that tasks use: the retry backoff formula."""

import random


def get_exponential_backoff_interval(factor, retries, maximum, full_jitter=False):
    """Seconds to wait before retry number ``retries + 1``: ``factor * 2**retries``, at most
    ``maximum``; with ``full_jitter``, a random whole number between 0 and that value."""
    interval = min(maximum, factor * (2 ** retries))
    if full_jitter:
        interval = random.randrange(int(interval) + 1)
    return max(0, interval)
