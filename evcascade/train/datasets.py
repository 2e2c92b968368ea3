"""Training samples: windows of (events, the frames that cover them, the key frame) from DSEC or a manifest.

A dataset is a list of `ClipWindow` (where to read, nothing read yet) and a `ClipDataset` that reads one
window per ``__getitem__`` (``read_events`` / ``read_video`` over the window, whose bounds were checked against
both recordings when the index was built), so only the window's events and the sampled frames are decoded. Two index builders make the windows:

- ``dsec_windows(root)``: every ``stride_frames``-th image of each sequence is a key frame; its window ends
  just after it (``ts + 1``), its frames span ``video_window_us`` and its events the last ``event_window_us``::

      <root>/<sequence>/
      ├── events/left/events.h5        (or events_left/events.h5)
      └── images/
          ├── timestamps.txt           one integer (us, image clock) per PNG
          └── left/rectified/000000.png ...

- ``manifest_windows(path)``: one window per entry of a JSON or CSV manifest: ``events``, ``video`` (paths,
  relative to the manifest), optional ``prompts``/``answers`` (or ``prompt``/``answer``), ``video_offset_us``,
  ``t0_us`` (first frame time; added to the offset, as `evcascade.data.layout` writes it), ``start_us``,
  ``end_us`` and ``id``. JSON is a list of entries or ``{"scenes": [...]}`` / ``{"clips": [...]}``.

Splits are by group (DSEC sequence, manifest entry id), never by sample: ``split_windows``.

>>> windows = [ClipWindow(f"s{i}/0", "e.h5", "v.mp4", 0, 10, group=f"s{i}") for i in range(4)]
>>> train, val = split_windows(windows, val_fraction=0.25, seed=0)
>>> len(train), len(val), {w.group for w in val} & {w.group for w in train}
(3, 1, set())
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from evcascade.errors import InputError, InputFileNotFoundError, require_file

DSEC_EVENT_FILES = ("events/left/events.h5", "events_left/events.h5")


@dataclass(frozen=True)
class ClipWindow:
    """One training window: files, ``[start_us, end_us)`` on the events' clock, prompts, split group."""

    key: str
    """Unique name of the window (the target cache is keyed by it)."""
    events_path: str
    video_path: str
    start_us: int
    """Start of the video window (the frames are sampled over ``[start_us, end_us)``)."""
    end_us: int
    """One past the key frame's time."""
    video_offset_us: int = 0
    prompts: tuple[str, ...] = ()
    answers: tuple[str | None, ...] = ()
    group: str = ""
    """Split unit: windows of one group all go to train or all to validation."""


# ---------------------------------------------------------------------------------------------- DSEC
@dataclass(frozen=True)
class DsecSequence:
    """A checked DSEC sequence: its events file, its folder of images and the image timestamps."""

    name: str
    events_path: Path
    images_folder: Path
    timestamps_us: np.ndarray = field(repr=False)
    events_range: tuple[int, int] = (0, 0)


def _dsec_events_file(folder: Path, name: str) -> Path:
    for relative in DSEC_EVENT_FILES:
        if (folder / relative).is_file():
            return folder / relative
    tried = ", ".join(str(folder / r) for r in DSEC_EVENT_FILES)
    raise InputFileNotFoundError(f"DSEC sequence {name!r}: missing events file (tried {tried})")


def check_dsec_sequence(events_root: Path, images_root: Path, name: str) -> DsecSequence:
    """Check one sequence's files and clocks; errors name the sequence and the file at fault."""
    from evcascade.events.io import event_file_info
    from evcascade.video import read_image_timestamps  # the one parser of DSEC timestamps.txt

    events_path = _dsec_events_file(events_root / name, name)
    images = images_root / name / "images"
    stamps_path, png_dir = images / "timestamps.txt", images / "left" / "rectified"
    for path in (stamps_path, png_dir):
        if not path.exists():
            raise InputFileNotFoundError(f"DSEC sequence {name!r}: missing {str(path)!r}")
    stamps = read_image_timestamps(stamps_path)
    num_pngs = sum(1 for _ in png_dir.glob("*.png"))
    if num_pngs != stamps.shape[0] or num_pngs == 0:
        raise InputError(f"DSEC sequence {name!r}: {str(stamps_path)!r} lists {stamps.shape[0]} timestamps but "
                         f"{str(png_dir)!r} holds {num_pngs} PNG images; they must match one to one")
    info = event_file_info(events_path)
    if info.start_us is None:
        raise InputError(f"DSEC sequence {name!r}: {str(events_path)!r} holds no events")
    if stamps[-1] < info.start_us or stamps[0] >= info.end_us:
        raise InputError(
            f"DSEC sequence {name!r}: image timestamps [{stamps[0]}, {stamps[-1]}] us in {str(stamps_path)!r} do not "
            f"overlap the events [{info.start_us}, {info.end_us}) us of {str(events_path)!r} (t + t_offset); "
            "the two files are not on one clock or belong to different sequences"
        )
    return DsecSequence(name, events_path, images_root / name, stamps, (info.start_us, info.end_us))


