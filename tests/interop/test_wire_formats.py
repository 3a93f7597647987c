"""What a Celery 5.7 client may choose per message (serializer, compression) and the values
kombu's JSON carries: each task comes back from `celeriac worker` with exactly the result a
Python worker would give."""

import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest

TIMEOUT = 30

#: Plain values every serializer carries (no bytes, no datetimes).
PLAIN_ARGS = (1, -(2**40), 2.5, "ünïcode 😀", None, True, [1, [2, {"k": "v"}]], {"x": [False]})
PLAIN_KWARGS = {"clé": {"nested": [0.125, "x"]}, "empty": {}}


@pytest.fixture(scope="module")
def wire_app(make_client):
    """A client that may send and read msgpack and YAML as well as JSON."""
    formats = ["json", "msgpack", "yaml"]
    return make_client(accept_content=formats, result_accept_content=formats)


@pytest.fixture
def envelope_of(redis_client, unique_queue):
    """`envelope_of(client, **options)` publishes `tasks.echo` with `options` to a queue no
    worker consumes and returns the Redis envelope the client left there: proof of what
    the same options put on the wire."""

    def publish(client, **options):
        client.send_task("tasks.echo", args=PLAIN_ARGS, queue=unique_queue, **options)
        raw = redis_client.lindex(unique_queue, 0)
        assert raw is not None, f"nothing was queued on {unique_queue}"
        return json.loads(raw)

    return publish


def echoed(args, kwargs=None):
    return {"args": list(args), "kwargs": kwargs or {}}


@pytest.mark.parametrize(
    "serializer, content_type",
    [("msgpack", "application/x-msgpack"), ("yaml", "application/x-yaml")],
)
def test_a_task_serialized_as_msgpack_or_yaml_returns_its_result(
    wire_app, celeriac_worker, envelope_of, serializer, content_type
):
    assert envelope_of(wire_app, serializer=serializer)["content-type"] == content_type
    result = wire_app.send_task(
        "tasks.echo", args=PLAIN_ARGS, kwargs=PLAIN_KWARGS, serializer=serializer
    )
    assert result.get(timeout=TIMEOUT) == echoed(PLAIN_ARGS, PLAIN_KWARGS)


def test_msgpack_binary_arguments_come_back_as_bytes(wire_app, celeriac_worker):
    # msgpack carries bytes natively; a Python worker echoes them and its JSON result holds
    # kombu bytes markers, which the client turns back into bytes.
    args = (b"abc", b"\xff\x00\x80")
    result = wire_app.send_task("tasks.echo", args=args, serializer="msgpack")
    assert result.get(timeout=TIMEOUT) == echoed(args)


@pytest.mark.parametrize(
    "compression, header",
    [
        ("gzip", "application/x-gzip"),
        ("bzip2", "application/x-bz2"),
        ("lzma", "application/x-lzma"),
        ("zstd", "application/zstd"),
    ],
)
def test_a_compressed_task_returns_its_result(
    app, celeriac_worker, envelope_of, compression, header
):
    assert envelope_of(app, compression=compression)["headers"]["compression"] == header
    args = ("compressible " * 1000, "ünïcode 😀")
    result = app.send_task("tasks.echo", args=args, compression=compression)
    assert result.get(timeout=TIMEOUT) == echoed(args)


def test_compression_and_serializer_combine(wire_app, celeriac_worker, envelope_of):
    envelope = envelope_of(wire_app, serializer="msgpack", compression="zstd")
    assert (envelope["content-type"], envelope["headers"]["compression"]) == (
        "application/x-msgpack",
        "application/zstd",
    )
    result = wire_app.send_task(
        "tasks.echo", args=PLAIN_ARGS, kwargs=PLAIN_KWARGS, serializer="msgpack", compression="zstd"
    )
    assert result.get(timeout=TIMEOUT) == echoed(PLAIN_ARGS, PLAIN_KWARGS)


#: Characters that break naive text handling: beyond the BMP (surrogate pairs in JSON), a
#: zero-width-joiner sequence, a combining mark that must not be normalized away, right-to-left
#: text, a NUL and other control characters.
TRICKY_TEXT = [
    "😀🎉𝄞",
    "👩\u200d👩\u200d👧",
    "e\u0301 is not \u00e9",
    "漢字 עברית العربية",
    "nul\x00tab\tnewline\n\u2028",
]


