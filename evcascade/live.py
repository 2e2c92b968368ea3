"""`LiveSession`: ask questions about the latest moments of live event and frame streams (robot code).

Camera threads push event packets and frames as they arrive; any thread may ``ask`` about the newest window.
Pushing never waits for an answer: ``ask`` takes a snapshot (a copy of the window) under short locks and
decodes outside them. Memory is bounded by construction: a ring of at most ``max_events`` events and at
most ``max_frames`` frames, whatever the session's length. A second question about an unchanged window
reuses the target's cached video features and visual prefix.

    session = LiveSession(Cascade.from_pretrained("bundled"), sensor_size=(640, 480))
    # camera threads:  session.push_events(packet)      session.push_frame(rgb_uint8, timestamp_us)
    answer = session.ask("what is moving ?")            # about the last video_window_us
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from evcascade.cascade import judge_provisional
from evcascade.clip import Clip
from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.events.stream import LiveEventBuffer
from evcascade.video import Video, sample_frame_indices


@dataclass(frozen=True)
class LiveSnapshot:
    """The copy of the streams that one question is about."""

    events: Events
    video: Video
    start_us: int
    end_us: int


class LiveSession:
    """Live event + frame streams in, answers about the newest window out; thread-safe, bounded memory.

    ``event_window_us``: events the drafters see (ending at the newest frame); ``video_window_us``: span the
    target's frames are sampled from; ``max_events`` / ``max_frames``: memory bounds of the two rings;
    ``batched``: serve questions through the cascade's batch scheduler (shared by every session on it).

    >>> from evcascade.cascade import Cascade
    >>> from evcascade.models.tiny import tiny_tokenizer, tiny_video_llava
    >>> tok = tiny_tokenizer()
    >>> session = LiveSession(Cascade.from_models(tiny_video_llava(tok), tok), sensor_size=(32, 32))
    >>> for i in range(8):
    ...     session.push_frame(np.full((32, 32, 3), 20 * i, np.uint8), timestamp_us=i * 50_000)
    >>> session.push_events(Events.from_arrays([1, 2], [3, 4], [100_000, 200_000], [1, 0], (32, 32)))
    2
    >>> len(session.ask("what is moving ?", max_new_tokens=3).token_ids)
    3
    """

    def __init__(self, cascade, sensor_size: Sequence[int], *, event_window_us: int = 50_000,
                 video_window_us: int = 1_000_000, max_events: int = 4_000_000, max_frames: int = 64,
                 batched: bool = False) -> None:
        for name, value in (("event_window_us", event_window_us), ("video_window_us", video_window_us),
                            ("max_frames", max_frames)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        self.cascade = cascade
        self.batched = bool(batched)
        """True: questions go through the cascade's batch scheduler (``Cascade.submit``), so questions from many
        threads and many sessions on one cascade are verified together instead of queueing one by one."""
        self.event_window_us, self.video_window_us = int(event_window_us), int(video_window_us)
        self.events = LiveEventBuffer(sensor_size, max(self.event_window_us, self.video_window_us), max_events)
        self.sensor_size = self.events.sensor_size
        self._frames: deque[tuple[int, np.ndarray]] = deque(maxlen=int(max_frames))
        self._frames_lock = threading.Lock()
        self._frame_shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ producers
    def push_events(self, packet: Any) -> int:
        """Add an event packet (an `Events`, a structured array, a mapping or an (x, y, t_us, p) tuple)."""
        return self.events.push(packet)

    def push_frame(self, frame: np.ndarray, timestamp_us: int) -> None:
        """Add one RGB frame ``uint8 [H, W, 3]`` taken at ``timestamp_us`` (the events' clock)."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise InputError(f"frames must be uint8 [H, W, 3], got {frame.dtype} {tuple(frame.shape)}")
        stamp = int(timestamp_us)
        with self._frames_lock:
            if self._frame_shape is not None and frame.shape != self._frame_shape:
                raise InputError(f"frame shape changed from {self._frame_shape} to {tuple(frame.shape)}")
            if self._frames and stamp <= self._frames[-1][0]:
                raise InputError(f"frame timestamps must increase: got {stamp} us after {self._frames[-1][0]} us")
            self._frame_shape = frame.shape
            self._frames.append((stamp, frame.copy()))  # the producer may reuse its buffer

    # ------------------------------------------------------------------ consumers
    def snapshot(self, num_frames: int | None = None) -> LiveSnapshot:
        """Copy the newest window: frames from the last ``video_window_us`` (sampled to the target's frame count),
        events from the last ``event_window_us`` before the newest frame."""
        num_frames = num_frames or self.cascade.num_frames
        with self._frames_lock:
            frames = list(self._frames)
        if not frames:
            raise InputError("no frames pushed yet: the target answers from video, push_frame() first")
        end_us = frames[-1][0] + 1
        start_us = end_us - self.video_window_us
        recent = [(t, f) for t, f in frames if t >= start_us]
        picks = sample_frame_indices(len(recent), num_frames)
        video = Video(np.stack([recent[i][1] for i in picks]), np.array([recent[i][0] for i in picks], np.int64))
        events = self.events.window(end_us - self.event_window_us, end_us)
        return LiveSnapshot(events, video, start_us, end_us)

    def ask(self, prompt: str, *, provisional: Any = None, timeout_s: float | None = None, **options: Any):
        """Answer ``prompt`` about the newest window; returns an `evcascade.cascade.Answer`.

        ``options`` are the cascade's generation options (max_new_tokens, do_sample, ...). Producers keep
        pushing while this decodes; concurrent ``ask`` calls are served one at a time (``batched=True``: verified
        together by the batch scheduler).
        ``provisional=True``: returns an iterator instead, whose first item is the best drafting level's own
        answer (`evcascade.decoding.provisional.ProvisionalAnswer`, unverified, with its latency) and whose second
        is the verified `Answer` (``.provisional`` says whether it confirmed the first and where they differ).
        ``provisional=callable``: called with it as soon as it exists (on the drafting thread). Either way the
        provisional answer is drafted on a thread of its own (``Cascade.draft_provisional``) while the verified
        one decodes, so it never delays the verified answer, batched or not.
        ``timeout_s``: raise ``TimeoutError`` (naming the question and the wait) when no answer came in time; the
        decoding it started still finishes in the background (a decode cannot be interrupted mid-forward).
        """
        if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise InputError(f"timeout_s must be a number > 0 or None, got {timeout_s!r}")
        if provisional is False:
            provisional = None
        if provisional is not None and provisional is not True and not callable(provisional):
            raise InputError(f"provisional must be True, False, None or a callable taking the provisional answer, "
                             f"got {provisional!r}")
        started_s = time.perf_counter()
        snap = self.snapshot()
        clip = Clip(snap.events, snap.video, snap.start_us, snap.end_us, snap.end_us - self.event_window_us)
        if not self.batched and timeout_s is None and provisional is not True:
            return self.cascade.generate(prompt=prompt, clip=clip, provisional=provisional, **options)
        early = None
        if provisional is not None:
            early = self.cascade.draft_provisional(prompt, clip, started_s=started_s,
                                                   on_answer=None if provisional is True else provisional, **options)
        verified = self._verified(prompt, clip, options)
        if provisional is True:
            return _provisional_then_verified(early, verified, prompt, timeout_s)
        answer = _wait(verified, prompt, timeout_s)
        return answer if early is None else judge_provisional(answer, _wait(early, prompt, timeout_s))

    def _verified(self, prompt: str, clip: Clip, options: dict):
        """A future of the verified answer: from the batch scheduler, or a decode on a worker thread."""
        if self.batched:
            return self.cascade.submit(prompt, clip, **options)
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1, thread_name_prefix="evcascade-ask")
        try:
            return pool.submit(self.cascade.generate, prompt=prompt, clip=clip, **options)
        finally:
            pool.shutdown(wait=False)

    def memory_bytes(self) -> int:
        """Bytes held by the two rings (constant for events; at most max_frames frames)."""
        with self._frames_lock:
            frame_bytes = sum(f.nbytes for _, f in self._frames)
        return self.events.nbytes + frame_bytes


def _provisional_then_verified(early, verified, prompt: str, timeout_s: float | None) -> Iterator[Any]:
    """Yield the provisional answer as soon as it exists, then the verified one judged against it (an error on
    either worker is raised here, in the asking thread; each item waits at most ``timeout_s``). Both are already
    under way: the caller's first ``next()`` starts nothing."""
    provisional = _wait(early, prompt, timeout_s)
    yield provisional
    yield judge_provisional(_wait(verified, prompt, timeout_s), provisional)


def _wait(future, prompt: str, timeout_s: float | None):
    """The future's answer, or a ``TimeoutError`` naming the question and the wait."""
    from concurrent.futures import TimeoutError as FutureTimeout

    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout:
        raise TimeoutError(f"no answer to {prompt!r} within timeout_s={timeout_s} s (the decoder is busy or "
                           f"stuck; the request still runs in the background)") from None
