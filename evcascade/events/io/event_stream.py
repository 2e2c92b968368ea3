"""Event Stream (``.es``, neuromorphic-paris/event_stream, version 2.x), DVS streams.

Layout (https://github.com/neuromorphic-paris/event_stream, "Version 2.0")::

    bytes 0-11   "Event Stream"          bytes 12-14  major, minor, patch version
    byte 15      stream type (0x01 = DVS; generic, ATIS, display and colour streams are not read)
    bytes 16-19  width, height            uint16 little-endian each
    then a byte stream read by a state machine, from the idle state:
      0xFF  overflow: the next event's time step gains 127 us
      0xFE  reset (ignored)
      else  byte 0 of an event: [7:1] time step since the previous event (us), [0] is_increase,
            followed by x (uint16 LE) and y (uint16 LE), 5 bytes in all (inside an event 0xFE/0xFF are data)

Times start at 0 at the first byte and are the running sum of the steps. The format has no index:
a window read decodes from the start (in 4 MiB chunks, the state carried across chunks) and stops
at the first chunk that reaches the window's end. Finding event starts is a byte walk (one step per
event or overflow byte, in Python); gathering the fields is vectorised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.events.io.common import EventFileInfo, assemble
from evcascade.events.io.registry import EventFormat

MAGIC = b"Event Stream"
_HEADER_BYTES = 20
_CHUNK_BYTES = 1 << 22
_OVERFLOW_US = 127
_STREAM_TYPES = {0: "generic", 1: "DVS", 2: "ATIS", 3: "asynchronous & modular display", 4: "color"}


class _Chunk(NamedTuple):
    x: np.ndarray
    y: np.ndarray
    t_us: np.ndarray
    p: np.ndarray


def read_header(path: Path) -> tuple[int, int]:
    """(width, height) of a DVS Event Stream 2.x file; other versions and stream types are an InputError."""
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_BYTES)
    if not head.startswith(MAGIC):
        raise InputError(f"{str(path)!r} is not an Event Stream file (no 'Event Stream' signature)")
    if len(head) < 16:
        raise InputError(f"{str(path)!r}: Event Stream header is truncated")
    major, minor, patch, kind = head[12], head[13], head[14], head[15]
    if major != 2:
        raise InputError(f"{str(path)!r}: Event Stream version {major}.{minor}.{patch}; only version 2.x is read")
    if kind != 1:
        raise InputError(
            f"{str(path)!r}: Event Stream of {_STREAM_TYPES.get(kind, f'unknown type {kind}')} events; only DVS streams are read"
        )
    if len(head) < _HEADER_BYTES:
        raise InputError(f"{str(path)!r}: Event Stream header is truncated (no width/height)")
    width, height = np.frombuffer(head, "<u2", count=2, offset=16)
    return int(width), int(height)


def _event_starts(data: bytes) -> tuple[list[int], list[int], int]:
    """Event start offsets, the overflow count before each, and where the next chunk must resume.

    The walk stops before an event cut by the chunk's end; overflow bytes not yet followed by an
    event are left for the next chunk too (they belong to its first event).
    """
    starts: list[int] = []
    overflows: list[int] = []
    pending, pending_from = 0, 0
    i, n = 0, len(data)
    while i < n:
        byte = data[i]
        if byte == 0xFF:
            pending_from = i if pending == 0 else pending_from
            pending += 1
            i += 1
        elif byte == 0xFE:
            i += 1
        elif i + 5 <= n:
            starts.append(i)
            overflows.append(pending)
            pending = 0
            i += 5
        else:
            break
    return starts, overflows, (pending_from if pending else i)


def _decode(path: Path) -> Iterator[_Chunk]:
    """Decoded chunks of the file, in order, with times carried across chunks."""
    t_last = 0
    carry = b""
    with open(path, "rb") as handle:
        handle.seek(_HEADER_BYTES)
        while True:
            block = handle.read(_CHUNK_BYTES)
            data = carry + block
            if not data:
                return
            starts, overflows, stop = _event_starts(data)
            carry = data[stop:]
            if not block:
                if carry.strip(b"\xff\xfe"):
                    raise InputError(f"{str(path)!r}: Event Stream ends inside an event (truncated?)")
                carry = b""
            if starts:
                raw = np.frombuffer(data, np.uint8)
                at = np.asarray(starts, np.int64)  # [n] offsets of byte 0
                steps = (raw[at] >> 1).astype(np.int64) + _OVERFLOW_US * np.asarray(overflows, np.int64)
                t_us = t_last + np.cumsum(steps)
                t_last = int(t_us[-1])
                x = raw[at + 1].astype(np.int64) | (raw[at + 2].astype(np.int64) << 8)
                y = raw[at + 3].astype(np.int64) | (raw[at + 4].astype(np.int64) << 8)
                yield _Chunk(x, y, t_us, (raw[at] & 1).astype(np.int64))
            if not block:
                return


def _read(path: Path, start_us, end_us, *, kind, sort, sensor_size, options) -> Events:
    size = read_header(path)
    parts: list[_Chunk] = []
    for chunk in _decode(path):
        parts.append(chunk)
        if end_us is not None and chunk.t_us[-1] >= end_us:
            break  # times only grow: the window is complete
    x, y, t_us, p = (np.concatenate([c[i] for c in parts]) if parts else np.zeros(0, np.int64) for i in range(4))
    return assemble(str(path), x, y, t_us, p, sensor_size or size, start_us=start_us, end_us=end_us, sort=sort)


def _info(path: Path, *, kind, options) -> EventFileInfo:
    """Summary of an ``.es`` file; it has no index, so this decodes it all (in bounded memory)."""
    size = read_header(path)
    first = last = None
    n = 0
    for chunk in _decode(path):
        first = int(chunk.t_us[0]) if first is None else first
        last = int(chunk.t_us[-1])
        n += int(chunk.t_us.shape[0])
    return EventFileInfo(path, "es", size, first, None if last is None else last + 1, n)


def _sniff(path: Path, head: bytes) -> str | None:
    return "es" if head.startswith(MAGIC) else None


FORMAT = EventFormat(names=("es",), read=_read, info=_info, suffixes=(".es",), aliases={"event_stream": "es"},
                     sniff=_sniff)
