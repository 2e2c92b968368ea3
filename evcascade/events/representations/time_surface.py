"""`time_surface`: how recently each pixel fired, per polarity, as an exponential decay at the window end."""

from __future__ import annotations

import math
from numbers import Real

import torch

from evcascade.errors import InputError
from evcascade.events.container import Events, TorchEvents
from evcascade.events.representations._common import (
    Device,
    count_before,
    filled,
    num_events,
    pixel_index,
    sensor_size_of,
    target_device,
    time_offsets,
)

# exp(-87) is about the smallest normal float32; past it exp returns subnormals, which are ~20x
# slower to compute, so ages beyond ~87 tau (and pixels that never fired) read as exactly 0
_MIN_EXPONENT = -87.0
_ZERO_BELOW = math.exp(_MIN_EXPONENT + 0.5)


def time_surface(
    events: Events | TorchEvents,
    tau_us: float = 50_000.0,
    *,
    end_us: int | None = None,
    device: Device = None,
) -> torch.Tensor:
    """Global time surface, float32 ``[2, H, W]`` (channel 0 = OFF, 1 = ON): ``exp(-(end_us - t_newest) / tau_us)``.

    ``t_newest`` is the newest event of that polarity at that pixel; pixels that never fired, or
    last fired more than ~87 ``tau_us`` ago (below float32's normal range), are 0.
    ``end_us`` is where the decay is read, default ``events.end_us`` (one past the newest event,
    a half-open window's end); events at or after ``end_us`` are ignored, as tonic's slicing
    ignores events past a slice's end. This is tonic's ``to_timesurface_numpy`` for one slice of
    length ``dt = end_us - t_first`` (checked against it in the tests).

    Reference: Lagorce et al., "HOTS: a hierarchy of event-based time-surfaces", TPAMI 2017.

    >>> ev = Events.from_arrays([0, 1], [0, 0], [0, 100], [1, 1], sensor_size=(2, 1))
    >>> [round(v, 4) for v in time_surface(ev, tau_us=100.0, end_us=200)[1, 0].tolist()]
    [0.1353, 0.3679]
    """
    if isinstance(tau_us, bool) or not isinstance(tau_us, Real) or not (math.isfinite(tau_us) and tau_us > 0):
        raise InputError(f"tau_us must be a positive number of microseconds, got {tau_us!r}")
    width, height = sensor_size_of(events)
    dev = target_device(events, device)
    n = num_events(events) if end_us is None else count_before(events, end_us)
    if n == 0:
        return filled((2, height, width), 0, torch.float32, dev)
    read_at_us = int(end_us) if end_us is not None else int(events.t_us[n - 1]) + 1
    index = pixel_index(events, dev, by_polarity=True)[:n]  # [n] into [2, H, W]
    # minus the age in us, so newer is larger
    event_time = time_offsets(events, read_at_us, dev, n)  # [n] <= 0
    exponent = filled((2 * height * width,), -math.inf, torch.float32, dev)  # [2*H*W]
    exponent.scatter_reduce_(0, index, event_time, reduce="amax")  # newest event per pixel
    exponent *= 1.0 / tau_us
    surface = exponent.clamp_(min=_MIN_EXPONENT).exp_()  # [2*H*W]
    torch.nn.functional.threshold_(surface, _ZERO_BELOW, 0.0)  # one pass, no mask: exp(-87) -> 0
    return surface.view(2, height, width)
