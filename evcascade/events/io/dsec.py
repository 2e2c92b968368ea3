"""DSEC ``events.h5``: window reads through ``ms_to_idx``, cheap summaries, and a writer.

Layout (as DSEC publishes it; our writer adds the width/height attributes)::

    events.h5
    ├── events/x   uint16 [N]
    ├── events/y   uint16 [N]
    ├── events/t   uint32 [N]   microseconds, relative to t_offset, sorted
    ├── events/p   uint8  [N]   1 = ON
    ├── ms_to_idx  uint64 [last_ms + 2]   first row with t >= ms * 1000
    ├── t_offset   int64 scalar           add to t to get the image clock
    └── attrs: width, height               (optional; DSEC's event camera is 640 x 480)

All columns are Blosc+ZSTD compressed, so ``hdf5plugin`` must be imported before reading.
Windows are on the image clock (``t + t_offset``), half-open. A read uses ``ms_to_idx`` to find
the rows of the bounding milliseconds, reads ``t`` for those rows only, trims with a binary
search, then reads x, y, p for exactly the window's rows (DSEC's ``EventSlicer`` does the same).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.events.io.common import EventFileInfo, assemble, check_integer_dtype, first_unsorted, raise_unsorted
from evcascade.events.io.hdf5 import check_event_columns, open_h5, require_datasets, sensor_size_from_attrs
from evcascade.events.io.registry import EventFormat

DSEC_SENSOR_SIZE = (640, 480)
DSEC_COLUMNS = ("events/x", "events/y", "events/t", "events/p")
_T_MAX_US = np.iinfo(np.uint32).max
# 64 Ki rows per chunk: a 50 ms DSEC window (0.4-1.3 M events) spans a handful of chunks.
_CHUNK_ROWS = 1 << 16


def is_dsec(handle) -> bool:
    """True when an open HDF5 file has DSEC's layout (events/ group and an ms_to_idx index)."""
    return "events" in handle and "t" in handle["events"] and "ms_to_idx" in handle


def ms_to_idx_for(t_rel_us: np.ndarray) -> np.ndarray:
    """DSEC's millisecond index: entry ms is the first row with t >= ms * 1000, for ms in 0..last_ms + 1.

    The extra entry past the last millisecond lets a window ending after the last event be served
    from the index (DSEC's ``EventSlicer`` returns None for a millisecond beyond the index).

    >>> ms_to_idx_for(np.array([0, 500, 2100, 5000, 5000, 7100, 7200, 7200, 8100, 9000])).tolist()
    [0, 2, 2, 3, 3, 3, 5, 5, 8, 9, 10]
    """
    if t_rel_us.shape[0] == 0:
        return np.zeros(1, np.uint64)
    last_ms = int(t_rel_us[-1]) // 1000
    edges_us = np.arange(last_ms + 2, dtype=np.int64) * 1000  # [last_ms + 2]
    return np.searchsorted(t_rel_us, edges_us, side="left").astype(np.uint64)


def _t_offset(handle, path: Path) -> int:
    if "t_offset" not in handle:
        return 0
    dataset = handle["t_offset"]
    check_integer_dtype(str(path), "t_offset", dataset.dtype)
    return int(np.asarray(dataset[()]).ravel()[0])


def _open_columns(handle, path: Path) -> tuple[dict, int]:
    """x/y/t/p datasets (keyed by short name) after presence, shape and dtype checks; and N."""
    columns = require_datasets(handle, path, list(DSEC_COLUMNS) + ["ms_to_idx"])
    index = columns.pop("ms_to_idx")
    check_integer_dtype(str(path), "ms_to_idx", index.dtype)
    n = check_event_columns(columns, path)
    return {k.rsplit("/", 1)[-1]: v for k, v in columns.items()}, n


def _index_at(index, ms: int, n: int) -> int:
    """ms_to_idx[ms], or N for a millisecond past the index (no event starts there)."""
    return n if ms >= index.shape[0] else int(index[ms])


