"""What every representation shares: event fields as torch tensors, and fast CPU buffers.

Representations of a 1 M-event window are bound by memory traffic and by page faults on fresh
allocations, not by arithmetic. Two habits follow. Every per-event array is made with one
allocation and then updated in place. And multi-MiB CPU buffers come from numpy, which asks
Linux for transparent huge pages (one page fault per 2 MiB instead of per 4 KiB): a 6 MiB
``torch.zeros`` measured ~2.5 ms here, the numpy-backed one ~0.2 ms. Nothing here writes to the
caller's arrays.
"""

from __future__ import annotations

import numpy as np
import torch

from evcascade.errors import InputError
from evcascade.events.container import Events, TorchEvents

Device = torch.device | str | None

_NUMPY_DTYPES = {
    torch.float32: np.float32, torch.int32: np.int32, torch.int64: np.int64, torch.uint8: np.uint8,
}


def sensor_size_of(events: Events | TorchEvents) -> tuple[int, int]:
    """``(W, H)`` of ``events``, after checking it is an evcascade event container."""
    if not isinstance(events, (Events, TorchEvents)):
        raise InputError(f"expected evcascade Events or TorchEvents, got {type(events).__name__}")
    width, height = (int(v) for v in events.sensor_size)
    return width, height


def target_device(events: Events | TorchEvents, device: Device) -> torch.device:
    """``device`` if given, else where ``events`` already live (CPU for numpy `Events`)."""
    if device is not None:
        return torch.device(device)
    return events.t_us.device if isinstance(events, TorchEvents) else torch.device("cpu")


def num_events(events: Events | TorchEvents) -> int:
    return int(events.t_us.shape[0])


def filled(shape: tuple[int, ...], value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A new tensor of ``value``; on CPU backed by numpy memory (huge pages, see the module note).

    >>> filled((2,), -1, torch.int32, torch.device("cpu")).tolist()
    [-1, -1]
    """
    if device.type != "cpu":
        return torch.full(shape, value, dtype=dtype, device=device)
    np_dtype = _NUMPY_DTYPES[dtype]
    return torch.from_numpy(np.zeros(shape, np_dtype) if value == 0 else np.full(shape, value, np_dtype))


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor; on CPU backed by numpy memory (huge pages, see the module note)."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.empty(shape, _NUMPY_DTYPES[dtype]))


def fresh(field: np.ndarray | torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A new tensor holding ``field`` as ``dtype`` on ``device``, free to be changed in place."""
    if isinstance(field, torch.Tensor):
        return field.to(device=device, dtype=dtype, copy=True)
    return torch.from_numpy(field.astype(_NUMPY_DTYPES[dtype])).to(device)


def pixel_index(events: Events | TorchEvents, device: torch.device, *, by_polarity: bool) -> torch.Tensor:
    """Flat pixel index per event, a new int64 ``[N]``: ``y*W + x``, or ``(p*H + y)*W + x`` into ``[2, H, W]``.

    >>> ev = Events.from_arrays([1, 0], [0, 1], [5, 6], [1, 0], sensor_size=(2, 2))
    >>> pixel_index(ev, torch.device("cpu"), by_polarity=True).tolist()
    [5, 2]
    """
    width, height = sensor_size_of(events)
    # numpy and torch both run these in place on one new int64 array; uint16 x, y add in losslessly
    if by_polarity:
        index = _new_int64(events.p)
        index *= height
        index += events.y
    else:
        index = _new_int64(events.y)
    index *= width
    index += events.x
    return index.to(device) if isinstance(index, torch.Tensor) else torch.from_numpy(index).to(device)


def _new_int64(field: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    if isinstance(field, torch.Tensor):
        return field.to(torch.int64, copy=True)
    return field.astype(np.int64)


def count_before(events: Events | TorchEvents, end_us: int) -> int:
    """How many events have ``t_us < end_us`` (timestamps are sorted)."""
    t_us = events.t_us
    if isinstance(t_us, torch.Tensor):
        end = torch.tensor([int(end_us)], dtype=t_us.dtype, device=t_us.device)
        return int(torch.searchsorted(t_us, end).item())
    return int(np.searchsorted(t_us, int(end_us), side="left"))


def time_offsets(events: Events | TorchEvents, origin_us: int, device: torch.device, n: int | None = None) -> torch.Tensor:
    """``t_us - origin_us`` of the first ``n`` events (all by default), a new float32 ``[n]``.

    The subtraction is exact (int64) before the cast, because absolute timestamps do not fit
    float32; offsets are then exact below 2**24 us (16.7 s).

    >>> ev = Events.from_arrays([0, 0], [0, 0], [10**12, 10**12 + 3], [1, 1], sensor_size=(1, 1))
    >>> time_offsets(ev, 10**12, torch.device("cpu")).tolist()
    [0.0, 3.0]
    """
    t_us = events.t_us[:n]
    if isinstance(t_us, torch.Tensor):
        return (t_us.to(device) - origin_us).to(torch.float32)
    # numpy subtracts in int64 and casts chunk by chunk, never holding an int64 temporary of length n
    offsets = np.empty(t_us.shape[0], dtype=np.float32)
    np.subtract(t_us, np.int64(origin_us), out=offsets, casting="unsafe")
    return torch.from_numpy(offsets).to(device)


def check_positive_int(name: str, value: int) -> int:
    """``value`` as an int if it is an integer >= 1, else an InputError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
