"""Video clips: `Video` (uint8 RGB frames + timestamps), `read_video` and `video_info`.

Two sources are read, decoding only the frames that are sampled:

- video files (``.mp4 .avi .mkv .mov .webm .m4v``) through ``decord.VideoReader.get_batch``, with
  ``cv2.VideoCapture`` as the fallback when decord is missing or cannot read the file. Each frame is
  stamped with its own presentation time from the container (PTS, read with PyAV without decoding),
  counted from the first frame, plus ``video_offset_us``: variable-frame-rate files stay on time. Such
  times have no clock of their own (``has_clock`` False), so ``load_clip`` may align them to the events;
- DSEC image folders, stamped by ``images/timestamps.txt`` (one integer, microseconds, per PNG), a clock::

      <sequence>/                  (either this folder or images/ may be passed)
      └── images/
          ├── timestamps.txt
          └── left/rectified/000000.png 000001.png ...

Sampling rule (Video-LLaVA's): the frames whose timestamps lie in the half-open window
``[start_us, end_us)`` are indexed ``0 .. n-1`` and ``np.linspace(0, n - 1, num_frames).astype(int)``
of them are kept, so the first and the latest frame of the window are always in. (LanguageBind's
Video-LLaVA processor samples exactly so; the Hugging Face model-card example uses the stride
``np.arange(0, n, n / 8)``, which drops the latest frame, and the latest frame is our key frame.)
With fewer than ``num_frames`` frames in the window the rule repeats frames and ``read_video`` warns.

>>> video = Video(np.zeros((3, 4, 4, 3), np.uint8), timestamps_us=[0, 50_000, 100_000])
>>> sample_frame_indices(10, 4).tolist()
[0, 3, 6, 9]
>>> video.num_frames, video.start_us, video.end_us, video.window(0, 60_000).num_frames
(3, 0, 100001, 2)
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from evcascade.errors import InputError, InputFileNotFoundError

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


@dataclass(frozen=True, eq=False)
class Video:
    """Frames ``uint8 [T, H, W, 3]`` (RGB) with ``timestamps_us`` ``int64 [T]`` ascending.

    >>> video = Video(np.zeros((2, 4, 6, 3), np.uint8), np.array([0, 50_000]))
    >>> len(video), video.key_frame.shape
    (2, (4, 6, 3))

    Timestamps may repeat (a short window is padded by repeating frames) but never go back.
    ``has_clock`` says whether they are on a clock of their own (a DSEC folder, a live or robot-log stream,
    times the caller gives) or, for frames read from a container such as mp4, count from its first frame:
    ``load_clip`` may align only the latter to the events.
    """

    frames: np.ndarray
    timestamps_us: np.ndarray
    has_clock: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.frames, np.ndarray) or self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            shape = getattr(self.frames, "shape", None)
            raise InputError(f"Video.frames must be uint8 [T, H, W, 3], got shape {shape}")
        if self.frames.dtype != np.uint8:
            raise InputError(f"Video.frames must be uint8, got {self.frames.dtype}")
        ts = np.asarray(self.timestamps_us)
        if ts.ndim != 1 or ts.shape[0] != self.frames.shape[0]:
            raise InputError(f"Video.timestamps_us must be [T={self.frames.shape[0]}], got shape {ts.shape}")
        ts = ts.astype(np.int64)
        if ts.shape[0] > 1 and np.any(np.diff(ts) < 0):
            bad = int(np.argmax(np.diff(ts) < 0))
            raise InputError(
                f"Video.timestamps_us must be ascending, got t[{bad}]={ts[bad]} > t[{bad + 1}]={ts[bad + 1]} us"
            )
        object.__setattr__(self, "timestamps_us", ts)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_frames(self) -> int:
        """Number of frames T."""
        return len(self)

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def start_us(self) -> int | None:
        """Timestamp of the first frame, None when empty."""
        return int(self.timestamps_us[0]) if len(self) else None

    @property
    def end_us(self) -> int | None:
        """One past the latest frame's timestamp (as ``Events.end_us``), so the clip ends at its key frame."""
        return int(self.timestamps_us[-1]) + 1 if len(self) else None

    @property
    def key_frame(self) -> np.ndarray:
        """The latest frame in the clip, ``uint8 [H, W, 3]``: the one the frame refiner sees."""
        if len(self) == 0:
            raise InputError("Video has no frames, so it has no key frame")
        return self.frames[-1]

    def window(self, start_us: int | None = None, end_us: int | None = None) -> "Video":
        """Frames with ``start_us <= t < end_us`` (half-open; None is open). Views, no copy."""
        lo, hi = _window_bounds(self.timestamps_us, start_us, end_us)
        return Video(self.frames[lo:hi], self.timestamps_us[lo:hi], self.has_clock)

    def shift_time(self, offset_us: int) -> "Video":
        """The same frames with ``offset_us`` added to every timestamp (clock alignment)."""
        return Video(self.frames, self.timestamps_us + np.int64(offset_us), self.has_clock)

    def sample(
        self, num_frames: int = 8, start_us: int | None = None, end_us: int | None = None, *, source: str = "video"
    ) -> "Video":
        """``num_frames`` frames of the window ``[start_us, end_us)`` by the module's sampling rule.

        Repeats frames (with a warning) when the window holds fewer; raises ``InputError`` when it holds
        none. ``source`` names the video in messages.
        """
        indices = _sample_window(self.timestamps_us, num_frames, start_us, end_us, source)
        return Video(self.frames[indices], self.timestamps_us[indices], self.has_clock)

    def __repr__(self) -> str:
        span = f"[{self.start_us}, {self.end_us}) us" if len(self) else "empty"
        return f"Video(T={len(self)}, H={self.height}, W={self.width}, {span})"


