"""A `Clip`: events and video of one time window, on one clock.

The clock is the events' clock. Video frame times are shifted by ``video_offset_us`` onto it; without
one (``None``, the default) the ``Alignment`` rule decides:

- a video with a clock of its own (a DSEC image folder: its ``timestamps.txt`` and the events'
  ``t + t_offset`` share the image clock; a ``Video`` whose times the caller gave) is used as it is;
- a container (mp4 and the like) has no clock, its times count from its first frame: used as it is when
  that range meets the events', else its first frame is put on the events' first event (for DSEC, the
  file's first event on the image clock), with a ``ClockAlignmentWarning`` saying so.

``Clip.alignment`` records what was done (``Answer.inputs["alignment"]``, the CLI's ``--json``).
Each recording covers ``[first, last + 1)`` us, as ``Events.end_us`` and ``Video.end_us`` say, so a
clip's window ends at its key frame by default.

- Window: ``[start_us, end_us)``; by default the overlap of both recordings. A window that is not
  inside both is an ``InputError`` naming both recordings' ranges and the window asked for.
- Frames: ``num_frames`` sampled uniformly over the whole window (``evcascade.video``'s rule).
- Events: the whole window, or with ``event_window_us`` only its last ``event_window_us``
  (DSEC / EventGPT style, 50 ms), clamped to the window.

Only the window is read from files: the events' range comes from ``event_file_info`` and the
video's from ``video_info`` before anything is loaded.

>>> import numpy as np
>>> from evcascade.events.container import Events
>>> from evcascade.video import Video
>>> events = Events.from_arrays(x=[0, 1, 2], y=[0, 0, 0], t_us=[0, 40_000, 90_000], p=[1, 1, 0], sensor_size=(4, 4))
>>> video = Video(np.zeros((3, 4, 4, 3), np.uint8), timestamps_us=[0, 50_000, 100_000])
>>> clip = load_clip(events, video, num_frames=2)
>>> clip.start_us, clip.end_us, len(clip.events), clip.video.timestamps_us.tolist()
(0, 90001, 3, [0, 50000])
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.video import Video, read_video, video_info

Range = tuple[int, int] | None  # [start_us, end_us) of a recording; None when it holds nothing

ALIGNMENT_RULES: tuple[str, ...] = ("given", "clock", "as_is", "events_start")


class ClockAlignmentWarning(UserWarning):
    """``load_clip`` moved a clockless video's frames onto the events' clock by itself."""


@dataclass(frozen=True)
class Alignment:
    """How the video's frame times were put on the events' clock: ``video_offset_us`` was added to each.

    >>> note = Alignment(49_599_300_555, "events_start", video_start_us=0, events_start_us=49_599_300_555)
    >>> note.message()
    'aligned video t=0 to events t=49599300555 us; pass video_offset_us to override'
    >>> note.message(override="--video-offset-us")
    'aligned video t=0 to events t=49599300555 us; pass --video-offset-us to override'
    """

    video_offset_us: int
    rule: str
    """``given`` (the caller's offset), ``clock`` (the video has a clock of its own: used as it is), ``as_is``
    (a clockless video whose times already meet the events', or no events to align to), ``events_start``
    (a clockless video whose range missed the events': its first frame put on the events' first event)."""
    video_start_us: int
    """The video's first frame time before the offset (0 for a container)."""
    events_start_us: int | None
    """The events' first event time (None when they hold none)."""

    def __post_init__(self) -> None:
        if self.rule not in ALIGNMENT_RULES:
            raise InputError(f"alignment rule must be one of {ALIGNMENT_RULES}, got {self.rule!r}")

    @property
    def automatic(self) -> bool:
        """True when ``load_clip`` chose the offset itself (the case a user must be told about)."""
        return self.rule == "events_start"

    def message(self, override: str = "video_offset_us") -> str:
        """One line saying what was done; ``override`` names the option that changes it."""
        return (f"aligned video t={self.video_start_us} to events t={self.events_start_us} us; "
                f"pass {override} to override")

    def to_dict(self) -> dict:
        return asdict(self)


def choose_alignment(events_range: Range, video_range: Range, video_has_clock: bool,
                     video_offset_us: int | None = None) -> Alignment:
    """The offset that puts the video (``video_range`` on its own times) on the events' clock, and why.

    >>> choose_alignment((5_000_000, 6_000_000), (0, 900_001), video_has_clock=False).video_offset_us
    5000000
    >>> choose_alignment((5_000_000, 6_000_000), (0, 900_001), video_has_clock=True).rule
    'clock'
    """
    if video_offset_us is not None and (isinstance(video_offset_us, bool) or not hasattr(video_offset_us, "__index__")):
        raise InputError(f"video_offset_us must be an integer number of microseconds or None, got {video_offset_us!r}")
    video_start = video_range[0] if video_range is not None else 0
    events_start = events_range[0] if events_range is not None else None
    if video_offset_us is not None:
        return Alignment(int(video_offset_us), "given", video_start, events_start)
    if video_has_clock:
        return Alignment(0, "clock", video_start, events_start)
    meets = events_range is None or video_range is None or (
        video_range[0] < events_range[1] and events_range[0] < video_range[1])
    if meets:
        return Alignment(0, "as_is", video_start, events_start)
    return Alignment(int(events_start) - int(video_start), "events_start", video_start, events_start)


@dataclass(frozen=True, eq=False)
class Clip:
    """Events in ``[events_start_us, end_us)`` and frames sampled over ``[start_us, end_us)``, one clock.

    >>> import numpy as np
    >>> from evcascade import Events, Video
    >>> clip = Clip(Events.empty((4, 4)), Video(np.zeros((1, 4, 4, 3), np.uint8), np.array([0])), 0, 1, 0)
    >>> clip.duration_us
    1
    """

    events: Events
    video: Video
    start_us: int
    end_us: int
    events_start_us: int
    events_path: str | None = None
    video_path: str | None = None
    alignment: Alignment | None = None
    """How the video was put on the events' clock (None for a Clip built by hand)."""

    @property
    def duration_us(self) -> int:
        return self.end_us - self.start_us

    def describe(self) -> str:
        """A few human-readable lines: window, events, frames and where they came from."""
        ev, video = self.events, self.video
        rate = len(ev) / max(1, self.end_us - self.events_start_us) * 1e6
        return "\n".join([
            f"clip [{self.start_us}, {self.end_us}) us ({self.duration_us / 1000:.1f} ms)",
            f"events: {len(ev)} in [{self.events_start_us}, {self.end_us}) us, {rate / 1e6:.3f} Mev/s, "
            f"sensor {ev.sensor_size[0]}x{ev.sensor_size[1]}"
            + (f", from {self.events_path}" if self.events_path else ""),
            f"video: {len(video)} frames {video.width}x{video.height} at "
            f"{', '.join(str(int(t)) for t in video.timestamps_us)} us; key frame at {int(video.timestamps_us[-1])} us"
            + (f", from {self.video_path}" if self.video_path else ""),
        ])

    def __repr__(self) -> str:
        return (f"Clip([{self.start_us}, {self.end_us}) us, events={len(self.events)}, "
                f"frames={len(self.video)}, events_path={self.events_path!r}, video_path={self.video_path!r})")


def _format_range(name: str, span: Range) -> str:
    return f"{name} [{span[0]}, {span[1]}) us" if span is not None else f"{name} hold nothing"


def clip_window(events_range: Range, video_range: Range, start_us: int | None = None,
                end_us: int | None = None) -> tuple[int, int]:
    """The window ``[start, end)``: the given bounds, else the overlap of both ranges; it must lie in both.

    >>> clip_window((0, 1000), (200, 1500))
    (200, 1000)
    >>> clip_window((0, 1000), (200, 1500), start_us=500)
    (500, 1000)
    """
    for name, value in (("start_us", start_us), ("end_us", end_us)):
        if value is not None and (isinstance(value, bool) or not hasattr(value, "__index__")):
            raise InputError(f"{name} must be an integer number of microseconds or None, got {value!r}")
    ranges = [r for r in (events_range, video_range) if r is not None]
    start = int(start_us) if start_us is not None else (max(r[0] for r in ranges) if ranges else None)
    end = int(end_us) if end_us is not None else (min(r[1] for r in ranges) if ranges else None)
    both = f"{_format_range('events', events_range)}, {_format_range('video', video_range)}"
    if start is None or end is None:
        raise InputError(f"cannot choose a clip window: {both}; pass start_us and end_us")
    if start >= end:
        if start_us is None and end_us is None:
            raise InputError(f"the recordings do not overlap in time: {both}; pass video_offset_us (events' clock "
                             "minus the video's) to move the video, or start_us and end_us")
        raise InputError(f"empty clip window: requested [{start}, {end}) us (start must be < end); {both}")
    outside = [r for r in ranges if start < r[0] or end > r[1]]
    if outside:
        raise InputError(f"clip window [{start}, {end}) us is not inside both recordings: {both}")
    return start, end


def _events_range(events, allow_pickle: bool, topic: str | None = None) -> tuple[Range, str | None]:
    if isinstance(events, Events):
        return ((events.start_us, events.end_us) if len(events) else None), None
    if not isinstance(events, (str, Path)):
        raise InputError(f"events must be a path or an Events, got {type(events).__name__}")
    from evcascade.events.io import event_file_info

    info = event_file_info(events, allow_pickle=allow_pickle, topic=topic)
    if info.start_us is not None and info.start_us >= info.end_us:
        # the cheap summary reads the first and the last event; the last before the first means unsorted times
        raise InputError(
            f"{str(events)!r}: event timestamps are not sorted (the first event is at t={info.start_us} us, the "
            f"last at t={info.end_us - 1} us); pass sort=True to sort them (reads the whole file)"
        )
    span = (info.start_us, info.end_us) if info.start_us is not None else None
    return span, str(events)


def _video_range(video, topic: str | None = None) -> tuple[Range, str | None, bool]:
    """The video's own ``[start, end)`` (before any offset), its path, and whether its times have a clock."""
    if isinstance(video, Video):
        if len(video) == 0:
            raise InputError("video has no frames")
        return (video.start_us, video.end_us), None, video.has_clock
    if not isinstance(video, (str, Path)):
        raise InputError(f"video must be a path or a Video, got {type(video).__name__}")
    info = video_info(video, topic=topic)
    return (info.start_us, info.end_us), str(video), info.has_clock


def load_clip(
    events,
    video,
    *,
    start_us: int | None = None,
    end_us: int | None = None,
    video_offset_us: int | None = None,
    num_frames: int = 8,
    event_window_us: int | None = None,
    allow_pickle: bool = False,
    events_topic: str | None = None,
    video_topic: str | None = None,
    sort: bool = False,
    sensor_size: tuple[int, int] | None = None,
) -> Clip:
    """Events and ``num_frames`` video frames of one window, on the events' clock (see the module notes).

    ``events`` is a path (any format ``read_events`` knows) or an ``Events``; ``video`` a path (video file
    or DSEC image folder) or a ``Video``. ``video_offset_us`` (added to every frame time) overrides the
    default alignment. ``allow_pickle``, ``sort`` and ``sensor_size`` are passed to the event reader
    (EventGPT's pickled files execute code when loaded, so they need the opt-in; ``sort`` reads the whole
    file). ``events_topic`` / ``video_topic`` choose the topics of ROS bags (default: the bag's only event /
    image topic).

    >>> from evcascade.cascade import ASSETS
    >>> clip = load_clip(ASSETS / "sample" / "events.h5", ASSETS / "sample" / "video.mp4", num_frames=8)
    >>> (clip.start_us, clip.end_us), len(clip.events), len(clip.video)
    ((2488, 1450001), 6683, 8)
    """
    if event_window_us is not None and (isinstance(event_window_us, bool) or int(event_window_us) <= 0):
        raise InputError(f"event_window_us must be a positive number of microseconds or None, got {event_window_us!r}")
    events_path = None
    if sort and isinstance(events, (str, Path)):  # sorting needs every event: read the file once, whole
        from evcascade.events.io import read_events

        events_path, events = str(events), read_events(events, allow_pickle=allow_pickle, sort=True,
                                                        sensor_size=sensor_size, topic=events_topic)
    events_range, path = _events_range(events, allow_pickle, events_topic)
    events_path = events_path or path
    own_range, video_path, has_clock = _video_range(video, video_topic)
    alignment = choose_alignment(events_range, own_range, has_clock, video_offset_us)
    if alignment.automatic:
        warnings.warn(alignment.message(), ClockAlignmentWarning, stacklevel=2)
    offset = alignment.video_offset_us
    video_range = (own_range[0] + offset, own_range[1] + offset)
    start, end = clip_window(events_range, video_range, start_us, end_us)
    events_start = start if event_window_us is None else max(start, end - int(event_window_us))

    if isinstance(events, Events):
        window_events = events.window(events_start, end)
    else:
        from evcascade.events.io import read_events

        window_events = read_events(events_path, events_start, end, allow_pickle=allow_pickle,
                                    sensor_size=sensor_size, topic=events_topic)
    if video_path is None:
        window_video = video.shift_time(offset).sample(num_frames, start, end, source="video")
    else:
        window_video = read_video(video_path, num_frames, start, end, video_offset_us=offset, topic=video_topic)
    return Clip(window_events, window_video, start, end, events_start, events_path, video_path, alignment)
