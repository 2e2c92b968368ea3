"""jAER AEDAT 2.0 recordings (``.aedat``): DVS polarity events of DVS128 and DAVIS cameras.

Layout (jAER's AEDAT 2.0)::

    #!AER-DAT2.0\\r\\n, then header lines starting with '#' (one names the chip: "# AEChip: ...DAVIS240C")
    records: int32 address, int32 timestamp (us), both big-endian, 8 bytes per event

Addresses depend on the chip, which the header names:

=========  ==========================================================================================
DVS128     [0] polarity (1 = ON), [7:1] x field, [14:8] y field; x = 127 - x field (jAER's extractor)
DAVIS      DVS events have [31] = 0 and [10] = 0 (others are APS / IMU samples, skipped); [11] polarity,
(240, 346) [21:12] x field, [30:22] y field; x = W - 1 - x field (jAER's extractor)
=========  ==========================================================================================

jAER counts rows from the bottom; rows here count from the top, as in images: y = H - 1 - y field.
Timestamps are unsigned 32-bit microseconds; a drop by more than half the range is a wrap (+2**32).
The ``.aedat`` suffix is shared by AEDAT 2.0, 3.1 and 4.0: the header's first line decides. Records
are memory-mapped; without an index a window still needs the whole time column (a binary search
would do, but wraps and APS records make it unsafe), so reads are whole-file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.events.io.aedat3 import CAMERAS, camera_size
from evcascade.events.io.common import EventFileInfo, assemble
from evcascade.events.io.registry import EventFormat

MAGIC = b"#!AER-DAT2.0"
RECORD = np.dtype([("address", ">u4"), ("t", ">u4")])
_MAGICS = {b"#!AER-DAT2.0": "aedat2", b"#!AER-DAT3.1": "aedat3", b"#!AER-DAT4.0": "aedat4"}


def _header(path: Path) -> tuple[str, int]:
    """The '#' header text and the byte offset where records start."""
    lines = []
    with open(path, "rb") as handle:
        while True:
            position = handle.tell()
            line = handle.readline()
            if not line.startswith(b"#"):
                return b"".join(lines).decode("latin-1"), position
            lines.append(line)


def _chip(header: str, path: Path) -> tuple[str, tuple[int, int]]:
    size = camera_size(header)
    if size is None or size == CAMERAS["DVXPLORER"]:
        raise InputError(
            f"{str(path)!r}: the AEDAT 2.0 header names no chip this reader knows (DVS128, DAVIS240, DAVIS346); "
            "its address layout depends on the chip"
        )
    return ("dvs128" if size == CAMERAS["DVS128"] else "davis"), size


def _events(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    header, offset = _header(path)
    kind, (width, height) = _chip(header, path)
    n = (path.stat().st_size - offset) // RECORD.itemsize
    records = np.memmap(path, RECORD, mode="r", offset=offset, shape=(n,)) if n else np.zeros(0, RECORD)
    address = np.asarray(records["address"]).astype(np.int64)  # [n]
    t_raw = np.asarray(records["t"]).astype(np.int64)
    wraps = np.concatenate([[0], np.cumsum(np.diff(t_raw) < -(1 << 31))]) if n else np.zeros(0, np.int64)
    t_us = t_raw + (wraps << 32)
    if kind == "dvs128":
        x, y_field, p = 127 - ((address >> 1) & 0x7F), (address >> 8) & 0x7F, address & 1
        keep = np.ones(n, bool)
    else:
        keep = ((address >> 31) & 1 == 0) & ((address >> 10) & 1 == 0)
        x, y_field, p = width - 1 - ((address >> 12) & 0x3FF), (address >> 22) & 0x1FF, (address >> 11) & 1
    y = height - 1 - y_field
    return x[keep], y[keep], t_us[keep], p[keep], (width, height)


def _read(path: Path, start_us, end_us, *, kind, sort, sensor_size, options) -> Events:
    x, y, t_us, p, size = _events(path)
    return assemble(str(path), x, y, t_us, p, sensor_size or size, start_us=start_us, end_us=end_us, sort=sort)


def _info(path: Path, *, kind, options) -> EventFileInfo:
    _, _, t_us, _, size = _events(path)
    n = int(t_us.shape[0])
    return EventFileInfo(path, "aedat2", size, int(t_us[0]) if n else None, int(t_us[-1]) + 1 if n else None, n)


def _sniff(path: Path, head: bytes) -> str | None:
    return "aedat2" if head.startswith(MAGIC) else None


def _refine(path: Path, family: str) -> str:
    """A ``.aedat`` file: AEDAT 2.0, 3.1 or 4.0 by its first line."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    for magic, name in _MAGICS.items():
        if head.startswith(magic):
            return name
    raise InputError(f"{str(path)!r} has suffix '.aedat' but no '#!AER-DAT2.0/3.1/4.0' first line")


FORMAT = EventFormat(names=("aedat2",), read=_read, info=_info, suffixes=(".aedat",), aliases={"aedat2.0": "aedat2"},
                     sniff=_sniff, refine=_refine)
