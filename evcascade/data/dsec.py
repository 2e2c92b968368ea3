"""Write synthetic-world scenes in DSEC's own *sequence* layout, so the DSEC path runs end to end without DSEC.

::

    <root>/<sequence>/
    ├── events/left/events.h5          events/{x,y,t,p}, t = us since t_offset (uint32), t_offset (int64), ms_to_idx
    └── images/
        ├── timestamps.txt             one integer per image: us on the image clock (= event t + t_offset)
        └── left/rectified/000000.png ...

The layout is DSEC's (https://dsec.ifi.uzh.ch/data-format/): the readers, `dsec_windows`, the training
configs and ``python -m evcascade.infer --events <seq>/events/left/events.h5 --video <seq>/images/left`` take it
exactly as they take a downloaded DSEC sequence. The clock is DSEC-like too: ``t_offset_us`` defaults to a value
above 2**32 (DSEC's offsets are image-clock microseconds of that order), so any 32-bit arithmetic on absolute
times fails here as it would on DSEC. Not written: ``rectify_map.h5`` (DSEC's event rectification map; no reader
here applies it, and the synthetic events and images share one pinhole already).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evcascade.data.world import WorldSample
from evcascade.errors import InputError

DEFAULT_T_OFFSET_US = 49_599_300_523
"""Image-clock time of the first image, in us: > 2**32, like DSEC's offsets."""


def write_dsec_sequence(sample: WorldSample, folder, *, t_offset_us: int = DEFAULT_T_OFFSET_US) -> Path:
    """Write one scene as the DSEC sequence ``folder`` (events, rectified PNGs, timestamps); returns ``folder``.

    The scene's clock (its first frame at 0) becomes the image clock plus ``t_offset_us``; events are stored
    relative to ``t_offset_us`` as DSEC stores them.
    """
    import cv2

    from evcascade.events.io import write_events

    if isinstance(t_offset_us, bool) or not isinstance(t_offset_us, (int, np.integer)) or t_offset_us < 0:
        raise InputError(f"t_offset_us must be a non-negative integer, got {t_offset_us!r}")
    folder = Path(folder).expanduser()
    png_dir = folder / "images" / "left" / "rectified"
    png_dir.mkdir(parents=True, exist_ok=True)
    video, events = sample.video, sample.events
    stamps = np.asarray(video.timestamps_us, dtype=np.int64) + int(t_offset_us)  # [T] image clock
    for index, frame in enumerate(video.frames):  # [H, W, 3] RGB uint8
        if not cv2.imwrite(str(png_dir / f"{index:06d}.png"), np.ascontiguousarray(frame[..., ::-1])):
            raise OSError(f"could not write {png_dir / f'{index:06d}.png'}")
    (folder / "images" / "timestamps.txt").write_text("".join(f"{int(t)}\n" for t in stamps))
    (folder / "events" / "left").mkdir(parents=True, exist_ok=True)
    write_events(folder / "events" / "left" / "events.h5", events.shift_time(int(t_offset_us)), t_offset_us=int(t_offset_us))
    return folder
