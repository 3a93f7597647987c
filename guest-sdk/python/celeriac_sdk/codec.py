"""Kombu's JSON, as Celery's default ``json`` serializer writes and reads it.

Values Python's ``json`` cannot carry travel as an object with exactly two keys, ``__type__``
and ``__value__`` (kombu >= 5.3):

=================  ==========================================================
Python value       marker
=================  ==========================================================
``datetime``       ``{"__type__": "datetime", "__value__": "<isoformat()>"}``
``date``           ``{"__type__": "date", "__value__": "2024-01-02"}``
``time``           ``{"__type__": "time", "__value__": "03:04:05"}``
``Decimal``        ``{"__type__": "decimal", "__value__": "1.10"}``
``UUID``           ``{"__type__": "uuid", "__value__": {"hex": "<32 hex digits>"}}``
UTF-8 ``bytes``    ``{"__type__": "bytes", "__value__": "<text>"}``
other ``bytes``    ``{"__type__": "base64", "__value__": "<standard base64>"}``
=================  ==========================================================

Objects with a ``__json__()`` method are written as what it returns. ``NaN`` and
``Infinity`` are allowed both ways, as in Python's ``json``. Decoding is bottom-up: nested
markers are decoded before the object that holds them. An unknown ``__type__`` is an
error, as it is for kombu.
"""

import base64
import binascii
import json
import uuid
from datetime import date, datetime, time
from decimal import Decimal

__all__ = ["dumps", "loads", "encode_marker", "decode_marker"]


def _decode_uuid(value):
    if isinstance(value, dict):
        return uuid.UUID(hex=value["hex"])
    return uuid.UUID(str(value))


def _decode_base64(value):
    return base64.b64decode(value.encode("ascii") if isinstance(value, str) else value)


def _decode_bytes(value):
    return value.encode("utf-8")


#: marker name -> function turning ``__value__`` back into the Python value.
_DECODERS = {
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "decimal": Decimal,
    "uuid": _decode_uuid,
    "bytes": _decode_bytes,
    "base64": _decode_base64,
}


def decode_marker(obj):
    """The ``object_hook``: turns a ``{"__type__", "__value__"}`` object into its value."""
    if len(obj) == 2 and "__type__" in obj and "__value__" in obj:
        kind = obj["__type__"]
        decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
        if decoder is None:
            raise ValueError("Unsupported type", kind, obj["__value__"])
        try:
            return decoder(obj["__value__"])
        except (ValueError, TypeError, KeyError, ArithmeticError, binascii.Error) as exc:
            raise ValueError("Invalid %s value: %r" % (kind, obj["__value__"])) from exc
    return obj


def encode_marker(obj):
    """The ``default`` hook: the marker (or ``__json__()``) for a value ``json`` cannot write.

    Raises ``TypeError`` for anything else, as ``json`` does.
    """
    # datetime is a subclass of date: test it first.
    if isinstance(obj, datetime):
        return {"__type__": "datetime", "__value__": obj.isoformat()}
    if isinstance(obj, date):
        return {"__type__": "date", "__value__": obj.isoformat()}
    if isinstance(obj, time):
        return {"__type__": "time", "__value__": obj.isoformat()}
    if isinstance(obj, Decimal):
        return {"__type__": "decimal", "__value__": str(obj)}
    if isinstance(obj, uuid.UUID):
        return {"__type__": "uuid", "__value__": {"hex": obj.hex}}
    if isinstance(obj, (bytes, bytearray, memoryview)):
        raw = bytes(obj)
        try:
            return {"__type__": "bytes", "__value__": raw.decode("utf-8")}
        except UnicodeDecodeError:
            return {"__type__": "base64", "__value__": base64.b64encode(raw).decode("ascii")}
    to_json = getattr(obj, "__json__", None)
    if to_json is not None and callable(to_json):
        return to_json()
    raise TypeError("Object of type %s is not JSON serializable" % type(obj).__name__)


# Built once: ``json.dumps``/``json.loads`` with hooks build a new encoder or decoder on
# every call, which costs more than encoding a small task result.
_ENCODER = json.JSONEncoder(default=encode_marker, allow_nan=True)
_DECODER = json.JSONDecoder(object_hook=decode_marker)


def dumps(value):
    """``value`` as kombu JSON text (ASCII-only, NaN/Infinity allowed)."""
    return _ENCODER.encode(value)


def loads(text):
    """Kombu JSON text as Python values, markers decoded."""
    return _DECODER.decode(text)
