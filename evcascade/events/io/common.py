"""Helpers every event-file reader shares: window checks, the file summary type, final assembly.

A reader turns raw arrays into ``Events`` through ``assemble`` so that dtype conversion, the
sortedness check (naming the first bad index in the *file*), ``sort=True`` and the sensor-bounds
check behave the same for every format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from evcascade.errors import InputError
from evcascade.events.container import Events


@dataclass(frozen=True)
class EventFileInfo:
    """What a recording holds, found cheaply (no full read where the format allows it).

    ``start_us`` is the first event's time and ``end_us`` one past the last event's, both on the
    file's clock (for DSEC the image clock, ``t + t_offset``); both are None for a file with no
    events. ``sensor_size`` is (W, H) when the file records it, else None. ``num_events`` is None
    where counting would need a full decode that the summary avoids (ROS bags).
    """

    path: Path
    format: str
    sensor_size: tuple[int, int] | None
    start_us: int | None
    end_us: int | None
    num_events: int | None


def check_window(start_us: int | None, end_us: int | None) -> tuple[int | None, int | None]:
    """Validate a half-open window [start_us, end_us); either bound may be None (open)."""
    for name, value in (("start_us", start_us), ("end_us", end_us)):
        if value is not None and not isinstance(value, (int, np.integer)):
            raise InputError(f"{name} must be an integer number of microseconds or None, got {value!r}")
    start = None if start_us is None else int(start_us)
    end = None if end_us is None else int(end_us)
    if start is not None and end is not None and start >= end:
        raise InputError(f"window start_us must be < end_us, got start_us={start}, end_us={end}")
    return start, end


def check_sensor_size(sensor_size: Sequence[int] | None) -> tuple[int, int] | None:
    """Validate a user-given (W, H)."""
    if sensor_size is None:
        return None
    try:
        width, height = (int(v) for v in sensor_size)
    except (TypeError, ValueError):
        raise InputError(f"sensor_size must be a pair (W, H) of positive integers, got {sensor_size!r}") from None
    if width <= 0 or height <= 0:
        raise InputError(f"sensor_size must be a pair (W, H) of positive integers, got {sensor_size!r}")
    return width, height


def first_unsorted(t_us: np.ndarray) -> int | None:
    """Index i of the first pair with t[i] > t[i + 1], or None when ``t_us`` is non-decreasing."""
    if t_us.shape[0] < 2:
        return None
    bad = np.diff(t_us.astype(np.int64)) < 0  # [N-1]
    return int(np.argmax(bad)) if bad.any() else None


def searchsorted_column(column, value: int, lo: int = 0, hi: int | None = None) -> int:
    """First row in [lo, hi) whose value is >= ``value``, like ``np.searchsorted(side='left')``.

    ``column`` is anything indexable with a length (an h5py dataset, a memory-mapped field): the
    search reads O(log n) single elements, so a window read never loads the whole time column.

    >>> searchsorted_column(np.array([0, 5, 5, 9]), 5), searchsorted_column(np.array([0, 5, 5, 9]), 10)
    (1, 4)
    """
    hi = column.shape[0] if hi is None else hi
    while lo < hi:
        mid = (lo + hi) // 2
        if int(column[mid]) < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def raise_unsorted(source: str, t_us: np.ndarray, bad: int, row_offset: int = 0) -> None:
    """Raise the one 'timestamps are not sorted' error, naming the file row of the first bad pair."""
    raise InputError(
        f"{source}: timestamps are not sorted: event {row_offset + bad} has t={int(t_us[bad])} us and event "
        f"{row_offset + bad + 1} has t={int(t_us[bad + 1])} us; pass sort=True to sort them"
    )


def check_integer_dtype(source: str, name: str, dtype: np.dtype, allow_bool: bool = False) -> None:
    """Reject float/string/compound fields where the format promises integers."""
    ok = np.issubdtype(dtype, np.integer) or (allow_bool and dtype == np.bool_)
    if not ok:
        expected = "an integer or bool" if allow_bool else "an integer"
        raise InputError(f"{source}: field {name!r} must have {expected} dtype, got {dtype}")


def assemble(
    source: str,
    x: np.ndarray,
    y: np.ndarray,
    t_us: np.ndarray,
    p: np.ndarray,
    sensor_size: tuple[int, int] | None,
    *,
    start_us: int | None = None,
    end_us: int | None = None,
    sort: bool = False,
    row_offset: int = 0,
    sorted_checked: bool = False,
) -> Events:
    """Arrays read from a file -> checked ``Events`` restricted to [start_us, end_us).

    ``row_offset`` is the file row of ``x[0]`` so that an unsorted-timestamp error names the row in
    the file, not in the slice that was read. With ``sort=True`` the arrays are sorted by time first.
    ``sorted_checked=True``: the caller has already checked the order (the check is a pass over all rows).
    """
    t_arr = np.asarray(t_us)
    if not sort and not sorted_checked:
        bad = first_unsorted(t_arr)
        if bad is not None:
            raise_unsorted(source, t_arr, bad, row_offset)
    if sensor_size is None and t_arr.shape[0] == 0:
        raise InputError(f"{source}: the file records no sensor size and holds no events; pass sensor_size=(W, H)")
    events = Events.from_arrays(x, y, t_arr, p, sensor_size, sort=sort, source=source, assume_sorted=not sort)
    if start_us is None and end_us is None:
        return events
    return events.window(start_us, end_us)