class VideoInfo(NamedTuple):
    """What a video holds, read without decoding it: ``end_us`` is one past the latest frame's timestamp."""

    path: str
    num_frames: int
    fps: float
    start_us: int
    end_us: int
    width: int
    height: int
    has_clock: bool = False
    """True when the frame times are on a clock of their own (DSEC ``timestamps.txt``); False for containers
    (mp4 and the like), whose times count from their first frame."""


# ---------------------------------------------------------------------------------------------- sampling
def sample_frame_indices(num_available: int, num_frames: int) -> np.ndarray:
    """Indices of ``num_frames`` frames spread uniformly over ``0 .. num_available - 1``, first and last kept.

    >>> sample_frame_indices(3, 8).tolist()  # fewer frames than asked: frames repeat
    [0, 0, 0, 0, 1, 1, 1, 2]
    """
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1, got {num_frames}")
    if num_available < 1:
        raise InputError(f"cannot sample from {num_available} frames")
    return np.linspace(0, num_available - 1, num_frames).astype(np.int64)


def _window_bounds(timestamps_us: np.ndarray, start_us: int | None, end_us: int | None) -> tuple[int, int]:
    if start_us is not None and end_us is not None and start_us >= end_us:
        raise InputError(f"window start_us must be < end_us, got start_us={start_us}, end_us={end_us}")
    lo = 0 if start_us is None else int(np.searchsorted(timestamps_us, start_us, side="left"))
    hi = len(timestamps_us) if end_us is None else int(np.searchsorted(timestamps_us, end_us, side="left"))
    return lo, max(lo, hi)


