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
npz, txt, csv, eventgpt   the whole file (these formats cannot be read partially)
========  ===========================================================================

With ``sort=True`` every format reads the whole file (sorting needs every event); without it
the sortedness check covers the rows read.
"""

from __future__ import annotations

from typing import Sequence

from evcascade.errors import require_file
from evcascade.events.container import Events
from evcascade.events.io.common import EventFileInfo, check_sensor_size, check_window
from evcascade.events.io.detect import detect_format
from evcascade.events.io.dsec import write_events  # noqa: F401  (the doctests write with it)


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
) -> Events:
    """Read the events of ``path`` in [start_us, end_us) (None = open bound) as ``Events``.

    ``format`` overrides detection (one of ``evcascade.events.io.FORMATS``). ``allow_pickle``
    opts in to EventGPT's pickled ``.npy`` (unpickling runs code from the file). ``sort`` sorts
    unsorted timestamps instead of raising. ``sensor_size`` (W, H) overrides what the file says.
    ``rectify_map`` (a ``rectify_map.h5`` path or a (H, W, 2) array) moves events to rectified
    pixels, rounding, and drops those that land outside the sensor. ``time_unit`` ("auto", "us",
    "s") applies to text files only.

    >>> import tempfile, os
    >>> ev = Events.from_arrays([1, 2, 3], [0, 1, 0], [100, 2000, 3500], [1, 0, 1], sensor_size=(4, 2))
    >>> path = write_events(os.path.join(tempfile.mkdtemp(), "events.h5"), ev)
    >>> read_events(path, 1000, 4000).t_us.tolist()
    [2000, 3500]
    """
    from evcascade.events.io import aedat, dsec, hdf5, numpy_files, prophesee, text

    file = require_file(path)
    start, end = check_window(start_us, end_us)
    size = check_sensor_size(sensor_size)
    kind = detect_format(file, format)
    common = dict(sort=sort, sensor_size=size)
    if kind == "dsec":
        events = dsec.read_dsec(file, start, end, **common)
    elif kind == "hdf5":
        events = hdf5.read_hdf5(file, start, end, **common)
    elif kind == "npz":
        events = numpy_files.read_npz(file, start, end, **common)
    elif kind == "npy":
        events = numpy_files.read_npy(file, start, end, allow_pickle=allow_pickle, **common)
    elif kind == "eventgpt":
        events = numpy_files.read_eventgpt(file, start, end, allow_pickle=allow_pickle, **common)
    elif kind in ("txt", "csv"):
        events = text.read_text(file, start, end, time_unit=time_unit, **common)
    elif kind in ("raw", "evt2", "evt3"):
        events = prophesee.read_raw(file, start, end, encoding=kind, **common)
    elif kind == "dat":
        events = prophesee.read_dat(file, start, end, **common)
    else:
        assert kind == "aedat4", kind
        events = aedat.read_aedat4(file, start, end, **common)
    if rectify_map is not None:
        from evcascade.events.io.rectify import load_rectify_map, rectify

        events = rectify(events, load_rectify_map(rectify_map, events.sensor_size))
    return events


def event_file_info(path, format: str | None = None, *, allow_pickle: bool = False) -> EventFileInfo:
    """What ``path`` holds (format, sensor size or None, [start_us, end_us), event count), found cheaply.

    Cheap (a few element reads) for dsec, hdf5, npy and dat; a line scan for text; a full
    decode in bounded memory for raw and aedat4 (no index); a full load for npz and eventgpt.

    >>> import tempfile, os
    >>> ev = Events.from_arrays([1, 2], [0, 1], [100, 2000], [1, 0], sensor_size=(4, 2))
    >>> info = event_file_info(write_events(os.path.join(tempfile.mkdtemp(), "e.h5"), ev, t_offset_us=50))
    >>> info.format, info.start_us, info.end_us, info.num_events
    ('dsec', 100, 2001, 2)
    """
    from evcascade.events.io import aedat, dsec, hdf5, numpy_files, prophesee, text

    file = require_file(path)
    kind = detect_format(file, format)
    if kind == "dsec":
        return dsec.dsec_info(file)
    if kind == "hdf5":
        return hdf5.hdf5_info(file)
    if kind in ("npz", "npy", "eventgpt"):
        return numpy_files.numpy_info(file, kind, allow_pickle=allow_pickle)
    if kind in ("txt", "csv"):
        return text.text_info(file, kind)
    if kind in ("raw", "evt2", "evt3"):
        return prophesee.raw_info(file, kind)
    if kind == "dat":
        return prophesee.dat_info(file)
    assert kind == "aedat4", kind
    return aedat.aedat4_info(file)

