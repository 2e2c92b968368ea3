"""Events: container, readers/writers, representations, the video-to-event simulator, live buffers."""

from __future__ import annotations

from evcascade._lazy import lazy_getattr


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


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)
