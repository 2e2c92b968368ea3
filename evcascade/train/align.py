"""`AlignModule`: stage 1, teach event tokens to look like the target's video features.

    events -> event images -> EventEncoder (frozen CLIP tower [+ trainable head]) -> AlignmentMLP -> draft [B, T, 1+P, D]
    draft (+ key-frame features) -> FrameRefiner -> refined [B, T, 1+P, D]

Both outputs regress the target video tower's ``hidden_states[vision_feature_layer]`` (from the target cache)
with MSE + (1 - cosine). The key frame is the last of the T sampled frames, so its target-tower features are
``video_features[:, -1]`` of the cache: the refiner gets exactly what the cascade's `KeyFrameEncoder` computes at
inference. Validation reports ``val/cosine`` (L1, events only) and ``val/cosine_refined`` (L2).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from evcascade.train.common import adamw_with_warmup, saved_model_type, skipped_step_loss, trainer_max_steps
from evcascade.train.losses import check_finite_loss, feature_regression_loss
from evcascade.train.target_cache import TargetCache


def build_event_encoder(encoder: str | dict, overrides: dict | None = None):
    """An `EventEncoder` from a config dict (fresh weights), a saved EventEncoder folder, or a CLIP checkpoint
    (path or hub id) whose vision tower it adopts; ``overrides`` are EventEncoderConfig fields for the latter two."""
    from evcascade.models import EventEncoder, EventEncoderConfig

    overrides = dict(overrides or {})
    if isinstance(encoder, dict):
        return EventEncoder(EventEncoderConfig(**{**encoder, **overrides}))
    if saved_model_type(encoder) == EventEncoderConfig.model_type:
        return EventEncoder.from_pretrained(encoder, **overrides)
    return EventEncoder.from_clip(encoder, **overrides)


class AlignModule(L.LightningModule):
    """Trains EventEncoder head + AlignmentMLP (+ FrameRefiner) to regress the target's video features.

    Args:
        target_cache: cache folder; the alignment is sized from the target config saved there.
        encoder: EventEncoderConfig fields (dict), a saved EventEncoder folder, or a CLIP checkpoint.
        encoder_overrides: EventEncoderConfig fields applied on top (num_images, spatial_grid, head_hidden_size, ...).
        alignment_hidden_size: width of the AlignmentMLP (default: the target's hidden size).
        refiner: also train a FrameRefiner (the L2 level).
        refiner_fusion_size: bottleneck of the refiner.
        train_tower: unfreeze the encoder's CLIP tower (EventGPT keeps it frozen).
        mse_weight, cosine_weight: the loss is mse_weight * MSE + cosine_weight * (1 - cosine), per output.
        lr, weight_decay, warmup_steps: AdamW with warm-up and cosine decay.
        export_dir: where to write the trained pieces (save_pretrained folders) when training ends.
    """

    def __init__(
        self,
        target_cache: str,
        encoder: dict | str,
        encoder_overrides: dict | None = None,
        alignment_hidden_size: int | None = None,
        refiner: bool = True,
        refiner_fusion_size: int = 256,
        train_tower: bool = False,
        mse_weight: float = 1.0,
        cosine_weight: float = 1.0,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        export_dir: str | None = None,
    ):
        super().__init__()
        from evcascade.models import AlignmentMLP, FrameRefiner, FrameRefinerConfig
        from evcascade.models.alignment import target_video_layout

        self.save_hyperparameters()
        target_config = TargetCache(target_cache).target_config
        self.encoder = build_event_encoder(encoder, encoder_overrides)
        self.encoder.set_tower_frozen(not train_tower)
        self.alignment = AlignmentMLP.for_models(self.encoder.config, target_config, hidden_size=alignment_hidden_size)
        num_frames, _, hidden = target_video_layout(target_config)
        self.refiner = (FrameRefiner(FrameRefinerConfig(hidden_size=hidden, fusion_size=refiner_fusion_size,
                                                        num_frames=num_frames)) if refiner else None)
        self.skipped_empty = 0  # windows without events, skipped so far (this process)

    # ------------------------------------------------------------------ forward
    def forward(self, events) -> torch.Tensor:
        """Event windows (`EventWindows` or a list of `Events`) -> draft visual features ``[B, T, 1 + P, D]``."""
        pixel_values = self.encoder.pixel_values_from_events(list(events))  # [B, N, 3, S, S]
        return self.alignment(self.encoder(pixel_values))  # [B, T, 1 + P, D]

    def _losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        target = batch["video_features"].float()  # [B, T, 1 + P, D]
        draft = self(batch["events"])  # [B, T, 1 + P, D]
        h = self.hparams
        out = feature_regression_loss(draft, target, mse_weight=h.mse_weight, cosine_weight=h.cosine_weight)
        if self.refiner is not None:
            refined = self.refiner(draft, target[:, -1])  # key frame = last sampled frame
            out_refined = feature_regression_loss(refined, target, mse_weight=h.mse_weight, cosine_weight=h.cosine_weight)
            out = {**out, "loss": out["loss"] + out_refined["loss"], "cosine_refined": out_refined["cosine"]}
        return out

    def _count_skipped(self, batch: dict[str, Any], prefix: str) -> None:
        self.skipped_empty += int(batch["skipped_empty"])
        self.log(f"{prefix}/skipped_empty_windows", float(self.skipped_empty), reduce_fx="max")

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        self._count_skipped(batch, "train")
        if not batch["keys"]:
            return skipped_step_loss(self)  # every window of this batch was empty: nothing to learn
        out = self._losses(batch)
        check_finite_loss(out["loss"], step=self.global_step, batch_idx=batch_idx, keys=batch["keys"])
        batch_size = len(batch["keys"])
        # sync_dist: under DDP the logged value is the step's global batch (mean of the ranks' means), not rank 0's
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("train/cosine", out["cosine"], batch_size=batch_size, sync_dist=True)
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not batch["keys"]:
            return
        out = self._losses(batch)
        batch_size = len(batch["keys"])
        self.log("val/loss", out["loss"], prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("val/mse", out["mse"], batch_size=batch_size, sync_dist=True)
        self.log("val/cosine", out["cosine"], prog_bar=True, batch_size=batch_size, sync_dist=True)
        if "cosine_refined" in out:
            self.log("val/cosine_refined", out["cosine_refined"], batch_size=batch_size, sync_dist=True)

    def configure_optimizers(self):
        h = self.hparams
        return adamw_with_warmup(self.parameters(), lr=h.lr, weight_decay=h.weight_decay,
                                 warmup_steps=h.warmup_steps, max_steps=trainer_max_steps(self._trainer))

    def on_train_end(self) -> None:
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(f"align: skipped {self.skipped_empty} windows with no events")
        if self.hparams.export_dir and self.trainer.is_global_zero:
            from evcascade.train.export import export_align

            export_align(self, self.hparams.export_dir)
