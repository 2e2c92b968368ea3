"""What both training stages share: building pieces from a config value, the optimiser, the step guard."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import torch

from evcascade.errors import InputError, InputFileNotFoundError


def saved_model_type(path: str) -> str | None:
    """``model_type`` of a ``save_pretrained`` folder, or None when ``path`` is not such a folder."""
    import json

    config = Path(path).expanduser() / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("model_type")


def require_folder(path: str, what: str) -> Path:
    """``path`` as a Path if it is an existing folder, else ``InputFileNotFoundError`` naming ``what`` it should hold."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InputFileNotFoundError(f"no such folder for {what}: {str(path)!r}")
    return folder


def adamw_with_warmup(params: Iterable[torch.nn.Parameter], *, lr: float, weight_decay: float, warmup_steps: int,
                      max_steps: int | None):
    """AdamW with linear warm-up then cosine decay to 10% (constant after warm-up when ``max_steps`` is unknown),
    in Lightning's ``configure_optimizers`` format (stepped every optimiser step)."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise InputError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if not max_steps or max_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (max_steps - warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def trainer_max_steps(trainer) -> int | None:
    """The run's total optimiser steps when Lightning knows them (``max_steps`` or epochs x batches)."""
    if trainer is None:
        return None
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        return int(trainer.estimated_stepping_batches)
    except Exception:  # noqa: BLE001 - unknown length (iterable datasets): no decay
        return None


def skipped_step_loss(module):
    """What a training step returns when every window of its batch was empty.

    One process: None, and Lightning skips the optimiser step. Under DDP every rank must take part in the
    gradient all-reduce of every step (a rank that skips leaves the others waiting forever), so the step returns
    a zero loss that touches every trainable parameter: this rank contributes zero gradients and the step's
    gradient is the other ranks' mean scaled by their share.
    """
    if module.trainer.world_size <= 1:
        return None
    return sum(p.sum() for p in module.parameters() if p.requires_grad) * 0.0
