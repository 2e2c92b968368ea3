"""`DistillModule`: stage 2, teach the draft LM (and its visual projector) to answer as the target does.

Each sample is a cached (prompt, target answer, target top-k logits) triple. The drafter reads
``[visual prefix][prompt ids][answer ids]`` exactly as the engine's `ModelDrafter` feeds it, and at every
position that predicts an answer token it is trained with

    loss = ce_weight * CE(draft, target's greedy token) + kd_weight * KD(target top-k || draft)

KD is forward KL or total variation on the cached top-k. Validation reports the offline acceptance estimate
(mean over positions of sum_v min(target_probs, draft_probs)) and top-1 agreement with the target's greedy tokens.

Visual prefix (``visual_source``): ``target`` = the target's own video features from the cache (the drafter
learns the target's visual space; at inference it gets aligned event features in that same space); ``events``
= features from a trained alignment export (frozen EventEncoder + AlignmentMLP [+ FrameRefiner]), i.e. what
the drafter will really see; ``none`` = a text-only drafter. LoRA (peft) wraps the LM; the projector is trained
in full either way.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from evcascade.errors import InputError
from evcascade.train.common import (adamw_with_warmup, require_folder, saved_model_type, skipped_step_loss,
                                    trainer_max_steps)
from evcascade.train.losses import KD_KINDS, check_finite_loss, kd_loss, offline_acceptance, top1_agreement
from evcascade.train.target_cache import TargetCache

VISUAL_SOURCES = ("target", "events", "none")


def build_draft_lm(draft_lm: str | dict, visual_hidden_size: int | None, overrides: dict | None = None):
    """A `DraftLM` from DraftLMConfig fields (dict, fresh weights), a saved DraftLM folder, or any causal LM
    (path / hub id) wrapped with a fresh projector for ``visual_hidden_size``-wide features."""
    from evcascade.models import DraftLM, DraftLMConfig

    overrides = dict(overrides or {})
    if isinstance(draft_lm, dict):
        fields = {"visual_hidden_size": visual_hidden_size, **draft_lm, **overrides}
        return DraftLM(DraftLMConfig(**fields))
    if saved_model_type(draft_lm) == DraftLMConfig.model_type:
        model = DraftLM.from_pretrained(draft_lm)
        if model.config.visual_hidden_size != visual_hidden_size:
            raise InputError(f"the DraftLM in {draft_lm!r} takes visual features of size "
                             f"{model.config.visual_hidden_size}, the chosen visual source gives {visual_hidden_size}")
        return model
    return DraftLM.from_lm(draft_lm, visual_hidden_size=visual_hidden_size, **overrides)


def add_lora(draft, lora: dict):
    """Wrap the DraftLM's language model with peft LoRA adapters (``lora``: LoraConfig fields); in place."""
    from peft import LoraConfig, get_peft_model

    settings = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                **lora}
    draft.language_model = get_peft_model(draft.language_model, LoraConfig(task_type="CAUSAL_LM", **settings))
    return draft


