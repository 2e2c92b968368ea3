"""`histogram`: per-pixel event counts by polarity, the simplest frame an event window makes."""

from __future__ import annotations

import torch

from evcascade.events.container import Events, TorchEvents
from evcascade.events.representations._common import Device, filled, pixel_index, sensor_size_of, target_device


def histogram(events: Events | TorchEvents, *, device: Device = None) -> torch.Tensor:
    """Count events per pixel and polarity: float32 ``[2, H, W]``, channel 0 = OFF, channel 1 = ON.

    The same numbers as tonic's ``ToFrame`` with one frame covering the whole window
    (tonic returns int16, which overflows past 32767 events on one pixel; float32 does not).

    >>> ev = Events.from_arrays([0, 1, 1], [0, 0, 0], [1, 2, 3], [1, 0, 0], sensor_size=(2, 1))
    >>> histogram(ev).tolist()
    [[[0.0, 2.0]], [[1.0, 0.0]]]
    """
    width, height = sensor_size_of(events)
    dev = target_device(events, device)
    index = pixel_index(events, dev, by_polarity=True)  # [N] into [2, H, W]
    counts = filled((2 * height * width,), 0, torch.float32, dev)  # [2*H*W]
    # adding a broadcast 1.0 straight into float32 skips bincount's int64 buffer and its conversion,
    # which cost more than the counting itself for small windows
    one_per_event = torch.ones(1, dtype=torch.float32, device=dev).expand(index.shape[0])  # [N], no memory
    return counts.index_add_(0, index, one_per_event).view(2, height, width)
