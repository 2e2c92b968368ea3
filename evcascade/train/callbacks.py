"""Lightning callbacks of the training stages."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class StepTimer(L.Callback):
    """Training throughput after a warm-up: optimiser steps/s and global samples/s, written by rank 0 to ``out``.

    Steps are timed from the end of step ``skip_steps`` to the end of the last one, so process start-up, the
    first batches and validation runs between them are left out (validation time is measured and subtracted).
    Global samples = the batches' rows summed over ranks (``len(batch["keys"])`` all-reduced). Add it from the
    command line: ``--trainer.callbacks+=evcascade.train.callbacks.StepTimer --trainer.callbacks.out=FILE.json``.
    """

    def __init__(self, out: str | None = None, skip_steps: int = 2):
        self.out, self.skip_steps = out, int(skip_steps)
        self.started: float | None = None
        self.steps = self.samples = self.start_step = 0
        self.val_s = 0.0
        self._val_started: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.started is None:
            if trainer.global_step >= self.skip_steps:
                self.started, self.start_step = time.perf_counter(), trainer.global_step
            return
        self.steps = trainer.global_step - self.start_step  # optimiser steps (batches / accumulation)
        self.samples += len(batch["keys"])

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.started is not None and self._val_started is not None:
            self.val_s += time.perf_counter() - self._val_started

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        if self.started is None or self.steps == 0:
            return
        elapsed = time.perf_counter() - self.started - self.val_s
        samples = trainer.strategy.reduce(torch.tensor(float(self.samples)), reduce_op="sum")
        result = {"processes": trainer.world_size, "timed_steps": self.steps, "seconds": round(elapsed, 3),
                  "steps_per_s": round(self.steps / elapsed, 3), "samples_per_s": round(float(samples) / elapsed, 2)}
        if trainer.is_global_zero:
            print(f"StepTimer: {result}")
            if self.out:
                Path(self.out).parent.mkdir(parents=True, exist_ok=True)
                Path(self.out).write_text(json.dumps(result, indent=1))
