"""`event_images`: EventGPT's input, event groups drawn polarity-coloured on white RGB images."""

from __future__ import annotations

import torch

from evcascade.events.container import Events, TorchEvents
from evcascade.events.representations._common import (
    Device,
    check_positive_int,
    empty,
    filled,
    fresh,
    num_events,
    pixel_index,
    sensor_size_of,
    target_device,
)

# RGB colours EventGPT draws with (XduSyL/EventGPT, common/common.py generate_event_image)
WHITE, OFF_BLUE, ON_RED = (255, 255, 255), (0, 0, 255), (255, 0, 0)
# The latest event per pixel is found as the max of rank = 4 * event index + polarity, so
# rank & 3 is its polarity (0 or 1); a pixel no event hit keeps -2, and -2 & 3 == 2.
_NO_EVENT = -2
_PALETTE = (OFF_BLUE, ON_RED, WHITE, WHITE)  # indexed by rank & 3


def event_images(events: Events | TorchEvents, num_images: int = 5, *, device: Device = None) -> torch.Tensor:
    """EventGPT-style event images, uint8 ``[num_images, H, W, 3]`` RGB.

    Events are split into ``num_images`` consecutive groups of ``N // num_images`` events (the last
    group also takes the remainder, so with fewer events than images only the last image has any).
    Each group is drawn on white: an ON event paints its pixel red, an OFF event blue, and where
    several events hit one pixel the latest one wins, exactly as EventGPT's per-event loop does.
    Unlike EventGPT, images are ``sensor_size`` rather than cropped to each group's max x/y + 1, so
    all images share one shape; empty groups are plain white.

    >>> ev = Events.from_arrays([0, 0, 1], [0, 0, 0], [1, 2, 3], [1, 0, 1], sensor_size=(3, 1))
    >>> event_images(ev, num_images=1)[0, 0].tolist()  # pixel 0: ON then OFF -> blue
    [[0, 0, 255], [255, 0, 0], [255, 255, 255]]
    """
    num_images = check_positive_int("num_images", num_images)
    width, height = sensor_size_of(events)
    dev = target_device(events, device)
    plane = height * width
    n = num_events(events)
    rank_dtype = torch.int32 if 4 * n + 4 < 2**31 else torch.int64  # half the memory traffic when it fits
    latest = filled((num_images, plane), _NO_EVENT, rank_dtype, dev)  # [I, H*W]
    if n:
        pixel = pixel_index(events, dev, by_polarity=False)  # [N]
        rank = torch.arange(0, 4 * n, 4, dtype=rank_dtype, device=dev, out=empty((n,), rank_dtype, dev))  # [N]
        rank += fresh(events.p, rank_dtype, dev)  # [N] 4 * index + polarity
        per_image = n // num_images
        for image in range(num_images):  # a loop over images, not events
            lo = image * per_image
            hi = n if image == num_images - 1 else lo + per_image
            if hi > lo:
                latest[image].scatter_reduce_(0, pixel[lo:hi], rank[lo:hi], reduce="amax")
    palette = torch.tensor(_PALETTE, dtype=torch.uint8, device=dev)  # [4, 3]
    colour = latest.view(-1).bitwise_and_(3)  # [I*H*W] palette index
    images = empty((num_images * plane, 3), torch.uint8, dev)
    torch.index_select(palette, 0, colour, out=images)  # ~8x faster than palette[colour]
    return images.view(num_images, height, width, 3)
