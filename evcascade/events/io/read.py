"""``read_events`` and ``event_file_info``: one entry point over every event file format.

Windows are half-open, ``[start_us, end_us)``, on the file's own clock (for DSEC the image clock,
``t + t_offset``). An empty window, or one entirely outside the recording, returns an empty
``Events`` rather than raising: callers that must tell the two apart (the clip loader) compare
the window with ``event_file_info(path).start_us`` / ``end_us``.

How much each format reads for a window:

========  ===========================================================================
dsec      only the rows of the window (``ms_to_idx`` + a binary search)
hdf5      only the rows of the window (binary search on ``t``); sensor size from attrs
npy       only the rows of the window (memory-mapped) when ``sensor_size`` is given
dat       only the records of the window (memory-mapped) when the header has the size
raw       decodes from the start, stops after the window's end (no index in EVT files)
aedat4    decodes packets from the start, stops after the window's end
aedat2/3  decodes from the start, stops after the window's end (no index)
es        decodes from the start, stops after the window's end (no index)
ros       only the messages of the window, found by the bag's time index (+ a margin)
npz, txt, csv, eventgpt   the whole file (these formats cannot be read partially)
========  ===========================================================================

Which module reads what is the registry's business (``registry.py``): this module only resolves
the path, detects the format and calls that format's ``read`` / ``info``.

With ``sort=True`` every format reads the whole file (sorting needs every event); without it
the sortedness check covers the rows read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from evcascade.errors import InputError, require_file
from evcascade.events.container import Events
from evcascade.events.io.common import EventFileInfo, check_sensor_size, check_window
from evcascade.events.io.detect import detect_format, directory_format
from evcascade.events.io.dsec import write_events  # noqa: F401  (the doctests write with it)
from evcascade.events.io.registry import ReadOptions, reader_for


def _source(path) -> Path:
    """``path`` as an existing file, or a folder that some format reads (a ROS 2 bag)."""
    resolved = Path(path).expanduser()
    if resolved.is_dir() and directory_format(resolved) is not None:
        return resolved
    return require_file(path)


def _check_topic(kind: str, topic: str | None) -> str:
    if topic is not None and kind != "ros":
        raise InputError(f"an event topic ({topic!r}; CLI: --events-topic) applies to ROS bags only; this is a {kind} file")
    return kind


def read_events(
    path,
    start_us: int | None = None,
    end_us: int | None = None,
    format: str | None = None,
    *,
    allow_pickle: bool = False,
    sort: bool = False,
    sensor_size: Sequence[int] | None = None,
    rectify_map=None,
    time_unit: str = "auto",
    topic: str | None = None,
) -> Events:
    """Read the events of ``path`` in [start_us, end_us) (None = open bound) as ``Events``.

    ``format`` overrides detection (one of ``evcascade.events.io.FORMATS``). ``allow_pickle``
    opts in to EventGPT's pickled ``.npy`` (unpickling runs code from the file). ``sort`` sorts
    unsorted timestamps instead of raising. ``sensor_size`` (W, H) overrides what the file says.
    ``rectify_map`` (a ``rectify_map.h5`` path or a (H, W, 2) array) moves events to rectified
    pixels, rounding, and drops those that land outside the sensor. ``time_unit`` ("auto", "us",
    "s") applies to text files only; ``topic`` to ROS bags only (None: the bag's only event topic).

    >>> import tempfile, os
    >>> ev = Events.from_arrays([1, 2, 3], [0, 1, 0], [100, 2000, 3500], [1, 0, 1], sensor_size=(4, 2))
    >>> path = write_events(os.path.join(tempfile.mkdtemp(), "events.h5"), ev)
    >>> read_events(path, 1000, 4000).t_us.tolist()
    [2000, 3500]
    """
    file = _source(path)
    start, end = check_window(start_us, end_us)
    size = check_sensor_size(sensor_size)
    kind = _check_topic(detect_format(file, format), topic)
    options = ReadOptions(allow_pickle=allow_pickle, time_unit=time_unit, topic=topic)
    events = reader_for(kind).read(file, start, end, kind=kind, sort=sort, sensor_size=size, options=options)
    if rectify_map is not None:
        from evcascade.events.io.rectify import load_rectify_map, rectify

        events = rectify(events, load_rectify_map(rectify_map, events.sensor_size))
    return events


def event_file_info(
    path, format: str | None = None, *, allow_pickle: bool = False, topic: str | None = None
) -> EventFileInfo:
    """What ``path`` holds (format, sensor size or None, [start_us, end_us), event count), found cheaply.

    Cheap (a few element reads) for dsec, hdf5, npy and dat; a line scan for text; a full
    decode in bounded memory for raw, aedat and es (no index); a full load for npz and eventgpt;
    for a ROS bag, the first and the last packets of the event topic (no count: ``num_events`` is None).

    >>> import tempfile, os
    >>> ev = Events.from_arrays([1, 2], [0, 1], [100, 2000], [1, 0], sensor_size=(4, 2))
    >>> info = event_file_info(write_events(os.path.join(tempfile.mkdtemp(), "e.h5"), ev, t_offset_us=50))
    >>> info.format, info.start_us, info.end_us, info.num_events
    ('dsec', 100, 2001, 2)
    """
    file = _source(path)
    kind = _check_topic(detect_format(file, format), topic)
    options = ReadOptions(allow_pickle=allow_pickle, topic=topic)
    return reader_for(kind).info(file, kind=kind, options=options)
