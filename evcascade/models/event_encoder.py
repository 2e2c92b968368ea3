"""`EventEncoder`: event images -> CLIP vision tower -> spatio-temporal tokens, as EventGPT encodes events.

EventGPT (Liu et al., "EventGPT: Event Stream Understanding with Multimodal Large Language Models", CVPR 2025;
code: XduSyL/EventGPT, model/EventChatModel.py) splits a window into 5 event images of equal event counts,
runs each through a frozen CLIP ViT-L/14-336 (``last_hidden_state``, CLS kept: 577 tokens), projects every
token (2-layer MLP 1024 -> 4096, then a Linear "feature adaptor"), and aggregates the 5 x 577 tokens into
5 temporal tokens (mean over each image's tokens) + 577 spatial tokens (mean over images) = 582 tokens.

This module does the same with any CLIP size; the per-token head is optional (our own drafters align
tower features into the target's space instead, see `AlignmentMLP`), and ``spatial_grid`` is a token
budget that average-pools the patch grid so a small drafter's prefill stays cheap.

>>> import torch
>>> from evcascade.models.configuration import EventEncoderConfig
>>> cfg = EventEncoderConfig(vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
...     num_attention_heads=2, image_size=16, patch_size=8), num_images=3)
>>> EventEncoder(cfg)(torch.zeros(1, 3, 3, 16, 16)).shape          # 3 temporal + CLS + 2x2 patches
torch.Size([1, 8, 16])
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn
from transformers import CLIPVisionModel, PreTrainedModel

from evcascade.errors import InputError
from evcascade.models.configuration import EventEncoderConfig
from evcascade.models.tokens import pool_patch_grid, spatio_temporal_tokens

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from evcascade.events.container import Events, TorchEvents


def build_mlp(in_size: int, out_size: int, depth: int) -> nn.Sequential:
    """Linear then (GELU, Linear) x (depth - 1): EventGPT's / LLaVA's projector shape (indices 0, 2, ...)."""
    layers: list[nn.Module] = [nn.Linear(in_size, out_size)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_size, out_size)]
    return nn.Sequential(*layers)


class EventEncoder(PreTrainedModel):
    """Encodes a window of events (as ``num_images`` event images) into ``[B, num_tokens, output_size]`` tokens."""

    config_class = EventEncoderConfig
    base_model_prefix = "event_encoder"
    main_input_name = "pixel_values"

    def __init__(self, config: EventEncoderConfig):
        super().__init__(config)
        self.tower = CLIPVisionModel(config.vision_config)
        tower_size = int(config.vision_config.hidden_size)
        self.projector = build_mlp(tower_size, config.head_hidden_size, config.head_depth) if config.head_hidden_size else None
        self.adaptor = nn.Linear(config.head_hidden_size, config.head_hidden_size) if config.head_adaptor else None
        self.post_init()
        self.set_tower_frozen(config.freeze_tower)

    def set_tower_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) the CLIP tower; a frozen tower also runs without autograd."""
        self.config.freeze_tower = bool(frozen)
        self.tower.requires_grad_(not frozen)

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> "EventEncoder":
        """As `PreTrainedModel.from_pretrained`; re-applies ``freeze_tower``, which weight loading resets."""
        model = super().from_pretrained(*args, **kwargs)
        model.set_tower_frozen(model.config.freeze_tower)
        return model

    @classmethod
    def from_clip(cls, clip, **config_kwargs) -> "EventEncoder":
        """An encoder whose tower is a pretrained CLIP (a ``CLIPVisionModel``, or a path / hub id of a CLIP or
        CLIP-vision checkpoint, e.g. ``openai/clip-vit-large-patch14-336``); other parts freshly initialised."""
        tower = clip if isinstance(clip, CLIPVisionModel) else CLIPVisionModel.from_pretrained(clip)
        config = EventEncoderConfig(vision_config=tower.config.to_dict(), **config_kwargs)
        model = cls(config)
        model.tower.load_state_dict(tower.state_dict())
        return model

    # ------------------------------------------------------------------ forward
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values ``[B, N, 3, S, S]`` (CLIP-normalised event images) -> tokens ``[B, num_tokens, D]``."""
        cfg = self.config
        expected = (cfg.num_images, 3, cfg.image_size, cfg.image_size)
        if pixel_values.ndim != 5 or tuple(pixel_values.shape[1:]) != expected:
            raise InputError(
                f"EventEncoder expects pixel_values [B, {', '.join(map(str, expected))}], got {tuple(pixel_values.shape)}"
            )
        batch, num_images = pixel_values.shape[:2]
        images = pixel_values.flatten(0, 1).to(self.tower.dtype)  # [B*N, 3, S, S]
        frozen = cfg.freeze_tower
        with torch.no_grad() if frozen else contextlib.nullcontext():
            if cfg.feature_layer == -1:
                tokens = self.tower(pixel_values=images).last_hidden_state  # [B*N, 1 + G0*G0, Dv]
            else:
                tokens = self.tower(pixel_values=images, output_hidden_states=True).hidden_states[cfg.feature_layer]
        if self.projector is not None:
            tokens = self.projector(tokens.to(self.projector[0].weight.dtype))  # [B*N, 1 + G0*G0, Dh]
        if self.adaptor is not None:
            tokens = self.adaptor(tokens)
        tokens = tokens.unflatten(0, (batch, num_images))  # [B, N, 1 + G0*G0, D]
        if cfg.spatial_grid is not None:
            # pooling is linear, so pooling before the (mean) aggregation equals pooling after it
            tokens = pool_patch_grid(tokens, cfg.spatial_grid)  # [B, N, 1 + G*G, D]
        if cfg.aggregation == "spatio_temporal":
            return spatio_temporal_tokens(tokens)  # [B, N + 1 + G*G, D]
        return tokens.flatten(1, 2)  # [B, N * (1 + G*G), D]

    # ------------------------------------------------------------------ from events
    def pixel_values_from_events(self, events: "Events | TorchEvents | Sequence[Events]") -> torch.Tensor:
        """Event windows -> EventGPT-style event images -> CLIP preprocessing: ``[B, N, 3, S, S]`` on this device.

        Event images have the sensor's size; the tower takes S x S. When they differ, the images are resized
        as CLIP's image processor does (shortest edge to S, centre crop), logged at INFO (it is the normal path for
        a real sensor, so not a warning on every request).
        """
        from evcascade.events import event_images  # floor 1, imported on use
        from evcascade.preprocess import preprocess_frames

        from evcascade.events.container import Events, TorchEvents

        # TorchEvents is a NamedTuple, so test for one window before treating a tuple as a batch
        windows = [events] if isinstance(events, (Events, TorchEvents)) else list(events)
        if not windows:
            raise InputError("pixel_values_from_events needs at least one Events window")
        size = self.config.image_size
        batch = []
        for window in windows:
            width, height = window.sensor_size
            if (width, height) != (size, size):
                logger.info("event images are %dx%d (sensor size) but the encoder takes %dx%d: resizing the shortest "
                            "edge to %d and centre-cropping to %dx%d", width, height, size, size, size, size, size)
            images = event_images(window, num_images=self.config.num_images, device=self.device)  # uint8 [N, H, W, 3]
            batch.append(preprocess_frames(images, size=size, crop_size=size, mean=self.config.image_mean,
                                           std=self.config.image_std))  # [N, 3, S, S]
        return torch.stack(batch).to(self.device)  # [B, N, 3, S, S]

    def encode_events(self, events: "Events | Sequence[Events]") -> torch.Tensor:
        """Event windows (one ``Events`` or a list, one per batch row) -> tokens ``[B, num_tokens, D]``."""
        return self(self.pixel_values_from_events(events))