def _sample_window(
    timestamps_us: np.ndarray, num_frames: int, start_us: int | None, end_us: int | None, source: str
) -> np.ndarray:
    """Indices into ``timestamps_us`` of the sampled frames of ``[start_us, end_us)``; warns when it repeats."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise InputError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    lo, hi = _window_bounds(timestamps_us, start_us, end_us)
    if hi == lo:
        span = f"[{int(timestamps_us[0])}, {int(timestamps_us[-1]) + 1}) us" if len(timestamps_us) else "no frames"
        raise InputError(
            f"{source}: no frames in the window [{start_us}, {end_us}) us; the video covers {span}"
        )
    if hi - lo < num_frames:
        warnings.warn(
            f"{source}: {hi - lo} frames in window [{start_us}, {end_us}) us, repeated to {num_frames}",
            stacklevel=3,
        )
    return lo + sample_frame_indices(hi - lo, int(num_frames))


# ---------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class _Source:
    """An opened video: frame timestamps (offset applied), size, and a reader of chosen frames."""

    path: str
    timestamps_us: np.ndarray  # [N] int64
    fps: float
    width: int
    height: int
    reader: Callable[[np.ndarray], np.ndarray]  # sorted unique indices [n] -> uint8 [n, H, W, 3]
    has_clock: bool  # frame times on a clock of their own (DSEC timestamps.txt), not counted from the first frame


def _open(path, video_offset_us: int, topic: str | None = None) -> _Source:
    """Open a video file, a DSEC image folder or a ROS bag's image topic without decoding more than one frame."""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise InputFileNotFoundError(f"no such video file or image folder: {str(path)!r}")
    from evcascade.bags import is_bag

    if is_bag(resolved):  # header-stamped frames: evcascade/bag_video.py
        from evcascade.bag_video import open_bag_images

        images = open_bag_images(resolved, topic)
        span_us = int(images.timestamps_us[-1] - images.timestamps_us[0])
        fps = (len(images.timestamps_us) - 1) * 1e6 / span_us if span_us > 0 else 0.0
        return _Source(images.path, images.timestamps_us + np.int64(video_offset_us), fps,
                       images.width, images.height, images.reader, has_clock=True)
    if topic is not None:
        raise InputError(f"a video topic ({topic!r}; CLI: --video-topic) applies to ROS bags only, not to {str(path)!r}")
    if resolved.is_dir():
        return _open_image_folder(resolved, video_offset_us)
    if resolved.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(
            f"{str(path)!r}: unknown video suffix {resolved.suffix!r}; expected one of {', '.join(VIDEO_SUFFIXES)} "
            "or a DSEC sequence/images folder"
        )
    return _open_video_file(resolved, video_offset_us)


class _Container(NamedTuple):
    """What PyAV reads from a video file's container without decoding a frame."""

    timestamps_us: np.ndarray  # [N] int64, presentation times counted from the first frame, ascending
    first_pts_ms: float  # the first frame's time as OpenCV's CAP_PROP_POS_MSEC reports it (from the stream start)
    fps: float  # the average rate, for information only: frames are stamped by their own PTS
    width: int
    height: int


_NATIVE_STDERR_LOCK = threading.RLock()  # re-entrant: a capture inside a capture just nests


@contextmanager
def _native_stderr_captured():
    """Point file descriptor 2 at a temporary file while native decoders run; yields a function returning the text.

    decord, FFmpeg and OpenCV write straight to fd 2 (``moov atom not found``, ``video_reader.cc:83: ERROR
    opening``), past ``sys.stderr``, so a user would see their lines before ours. What they said becomes part
    of our one error line instead. Other threads' writes to fd 2 in this short window land in the file too.
    """
    captured: list[str] = []
    with _NATIVE_STDERR_LOCK, tempfile.TemporaryFile(mode="w+b") as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: "".join(captured)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