def row_range(index, n: int, start_rel_us: int | None, end_rel_us: int | None) -> tuple[int, int]:
    """Rows [lo, hi) that cover [start_rel_us, end_rel_us) on the file's relative clock, from ms_to_idx."""
    if end_rel_us is not None and end_rel_us <= 0:
        return 0, 0
    start_rel_us = 0 if start_rel_us is None or start_rel_us < 0 else start_rel_us
    lo = _index_at(index, start_rel_us // 1000, n)
    hi = n if end_rel_us is None else _index_at(index, -(-end_rel_us // 1000), n)  # ceil
    return lo, hi


def read_dsec(
    path: Path,
    start_us: int | None,
    end_us: int | None,
    *,
    sort: bool = False,
    sensor_size: tuple[int, int] | None = None,
) -> Events:
    """Events in [start_us, end_us) of the image clock, reading only the rows the window needs.

    Sensor size: ``sensor_size`` if given, else the file's width/height attributes, else 640 x 480.
    The sortedness check covers the rows read; ``sort=True`` reads the whole file (the index of an
    unsorted file cannot be trusted) and sorts it.
    """
    with open_h5(path) as handle:
        columns, n = _open_columns(handle, path)
        index = handle["ms_to_idx"]
        t_offset = _t_offset(handle, path)
        size = sensor_size or sensor_size_from_attrs(handle) or DSEC_SENSOR_SIZE
        if sort:
            t_us = columns["t"][()].astype(np.int64) + t_offset  # [N]
            return assemble(str(path), columns["x"][()], columns["y"][()], t_us, columns["p"][()], size,
                            start_us=start_us, end_us=end_us, sort=True)
        start_rel = None if start_us is None else start_us - t_offset
        end_rel = None if end_us is None else end_us - t_offset
        lo, hi = row_range(index, n, start_rel, end_rel)
        if not 0 <= lo <= hi <= n:
            raise InputError(
                f"{str(path)!r}: ms_to_idx is inconsistent with the {n} events (window maps to rows [{lo}, {hi}))"
            )
        t_rel = columns["t"][lo:hi].astype(np.int64)  # [rows of the bounding milliseconds]
        bad = first_unsorted(t_rel)
        if bad is not None:
            raise_unsorted(str(path), t_rel, bad, row_offset=lo)
        a = 0 if start_rel is None else int(np.searchsorted(t_rel, start_rel, side="left"))
        b = t_rel.shape[0] if end_rel is None else int(np.searchsorted(t_rel, end_rel, side="left"))
        rows = slice(lo + a, lo + b)
        return assemble(str(path), columns["x"][rows], columns["y"][rows], t_rel[a:b] + t_offset,
                        columns["p"][rows], size, row_offset=lo + a, sorted_checked=True)


def dsec_info(path: Path) -> EventFileInfo:
    """Summary from t_offset and the first/last ``t`` (two element reads), not from all events."""
    with open_h5(path) as handle:
        columns, n = _open_columns(handle, path)
        t_offset = _t_offset(handle, path)
        size = sensor_size_from_attrs(handle) or DSEC_SENSOR_SIZE
        if n == 0:
            return EventFileInfo(path, "dsec", size, None, None, 0)
        start = t_offset + int(columns["t"][0])
        end = t_offset + int(columns["t"][n - 1]) + 1
        return EventFileInfo(path, "dsec", size, start, end, n)


def _auto_t_offset(events: Events) -> int:
    """0 when the events' times fit DSEC's uint32 as they are, else the first event's time."""
    if len(events) == 0 or (events.start_us >= 0 and events.end_us - 1 <= _T_MAX_US):
        return 0
    return int(events.start_us)


def write_events(path, events: Events, t_offset_us: int | None = None) -> Path:
    """Write ``events`` as a DSEC ``events.h5`` (Blosc+ZSTD, chunked, with ms_to_idx); return the path.

    Times are stored as uint32 microseconds relative to ``t_offset_us``, so the events must lie in
    [t_offset_us, t_offset_us + 2**32 - 1]. ``t_offset_us=None`` (the default) picks it: 0 when the
    times fit as they are, else the first event's time (a window read from a real DSEC file, whose
    times are ~5e10 us on the image clock, writes back as it was read). The file is written next to
    ``path`` and renamed into place, so a failed write never leaves a half-written file at ``path``.

    >>> import tempfile, os
    >>> ev = Events.from_arrays([1, 2], [0, 1], [1000, 2500], [1, 0], sensor_size=(4, 2))
    >>> out = write_events(os.path.join(tempfile.mkdtemp(), "events.h5"), ev, t_offset_us=1000)
    >>> from evcascade.events.io import read_events
    >>> read_events(out).t_us.tolist()
    [1000, 2500]
    """
    import h5py
    import hdf5plugin

    if not isinstance(events, Events):
        raise InputError(f"write_events needs an Events, got {type(events).__name__}")
    if t_offset_us is None:
        t_offset_us = _auto_t_offset(events)
    if isinstance(t_offset_us, bool) or not isinstance(t_offset_us, (int, np.integer)):
        raise InputError(f"t_offset_us must be an integer number of microseconds, got {t_offset_us!r}")
    out = Path(path).expanduser()
    if not out.parent.is_dir():
        raise InputError(f"cannot write {str(path)!r}: directory {str(out.parent)!r} does not exist")
    if out.is_dir():
        raise InputError(f"cannot write {str(path)!r}: it is a directory")
    t_rel = events.t_us - np.int64(t_offset_us)  # [N] int64
    if len(events) and (t_rel[0] < 0 or t_rel[-1] > _T_MAX_US):
        too_long = events.end_us - 1 - events.start_us > _T_MAX_US
        hint = ("the span is longer than any uint32 offset allows (about 71 min): write the recording in parts"
                if too_long else "choose t_offset_us <= the first event's time, or leave it out")
        raise InputError(
            f"events span [{events.start_us}, {events.end_us}) us, which does not fit DSEC's uint32 times "
            f"relative to t_offset_us={int(t_offset_us)} (allowed [{int(t_offset_us)}, "
            f"{int(t_offset_us) + _T_MAX_US}]); {hint}"
        )
    compression = hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)
    chunk = (max(1, min(len(events), _CHUNK_ROWS)),)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as handle:
            for name, values in (
                ("x", events.x.astype(np.uint16)), ("y", events.y.astype(np.uint16)),
                ("t", t_rel.astype(np.uint32)), ("p", events.p.astype(np.uint8)),
            ):
                handle.create_dataset(f"events/{name}", data=values, chunks=chunk, **compression)
            handle.create_dataset("ms_to_idx", data=ms_to_idx_for(t_rel), **compression)
            handle.create_dataset("t_offset", data=np.int64(t_offset_us))
            handle.attrs["width"], handle.attrs["height"] = events.sensor_size
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _read(path: Path, start_us, end_us, *, kind, sort, sensor_size, options) -> Events:
    return read_dsec(path, start_us, end_us, sort=sort, sensor_size=sensor_size)


def _info(path: Path, *, kind, options) -> EventFileInfo:
    return dsec_info(path)


# Found through the HDF5 reader's refinement (an HDF5 file with events/ and ms_to_idx), not by suffix.
FORMAT = EventFormat(names=("dsec",), read=_read, info=_info)
