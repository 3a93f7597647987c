"""Periodic schedules, so a module that configures ``beat_schedule`` still imports.

celeriac does not run beat; these only keep their arguments.
"""

from datetime import timedelta


class schedule:
    """Every ``run_every`` (seconds or ``timedelta``)."""

    def __init__(self, run_every=None, relative=False, nowfun=None, app=None):
        if isinstance(run_every, (int, float)):
            run_every = timedelta(seconds=run_every)
        self.run_every = run_every
        self.relative = relative

    def __repr__(self):
        return "<freq: {}>".format(self.run_every)


class crontab(schedule):
    """A cron-like schedule (fields as in Celery)."""

    def __init__(self, minute="*", hour="*", day_of_week="*", day_of_month="*",
                 month_of_year="*", **kwargs):
        super().__init__()
        self.minute = minute
        self.hour = hour
        self.day_of_week = day_of_week
        self.day_of_month = day_of_month
        self.month_of_year = month_of_year

    def __repr__(self):
        return "<crontab: {} {} {} {} {} (m/h/dM/MY/d)>".format(
            self.minute, self.hour, self.day_of_month, self.month_of_year, self.day_of_week
        )


class solar(schedule):
    """A schedule following the sun (``event`` at ``lat``, ``lon``)."""

    def __init__(self, event, lat, lon, **kwargs):
        super().__init__()
        self.event, self.lat, self.lon = event, lat, lon


def maybe_schedule(s, relative=False, app=None):
    if isinstance(s, (int, float, timedelta)):
        return schedule(s, relative)
    return s