def test_unicode_arguments_round_trip_unchanged(app, celeriac_worker):
    kwargs = {"😀": TRICKY_TEXT[0], "ключ": "e\u0301"}
    result = app.send_task("tasks.echo", args=TRICKY_TEXT, kwargs=kwargs)
    got = result.get(timeout=TIMEOUT)
    assert got == echoed(TRICKY_TEXT, kwargs)
    # Equality in Python is per code point, so this also proves nothing was normalized.
    assert [len(text) for text in got["args"]] == [len(text) for text in TRICKY_TEXT]


def test_a_lone_surrogate_reaches_the_task_and_comes_back(app, celeriac_worker):
    # Python's json writes "\ud800" for such a str; a Python worker echoes it unchanged.
    lone = "a\ud800b"
    result = app.send_task("tasks.echo", args=(lone,))
    assert result.get(timeout=TIMEOUT) == echoed((lone,))


def test_a_one_megabyte_string_round_trips(app, celeriac_worker):
    chunk = "abcdefghijkl\u00e9e\u0301😀"  # 16 code points, 37 bytes of kombu JSON
    big = chunk * (1 << 16)
    assert len(big) == 1 << 20
    result = app.send_task("tasks.echo", args=(big,))
    got = result.get(timeout=TIMEOUT)
    assert got["args"][0] == big, "the 1 MiB string came back changed"
    assert got == echoed((big,))


#: Every type kombu's JSON marks with `__type__`/`__value__`. A Python worker decodes them
#: into objects, and `echo` returns those, so its JSON result marks them again and the
#: client decodes the same values.
TYPED_VALUES = {
    "utc datetime": dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc),
    "offset datetime": dt.datetime(2024, 2, 29, 23, 59, 59, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    "naive datetime": dt.datetime(2024, 1, 2, 3, 4, 5),
    "date": dt.date(2024, 2, 29),
    "time": dt.time(23, 59, 58, 123),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal": Decimal("1.10"),
    "tiny decimal": Decimal("-0.000001"),
    "exponent decimal": Decimal("1E+3"),
    "utf-8 bytes": b"abc",
    "binary bytes": b"\xff\x00",
}


def test_kombu_typed_values_round_trip_with_their_types(app, celeriac_worker):
    args = tuple(TYPED_VALUES.values())
    kwargs = {"nested": {"when": [TYPED_VALUES["utc datetime"]], "amount": Decimal("0.10")}}
    result = app.send_task("tasks.echo", args=args, kwargs=kwargs)
    got = result.get(timeout=TIMEOUT)
    assert got == echoed(args, kwargs)
    # == treats Decimal("1.10") and Decimal("1.1") as equal; repr also compares the exponent,
    # the tzinfo and the exact type of each value.
    assert repr(got) == repr(echoed(args, kwargs))


def test_yaml_binary_arguments_come_back_as_bytes(wire_app, celeriac_worker):
    # yaml.safe_dump writes bytes as `!!binary` nodes, which yaml.safe_load turns back into
    # bytes; a Python worker echoes them and its JSON result marks them for the client.
    args = (b"abc", b"\xff\x00\x80", b"x" * 100, "!!binary not a tag")
    result = wire_app.send_task("tasks.echo", args=args, serializer="yaml")
    assert result.get(timeout=TIMEOUT) == echoed(args)


def test_yaml_timestamps_come_back_as_datetimes(wire_app, celeriac_worker):
    # yaml.safe_dump writes datetimes and dates as plain scalars and yaml.safe_load turns
    # them back into objects; a string of the same shape is written quoted and stays a str.
    datetimes = tuple(
        TYPED_VALUES[name] for name in ("utc datetime", "offset datetime", "naive datetime", "date")
    )
    negative_offset = dt.datetime(1999, 12, 31, 23, 59, 59, 500000, tzinfo=dt.timezone(-dt.timedelta(hours=8)))
    args = (*datetimes, negative_offset, "2024-01-02", "2024-01-02 03:04:05+00:00")
    kwargs = {"when": {"at": [TYPED_VALUES["date"]]}}
    result = wire_app.send_task("tasks.echo", args=args, kwargs=kwargs, serializer="yaml")
    assert repr(result.get(timeout=TIMEOUT)) == repr(echoed(args, kwargs))


def test_kombu_bytes_markers_carry_the_exact_bytes(app, celeriac_worker):
    # Every byte value once, so no base64 edge (padding, '+', '/') goes untested.
    every_byte = bytes(range(256))
    result = app.send_task("tasks.echo", args=(every_byte,))
    assert result.get(timeout=TIMEOUT) == echoed((every_byte,))