def _native_detail(text: str) -> str:
    """The last line a native library printed, without its ``[component @ 0x...]`` prefix (empty when silent)."""
    lines = [line.split("] ", 1)[-1].strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


def _probe_container(path: Path) -> _Container:
    """Frame times from the container's packets (their PTS), size and rate, with PyAV: nothing is decoded.

    Variable-frame-rate files (phones, screen recorders, robot pipelines) drift against events when frame
    ``i`` is stamped ``i / fps``, so every frame keeps its own presentation time. PyAV keeps FFmpeg's log
    off, so a corrupt or truncated file is one ``InputError`` naming it, with no native lines before it.
    """
    import av

    try:
        with _native_stderr_captured(), av.open(str(path)) as container:  # PyAV's log is off; older FFmpegs print
            if not container.streams.video:
                raise InputError(f"{str(path)!r}: the file holds no video stream")
            stream = container.streams.video[0]
            width, height = int(stream.codec_context.width), int(stream.codec_context.height)
            time_base, rate = stream.time_base, stream.average_rate
            start = stream.start_time
            # pts of every frame (decode order; sorted below), without the demuxer's trailing empty packet
            pts = [packet.pts for packet in container.demux(stream) if packet.size and not packet.is_discard]
    except av.error.FFmpegError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"{str(path)!r}: not a readable video (corrupt, truncated or unsupported: {reason})") from None
    if not pts:
        raise InputError(f"{str(path)!r}: the video has no frames")
    if time_base is None or any(t is None for t in pts):
        # rare (raw elementary streams): no per-frame times in the container, so the average rate it is
        if not rate or rate <= 0:
            raise InputError(f"{str(path)!r}: the video has neither frame timestamps nor a frame rate")
        ticks, num, den = np.arange(len(pts), dtype=np.int64), rate.denominator, rate.numerator
        first_ms = 0.0
    else:
        ticks = np.sort(np.asarray(pts, dtype=np.int64))
        first_ms = float((int(ticks[0]) - (start if start is not None else int(ticks[0]))) * time_base * 1000)
        ticks -= ticks[0]
        num, den = time_base.numerator, time_base.denominator
    timestamps_us = (ticks * (num * 1_000_000) + den // 2) // den  # exact rational -> us, rounded
    fps = float(rate) if rate else (len(pts) - 1) * 1e6 / max(1, int(timestamps_us[-1]))
    return _Container(timestamps_us, first_ms, fps, width, height)


def _open_video_file(path: Path, offset_us: int) -> _Source:
    container = _probe_container(path)
    _check_stream(path, len(container.timestamps_us), container.fps)
    try:
        return _open_decord(path, container, offset_us)
    except ImportError:
        decord_error = "decord is not installed"
    except Exception as exc:  # decord raises RuntimeError / DECORDError on unreadable files
        decord_error = f"decord: {str(exc).splitlines()[0][:200]}"
    return _open_opencv(path, container, offset_us, decord_error)


def _open_decord(path: Path, container: _Container, offset_us: int) -> _Source:
    import cv2  # noqa: F401  before decord: decord's bundled zlib, loaded first, breaks OpenCV's PNG decoding
    import decord

    with _native_stderr_captured():
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    num_frames = len(reader)
    if num_frames != len(container.timestamps_us):
        raise RuntimeError(f"decord sees {num_frames} frames, the container {len(container.timestamps_us)}")
    # decord indexes frames by the same PTS (as float32 seconds: too coarse to stamp with, fine to check with)
    seconds = reader.get_frame_timestamp(range(num_frames))[:, 0].astype(np.float64)  # [N] frame start times
    tolerance_us = 1e6 * float(np.spacing(np.float32(np.abs(seconds).max()))) + 1.0
    if np.abs((seconds - seconds[0]) * 1e6 - container.timestamps_us).max() > tolerance_us:
        raise RuntimeError("decord's frame times differ from the container's")

    def read(indices: np.ndarray) -> np.ndarray:
        return _decode_decord(reader, path, container, indices)

    return _Source(str(path), container.timestamps_us + np.int64(offset_us), container.fps, container.width,
                   container.height, read, has_clock=False)


def _decode_decord(reader, path: Path, container: _Container, indices: np.ndarray) -> np.ndarray:
    try:
        with _native_stderr_captured():
            frames = reader.get_batch(indices.tolist()).asnumpy()  # [n, H, W, 3] RGB
    except Exception as exc:
        # decord 0.6 also fails on some valid files (widths such as 48 or 72 px: "DECORDArrayCopyFromTo:
        # The size must exactly match"), so OpenCV gets a chance before the file is called corrupt.
        decord_error = f"decord: {str(exc).splitlines()[0][-160:]}"
        return _open_opencv(path, container, 0, decord_error).reader(indices)
    return np.ascontiguousarray(frames, dtype=np.uint8)


def _open_opencv(path: Path, container: _Container, offset_us: int, decord_error: str) -> _Source:
    import cv2

    with _native_stderr_captured() as said:
        capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        detail = _native_detail(said()) or decord_error
        raise InputError(f"{str(path)!r}: not a readable video (corrupt, truncated or unsupported: {detail})")
    num_frames = len(container.timestamps_us)
    expected_ms = container.first_pts_ms + container.timestamps_us / 1000.0  # [N] CAP_PROP_POS_MSEC of each frame

    def grab(index: int, position: int) -> None:
        """Decode frame ``index``; seeking by frame number assumes a constant rate, so check where it landed."""
        if index != position:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok = capture.grab()
        if ok and abs(capture.get(cv2.CAP_PROP_POS_MSEC) - expected_ms[index]) > 0.5:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)  # a variable-rate file: walk from the start instead
            ok = all(capture.grab() for _ in range(index + 1))  # by count, which is the frame's index
        if not ok:
            raise InputError(
                f"{str(path)!r}: corrupt or truncated video, frame {index} of {num_frames} unreadable ({decord_error})"
            )

    def read(indices: np.ndarray) -> np.ndarray:
        frames, position = [], -1
        with _native_stderr_captured():
            for index in indices.tolist():
                grab(index, position)
                ok, frame_bgr = capture.retrieve()
                if not ok:
                    raise InputError(f"{str(path)!r}: corrupt video, frame {index} of {num_frames} undecodable")
                frames.append(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
                position = index + 1
        return np.stack(frames)

    return _Source(str(path), container.timestamps_us + np.int64(offset_us), container.fps, container.width,
                   container.height, read, has_clock=False)


def _check_stream(path: Path, num_frames: int, fps: float) -> None:
    if num_frames < 1:
        raise InputError(f"{str(path)!r}: the video has no frames (frame count {num_frames})")
    if not np.isfinite(fps) or fps <= 0:
        raise InputError(f"{str(path)!r}: the video reports an unusable frame rate {fps!r} fps")


def _image_folder_paths(folder: Path) -> tuple[Path, Path]:
    """(png folder, timestamps.txt) of a DSEC sequence folder, of its ``images`` folder or of its camera folder
    ``images/left`` (whose ``rectified/`` PNGs are stamped by ``../timestamps.txt``)."""
    for images in (folder / "images", folder):
        pngs, stamps = images / "left" / "rectified", images / "timestamps.txt"
        if pngs.is_dir() and stamps.is_file():
            return pngs, stamps
    if (folder / "rectified").is_dir() and (folder.parent / "timestamps.txt").is_file():
        return folder / "rectified", folder.parent / "timestamps.txt"
    raise InputError(
        f"{str(folder)!r}: a folder must be a DSEC sequence with images/left/rectified/*.png and "
        "images/timestamps.txt (or that images folder, or images/left itself)"
    )


def _read_timestamps(path: Path) -> np.ndarray:
    values = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        try:
            values.append(int(text))
        except ValueError:
            raise InputError(
                f"{str(path)!r}: line {line_no} is not an integer timestamp in us: {text[:40]!r}"
            ) from None
    stamps = np.asarray(values, dtype=np.int64)
    if stamps.shape[0] > 1 and np.any(np.diff(stamps) <= 0):
        bad = int(np.argmax(np.diff(stamps) <= 0))
        raise InputError(
            f"{str(path)!r}: timestamps must increase, got line {bad + 1}: {stamps[bad]} then {stamps[bad + 1]} us"
        )
    return stamps



def read_image_timestamps(path) -> np.ndarray:
    """Timestamps (us, int64) from a DSEC ``images/timestamps.txt``: one integer per line, checked increasing."""
    return _read_timestamps(path)

def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, without decoding the image."""
    with open(path, "rb") as handle:
        header = handle.read(24)
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n":
        raise InputError(f"{str(path)!r}: not a PNG image")
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def _open_image_folder(folder: Path, offset_us: int) -> _Source:
    png_dir, stamps_path = _image_folder_paths(folder)
    pngs = sorted(png_dir.glob("*.png"))
    stamps = _read_timestamps(stamps_path)
    if len(pngs) != stamps.shape[0]:
        raise InputError(
            f"{str(stamps_path)!r} lists {stamps.shape[0]} timestamps but {str(png_dir)!r} holds {len(pngs)} PNG images"
        )
    if not pngs:
        raise InputError(f"{str(png_dir)!r}: no PNG images")
    width, height = _png_size(pngs[0])
    fps = 1e6 / float(np.median(np.diff(stamps))) if len(stamps) > 1 else 0.0

    def read(indices: np.ndarray) -> np.ndarray:
        import cv2

        frames = []
        for index in indices.tolist():
            frame_bgr = cv2.imread(str(pngs[index]), cv2.IMREAD_COLOR)
            if frame_bgr is None:
                raise InputError(f"{str(pngs[index])!r}: unreadable PNG image")
            if frame_bgr.shape[:2] != (height, width):
                raise InputError(
                    f"{str(pngs[index])!r}: size {frame_bgr.shape[1]}x{frame_bgr.shape[0]} differs from the first "
                    f"image's {width}x{height}"
                )
            frames.append(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
        return np.stack(frames)

    return _Source(str(folder), stamps + np.int64(offset_us), fps, width, height, read, has_clock=True)


# ---------------------------------------------------------------------------------------------- public
def video_info(path, *, video_offset_us: int = 0, topic: str | None = None) -> VideoInfo:
    """Frame count, rate, time range and size of a video file or DSEC image folder, decoding at most one frame.

    >>> from evcascade.cascade import ASSETS
    >>> info = video_info(ASSETS / "sample" / "video.mp4")
    >>> info.num_frames, info.fps, (info.start_us, info.end_us), (info.width, info.height)
    (30, 20.0, (0, 1450001), (64, 64))
    """
    source = _open(path, video_offset_us, topic=topic)
    return VideoInfo(
        path=source.path, num_frames=int(source.timestamps_us.shape[0]), fps=source.fps,
        start_us=int(source.timestamps_us[0]), end_us=int(source.timestamps_us[-1]) + 1,
        width=source.width, height=source.height, has_clock=source.has_clock,
    )


def read_video(
    path, num_frames: int = 8, start_us: int | None = None, end_us: int | None = None, *, video_offset_us: int = 0,
    topic: str | None = None,
) -> Video:
    """``num_frames`` RGB frames sampled uniformly over ``[start_us, end_us)`` of a video file or DSEC folder.

    Times are on the caller's clock: frame times plus ``video_offset_us``. Only the sampled frames are
    decoded. Fewer frames than ``num_frames`` in the window are repeated (with a warning); none is an
    ``InputError``, as are missing, corrupt and unknown files.

    >>> from evcascade.cascade import ASSETS
    >>> video = read_video(ASSETS / "sample" / "video.mp4", num_frames=8)
    >>> video.frames.shape, video.timestamps_us[:3].tolist(), video.key_frame.shape
    ((8, 64, 64, 3), [0, 200000, 400000], (64, 64, 3))
    """
    source = _open(path, video_offset_us, topic=topic)
    indices = _sample_window(source.timestamps_us, num_frames, start_us, end_us, repr(source.path))  # [num_frames]
    unique, inverse = np.unique(indices, return_inverse=True)
    frames = source.reader(unique)  # [U, H, W, 3]
    return Video(frames[inverse], source.timestamps_us[indices], has_clock=source.has_clock)


def write_video(path, video: Video, fps: float, *, fourcc: str = "mp4v") -> Path:
    """Write ``video`` as a file at ``fps`` (lossy ``mp4v``, which opencv-python-headless can encode).

    Frames are written at a constant rate: reading back stamps frame ``i`` at ``round(i * 1e6 / fps)`` plus the
    reader's ``video_offset_us``, so keep the first timestamp (``video.start_us``) next to the file.
    """
    import cv2

    path = Path(path).expanduser()
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(
            f"{str(path)!r}: unknown video suffix {path.suffix!r}; expected one of {', '.join(VIDEO_SUFFIXES)}"
        )
    if len(video) == 0:
        raise InputError(f"{str(path)!r}: cannot write a video with no frames")
    if not fps > 0:
        raise InputError(f"fps must be > 0, got {fps!r}")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (video.width, video.height))
    if not writer.isOpened():
        raise InputError(f"{str(path)!r}: OpenCV cannot write codec {fourcc!r} to this file")
    try:
        for frame_rgb in video.frames:
            writer.write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path
