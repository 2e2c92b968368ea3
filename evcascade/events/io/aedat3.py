"""iniVation AEDAT 3.1 recordings (``.aedat`` from cAER / DV's legacy export): polarity events.

Layout (iniVation's AEDAT 3.1 description; the packet header is libcaer's ``caer_event_packet_header``)::

    #!AER-DAT3.1\\r\\n ... header lines starting with '#' ... #!END-HEADER\\r\\n
    packets: a 28-byte header (little-endian)
        int16 eventType (1 = polarity)   int16 eventSource   int32 eventSize   int32 eventTSOffset
        int32 eventTSOverflow            int32 eventCapacity int32 eventNumber int32 eventValid
      then eventNumber events of eventSize bytes; a polarity event is
        uint32 data: [0] valid  [1] polarity (1 = ON)  [16:2] y  [31:17] x
        int32  timestamp (us), 64-bit time = eventTSOverflow << 31 | timestamp

Other packet types (frames, IMU, special events) are skipped, and so are events whose valid bit is
clear. The sensor size comes from a ``#Source N: <camera>`` header line naming a known camera
(DVS128, DAVIS240, DAVIS346, DVXplorer), else ``sensor_size=`` or the maxima of x and y. Packets
have no index: a window read decodes from the start and stops after the window's end.

The polarity word is libcaer's own, also the ``libcaer`` encoding of ROS ``EventPacket`` messages:
``decode_polarity`` serves both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.events.io.common import EventFileInfo, assemble
from evcascade.events.io.registry import EventFormat

MAGIC = b"#!AER-DAT3.1"
_END = b"#!END-HEADER"
_PACKET_HEADER = np.dtype([("type", "<i2"), ("source", "<i2"), ("size", "<i4"), ("ts_offset", "<i4"),
                           ("ts_overflow", "<i4"), ("capacity", "<i4"), ("number", "<i4"), ("valid", "<i4")])
POLARITY_EVENT = np.dtype([("data", "<u4"), ("t", "<i4")])
# Sensor sizes of the iniVation cameras (and jAER chip classes) that headers name.
CAMERAS = {"DVXPLORER": (640, 480), "DAVIS346": (346, 260), "DAVIS240": (240, 180), "DVS128": (128, 128),
           "TMPDIFF128": (128, 128)}


def decode_polarity(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """libcaer polarity words (uint32) -> (x, y, polarity, valid) int64 arrays."""
    data = data.astype(np.int64)
    return (data >> 17) & 0x7FFF, (data >> 2) & 0x7FFF, (data >> 1) & 1, data & 1


def camera_size(header: str) -> tuple[int, int] | None:
    """(W, H) of the first known camera named in a header, else None."""
    upper = header.upper()
    return next((size for name, size in CAMERAS.items() if name in upper), None)


def _header(path: Path) -> tuple[str, int]:
    with open(path, "rb") as handle:
        text = b""
        while True:
            line = handle.readline()
            if not line:
                raise InputError(f"{str(path)!r}: AEDAT 3.1 header has no '#!END-HEADER' line (truncated?)")
            text += line
            if line.startswith(_END):
                return text.decode("latin-1"), handle.tell()


def _packets(path: Path, offset: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(x, y, t_us, p) of each polarity packet's valid events, in file order."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        while True:
            raw = handle.read(_PACKET_HEADER.itemsize)
            if not raw:
                return
            if len(raw) < _PACKET_HEADER.itemsize:
                raise InputError(f"{str(path)!r}: AEDAT 3.1 packet header is truncated")
            head = np.frombuffer(raw, _PACKET_HEADER)[0]
            size, number = int(head["size"]), int(head["number"])
            body = handle.read(size * number)
            if len(body) < size * number:
                raise InputError(f"{str(path)!r}: AEDAT 3.1 packet is truncated")
            if int(head["type"]) != 1 or number == 0:
                continue
            if size != POLARITY_EVENT.itemsize:
                raise InputError(f"{str(path)!r}: polarity events of {size} bytes; AEDAT 3.1 says 8")
            events = np.frombuffer(body, POLARITY_EVENT)
            x, y, p, valid = decode_polarity(events["data"])
            t_us = (np.int64(int(head["ts_overflow"])) << 31) | events["t"].astype(np.int64)
            keep = valid.astype(bool)
            yield x[keep], y[keep], t_us[keep], p[keep]


def _read(path: Path, start_us, end_us, *, kind, sort, sensor_size, options) -> Events:
    header, offset = _header(path)
    parts = []
    for part in _packets(path, offset):
        parts.append(part)
        if not sort and end_us is not None and part[2].shape[0] and part[2][-1] >= end_us:
            break
    x, y, t_us, p = (np.concatenate([q[i] for q in parts]) if parts else np.zeros(0, np.int64) for i in range(4))
    size = sensor_size or camera_size(header)
    return assemble(str(path), x, y, t_us, p, size, start_us=start_us, end_us=end_us, sort=sort)


def _info(path: Path, *, kind, options) -> EventFileInfo:
    header, offset = _header(path)
    first = last = None
    n = 0
    for _, _, t_us, _ in _packets(path, offset):
        if t_us.shape[0]:
            first = int(t_us[0]) if first is None else first
            last = int(t_us[-1])
            n += int(t_us.shape[0])
    return EventFileInfo(path, "aedat3", camera_size(header), first, None if last is None else last + 1, n)


def _sniff(path: Path, head: bytes) -> str | None:
    return "aedat3" if head.startswith(MAGIC) else None


FORMAT = EventFormat(names=("aedat3",), read=_read, info=_info, aliases={"aedat3.1": "aedat3"}, sniff=_sniff)
