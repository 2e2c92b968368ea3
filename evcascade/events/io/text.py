"""Text event files (``.txt``, ``.csv``): one event per line, columns ``t x y p``.

Columns are separated by whitespace or commas; an optional first header line (any line whose
first field is not a number) and ``#`` comment lines are skipped. The time unit rule
(``time_unit="auto"``): if the first event's time is written with a decimal point or an
exponent (``0.003811``, ``1e-3``), times are seconds, as in the ECD / RPG event-camera datasets,
and are rounded to whole microseconds; otherwise they are integer microseconds. Pass
``time_unit="s"`` or ``"us"`` to say it explicitly. Text cannot be read partially: a window read
parses the whole file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.events.io.common import EventFileInfo, assemble
from evcascade.events.io.registry import EventFormat

TIME_UNITS = ("auto", "us", "s")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _fields(line: str) -> list[str]:
    return line.replace(",", " ").split()


def _data_lines(path: Path) -> tuple[list[str], int]:
    """All lines, and how many leading lines are header/comments/blank (to skip)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{str(path)!r} is not a UTF-8 text file of events (t x y p per line)") from None
    lines = text.splitlines()
    skip = 0
    for line in lines:
        fields = _fields(line)
        if not fields or line.lstrip().startswith("#"):
            skip += 1
            continue
        if not _is_number(fields[0]):
            skip += 1  # a header line such as "t,x,y,p"
        break
    return lines, skip


def _unit_of(token: str, time_unit: str, path: Path) -> str:
    if time_unit not in TIME_UNITS:
        raise InputError(f"time_unit must be one of {TIME_UNITS}, got {time_unit!r}")
    if time_unit != "auto":
        return time_unit
    return "s" if any(c in token for c in ".eE") else "us"


def read_text(
    path: Path,
    start_us: int | None,
    end_us: int | None,
    *,
    sort: bool = False,
    sensor_size: tuple[int, int] | None = None,
    time_unit: str = "auto",
) -> Events:
    """Events in [start_us, end_us) from a ``t x y p`` text file (see the module docstring for units)."""
    lines, skip = _data_lines(path)
    body = [line for line in lines[skip:] if line.strip() and not line.lstrip().startswith("#")]
    if not body:
        _unit_of("0", time_unit, path)  # still reject a bad time_unit
        return assemble(str(path), *(np.zeros(0, np.int64) for _ in range(4)), sensor_size,
                        start_us=start_us, end_us=end_us)
    unit = _unit_of(_fields(body[0])[0], time_unit, path)
    dtype = np.float64 if unit == "s" else np.int64
    try:
        table = np.loadtxt(io.StringIO("\n".join(line.replace(",", " ") for line in body)), dtype=dtype, ndmin=2)
    except ValueError as err:
        hint = " (times are integer microseconds here; pass time_unit='s' for seconds)" if unit == "us" else ""
        raise InputError(f"{str(path)!r}: cannot parse events as 't x y p' lines{hint}: {err}") from None
    if table.shape[1] != 4:
        raise InputError(f"{str(path)!r}: expected 4 columns 't x y p' per line, got {table.shape[1]}")
    t_col, x_col, y_col, p_col = table.T  # each [N]
    t_us = np.rint(t_col * 1e6).astype(np.int64) if unit == "s" else t_col
    return assemble(str(path), x_col, y_col, t_us, p_col, sensor_size, start_us=start_us, end_us=end_us, sort=sort)


def text_info(path: Path, format: str, *, time_unit: str = "auto") -> EventFileInfo:
    """Summary from the first and last event lines and a line count (no parsing of the body)."""
    first = last = None
    n = 0
    with open(path, "rb") as handle:
        header_done = False
        for raw in handle:
            fields = _fields(raw.decode("utf-8", errors="replace"))
            if not fields or fields[0].startswith("#"):
                continue
            if not header_done:
                header_done = True
                if not _is_number(fields[0]):
                    continue
            first = first or fields
            last = fields
            n += 1
    if n == 0:
        return EventFileInfo(path, format, None, None, None, 0)
    unit = _unit_of(first[0], time_unit, path)
    try:
        to_us = (lambda tok: int(round(float(tok) * 1e6))) if unit == "s" else int
        start, end = to_us(first[0]), to_us(last[0]) + 1
    except ValueError:
        raise InputError(f"{str(path)!r}: cannot parse times {first[0]!r} / {last[0]!r} as {unit}") from None
    return EventFileInfo(path, format, None, start, end, n)


def _sniff(path: Path, head: bytes) -> str | None:
    """'txt' when one of the first three lines is four numbers."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    for line in text.splitlines()[:3]:
        fields = _fields(line)
        if len(fields) == 4 and all(_is_number(f) for f in fields):
            return "txt"
    return None


def _read(path: Path, start_us, end_us, *, kind, sort, sensor_size, options) -> Events:
    return read_text(path, start_us, end_us, sort=sort, sensor_size=sensor_size, time_unit=options.time_unit)


def _info(path: Path, *, kind, options) -> EventFileInfo:
    return text_info(path, kind)


FORMAT = EventFormat(
    names=("txt", "csv"), read=_read, info=_info, suffixes=(".txt", ".csv"),
    suffix_names={".txt": "txt", ".csv": "csv"}, aliases={"text": "txt"}, sniff=_sniff, sniff_rank=100,
)
