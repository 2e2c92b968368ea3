"""Registers the drafter models with transformers' Auto classes, so saved folders load like hub models.

After ``import evcascade.models``, ``AutoConfig.from_pretrained(folder)`` and ``AutoModel.from_pretrained(folder)``
return our config and model classes for any folder written by ``save_pretrained`` (safetensors). The
``DraftLM`` is also registered with ``AutoModelForCausalLM``, since it is one.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from evcascade.models.alignment import AlignmentMLP
from evcascade.models.configuration import AlignmentConfig, DraftLMConfig, EventEncoderConfig, FrameRefinerConfig
from evcascade.models.draft_lm import DraftLM
from evcascade.models.event_encoder import EventEncoder
from evcascade.models.frame_refiner import FrameRefiner

MODELS = ((EventEncoderConfig, EventEncoder), (AlignmentConfig, AlignmentMLP), (FrameRefinerConfig, FrameRefiner),
          (DraftLMConfig, DraftLM))


def register_auto_classes() -> None:
    """Idempotent: registering twice is a no-op (transformers would raise on a second, different class)."""
    for config_class, model_class in MODELS:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
    AutoModelForCausalLM.register(DraftLMConfig, DraftLM, exist_ok=True)


register_auto_classes()