def find_dsec_sequences(root, *, images_root=None, sequences: Sequence[str] | None = None) -> list[DsecSequence]:
    """The checked sequences under ``root`` (all, or the named ``sequences``), sorted by name.

    ``images_root`` holds the ``<sequence>/images`` folders when DSEC's image and event downloads were unpacked
    to different places (default: ``root``).
    """
    events_root = Path(root).expanduser()
    if not events_root.is_dir():
        raise InputFileNotFoundError(f"no such DSEC folder: {str(root)!r}")
    images_root = Path(images_root).expanduser() if images_root is not None else events_root
    markers = ("events", "events_left", "images")  # a folder with any of them is a sequence, complete or not
    found = sorted(p.name for p in events_root.iterdir() if p.is_dir() and any((p / m).is_dir() for m in markers))
    if sequences is not None:
        unknown = sorted(set(sequences) - set(found))
        if unknown:
            raise InputError(f"DSEC sequences {unknown} are not under {str(events_root)!r}; found {found}")
        found = sorted(set(sequences))
    if not found:
        raise InputError(f"{str(events_root)!r} holds no DSEC sequences (folders with events/left/events.h5)")
    return [check_dsec_sequence(events_root, images_root, name) for name in found]


def dsec_windows(
    root,
    *,
    images_root=None,
    sequences: Sequence[str] | None = None,
    event_window_us: int = 50_000,
    video_window_us: int = 400_000,
    stride_frames: int = 1,
    prompts: Sequence[str] = (),
) -> list[ClipWindow]:
    """Windows ending at every ``stride_frames``-th image whose video and event windows the recordings cover.

    At DSEC's 20 Hz, ``video_window_us=400_000`` holds exactly the key frame and the 7 before it.
    """
    _check_positive("event_window_us", event_window_us)
    _check_positive("video_window_us", video_window_us)
    _check_positive("stride_frames", stride_frames)
    windows = []
    for seq in find_dsec_sequences(root, images_root=images_root, sequences=sequences):
        stamps = seq.timestamps_us
        ends = stamps[::stride_frames] + 1  # [W] one past each key frame
        starts = ends - video_window_us
        keep = (starts >= stamps[0]) & (ends - event_window_us >= seq.events_range[0]) & (ends <= seq.events_range[1])
        if not keep.any():
            raise InputError(
                f"DSEC sequence {seq.name!r}: no key frame has {video_window_us} us of images and {event_window_us} us "
                f"of events before it (images [{stamps[0]}, {stamps[-1]}] us, events {list(seq.events_range)} us)"
            )
        for start, end in zip(starts[keep].tolist(), ends[keep].tolist()):
            windows.append(ClipWindow(f"{seq.name}/{end - 1}", str(seq.events_path), str(seq.images_folder),
                                      int(start), int(end), 0, tuple(prompts), (), seq.name))
    return windows


# ---------------------------------------------------------------------------------------------- manifests
def _as_tuple(entry: dict, plural: str, singular: str) -> tuple:
    value = entry.get(plural, entry.get(singular))
    if value is None or value == "":
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _int_or_none(entry: dict, name: str, where: str) -> int | None:
    value = entry.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {name} must be an integer number of microseconds, got {value!r}") from None


def read_manifest_entries(path) -> list[dict]:
    """Entries of a JSON (list, or ``{"scenes"|"clips": [...]}``) or CSV manifest, paths made absolute."""
    path = require_file(path)
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        grouped: dict[tuple, dict] = {}  # rows of one clip (same files and window) share an entry
        for row in rows:
            ident = (row.get("id") or "", row.get("events"), row.get("video"), row.get("start_us"), row.get("end_us"))
            entry = grouped.setdefault(ident, {**row, "prompts": [], "answers": []})
            if row.get("prompt"):
                entry["prompts"].append(row["prompt"])
                entry["answers"].append(row.get("answer") or None)
        entries = list(grouped.values())
    else:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{str(path)!r}: not a JSON or CSV manifest ({exc})") from None
        if isinstance(data, dict):
            data = data.get("scenes", data.get("clips"))
        if not isinstance(data, list):
            raise InputError(f"{str(path)!r}: a JSON manifest must be a list of entries or hold 'scenes' or 'clips'")
        entries = [dict(e) for e in data]
    if not entries:
        raise InputError(f"{str(path)!r}: the manifest has no entries")
    for index, entry in enumerate(entries):
        missing = [k for k in ("events", "video") if not entry.get(k)]
        if missing:
            raise InputError(f"{str(path)!r}: entry {index} lacks {missing} (each entry needs an events and a video file)")
        for name in ("events", "video"):
            entry[name] = str((path.parent / str(entry[name])).expanduser())
    return entries


