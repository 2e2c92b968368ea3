"""`ClipDataModule`: windows from DSEC or a manifest, joined with the target cache, batched for a stage.

``task="align"``: items are windows with events; the batch holds the windows' ``events`` (a list of `Events`,
turned into event images by the model on its own device) and the target's ``video_features [B, T, 1 + P, D]``.
``task="distill"``: items are (window, cached answer) pairs; the batch holds the drafter's token ids (prompt +
target answer, right-padded), which positions predict an answer token, the target's greedy tokens and top-k
logits there, and (optionally) the window's video features and events.

Windows with no events are skipped when the batch needs events, and counted: every batch carries
``skipped_empty`` and the modules log the running total. Splits are by sequence / manifest entry. Shuffling is
a permutation seeded by (seed, epoch), so a run resumed from a checkpoint sees the same order again; it goes
block by block of cache shards that fit the cache's memory budget (`EpochSeededSampler`). Under DDP, Lightning's
own distributed sampler wrapper (set up here, without its extra shuffle) gives each rank every N-th item of that
order, so N ranks of batch B see exactly the batches of one process of batch N x B.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from evcascade.errors import InputError
from evcascade.train.datasets import ClipDataset, ClipWindow, dsec_windows, manifest_windows, split_windows
from evcascade.train.target_cache import TargetCache

TASKS = ("align", "distill")


class EventWindows:
    """A batch's event windows (`Events`, one per row) in a box that Lightning's device transfer leaves alone
    (it cannot rebuild frozen dataclasses); the model turns them into images on its own device."""

    def __init__(self, windows: Sequence[Any]):
        self.windows = list(windows)

    def __len__(self) -> int:
        return len(self.windows)

    def __iter__(self):
        return iter(self.windows)


class EpochSeededSampler(Sampler[int]):
    """A random order of ``range(n)`` that depends only on (seed, epoch), read shard block by shard block.

    The epoch comes from ``epoch_fn`` (the trainer's ``current_epoch``) when given: Lightning's own
    ``set_epoch`` passes a count of processed epochs that is one off after resuming from an epoch-end checkpoint.

    ``item_shards`` (the cache shard each item reads) and ``shard_bytes`` make the order cache-friendly: the
    shards are shuffled, cut into blocks of at most ``budget_bytes`` (the target cache's memory budget), and the
    items of one block are shuffled among themselves before the next block starts. A cache that fits the budget
    is one block: a plain permutation of all items. One that does not is read one block at a time, each shard
    loaded once an epoch; a plain permutation would load a shard for nearly every item. Under DDP the data module
    wraps this sampler in Lightning's ``DistributedSamplerWrapper`` (without the extra shuffle Lightning would add),
    which hands rank r the items r, r + N, ... of this order:
    all ranks read the same block at the same time (each keeps only it resident), and the N per-rank batches of
    a step together are exactly the one-process batch of N times the size.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, epoch_fn: Callable[[], int] | None = None, *,
                 item_shards: Sequence[str] | None = None, shard_bytes: dict[str, int] | None = None,
                 budget_bytes: int | None = None):
        self.n, self.seed, self.shuffle, self.epoch, self.epoch_fn = n, seed, shuffle, 0, epoch_fn
        if item_shards is not None and len(item_shards) != n:
            raise ValueError(f"item_shards has {len(item_shards)} entries for {n} items")
        self.item_shards, self.shard_bytes, self.budget_bytes = item_shards, shard_bytes or {}, budget_bytes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def blocks(self, rng: np.random.Generator) -> list[list[str]]:
        """Shards in a shuffled order, cut into consecutive blocks that fit ``budget_bytes`` (one or more shards)."""
        names = sorted(set(self.item_shards))
        blocks: list[list[str]] = []
        used = 0
        for index in rng.permutation(len(names)).tolist():
            size = self.shard_bytes.get(names[index], 0)
            if not blocks or (self.budget_bytes is not None and used + size > self.budget_bytes):
                blocks.append([])
                used = 0
            blocks[-1].append(names[index])
            used += size
        return blocks

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        rng = np.random.default_rng([self.seed, epoch])
        if self.item_shards is None:
            return iter(rng.permutation(self.n).tolist())
        by_shard: dict[str, list[int]] = {}
        for item, shard in enumerate(self.item_shards):
            by_shard.setdefault(shard, []).append(item)
        order: list[int] = []
        for block in self.blocks(rng):
            items = np.concatenate([by_shard[name] for name in block])
            order.extend(items[rng.permutation(items.size)].tolist())
        return iter(order)

    def __len__(self) -> int:
        return self.n


class StageDataset(Dataset):
    """A `ClipDataset` joined with the target cache: one item per window (align) or per cached answer (distill)."""

    def __init__(self, clips: ClipDataset, cache: TargetCache, task: str, *, with_features: bool = True):
        self.clips, self.cache, self.task, self.with_features = clips, cache, task, with_features
        if task == "align":
            self.items = [(i, None) for i in range(len(clips))]
        else:
            self.items = [(i, key) for i, w in enumerate(clips.windows) for key in cache.answers_of(w.key)]
        needed = {clips.windows[i].key for i, _ in self.items} if with_features else set()
        missing = sorted(k for k in needed if k not in cache)
        if missing:
            raise InputError(f"the target cache {str(cache.folder)!r} lacks video features of {len(missing)} windows "
                             f"(first: {missing[0]!r}); run `python -m evcascade.train cache` over the same data")
        if not self.items:
            raise InputError(f"no {task} samples: the target cache {str(cache.folder)!r} holds no "
                             f"{'answers' if task == 'distill' else 'features'} for these {len(clips)} windows")

    def __len__(self) -> int:
        return len(self.items)

    def item_shards(self) -> list[str]:
        """The cache shard each item reads (its answer's for distill, its window's features' for align)."""
        return [self.cache.shard_of(answer if answer is not None else self.clips.windows[i].key)
                for i, answer in self.items]

    def __getitem__(self, index: int) -> dict:
        clip_index, answer = self.items[index]
        window: ClipWindow = self.clips.windows[clip_index]
        item = self.clips[clip_index] if self.clips.load_events else {"key": window.key, "events": None, "num_events": -1}
        out = {"key": window.key, "events": item["events"], "num_events": item["num_events"]}
        if self.with_features:
            out["video_features"] = self.cache.get(window.key)["video_features"]  # [T, 1 + P, D]
        if answer is not None:
            out.update(self.cache.get(answer))
            out["key"] = answer
        return out


def collate_align(items: Sequence[dict]) -> dict[str, Any]:
    """Drop windows with no events (counted in ``skipped_empty``); stack the rest's target features."""
    kept = [it for it in items if it["num_events"] != 0]
    batch: dict[str, Any] = {"keys": [it["key"] for it in kept], "events": EventWindows(it["events"] for it in kept),
                             "skipped_empty": len(items) - len(kept)}
    batch["video_features"] = torch.stack([it["video_features"] for it in kept]) if kept else None  # [B, T, 1 + P, D]
    return batch


def collate_distill(items: Sequence[dict], *, pad_id: int = 0, needs_events: bool = False) -> dict[str, Any]:
    """Prompt + answer ids, right-padded to ``[B, L]``; position i is scored when it predicts an answer token.

    ``target_ids[b, i]`` is the answer token that position i must predict; ``topk_ids`` / ``topk_logits``
    ``[B, L, K]`` the target's top-k there; ``answer_mask [B, L]`` marks those positions.
    """
    if needs_events:
        kept = [it for it in items if it["num_events"] != 0]
    else:
        kept = list(items)
    skipped = len(items) - len(kept)
    if not kept:
        return {"keys": [], "skipped_empty": skipped, "input_ids": None}
    lengths = [it["prompt_ids"].shape[0] + it["answer_ids"].shape[0] for it in kept]
    width, k = max(lengths), kept[0]["topk_ids"].shape[-1]
    batch_size = len(kept)
    input_ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(batch_size, width, dtype=torch.long)
    answer_mask = torch.zeros(batch_size, width, dtype=torch.float32)
    target_ids = torch.zeros(batch_size, width, dtype=torch.long)
    topk_ids = torch.zeros(batch_size, width, k, dtype=torch.long)
    topk_logits = torch.zeros(batch_size, width, k, dtype=torch.float32)
    for b, it in enumerate(kept):
        prompt, answer = it["prompt_ids"].long(), it["answer_ids"].long()
        lp, la = prompt.shape[0], answer.shape[0]
        input_ids[b, : lp + la] = torch.cat([prompt, answer])
        attention_mask[b, : lp + la] = 1
        scored = slice(lp - 1, lp - 1 + la)  # position lp - 1 + j predicts answer token j
        answer_mask[b, scored] = 1.0
        target_ids[b, scored] = answer
        topk_ids[b, scored] = it["topk_ids"].long()
        topk_logits[b, scored] = it["topk_logits"].float()
    batch = {"keys": [it["key"] for it in kept], "skipped_empty": skipped, "input_ids": input_ids,
             "attention_mask": attention_mask, "answer_mask": answer_mask, "target_ids": target_ids,
             "topk_ids": topk_ids, "topk_logits": topk_logits,
             "events": EventWindows(it["events"] for it in kept) if needs_events else None}
    if "video_features" in kept[0]:
        batch["video_features"] = torch.stack([it["video_features"] for it in kept])  # [B, T, 1 + P, D]
    return batch


class ClipDataModule(L.LightningDataModule):
    """Train/val loaders of one stage over DSEC (``dsec_root``) or a manifest (``manifest``), with the target cache.

    Args:
        target_cache: folder written by ``python -m evcascade.train cache``.
        task: ``align`` or ``distill``.
        dsec_root: folder of DSEC sequences (exclusive with ``manifest``).
        dsec_images_root: where the ``<sequence>/images`` folders are, if not under ``dsec_root``.
        sequences: DSEC sequences to use (default: all).
        val_sequences: validation groups (DSEC sequence names or manifest ids); default a ``val_fraction`` of them.
        manifest: JSON or CSV manifest (exclusive with ``dsec_root``).
        event_window_us: events before each key frame the drafter sees (50 ms, as EventGPT).
        video_window_us: span of the frames (DSEC default 400 ms = 8 frames at 20 Hz; manifest default: all).
        stride_frames: DSEC: every n-th image is a key frame.
        num_frames: frames per window (the target's T).
        with_events: load events (align: always; distill: when the drafter's visual source is events).
        with_features: join the target's video features (align: always; distill: unless text-only).
        pad_id: id used for padding (masked out; any valid id).
    """

    def __init__(
        self,
        target_cache: str,
        task: str = "align",
        dsec_root: str | None = None,
        dsec_images_root: str | None = None,
        sequences: list[str] | None = None,
        val_sequences: list[str] | None = None,
        manifest: str | None = None,
        event_window_us: int = 50_000,
        video_window_us: int | None = None,
        stride_frames: int = 1,
        num_frames: int = 8,
        val_fraction: float = 0.2,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        with_events: bool | None = None,
        with_features: bool = True,
        pad_id: int = 0,
    ):
        super().__init__()
        if task not in TASKS:
            raise InputError(f"task must be one of {TASKS}, got {task!r}")
        if (dsec_root is None) == (manifest is None):
            raise InputError("give exactly one data source: dsec_root or manifest")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.save_hyperparameters()
        self.with_events = task == "align" if with_events is None else bool(with_events)
        if task == "align" and not (self.with_events and with_features):
            raise InputError("the align task needs events and target features")
        self.train_set: StageDataset | None = None
        self.val_set: StageDataset | None = None

    def windows(self) -> list[ClipWindow]:
        """Every window of the configured source (files checked, nothing decoded)."""
        h = self.hparams
        if h.dsec_root is not None:
            return dsec_windows(h.dsec_root, images_root=h.dsec_images_root, sequences=h.sequences,
                                event_window_us=h.event_window_us, video_window_us=h.video_window_us or 400_000,
                                stride_frames=h.stride_frames)
        return manifest_windows(h.manifest, video_window_us=h.video_window_us)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        cache = TargetCache(h.target_cache)
        train, val = split_windows(self.windows(), val_fraction=h.val_fraction, val_groups=h.val_sequences, seed=h.seed)

        def stage_set(windows: list[ClipWindow]) -> StageDataset | None:
            if not windows:
                return None
            clips = ClipDataset(windows, num_frames=h.num_frames, event_window_us=h.event_window_us,
                                load_events=self.with_events, load_frames=False)
            return StageDataset(clips, cache, h.task, with_features=h.with_features)

        self.train_set, self.val_set = stage_set(train), stage_set(val)
        if self.train_set is None:
            raise InputError("no training windows left after the validation split; lower val_fraction or add data")

    def _collate(self, items):
        if self.hparams.task == "align":
            return collate_align(items)
        return collate_distill(items, pad_id=self.hparams.pad_id, needs_events=self.with_events)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _loader(self, dataset: StageDataset, shuffle: bool) -> DataLoader:
        h = self.hparams
        shards = dataset.item_shards()
        sampler = EpochSeededSampler(len(dataset), h.seed, shuffle, epoch_fn=self._current_epoch, item_shards=shards,
                                     shard_bytes={name: dataset.cache.shard_bytes(name) for name in set(shards)},
                                     budget_bytes=dataset.cache.memory_bytes)
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            # Lightning's own wrapper, but without the extra shuffle it adds for training loaders: that shuffle would
            # reorder our (seed, epoch) order with Lightning's epoch count (one off after a resume), break the shard
            # blocks, and make the ranks' batches differ from the one-process batches of the same global size.
            from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

            sampler = DistributedSamplerWrapper(sampler, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                                shuffle=False)
        return DataLoader(dataset, batch_size=h.batch_size, sampler=sampler,
                          num_workers=h.num_workers, collate_fn=self._collate, persistent_workers=h.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return [] if self.val_set is None else self._loader(self.val_set, shuffle=False)
