"""Celery's signals. In a guest, ``task_prerun``, ``task_postrun``, ``task_success``,
``task_failure``, ``task_retry`` and ``worker_process_init`` (once per instance, before its
first task) are sent; the others can be connected to but never fire."""

import logging

logger = logging.getLogger("celery.signals")


class Signal:
    """A signal: ``@sig.connect`` (optionally ``sender=``) registers a receiver."""

    def __init__(self, name=None, providing_args=None, use_caching=False):
        self.name = name
        self.receivers = []

    def connect(self, *args, **kwargs):
        """``sig.connect(fun)``, ``@sig.connect`` or ``@sig.connect(sender=...)``."""
        if args and callable(args[0]):
            return self._connect(args[0], **kwargs)

        def decorator(fun):
            return self._connect(fun, **kwargs)

        return decorator

    def _connect(self, receiver, sender=None, weak=True, dispatch_uid=None, **kwargs):
        key = dispatch_uid if dispatch_uid is not None else id(receiver)
        if not any(k == key for k, _, _ in self.receivers):
            self.receivers.append((key, receiver, sender))
        return receiver

    def disconnect(self, receiver=None, sender=None, weak=None, dispatch_uid=None):
        key = dispatch_uid if dispatch_uid is not None else id(receiver)
        before = len(self.receivers)
        self.receivers = [r for r in self.receivers if r[0] != key]
        return len(self.receivers) != before

    def has_listeners(self, sender=None):
        return bool(self.receivers)

    def send(self, sender, **named):
        """Calls every receiver; one that raises is logged and skipped, as in Celery."""
        responses = []
        for _, receiver, only_sender in list(self.receivers):
            if only_sender is not None and only_sender is not sender and only_sender != getattr(sender, "name", sender):
                continue
            try:
                responses.append((receiver, receiver(signal=self, sender=sender, **named)))
            except Exception as exc:  # noqa: BLE001
                logger.exception("Signal handler %r raised: %r", receiver, exc)
                responses.append((receiver, exc))
        return responses

    send_robust = send

    def __repr__(self):
        return "<Signal: {}>".format(self.name)


before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")
task_received = Signal("task_received")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_retry = Signal("task_retry")
task_failure = Signal("task_failure")
task_internal_error = Signal("task_internal_error")
task_revoked = Signal("task_revoked")
task_rejected = Signal("task_rejected")
task_unknown = Signal("task_unknown")
task_sent = Signal("task_sent")
celeryd_init = Signal("celeryd_init")
celeryd_after_setup = Signal("celeryd_after_setup")
import_modules = Signal("import_modules")
worker_init = Signal("worker_init")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")
worker_shutting_down = Signal("worker_shutting_down")
heartbeat_sent = Signal("heartbeat_sent")
setup_logging = Signal("setup_logging")
after_setup_logger = Signal("after_setup_logger")
after_setup_task_logger = Signal("after_setup_task_logger")
beat_init = Signal("beat_init")
beat_embedded_init = Signal("beat_embedded_init")
user_preload_options = Signal("user_preload_options")
