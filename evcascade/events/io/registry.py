"""The event-format registry: one ``EventFormat`` per reader module, found by name, suffix or content.

Every module in ``evcascade/events/io/`` that defines a module-level ``FORMAT`` (an ``EventFormat``)
is a reader; ``read_events`` / ``event_file_info`` / ``detect_format`` know nothing else about it.
So a new format is one file: define its ``read`` and ``info`` functions and a ``FORMAT`` naming its
format names, suffixes and how its content is recognised.

The reader protocol (``read`` and ``info`` below) is deliberately small: the window and the three
options every format understands (``sort``, ``sensor_size``, the canonical ``kind`` it was detected
as) are keyword arguments; format-specific options (``allow_pickle``, ``time_unit``, ``topic``)
travel together in one ``ReadOptions`` so that adding one never changes another reader's signature.

>>> sorted(f for f in formats() if f in ("dsec", "evt3", "txt"))
['dsec', 'evt3', 'txt']
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Protocol

from evcascade.events.container import Events
from evcascade.events.io.common import EventFileInfo


@dataclass(frozen=True)
class ReadOptions:
    """Options that only some formats use; a reader ignores the ones it does not know."""

    allow_pickle: bool = False  # EventGPT's pickled .npy: unpickling runs code, so opt-in only
    time_unit: str = "auto"  # text files: "auto", "us" or "s"
    topic: str | None = None  # ROS bags: the event topic (None: the only one there is)


class ReadFn(Protocol):
    def __call__(
        self, path: Path, start_us: int | None, end_us: int | None, *,
        kind: str, sort: bool, sensor_size: tuple[int, int] | None, options: ReadOptions,
    ) -> Events: ...


class InfoFn(Protocol):
    def __call__(self, path: Path, *, kind: str, options: ReadOptions) -> EventFileInfo: ...


@dataclass(frozen=True)
class EventFormat:
    """One reader: the format names it serves, how to recognise its files, and its read/info functions.

    ``names`` are canonical format names (``format=`` values); ``suffixes`` map to ``names[0]``
    unless ``suffix_names`` says otherwise. ``sniff(path, head)`` looks at the first 4 KiB and returns
    one of ``names`` or None; ``refine(path, name)`` settles what a suffix leaves open (DSEC vs
    generic HDF5). ``directories``: the format can be a folder (ROS 2 bags) and ``accepts_dir(path)``
    says whether this one is. ``sniff_rank`` orders content checks (magic bytes first, text last).
    """

    names: tuple[str, ...]
    read: ReadFn
    info: InfoFn
    suffixes: tuple[str, ...] = ()
    suffix_names: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    sniff: Callable[[Path, bytes], str | None] | None = None
    refine: Callable[[Path, str], str] | None = None
    accepts_dir: Callable[[Path], bool] | None = None
    sniff_rank: int = 0
    verify_suffix: tuple[str, ...] = ()  # names whose suffix must match the content (else an error)


# The order formats are listed in (error messages, FORMATS); a module not named here still
# registers itself, after these.
_LISTED = ("dsec", "hdf5", "numpy_files", "text", "prophesee", "aedat", "aedat2", "aedat3", "event_stream", "ros")


@lru_cache(maxsize=1)
def registry() -> tuple[EventFormat, ...]:
    """Every ``FORMAT`` defined by a module of this package (the established ones first)."""
    import evcascade.events.io as package

    names = [m.name for m in pkgutil.iter_modules(package.__path__)]
    ordered = [n for n in _LISTED if n in names] + sorted(n for n in names if n not in _LISTED)
    found = []
    for name in ordered:
        fmt = getattr(importlib.import_module(f"{package.__name__}.{name}"), "FORMAT", None)
        if isinstance(fmt, EventFormat):
            found.append(fmt)
    return tuple(found)


def formats() -> tuple[str, ...]:
    """Every canonical format name."""
    return tuple(name for fmt in registry() for name in fmt.names)


def reader_for(kind: str) -> EventFormat:
    """The ``EventFormat`` serving canonical format name ``kind``."""
    for fmt in registry():
        if kind in fmt.names:
            return fmt
    raise KeyError(kind)
