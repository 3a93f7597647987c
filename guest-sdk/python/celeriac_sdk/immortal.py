"""The table of snapshot objects that the host makes immortal.

A fresh instance starts from componentize-py's snapshot of the interpreter. Each object a
task touches has its reference count changed, so running a small task writes to a few
hundred pages of the snapshot, scattered over the heap: the host copies each one on its
first write and puts it back after the task, which is most of a fresh instance's cost.

CPython 3.14 does not count references to immortal objects (on 32-bit, a reference count of
at least 2**30). Python code cannot make an object immortal, so :func:`leave_table` leaves
in the snapshot a table of the objects alive at build time, and the host, when it compiles
the component, sets their reference counts in the memory image to CPython's immortal value
(``host/src/link/immortal.rs``). An immortal object is never freed: in an instance that
lives for one task, or for a bounded number of them, nothing is lost.

The table is a ``bytes`` object: a 16-byte marker, then little-endian ``u32``\\ s: the
format version, the number of entries, a checksum (the wrapping sum of the entry words),
and per object its address and its type's address. The host patches an object only where
the image still holds a plausible live header for it (a small reference count and the same
type), so an object freed between this table and the snapshot is left alone.
"""

import gc
import sys
from array import array

MARKER = b"celeriac\x00immortal"
VERSION = 1

#: What keeps the table alive until the snapshot (the host finds it in the image).
_table = None


def _snapshot_objects():
    """Every object the collector tracks, and the untracked objects they refer to (strings,
    numbers, bytes), by address."""
    tracked = gc.get_objects()
    objects = {id(obj): obj for obj in tracked}
    for obj in tracked:
        for referent in gc.get_referents(obj):
            if id(referent) not in objects:
                objects[id(referent)] = referent
    objects.pop(id(tracked), None)
    objects.pop(id(objects), None)
    return objects


def leave_table():
    """Builds the table; call it last, when everything the snapshot keeps is in place.

    Only componentize-py's CPython (3.14, 32-bit) gets one: elsewhere, as in the SDK's own
    tests on the host's Python, there is no snapshot to patch.
    """
    global _table
    if not hasattr(sys, "_is_immortal") or sys.maxsize != 2**31 - 1:
        return
    objects = _snapshot_objects()
    words = array("I")
    for address, obj in sorted(objects.items()):
        if sys._is_immortal(obj):
            continue
        words.append(address)
        words.append(id(type(obj)))
    del objects
    checksum = sum(words) & 0xFFFFFFFF
    header = array("I", [VERSION, len(words) // 2, checksum])
    _table = MARKER + header.tobytes() + words.tobytes()