def manifest_windows(path, *, video_window_us: int | None = None) -> list[ClipWindow]:
    """One window per manifest entry: ``[start_us, end_us)`` as given, else the end of both recordings' overlap
    and ``video_window_us`` before it (or the whole overlap)."""
    from evcascade.clip import clip_window
    from evcascade.events.io import event_file_info
    from evcascade.video import video_info

    if video_window_us is not None:
        _check_positive("video_window_us", video_window_us)
    windows, seen = [], set()
    for index, entry in enumerate(read_manifest_entries(path)):
        name = str(entry.get("id") or f"entry{index:05d}")
        where = f"{str(path)!r} entry {name!r}"
        if name in seen:
            raise InputError(f"{where}: id {name!r} appears twice; ids must be unique")
        seen.add(name)
        offset = (_int_or_none(entry, "video_offset_us", where) or 0) + (_int_or_none(entry, "t0_us", where) or 0)
        events_info = event_file_info(require_file(entry["events"]))
        video = video_info(entry["video"], video_offset_us=offset)
        events_range = (events_info.start_us, events_info.end_us) if events_info.start_us is not None else None
        start, end = _int_or_none(entry, "start_us", where), _int_or_none(entry, "end_us", where)
        try:
            lo, hi = clip_window(events_range, (video.start_us, video.end_us), start, end)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        if start is None and video_window_us is not None:
            lo = max(lo, hi - video_window_us)
        prompts, answers = _as_tuple(entry, "prompts", "prompt"), _as_tuple(entry, "answers", "answer")
        if answers and len(answers) != len(prompts):
            raise InputError(f"{where}: {len(prompts)} prompts but {len(answers)} answers")
        windows.append(ClipWindow(name, entry["events"], entry["video"], int(lo), int(hi), int(offset),
                                  tuple(str(p) for p in prompts), tuple(answers), name))
    return windows


# ---------------------------------------------------------------------------------------------- splitting
def split_windows(windows: Sequence[ClipWindow], *, val_fraction: float = 0.1, val_groups: Sequence[str] | None = None,
                  seed: int = 0) -> tuple[list[ClipWindow], list[ClipWindow]]:
    """(train, val) split by group: ``val_groups`` if given, else a seeded ``val_fraction`` of the groups
    (at least one when there are two or more groups)."""
    groups = sorted({w.group for w in windows})
    if val_groups is not None:
        unknown = sorted(set(val_groups) - set(groups))
        if unknown:
            raise InputError(f"validation groups {unknown} are not in the data; groups: {groups}")
        val = set(val_groups)
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise InputError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        count = math.ceil(val_fraction * len(groups)) if val_fraction > 0 and len(groups) > 1 else 0
        order = np.random.default_rng(seed).permutation(len(groups))
        val = {groups[i] for i in order[:count]}
    return [w for w in windows if w.group not in val], [w for w in windows if w.group in val]


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InputError(f"{name} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------------------------- reading
class ClipDataset:
    """Reads windows lazily: item ``i`` is a dict with ``key``, ``group``, ``events`` (or None), ``frames``
    uint8 ``[T, H, W, 3]`` (or None; the last is the key frame), ``prompts``, ``answers``, ``num_events``."""

    def __init__(self, windows: Sequence[ClipWindow], *, num_frames: int = 8, event_window_us: int = 50_000,
                 load_events: bool = True, load_frames: bool = True):
        _check_positive("num_frames", num_frames)
        _check_positive("event_window_us", event_window_us)
        self.windows = list(windows)
        self.num_frames, self.event_window_us = int(num_frames), int(event_window_us)
        self.load_events, self.load_frames = load_events, load_frames

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict:
        from evcascade.events.io import read_events
        from evcascade.video import read_video

        w = self.windows[index]
        events = frames = None
        if self.load_events:
            events = read_events(w.events_path, max(w.start_us, w.end_us - self.event_window_us), w.end_us)
        if self.load_frames:
            frames = read_video(w.video_path, self.num_frames, w.start_us, w.end_us,
                                video_offset_us=w.video_offset_us).frames  # [T, H, W, 3]
        return {"key": w.key, "group": w.group, "events": events, "frames": frames, "prompts": list(w.prompts),
                "answers": list(w.answers), "num_events": -1 if events is None else len(events)}
