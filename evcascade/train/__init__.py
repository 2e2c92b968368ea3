"""Training the drafters with Lightning: alignment (events -> target video features) and distillation.

::

    train/
    ├── datasets.py      ClipWindow, DSEC and manifest window indexes, ClipDataset (lazy reads), splits
    ├── target_cache.py  sharded, resumable cache of target video features, greedy answers, top-k logits;
    │                    split over workers (--shard I/N) and merged
    ├── datamodules.py   ClipDataModule: windows + cache -> align / distill batches
    ├── losses.py        pure losses and metrics (MSE + cosine, top-k KL / TV, offline acceptance, top-1)
    ├── align.py         AlignModule   (stage 1)
    ├── distill.py       DistillModule (stage 2)
    ├── export.py        save_pretrained folders the cascade loads
    ├── callbacks.py     StepTimer (training throughput, steps/s and global samples/s)
    └── cli.py           python -m evcascade.train align|distill|cache|export

Names are imported on use, so ``import evcascade.train`` does not import Lightning.
"""

from __future__ import annotations

from evcascade._lazy import lazy_getattr


_EXPORTS: dict[str, str] = {
    "AlignModule": "evcascade.train.align",
    "DistillModule": "evcascade.train.distill",
    "ClipDataModule": "evcascade.train.datamodules",
    "ClipDataset": "evcascade.train.datasets",
    "ClipWindow": "evcascade.train.datasets",
    "dsec_windows": "evcascade.train.datasets",
    "manifest_windows": "evcascade.train.datasets",
    "split_windows": "evcascade.train.datasets",
    "TargetCache": "evcascade.train.target_cache",
    "TargetCacheWriter": "evcascade.train.target_cache",
    "build_target_cache": "evcascade.train.target_cache",
    "merge_parts": "evcascade.train.target_cache",
    "StepTimer": "evcascade.train.callbacks",
    "export_align": "evcascade.train.export",
    "export_distill": "evcascade.train.export",
    "export_checkpoint": "evcascade.train.export",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)
