"""`AlignmentMLP`: event tokens -> "draft visual features" on the target's video-feature grid.

The target (Video-LLaVA) feeds its projector with ``hidden_states[vision_feature_layer]`` of its CLIP video
tower: ``[B, T=8, 1 + Gt*Gt, D_t]`` (CLS kept; 7B: ``[B, 8, 257, 1024]``). Producing features in exactly that
space and grid lets the target's own ``multi_modal_projector`` consume them, and lets a drafter be trained
on the target's real video features and run on event-derived ones.

How event tokens map onto the target grid. The event encoder's spatio-temporal tokens already factor the
window into *where* (1 + G*G spatial tokens: CLS and patch grid, each the mean over event images) and *when*
(N temporal tokens: each event image's mean). The target grid is also factored: frame t, patch j. So target
token (t, j) is an MLP of the concatenation [spatial token j, temporal token t, frame index t]:

* spatial: the G x G patch grid is resampled bilinearly to Gt x Gt (CLS to CLS). Both cameras see the same
  field of view after preprocessing, so patch-to-patch correspondence is geometric and needs no learning;
* temporal: the N event images (equal event counts, roughly equal time steps) are linearly interpolated to
  the T frame times, so frame t's tokens know the motion phase at that time;
* a learned per-frame embedding lets the MLP tell frames apart where events are quiet.

The first MLP layer over the concatenation is a sum of three linear maps, computed once per factor and
broadcast: cost O((T + 1 + Gt^2) * D_enc * H + T * (1 + Gt^2) * H * D_t), no attention over tokens, no
quadratic term. Cross-attention from learned queries would cost more and throw the free geometry away.

>>> import torch
>>> cfg = AlignmentConfig(input_size=8, num_event_images=5, event_grid=3, target_hidden_size=6,
...     target_num_frames=4, target_grid=2, hidden_size=16)
>>> AlignmentMLP(cfg)(torch.zeros(1, 5 + 1 + 9, 8)).shape
torch.Size([1, 4, 5, 6])
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as hf_init
from transformers import PreTrainedConfig, PreTrainedModel

from evcascade.errors import InputError
from evcascade.models.configuration import AlignmentConfig, EventEncoderConfig
from evcascade.models.tokens import interpolate_time, resize_patch_grid


def target_video_layout(target_config: PreTrainedConfig) -> tuple[int, int, int]:
    """(num_frames T, patch grid side Gt, hidden size D_t) of a target's video features, from a
    ``VideoLlavaConfig`` (T from video_seq_length) or a bare CLIP vision config (T = 8)."""
    vision = getattr(target_config, "vision_config", target_config)
    grid = int(vision.image_size) // int(vision.patch_size)
    per_frame = 1 + grid * grid
    seq = getattr(target_config, "video_seq_length", None)
    num_frames = 8 if seq is None else int(seq) // per_frame
    if seq is not None and num_frames * per_frame != int(seq):
        raise InputError(f"target video_seq_length={seq} is not a multiple of 1 + {grid}^2 tokens per frame")
    return num_frames, grid, int(vision.hidden_size)


class AlignmentMLP(PreTrainedModel):
    """Maps ``[B, N + 1 + G*G, D_enc]`` event tokens to draft visual features ``[B, T, 1 + Gt*Gt, D_t]``."""

    config_class = AlignmentConfig
    base_model_prefix = "alignment"

    def __init__(self, config: AlignmentConfig):
        super().__init__(config)
        self.spatial_proj = nn.Linear(config.input_size, config.hidden_size)
        self.temporal_proj = nn.Linear(config.input_size, config.hidden_size, bias=False)
        self.frame_embed = nn.Parameter(torch.zeros(config.target_num_frames, config.hidden_size))
        self.act = nn.GELU()
        self.out_proj = nn.Linear(config.hidden_size, config.target_hidden_size)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            hf_init.normal_(self.frame_embed, std=self.config.initializer_range)

    @classmethod
    def for_models(cls, encoder_config: EventEncoderConfig, target_config: PreTrainedConfig, *, hidden_size: int | None = None) -> "AlignmentMLP":
        """An alignment sized for this encoder's output and this target's video features."""
        if encoder_config.aggregation != "spatio_temporal":
            raise InputError(f"AlignmentMLP needs the encoder's spatio_temporal tokens, got aggregation={encoder_config.aggregation!r}")
        num_frames, grid, target_hidden = target_video_layout(target_config)
        config = AlignmentConfig(
            input_size=encoder_config.output_size, num_event_images=encoder_config.num_images,
            event_grid=encoder_config.output_grid, target_hidden_size=target_hidden, target_num_frames=num_frames,
            target_grid=grid, hidden_size=hidden_size or target_hidden,
        )
        return cls(config)

    def forward(self, event_tokens: torch.Tensor) -> torch.Tensor:
        """event_tokens ``[B, N + 1 + G*G, D_enc]`` -> draft visual features ``[B, T, 1 + Gt*Gt, D_t]``."""
        cfg = self.config
        expected = (cfg.num_input_tokens, cfg.input_size)
        if event_tokens.ndim != 3 or tuple(event_tokens.shape[1:]) != expected:
            raise InputError(
                f"AlignmentMLP expects event tokens [B, {expected[0]}, {expected[1]}] "
                f"({cfg.num_event_images} temporal + 1 + {cfg.event_grid}^2 spatial, D_enc={cfg.input_size}), "
                f"got {tuple(event_tokens.shape)}"
            )
        event_tokens = event_tokens.to(self.spatial_proj.weight.dtype)
        temporal, spatial = event_tokens[:, : cfg.num_event_images], event_tokens[:, cfg.num_event_images :]
        spatial = resize_patch_grid(spatial, cfg.target_grid)  # [B, 1 + Gt*Gt, D_enc]
        temporal = interpolate_time(temporal, cfg.target_num_frames)  # [B, T, D_enc]
        where = self.spatial_proj(spatial)  # [B, 1 + Gt*Gt, H]
        when = self.temporal_proj(temporal) + self.frame_embed  # [B, T, H]
        hidden = where[:, None, :, :] + when[:, :, None, :]  # [B, T, 1 + Gt*Gt, H]
        return self.out_proj(self.act(hidden))  # [B, T, 1 + Gt*Gt, D_t]
