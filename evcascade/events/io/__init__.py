"""Event file readers and writers: DSEC / generic HDF5, NumPy, text, Prophesee, AEDAT 2/3.1/4, Event Stream, ROS bags.

``read_events(path, start_us, end_us)`` returns the ``Events`` of a half-open window, reading
only what the window needs where the format allows it; ``write_events`` writes DSEC-format HDF5;
``event_file_info`` says what a recording spans without reading it all. One module per format,
each declaring a ``FORMAT`` that the registry finds (so a new format is one file)::

    io/
    ├── read.py          read_events, event_file_info (dispatch through the registry)
    ├── registry.py      EventFormat (the reader protocol), ReadOptions, the registry
    ├── detect.py        format from format= / suffix / content
    ├── common.py        EventFileInfo, window checks, final assembly into Events
    ├── dsec.py          DSEC events.h5 reader + write_events
    ├── hdf5.py          generic HDF5 (x, y, t, p) + HDF5 helpers
    ├── numpy_files.py   .npz, structured .npy, EventGPT pickled dict
    ├── text.py          t x y p lines
    ├── prophesee.py     .raw EVT 2.0 / 3.0, .dat (and the EVT 3.0 decoder the ROS reader uses)
    ├── aedat.py         .aedat4 via the aedat package
    ├── aedat2.py        jAER .aedat 2.0 (DVS128, DAVIS); .aedat dispatch by first line
    ├── aedat3.py        cAER .aedat 3.1 polarity packets (and libcaer's polarity word)
    ├── event_stream.py  Event Stream .es (DVS)
    ├── ros.py           ROS 1 / ROS 2 bags (evcascade.bags): EventPacket, dvs_msgs, prophesee_event_msgs
    └── rectify.py       DSEC rectify_map.h5

>>> from evcascade.events.io import FORMATS
>>> "dsec" in FORMATS and "evt3" in FORMATS
True
"""

from evcascade.events.io.common import EventFileInfo
from evcascade.events.io.detect import FORMATS, detect_format
from evcascade.events.io.dsec import write_events
from evcascade.events.io.read import event_file_info, read_events
from evcascade.events.io.rectify import load_rectify_map, rectify

__all__ = [
    "EventFileInfo", "FORMATS", "detect_format", "event_file_info", "load_rectify_map", "read_events",
    "rectify", "write_events",
]
