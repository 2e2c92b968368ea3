"""`FrameRefiner`: adds one key RGB frame's appearance to event-derived draft visual features.

Events carry motion and edges but no colour or texture; one RGB frame carries appearance but not motion.
The refiner takes the draft features ``[B, T, 1 + P, D]`` (from `AlignmentMLP`) and the key frame encoded
once by a CLIP tower into the same space ``[B, 1 + P, D]`` (typically the target's own video tower on one
frame: 1/8 of the video cost), and returns refined features of the draft's shape.

Why gated per-token fusion and not cross-attention. Both inputs live on the same patch grid of the same
tower space, so the key-frame token that describes patch j *is* token j: correspondence is given, and
attention would spend O(T * P^2 * D) to rediscover it (8 * 257^2 * 1024 ~ 0.5 GMAC per layer at 7B scale)
for little gain, since appearance is mostly static over a short window. Per token we compute

    delta[t, j] = W_out GELU(W_key LN(key[j]) + W_draft LN(draft[t, j]) + e[t])
    refined[t, j] = draft[t, j] + tanh(alpha) * delta[t, j]

where e[t] (a learned frame embedding) lets the refiner trust the key frame more for frames near it, and
alpha (per channel) starts at zero: at step 0 the refiner is the identity, so plugging it into a trained
event drafter cannot make it worse before training, and motion stays from the events unless the data says
otherwise. Cost: O(T * P * D * F) with F the bottleneck width.

>>> import torch
>>> refiner = FrameRefiner(FrameRefinerConfig(hidden_size=8, fusion_size=4, num_frames=2))
>>> draft, key = torch.randn(1, 2, 5, 8), torch.randn(1, 5, 8)
>>> bool(torch.equal(refiner(draft, key), draft))      # identity at initialisation
True
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as hf_init
from transformers import PreTrainedModel

from evcascade.errors import InputError
from evcascade.models.configuration import FrameRefinerConfig


class FrameRefiner(PreTrainedModel):
    """Refines draft visual features ``[B, T, 1 + P, D]`` with key-frame features ``[B, 1 + P, D]``."""

    config_class = FrameRefinerConfig
    base_model_prefix = "frame_refiner"

    def __init__(self, config: FrameRefinerConfig):
        super().__init__(config)
        self.key_norm = nn.LayerNorm(config.hidden_size)
        self.draft_norm = nn.LayerNorm(config.hidden_size)
        self.key_proj = nn.Linear(config.hidden_size, config.fusion_size)
        self.draft_proj = nn.Linear(config.hidden_size, config.fusion_size, bias=False)
        self.frame_embed = nn.Parameter(torch.zeros(config.num_frames, config.fusion_size))
        self.act = nn.GELU()
        self.out_proj = nn.Linear(config.fusion_size, config.hidden_size)
        self.gate = nn.Parameter(torch.zeros(config.hidden_size))  # tanh(0) = 0: identity at init
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            hf_init.normal_(self.frame_embed, std=self.config.initializer_range)
            hf_init.zeros_(self.gate)

    def forward(self, draft_features: torch.Tensor, key_frame_features: torch.Tensor) -> torch.Tensor:
        """draft ``[B, T, 1 + P, D]``, key frame ``[B, 1 + P, D]`` -> refined ``[B, T, 1 + P, D]``."""
        cfg = self.config
        if draft_features.ndim != 4 or draft_features.shape[1] != cfg.num_frames or draft_features.shape[-1] != cfg.hidden_size:
            raise InputError(
                f"FrameRefiner expects draft features [B, {cfg.num_frames}, 1 + P, {cfg.hidden_size}], "
                f"got {tuple(draft_features.shape)}"
            )
        expected_key = (draft_features.shape[0], draft_features.shape[2], cfg.hidden_size)
        if tuple(key_frame_features.shape) != expected_key:
            raise InputError(
                f"FrameRefiner expects key-frame features {list(expected_key)} (same grid as the draft features "
                f"{tuple(draft_features.shape)}), got {tuple(key_frame_features.shape)}"
            )
        dtype = self.out_proj.weight.dtype
        draft, key = draft_features.to(dtype), key_frame_features.to(dtype)
        key_h = self.key_proj(self.key_norm(key))  # [B, 1 + P, F]
        draft_h = self.draft_proj(self.draft_norm(draft))  # [B, T, 1 + P, F]
        fused = draft_h + key_h[:, None] + self.frame_embed[None, :, None, :]  # [B, T, 1 + P, F]
        delta = self.out_proj(self.act(fused))  # [B, T, 1 + P, D]
        return draft + torch.tanh(self.gate) * delta  # [B, T, 1 + P, D]
