"""evcascade: Video-LLaVA-quality answers about event + RGB scenes, drafted by small event models.

The public names are imported lazily so that ``import evcascade`` (and the CLI's ``--help``) stay
fast; the heavy modules (transformers, torch models) load on first use.

>>> from evcascade import Events
>>> Events.empty((640, 480))
Events(n=0, sensor_size=(640, 480), empty)
"""

from __future__ import annotations

from evcascade._lazy import lazy_getattr

from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Events": "evcascade.events.container",
    "TorchEvents": "evcascade.events.container",
    "read_events": "evcascade.events.io",
    "write_events": "evcascade.events.io",
    "Video": "evcascade.video",
    "read_video": "evcascade.video",
    "video_info": "evcascade.video",
    "load_clip": "evcascade.clip",
    "Clip": "evcascade.clip",
    "InputError": "evcascade.errors",
    "Cascade": "evcascade.cascade",
    "Answer": "evcascade.cascade",
    "LiveSession": "evcascade.live",
    "GenerationOptions": "evcascade.decoding.engine",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from evcascade.cascade import Answer, Cascade
    from evcascade.decoding.engine import GenerationOptions
    from evcascade.live import LiveSession
    from evcascade.errors import InputError
    from evcascade.events.container import Events, TorchEvents
    from evcascade.events.io import read_events, write_events
    from evcascade.clip import Clip, load_clip
    from evcascade.video import Video, read_video, video_info
