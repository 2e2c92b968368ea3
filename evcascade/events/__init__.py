"""Events: container, readers/writers, representations, the video-to-event simulator, live buffers."""

from __future__ import annotations

import importlib
from typing import Any

from evcascade.events.container import Events, TorchEvents

_LAZY: dict[str, str] = {
    "read_events": "evcascade.events.io",
    "write_events": "evcascade.events.io",
    "histogram": "evcascade.events.representations",
    "voxel_grid": "evcascade.events.representations",
    "time_surface": "evcascade.events.representations",
    "event_images": "evcascade.events.representations",
    "simulate": "evcascade.events.simulator",
    "LiveEventBuffer": "evcascade.events.stream",
}

__all__ = ["Events", "TorchEvents", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'evcascade.events' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