class DistillModule(L.LightningModule):
    """Trains a `DraftLM` (full or LoRA) + projector on the target's own answers with a KD loss.

    Args:
        target_cache: cache folder with answers (and video features unless ``visual_source="none"``).
        draft_lm: DraftLMConfig fields (dict), a saved DraftLM folder, or a causal LM checkpoint to wrap.
        draft_overrides: DraftLMConfig fields on top (projector_type, pool_frames, pool_grid, ...).
        visual_source: ``target`` | ``events`` | ``none`` (see the module notes).
        align_dir: an align export folder (needed for ``visual_source="events"``).
        use_refiner: with ``visual_source="events"``, refine with the key frame through the export's
            ``frame_refiner/`` (an L2 drafter); False trains an L1 drafter on events alone from the same export.
        lora: LoraConfig fields (r, lora_alpha, target_modules, ...) to train adapters; None = full fine-tuning.
        kd: ``forward_kl`` or ``tv``.
        kd_weight, ce_weight: weights of the KD and cross-entropy terms.
        temperature: softmax temperature of the KD term.
        lr, weight_decay, warmup_steps: AdamW with warm-up and cosine decay.
        export_dir: where to write ``draft_lm/`` (LoRA merged) when training ends.
    """

    def __init__(
        self,
        target_cache: str,
        draft_lm: dict | str,
        draft_overrides: dict | None = None,
        visual_source: str = "target",
        align_dir: str | None = None,
        use_refiner: bool = True,
        lora: dict | None = None,
        kd: str = "forward_kl",
        kd_weight: float = 1.0,
        ce_weight: float = 1.0,
        temperature: float = 1.0,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        export_dir: str | None = None,
    ):
        super().__init__()
        if visual_source not in VISUAL_SOURCES:
            raise InputError(f"visual_source must be one of {VISUAL_SOURCES}, got {visual_source!r}")
        if kd not in KD_KINDS:
            raise InputError(f"kd must be one of {KD_KINDS}, got {kd!r}")
        if visual_source == "events" and not align_dir:
            raise InputError("visual_source='events' needs align_dir, the export folder of the align stage")
        self.save_hyperparameters()
        meta = TargetCache(target_cache).meta
        hidden = None if visual_source == "none" else int(meta["layout"]["hidden_size"])
        self.draft_lm = build_draft_lm(draft_lm, hidden, draft_overrides)
        if lora:
            add_lora(self.draft_lm, lora)
        self.event_features = self._load_align(align_dir, use_refiner) if visual_source == "events" else None
        self.vocab_size = int(self.draft_lm.get_output_embeddings().weight.shape[0])
        self.skipped_empty = 0

    @staticmethod
    def _load_align(align_dir: str, use_refiner: bool = True) -> torch.nn.ModuleDict:
        from evcascade.models import AlignmentMLP, EventEncoder, FrameRefiner

        folder = require_folder(align_dir, "the align stage's export (event_encoder/, alignment/)")
        parts = {"encoder": EventEncoder.from_pretrained(folder / "event_encoder"),
                 "alignment": AlignmentMLP.from_pretrained(folder / "alignment")}
        if use_refiner and (folder / "frame_refiner").is_dir():
            parts["refiner"] = FrameRefiner.from_pretrained(folder / "frame_refiner")
        frozen = torch.nn.ModuleDict(parts).eval()
        frozen.requires_grad_(False)
        return frozen

    # ------------------------------------------------------------------ forward
    def visual_features(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """The drafter's visual input ``[B, T, 1 + P, D]`` for this batch (None for a text-only drafter)."""
        source = self.hparams.visual_source
        if source == "none":
            return None
        if source == "target":
            return batch["video_features"]
        if batch.get("events") is None:
            raise InputError("visual_source='events' trains on event windows, but the batches carry none: "
                             "set data.with_events: true")
        with torch.no_grad():
            parts = self.event_features
            encoder = parts["encoder"]
            draft = parts["alignment"](encoder(encoder.pixel_values_from_events(list(batch["events"]))))  # [B, T, 1 + P, D]
            if "refiner" in parts:
                draft = parts["refiner"](draft, batch["video_features"][:, -1])  # key frame = last frame
        return draft

    def text_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """Draft logits over the text positions ``[B, L, V]`` (the visual prefix's positions dropped)."""
        out = self.draft_lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            visual_features=self.visual_features(batch))
        return out.logits[:, -batch["input_ids"].shape[1]:]  # [B, L, V]

    def _restricted_topk(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k ids/logits with ids the drafter cannot emit (e.g. the target's <video>) given no target mass."""
        ids, logits = batch["topk_ids"], batch["topk_logits"]  # [B, L, K]
        outside = ids >= self.vocab_size
        return ids.masked_fill(outside, 0), logits.masked_fill(outside, float("-inf"))

    def _losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        h = self.hparams
        logits = self.text_logits(batch)  # [B, L, V]
        mask = batch["answer_mask"]  # [B, L]
        topk_ids, topk_logits = self._restricted_topk(batch)
        kd = kd_loss(h.kd, logits, topk_ids, topk_logits, mask, h.temperature)
        ce_each = F.cross_entropy(logits.float().flatten(0, 1), batch["target_ids"].flatten(), reduction="none")  # [B*L]
        ce = (ce_each * mask.flatten()).sum() / mask.sum().clamp_min(1.0)
        out = {"loss": h.kd_weight * kd + h.ce_weight * ce, "kd": kd, "ce": ce}
        with torch.no_grad():
            out["acceptance"] = offline_acceptance(logits.detach(), topk_ids, topk_logits, mask)
            out["top1"] = top1_agreement(logits.detach(), batch["target_ids"], mask)
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        self.skipped_empty += int(batch["skipped_empty"])
        if not batch["keys"]:
            return skipped_step_loss(self)
        out = self._losses(batch)
        check_finite_loss(out["loss"], step=self.global_step, batch_idx=batch_idx, keys=batch["keys"])
        batch_size = len(batch["keys"])
        # sync_dist: under DDP the logged value is the step's global batch (mean of the ranks' means), not rank 0's
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("train/kd", out["kd"], batch_size=batch_size, sync_dist=True)
        self.log("train/acceptance", out["acceptance"], batch_size=batch_size, sync_dist=True)
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not batch["keys"]:
            return
        out = self._losses(batch)
        batch_size = len(batch["keys"])
        for name in ("loss", "kd", "ce", "acceptance", "top1"):
            self.log(f"val/{name}", out[name], prog_bar=name in ("acceptance", "top1"), batch_size=batch_size,
                     sync_dist=True)

    def configure_optimizers(self):
        h = self.hparams
        return adamw_with_warmup(self.draft_lm.parameters(), lr=h.lr, weight_decay=h.weight_decay,
                                 warmup_steps=h.warmup_steps, max_steps=trainer_max_steps(self._trainer))

    def on_train_end(self) -> None:
        from lightning.pytorch.utilities import rank_zero_info

        if self.hparams.visual_source == "events":
            rank_zero_info(f"distill: skipped {self.skipped_empty} windows with no events")
        if self.hparams.export_dir and self.trainer.is_global_zero:
            from evcascade.train.export import export_distill

            export_distill(self, self.hparams.export_dir)
