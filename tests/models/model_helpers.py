"""Tiny drafter-model factories shared by the tests in tests/models (random weights, no hub)."""

from __future__ import annotations

import numpy as np
import torch

import evcascade.models  # noqa: F401  (registers the Auto classes)
from evcascade.events import Events
from evcascade.models import EventEncoder, EventEncoderConfig

TINY_CLIP = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                 patch_size=8)  # 4x4 patch grid


def make_encoder(seed: int = 0, **kwargs) -> EventEncoder:
    torch.manual_seed(seed)
    cfg = dict(vision_config=TINY_CLIP, num_images=5)
    cfg.update(kwargs)
    return EventEncoder(EventEncoderConfig(**cfg)).eval()


def make_events(n: int = 400, sensor_size=(40, 30), seed: int = 0) -> Events:
    rng = np.random.default_rng(seed)
    return Events.from_arrays(
        x=rng.integers(0, sensor_size[0], n), y=rng.integers(0, sensor_size[1], n),
        t_us=np.sort(rng.integers(0, 50_000, n)), p=rng.integers(0, 2, n), sensor_size=sensor_size,
    )


