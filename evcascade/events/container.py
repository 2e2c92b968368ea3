"""`Events`: the one in-memory form of an event stream that every part of evcascade passes around.

An event is (x, y, t_us, p): pixel column and row, timestamp in microseconds, polarity (1 = ON,
brightness went up; 0 = OFF). Arrays are numpy, one per field, times sorted ascending. Windows are
half-open, ``[start_us, end_us)``, and an empty window is a valid ``Events`` of length 0.

>>> import numpy as np
>>> ev = Events.from_arrays(x=[1, 2, 3], y=[0, 0, 1], t_us=[10, 20, 30], p=[1, 0, 1], sensor_size=(4, 2))
>>> len(ev), len(ev.window(15, 30))
(3, 1)
>>> ev.to_structured()["t"].tolist()
[10, 20, 30]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from evcascade.errors import InputError

# tonic's structured-array convention: fields x, y, t, p. We widen x/y to int64 so that arithmetic
# such as ``x + W * y`` in downstream code cannot overflow uint16 under numpy 2's casting rules.
TONIC_DTYPE = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])


class TorchEvents(NamedTuple):
    """Events as int64 torch tensors on one device (what the representations consume).

    >>> Events.from_arrays([1], [2], [3], [1], (4, 4)).to_torch().y.tolist()
    [2]
    """

    x: "torch.Tensor"  # noqa: F821  [N] int64
    y: "torch.Tensor"  # noqa: F821  [N] int64
    t_us: "torch.Tensor"  # noqa: F821  [N] int64, sorted
    p: "torch.Tensor"  # noqa: F821  [N] int64 in {0, 1}
    sensor_size: tuple[int, int]  # (W, H)


def _polarity(p_arr: np.ndarray, source: str) -> np.ndarray:
    """Polarity as int8 {0, 1} from bool, {0, 1} or {-1, 1}; a range check, not np.unique (5 ms per 1 M events)."""
    if p_arr.dtype == bool or p_arr.size == 0:
        return p_arr.astype(np.int8)
    low, high = p_arr.min(), p_arr.max()
    integral = not np.issubdtype(p_arr.dtype, np.floating) or bool(np.all(np.equal(np.mod(p_arr, 1), 0)))
    if integral and low >= 0 and high <= 1:
        return p_arr.astype(np.int8)
    if integral and low == -1 and high == 1 and not np.any(p_arr == 0):
        return (p_arr > 0).astype(np.int8)
    values = np.unique(p_arr)[:8].tolist()
    raise InputError(f"{source}: polarity must be in {{0,1}} or {{-1,1}}, got values {values}")


@dataclass(frozen=True, eq=False)
class Events:
    """An event stream: x, y (uint16), t_us (int64, sorted), p (int8 in {0,1}), sensor_size (W, H).

    Construct with ``Events.from_arrays`` to convert and check user data; the plain constructor
    checks dtypes and shapes only (cheap) and is what readers use after they have validated.

    >>> ev = Events.from_arrays(x=[3, 1], y=[0, 2], t_us=[5, 9], p=[-1, 1], sensor_size=(4, 3))
    >>> ev.p.tolist(), ev.window(0, 6).x.tolist(), ev.end_us
    ([0, 1], [3], 10)
    """

    x: np.ndarray
    y: np.ndarray
    t_us: np.ndarray
    p: np.ndarray
    sensor_size: tuple[int, int]

    def __post_init__(self) -> None:
        width, height = (int(v) for v in self.sensor_size)
        if width <= 0 or height <= 0:
            raise InputError(f"sensor_size must be positive (W, H), got {self.sensor_size!r}")
        object.__setattr__(self, "sensor_size", (width, height))
        expected = {"x": np.uint16, "y": np.uint16, "t_us": np.int64, "p": np.int8}
        n = None
        for name, dtype in expected.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype != dtype:
                got = f"{type(arr).__name__} {getattr(arr, 'dtype', '?')} {getattr(arr, 'shape', '?')}"
                raise InputError(f"Events.{name} must be a 1-D {np.dtype(dtype).name} array, got {got}")
            if n is None:
                n = arr.shape[0]
            elif arr.shape[0] != n:
                raise InputError(f"Events fields differ in length: x has {n}, {name} has {arr.shape[0]}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        x: Iterable,
        y: Iterable,
        t_us: Iterable,
        p: Iterable,
        sensor_size: Sequence[int] | None = None,
        *,
        sort: bool = False,
        source: str = "events",
        assume_sorted: bool = False,
    ) -> "Events":
        """Convert and check arrays from any source.

        Polarity may be {0, 1}, {-1, 1} or bool. Coordinates must lie inside ``sensor_size``
        (inferred as max + 1 when omitted). Unsorted timestamps are an error unless ``sort=True``.
        ``source`` names the data in error messages (a path, say). ``assume_sorted=True`` skips the order check
        for callers (file readers) that have already made it: it is a full pass over the timestamps.
        """
        x_arr, y_arr = np.asarray(x), np.asarray(y)
        t_arr, p_arr = np.asarray(t_us), np.asarray(p)
        for name, arr in (("x", x_arr), ("y", y_arr), ("t", t_arr), ("p", p_arr)):
            if arr.ndim != 1:
                raise InputError(f"{source}: field {name!r} must be 1-D, got shape {arr.shape}")
            if arr.size and not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
                raise InputError(f"{source}: field {name!r} must be numeric, got dtype {arr.dtype}")
        n = x_arr.shape[0]
        for name, arr in (("y", y_arr), ("t", t_arr), ("p", p_arr)):
            if arr.shape[0] != n:
                raise InputError(f"{source}: fields differ in length: x has {n}, {name} has {arr.shape[0]}")
        for name, arr in (("x", x_arr), ("y", y_arr)):
            if n and np.issubdtype(arr.dtype, np.floating) and not np.all(np.equal(np.mod(arr, 1), 0)):
                raise InputError(f"{source}: {name} coordinates must be integers, got non-integer values")
            if n and arr.min() < 0:
                raise InputError(f"{source}: {name} coordinates must be >= 0, got {arr.min()}")
        if sensor_size is None:
            if n == 0:
                raise InputError(f"{source}: sensor_size is required for an empty event stream")
            sensor_size = (int(x_arr.max()) + 1, int(y_arr.max()) + 1)
        width, height = (int(v) for v in sensor_size)
        if n:
            if x_arr.max() >= width or y_arr.max() >= height:
                raise InputError(
                    f"{source}: coordinates outside the sensor: max x={int(x_arr.max())}, "
                    f"max y={int(y_arr.max())} for sensor_size (W, H)=({width}, {height})"
                )
        p_norm = _polarity(p_arr, source)
        t_norm = t_arr.astype(np.int64)
        if n and np.issubdtype(t_arr.dtype, np.floating):
            t_norm = np.rint(t_arr).astype(np.int64)
        x_norm, y_norm = x_arr.astype(np.uint16), y_arr.astype(np.uint16)
        if n > 1 and not assume_sorted and np.any(t_norm[1:] < t_norm[:-1]):
            if not sort:
                bad = int(np.argmax(t_norm[1:] < t_norm[:-1]))
                raise InputError(
                    f"{source}: timestamps are not sorted (t[{bad}]={t_norm[bad]} > t[{bad + 1}]={t_norm[bad + 1]}); "
                    "pass sort=True to sort them"
                )
            order = np.argsort(t_norm, kind="stable")
            x_norm, y_norm, t_norm, p_norm = x_norm[order], y_norm[order], t_norm[order], p_norm[order]
        return cls(x=x_norm, y=y_norm, t_us=t_norm, p=p_norm, sensor_size=(width, height))

    @classmethod
    def empty(cls, sensor_size: Sequence[int]) -> "Events":
        """A valid stream of length 0 (what an empty window is)."""
        return cls(
            x=np.zeros(0, np.uint16), y=np.zeros(0, np.uint16), t_us=np.zeros(0, np.int64),
            p=np.zeros(0, np.int8), sensor_size=tuple(sensor_size),
        )

    @classmethod
    def from_structured(cls, array: np.ndarray, sensor_size: Sequence[int] | None = None, **kwargs) -> "Events":
        """From a structured array with fields x, y, t, p (tonic's layout; t in microseconds)."""
        names = array.dtype.names or ()
        missing = [f for f in ("x", "y", "t", "p") if f not in names]
        if missing:
            raise InputError(f"structured event array lacks fields {missing}; it has {list(names)}")
        return cls.from_arrays(array["x"], array["y"], array["t"], array["p"], sensor_size, **kwargs)

    @classmethod
    def coerce(cls, packet, sensor_size: Sequence[int] | None = None, *, source: str = "events") -> "Events":
        """Events from any packet form the API takes: an `Events`, a structured array (x, y, t, p), a mapping with
        keys x, y, t_us (or t), p, or an ``(x, y, t_us, p)`` tuple. ``sensor_size`` (W, H), when given, must match
        an `Events`' own and is inferred (max + 1) for the other forms when omitted.

        >>> Events.coerce(([1, 2], [0, 1], [10, 20], [1, 0])).sensor_size
        (3, 2)
        """
        if isinstance(packet, Events):
            if sensor_size is not None and packet.sensor_size != tuple(int(v) for v in sensor_size):
                raise InputError(f"{source}: packet sensor_size {packet.sensor_size} != expected {tuple(sensor_size)}")
            return packet
        if isinstance(packet, np.ndarray) and packet.dtype.names:
            return cls.from_structured(packet, sensor_size, source=source)
        if isinstance(packet, Mapping):
            t_key = "t_us" if "t_us" in packet else "t"
            missing = [k for k in ("x", "y", t_key, "p") if k not in packet]
            if missing:
                raise InputError(f"{source}: packet lacks keys {missing}; it has {sorted(packet)}")
            return cls.from_arrays(packet["x"], packet["y"], packet[t_key], packet["p"], sensor_size, source=source)
        if isinstance(packet, (tuple, list)) and len(packet) == 4:
            return cls.from_arrays(*packet, sensor_size=sensor_size, source=source)
        raise InputError(
            f"{source}: expected Events, a structured array (x, y, t, p), a mapping or an (x, y, t_us, p) "
            f"tuple, got {type(packet).__name__}"
        )

    @classmethod
    def concatenate(cls, parts: Sequence["Events"]) -> "Events":
        """Join streams from one sensor, in order; each must start at or after the previous one's end."""
        if not parts:
            raise InputError("Events.concatenate needs at least one Events")
        sizes = {e.sensor_size for e in parts}
        if len(sizes) != 1:
            raise InputError(f"cannot concatenate events from different sensor sizes: {sorted(sizes)}")
        nonempty = [e for e in parts if len(e)]
        for prev, nxt in zip(nonempty, nonempty[1:]):
            if nxt.t_us[0] < prev.t_us[-1]:
                raise InputError(
                    f"cannot concatenate: a part starts at t={nxt.t_us[0]} us, before the previous part's "
                    f"last event at t={prev.t_us[-1]} us"
                )
        return cls(
            x=np.concatenate([e.x for e in parts]), y=np.concatenate([e.y for e in parts]),
            t_us=np.concatenate([e.t_us for e in parts]), p=np.concatenate([e.p for e in parts]),
            sensor_size=parts[0].sensor_size,
        )

    def __add__(self, other: "Events") -> "Events":
        return Events.concatenate([self, other])

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.t_us.shape[0])

    def __getitem__(self, index) -> "Events":
        """Slice or boolean/integer mask; a mask must keep time order (it does unless indices are permuted)."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1 or None)
        return Events(x=self.x[index], y=self.y[index], t_us=self.t_us[index], p=self.p[index], sensor_size=self.sensor_size)

    @property
    def start_us(self) -> int | None:
        """Timestamp of the first event, None when empty."""
        return int(self.t_us[0]) if len(self) else None

    @property
    def end_us(self) -> int | None:
        """One past the last event's timestamp (so ``window(start_us, end_us)`` is everything), None when empty."""
        return int(self.t_us[-1]) + 1 if len(self) else None

    def window(self, start_us: int | None = None, end_us: int | None = None) -> "Events":
        """Events with ``start_us <= t < end_us`` (half-open); a bound of None is open. Views, no copy."""
        if start_us is not None and end_us is not None and start_us >= end_us:
            raise InputError(f"window start_us must be < end_us, got start_us={start_us}, end_us={end_us}")
        lo = 0 if start_us is None else int(np.searchsorted(self.t_us, start_us, side="left"))
        hi = len(self) if end_us is None else int(np.searchsorted(self.t_us, end_us, side="left"))
        return self[lo:hi]

    def shift_time(self, offset_us: int) -> "Events":
        """The same events with ``offset_us`` added to every timestamp (clock alignment)."""
        return Events(x=self.x, y=self.y, t_us=self.t_us + np.int64(offset_us), p=self.p, sensor_size=self.sensor_size)

    # ------------------------------------------------------------------ conversion
    def to_structured(self) -> np.ndarray:
        """A tonic-compatible structured array (fields x, y, t, p; int64)."""
        out = np.empty(len(self), dtype=TONIC_DTYPE)
        out["x"], out["y"], out["t"], out["p"] = self.x, self.y, self.t_us, self.p
        return out

    def to_torch(self, device=None) -> TorchEvents:
        """int64 tensors on ``device`` (CPU by default), ready for the representations."""
        import torch

        def conv(arr: np.ndarray) -> "torch.Tensor":
            return torch.from_numpy(arr.astype(np.int64)).to(device)

        return TorchEvents(conv(self.x), conv(self.y), conv(self.t_us), conv(self.p), self.sensor_size)

    def __repr__(self) -> str:
        span = f"[{self.start_us}, {self.end_us}) us" if len(self) else "empty"
        return f"Events(n={len(self)}, sensor_size={self.sensor_size}, {span})"
