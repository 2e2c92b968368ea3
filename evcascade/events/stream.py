"""`LiveEventBuffer`: the last few milliseconds of a live event camera, in bounded memory, safe across threads.

Camera threads ``push`` packets as they arrive; model threads read ``latest(duration_us)`` or
``window(start_us, end_us)`` as independent copies. Storage is a ring of four preallocated
arrays (x, y, t_us, p: 13 bytes an event) sized ``max_events``, so memory does not grow with the
push rate or the session length. Time is the camera's own clock: "now" is the newest event.

Out-of-order packets (a packet starting before the newest event already held) either raise an
``InputError`` and change nothing (``out_of_order="raise"``, the default: a single camera thread
should never produce them) or have their stale events dropped and counted in ``stats.dropped``
(``out_of_order="drop"``: what several unsynchronised producer threads need).

>>> buf = LiveEventBuffer(sensor_size=(4, 4), max_duration_us=100, max_events=8)
>>> buf.push((np.array([0, 1]), np.array([0, 0]), np.array([10, 20]), np.array([1, 0])))
2
>>> buf.push(Events.from_arrays([2, 3], [1, 1], [150, 160], [1, 1], sensor_size=(4, 4)))
2
>>> buf.latest(100).t_us.tolist(), buf.stats.evicted  # t=10 and t=20 aged out of the 100 us
([150, 160], 2)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from evcascade.errors import InputError
from evcascade.events.container import Events

_OUT_OF_ORDER_POLICIES = ("raise", "drop")


@dataclass(frozen=True)
class BufferStats:
    """Event counts since the buffer was made; ``pushed == dropped + evicted + kept`` always holds."""

    pushed: int  # events offered to push() (packets refused with an error are not counted)
    dropped: int  # events discarded on arrival because they were older than the newest held event
    evicted: int  # events that aged out of max_duration_us or were pushed out by max_events
    kept: int  # events held now


class LiveEventBuffer:
    """A bounded, thread-safe ring of the newest events: at most ``max_events``, spanning at most ``max_duration_us``."""

    def __init__(
        self, sensor_size: Sequence[int], max_duration_us: int, max_events: int, *, out_of_order: str = "raise"
    ) -> None:
        self.sensor_size = Events.empty(sensor_size).sensor_size  # checks it
        for name, value in (("max_duration_us", max_duration_us), ("max_events", max_events)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        if out_of_order not in _OUT_OF_ORDER_POLICIES:
            raise InputError(f"out_of_order must be one of {_OUT_OF_ORDER_POLICIES}, got {out_of_order!r}")
        self.max_duration_us = int(max_duration_us)
        self.capacity = int(max_events)
        self.out_of_order = out_of_order
        self._x = np.zeros(self.capacity, np.uint16)
        self._y = np.zeros(self.capacity, np.uint16)
        self._t_us = np.zeros(self.capacity, np.int64)
        self._p = np.zeros(self.capacity, np.int8)
        self._start = 0  # physical index of the oldest held event
        self._count = 0
        self._newest_us: int | None = None  # newest event ever accepted (stays after it is evicted)
        self._pushed = self._dropped = self._evicted = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ writing
    def push(self, packet: Events | np.ndarray | Mapping | Sequence) -> int:
        """Append a packet of events (sorted in time); return how many were accepted.

        ``packet`` is an `Events` of this sensor, a structured array with fields x, y, t, p, a
        mapping with keys x, y, t_us (or t), p, or a tuple ``(x, y, t_us, p)``.
        """
        events = self._as_events(packet)  # validated outside the lock: producers do not wait on each other
        with self._lock:
            first = events.start_us
            if first is not None and self._newest_us is not None and first < self._newest_us:
                if self.out_of_order == "raise":
                    raise InputError(
                        f"out-of-order packet: it starts at t={first} us, before the newest buffered event at "
                        f"t={self._newest_us} us (use out_of_order='drop' to discard stale events instead)"
                    )
                stale = int(np.searchsorted(events.t_us, self._newest_us, side="left"))
                self._pushed += stale
                self._dropped += stale
                events = events[stale:]
            self._pushed += len(events)
            self._append(events)
            return len(events)

    def _append(self, events: Events) -> None:
        n = len(events)
        if n == 0:
            return
        if n > self.capacity:  # only the newest capacity events can stay
            self._evicted += n - self.capacity
            events = events[n - self.capacity:]
            n = self.capacity
        overflow = self._count + n - self.capacity
        if overflow > 0:
            self._drop_oldest(overflow)
        write = (self._start + self._count) % self.capacity
        first_part = min(n, self.capacity - write)
        for ring, values in ((self._x, events.x), (self._y, events.y), (self._t_us, events.t_us), (self._p, events.p)):
            ring[write:write + first_part] = values[:first_part]
            ring[: n - first_part] = values[first_part:]
        self._count += n
        self._newest_us = int(events.t_us[-1])
        self._drop_oldest(self._position(self._newest_us + 1 - self.max_duration_us))

    def _drop_oldest(self, n: int) -> None:
        self._start = (self._start + n) % self.capacity
        self._count -= n
        self._evicted += n

    # ------------------------------------------------------------------ reading
    def window(self, start_us: int | None = None, end_us: int | None = None) -> Events:
        """A copy of the held events with ``start_us <= t < end_us`` (None is open); only what is still held."""
        if start_us is not None and end_us is not None and start_us >= end_us:
            raise InputError(f"window start_us must be < end_us, got start_us={start_us}, end_us={end_us}")
        with self._lock:
            lo = 0 if start_us is None else self._position(int(start_us))
            hi = self._count if end_us is None else self._position(int(end_us))
            return self._copy(lo, hi)

    def latest(self, duration_us: int) -> Events:
        """A copy of the events in the last ``duration_us`` before the newest one: ``[newest + 1 - duration_us, newest + 1)``."""
        if isinstance(duration_us, bool) or not isinstance(duration_us, (int, np.integer)) or duration_us < 1:
            raise InputError(f"duration_us must be an integer >= 1, got {duration_us!r}")
        with self._lock:
            if self._newest_us is None:
                return Events.empty(self.sensor_size)
            return self._copy(self._position(self._newest_us + 1 - int(duration_us)), self._count)

    @property
    def stats(self) -> BufferStats:
        with self._lock:
            return BufferStats(pushed=self._pushed, dropped=self._dropped, evicted=self._evicted, kept=self._count)

    @property
    def newest_us(self) -> int | None:
        """Timestamp of the newest event accepted so far (None before the first)."""
        return self._newest_us

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring: fixed at construction (13 * max_events)."""
        return self._x.nbytes + self._y.nbytes + self._t_us.nbytes + self._p.nbytes

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (f"LiveEventBuffer(sensor_size={self.sensor_size}, max_duration_us={self.max_duration_us}, "
                f"max_events={self.capacity}, kept={self._count})")

    # ------------------------------------------------------------------ ring helpers (callers hold the lock)
    def _segments(self) -> list[tuple[int, int]]:
        """Physical [lo, hi) ranges of the held events, oldest first (two when the ring wraps)."""
        end = self._start + self._count
        if end <= self.capacity:
            return [(self._start, end)]
        return [(self._start, self.capacity), (0, end - self.capacity)]

    def _position(self, t_us: int) -> int:
        """Logical index (0 = oldest held) of the first held event with ``t >= t_us``."""
        offset = 0
        for lo, hi in self._segments():
            i = int(np.searchsorted(self._t_us[lo:hi], t_us, side="left"))
            if i < hi - lo:
                return offset + i
            offset += hi - lo
        return offset

    def _copy(self, lo: int, hi: int) -> Events:
        """Held events at logical indices [lo, hi), copied out of the ring."""
        if hi <= lo:
            return Events.empty(self.sensor_size)
        first = (self._start + lo) % self.capacity
        last = first + (hi - lo)
        if last <= self.capacity:
            pick = slice(first, last)
            fields = [ring[pick].copy() for ring in (self._x, self._y, self._t_us, self._p)]
        else:
            wrap = last - self.capacity
            fields = [np.concatenate([ring[first:], ring[:wrap]]) for ring in (self._x, self._y, self._t_us, self._p)]
        return Events(*fields, sensor_size=self.sensor_size)

    def _as_events(self, packet) -> Events:
        return Events.coerce(packet, self.sensor_size, source="LiveEventBuffer.push")
