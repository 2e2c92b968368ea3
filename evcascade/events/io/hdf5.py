"""Generic HDF5 event files: datasets ``x, y, t, p`` at the root or under ``events/`` (t in us).

Also home to what every HDF5 reader needs: ``open_h5`` (which turns h5py's errors on a truncated
or corrupt file into an ``InputError`` naming the path), dataset lookup with a message listing
what is missing and what exists, and a binary search (``searchsorted_column``) over the on-disk
time column so that a window read touches only the rows it returns.

Layout read here::

    file.h5
    ├── x, y, t, p            (or events/x, events/y, events/t, events/p)
    └── attrs: width, height  (optional; else sensor_size= or the maxima of x and y)
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.events.io.common import EventFileInfo, assemble, check_integer_dtype, searchsorted_column
from evcascade.events.io.registry import EventFormat

EVENT_FIELDS = ("x", "y", "t", "p")
# Rows per block when a whole column must be scanned (sensor size inference): bounded memory.
_SCAN_ROWS = 1 << 20


@contextmanager
def open_h5(path: Path) -> Iterator["h5py.File"]:  # noqa: F821
    """Open ``path`` read-only with the Blosc/ZSTD filters registered; h5py errors become InputError."""
    import hdf5plugin  # noqa: F401  registers the Blosc+ZSTD filter DSEC files are compressed with
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{str(path)!r} is not a readable HDF5 file (truncated or corrupt?): {err}") from None
    try:
        yield handle
    except InputError:
        raise
    except (OSError, RuntimeError) as err:
        # A file chopped after its superblock opens fine and fails here, on the first data read.
        raise InputError(f"{str(path)!r}: could not read HDF5 data (truncated or corrupt?): {err}") from None
    finally:
        handle.close()


def list_datasets(handle) -> list[str]:
    """Every dataset path in the file, for error messages."""
    import h5py

    names: list[str] = []
    handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def require_datasets(handle, path: Path, names: list[str]) -> dict:
    """Return ``{name: dataset}``; raise naming the missing and the existing datasets."""
    import h5py

    missing = [n for n in names if not isinstance(handle.get(n), h5py.Dataset)]
    if missing:
        raise InputError(
            f"{str(path)!r}: HDF5 file lacks datasets {missing}; it has {list_datasets(handle)}"
        )
    return {n: handle[n] for n in names}


def check_event_columns(columns: dict, path: Path) -> int:
    """Check x/y/t/p columns are 1-D, equally long and integer-typed; return their length."""
    lengths = {}
    for key, ds in columns.items():
        short = key.rsplit("/", 1)[-1]
        if ds.ndim != 1:
            raise InputError(f"{str(path)!r}: dataset {key!r} must be 1-D, got shape {ds.shape}")
        check_integer_dtype(str(path), key, ds.dtype, allow_bool=short == "p")
        lengths[key] = ds.shape[0]
    if len(set(lengths.values())) > 1:
        raise InputError(f"{str(path)!r}: event datasets differ in length: {lengths}")
    return next(iter(lengths.values()))


def sensor_size_from_attrs(*nodes) -> tuple[int, int] | None:
    """(W, H) from ``width``/``height`` or ``sensor_size`` attributes on the first node that has them."""
    for node in nodes:
        attrs = node.attrs
        if "width" in attrs and "height" in attrs:
            return int(attrs["width"]), int(attrs["height"])
        if "sensor_size" in attrs:
            width, height = (int(v) for v in np.asarray(attrs["sensor_size"]).ravel()[:2])
            return width, height
    return None


def _event_group(handle, path: Path) -> str:
    """'events/' when the events live under that group, '' when at the root."""
    import h5py

    if isinstance(handle.get("events"), h5py.Group) and "t" in handle["events"]:
        return "events/"
    if isinstance(handle.get("t"), h5py.Dataset):
        return ""
    require_datasets(handle, path, [f"events/{f}" for f in EVENT_FIELDS])  # raises, naming what exists
    raise AssertionError("unreachable")


def _scan_sensor_size(columns: dict, n: int) -> tuple[int, int]:
    """(max x + 1, max y + 1) over the whole file, block by block (bounded memory)."""
    width = height = 0
    for lo in range(0, n, _SCAN_ROWS):
        width = max(width, int(np.max(columns["x"][lo:lo + _SCAN_ROWS])) + 1)
        height = max(height, int(np.max(columns["y"][lo:lo + _SCAN_ROWS])) + 1)
    return width, height


def read_hdf5(
    path: Path,
    start_us: int | None,
    end_us: int | None,
    *,
    sort: bool = False,
    sensor_size: tuple[int, int] | None = None,
) -> Events:
    """Events in [start_us, end_us) from a generic HDF5 file, reading only the window's rows.

    The window is found by binary search on ``t``, so the sortedness check covers the rows read;
    with ``sort=True`` the whole file is read and sorted. Without ``sensor_size`` and without
    width/height attributes the sensor size is the maxima of x and y over the whole file (a scan
    of two columns; store the attributes or pass ``sensor_size`` to avoid it).
    """
    with open_h5(path) as handle:
        group = _event_group(handle, path)
        columns = require_datasets(handle, path, [group + f for f in EVENT_FIELDS])
        columns = {k.rsplit("/", 1)[-1]: v for k, v in columns.items()}
        n = check_event_columns(columns, path)
        node = handle[group] if group else handle
        size = sensor_size or sensor_size_from_attrs(node, handle)
        if size is None and n:
            size = _scan_sensor_size(columns, n)
        if sort:
            arrays = {k: columns[k][()] for k in EVENT_FIELDS}
            return assemble(str(path), arrays["x"], arrays["y"], arrays["t"], arrays["p"], size,
                            start_us=start_us, end_us=end_us, sort=True)
        lo = 0 if start_us is None else searchsorted_column(columns["t"], start_us)
        hi = n if end_us is None else searchsorted_column(columns["t"], end_us, lo)
        t_us = columns["t"][lo:hi].astype(np.int64)  # [n_window]
        return assemble(str(path), columns["x"][lo:hi], columns["y"][lo:hi], t_us, columns["p"][lo:hi], size,
                        row_offset=lo)


def hdf5_info(path: Path) -> EventFileInfo:
    """Summary of a generic HDF5 event file from its first and last ``t`` and the column length."""
    with open_h5(path) as handle:
        group = _event_group(handle, path)
        columns = require_datasets(handle, path, [group + f for f in EVENT_FIELDS])
        n = check_event_columns(columns, path)
        t_col = columns[group + "t"]
        node = handle[group] if group else handle
        start, end = (int(t_col[0]), int(t_col[n - 1]) + 1) if n else (None, None)
        return EventFileInfo(path, "hdf5", sensor_size_from_attrs(node, handle), start, end, n)


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _sniff(path: Path, head: bytes) -> str | None:
    return "hdf5" if head.startswith(_HDF5_MAGIC) else None


def _refine(path: Path, family: str) -> str:
    """DSEC when the file has DSEC's layout, else generic HDF5."""
    from evcascade.events.io.dsec import is_dsec

    with open_h5(path) as handle:
        return "dsec" if is_dsec(handle) else "hdf5"


def _read(path: Path, start_us, end_us, *, kind, sort, sensor_size, options) -> Events:
    return read_hdf5(path, start_us, end_us, sort=sort, sensor_size=sensor_size)


def _info(path: Path, *, kind, options) -> EventFileInfo:
    return hdf5_info(path)


FORMAT = EventFormat(
    names=("hdf5",), read=_read, info=_info, suffixes=(".h5", ".hdf5", ".hdf"), aliases={"h5": "hdf5"},
    sniff=_sniff, refine=_refine, verify_suffix=("hdf5",),
)
