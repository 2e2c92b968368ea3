"""Drafter models: event encoder, alignment MLP, frame refiner, draft LM, EventGPT checkpoints, presets.

Importing this package registers every model with transformers' Auto classes (see `auto.py`).

>>> import evcascade.models
>>> from transformers import AutoConfig
>>> type(AutoConfig.for_model("evcascade_frame_refiner")).__name__
'FrameRefinerConfig'
"""

from __future__ import annotations

from evcascade._lazy import lazy_getattr


from evcascade.models.alignment import AlignmentMLP
from evcascade.models.auto import register_auto_classes
from evcascade.models.configuration import AlignmentConfig, DraftLMConfig, EventEncoderConfig, FrameRefinerConfig
from evcascade.models.draft_lm import DraftLM
from evcascade.models.event_encoder import EventEncoder
from evcascade.models.frame_refiner import FrameRefiner

# heavier or optional parts, imported on first use
_LAZY: dict[str, str] = {
    "EventDrafterPrefix": "evcascade.models.pipeline",
    "KeyFrameEncoder": "evcascade.models.pipeline",
    "build_event_drafter_prefix": "evcascade.models.pipeline",
    "load_eventgpt": "evcascade.models.eventgpt",
    "EventGPTModels": "evcascade.models.eventgpt",
    "DrafterPreset": "evcascade.models.presets",
    "load_drafter_preset": "evcascade.models.presets",
    "list_drafter_presets": "evcascade.models.presets",
}

__all__ = [
    "AlignmentConfig", "AlignmentMLP", "DraftLM", "DraftLMConfig", "EventEncoder", "EventEncoderConfig",
    "FrameRefiner", "FrameRefinerConfig", "register_auto_classes", *sorted(_LAZY),
]


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)
