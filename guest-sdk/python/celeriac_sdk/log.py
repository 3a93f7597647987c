"""Routes Python logging, ``print`` and ``sys.stderr`` to the host's ``context.log``.

:class:`HostLogHandler` sits on the root logger, so every logger (``get_task_logger``,
``logging.getLogger(__name__)``, a library's) reaches the host with its level; the host adds
the task id and name and applies its own level filter. The root logger is set to DEBUG for
that reason.

Like a Celery worker with ``worker_redirect_stdouts`` (on by default), a running task's
``sys.stdout`` and ``sys.stderr`` are replaced by :class:`LoggingProxy` objects that log each
line at WARNING on the ``celery.redirected`` logger.
"""

import io
import logging
import sys

from . import host

#: Every record is sent; the host filters by level.
_FORMAT = "%(message)s"


class HostLogHandler(logging.Handler):
    """A ``logging.Handler`` that sends each record to the host's ``context.log``."""

    def __init__(self, level=logging.NOTSET):
        super().__init__(level)
        self.setFormatter(logging.Formatter(_FORMAT))
        self._emitting = False

    def emit(self, record):
        # A host call that fails must not recurse through a redirected stderr.
        if self._emitting:
            return
        self._emitting = True
        try:
            host.log(record.levelno, self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the task
            pass
        finally:
            self._emitting = False


class LoggingProxy:
    """A write-only text stream that logs each complete line (Celery's ``LoggingProxy``)."""

    mode = "w"
    name = None
    closed = False
    encoding = "utf-8"
    errors = "replace"
    newlines = None

    def __init__(self, logger, loglevel=logging.WARNING):
        self.logger = logger
        self.loglevel = loglevel
        self._buffer = ""

    def write(self, data):
        if not isinstance(data, str):
            data = str(data)
        self._buffer += data
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._emit(line)
        return len(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        if self._buffer:
            line, self._buffer = self._buffer, ""
            self._emit(line)

    def _emit(self, line):
        line = line.rstrip("\r")
        if line.strip():
            self.logger.log(self.loglevel, line)

    def close(self):
        self.flush()

    def isatty(self):
        return False

    def writable(self):
        return True

    def readable(self):
        return False

    def fileno(self):
        raise io.UnsupportedOperation("a task's redirected output has no file descriptor")


_handler = None


def install():
    """Puts :class:`HostLogHandler` on the root logger (once) and opens it to DEBUG."""
    global _handler
    if _handler is not None:
        return _handler
    _handler = HostLogHandler()
    root = logging.getLogger()
    root.addHandler(_handler)
    root.setLevel(logging.DEBUG)
    return _handler


_redirected_logger = logging.getLogger("celery.redirected")


class redirect_stdouts:
    """Context manager: ``sys.stdout``/``sys.stderr`` log at WARNING while a task runs."""

    def __init__(self, loglevel=logging.WARNING):
        self._logger = _redirected_logger
        self._loglevel = loglevel
        self._saved = None

    def __enter__(self):
        self._saved = (sys.stdout, sys.stderr)
        self._proxies = (
            LoggingProxy(self._logger, self._loglevel),
            LoggingProxy(self._logger, self._loglevel),
        )
        sys.stdout, sys.stderr = self._proxies
        return self

    def __exit__(self, *exc_info):
        for proxy in self._proxies:
            proxy.flush()
        sys.stdout, sys.stderr = self._saved
        return False
