"""A minimal lazy proxy (Celery's ``celery.local.Proxy``), used for ``current_app``/``current_task``."""


class Proxy:
    """Forwards attribute access, calls and truth tests to what ``getter()`` returns."""

    __slots__ = ("_Proxy__getter", "__name__")

    def __init__(self, getter, name=None):
        object.__setattr__(self, "_Proxy__getter", getter)
        object.__setattr__(self, "__name__", name or getattr(getter, "__name__", "proxy"))

    def _get_current_object(self):
        return self.__getter()

    def __getattr__(self, name):
        return getattr(self._get_current_object(), name)

    def __setattr__(self, name, value):
        setattr(self._get_current_object(), name, value)

    def __call__(self, *args, **kwargs):
        return self._get_current_object()(*args, **kwargs)

    def __bool__(self):
        return bool(self._get_current_object())

    def __eq__(self, other):
        return self._get_current_object() == other

    def __ne__(self, other):
        return self._get_current_object() != other

    def __hash__(self):
        return hash(self._get_current_object())

    def __repr__(self):
        return repr(self._get_current_object())

    def __str__(self):
        return str(self._get_current_object())
