"""Scale-out, through the commands a cluster user runs: align / distill under ``--trainer.strategy ddp`` with two
CPU processes (gloo), checkpoints that resume across process counts, and the target cache split over workers.

DDP runs go through a subprocess of ``python -m evcascade.train`` (Lightning's ddp launcher starts rank 1 by
running the same command again), with ``OMP_NUM_THREADS=1`` and tiny models; their cost is mostly the two
interpreters' imports (~5 s of CPU each), so the one-process runs they are compared with call the same CLI
entry point (`evcascade.train.cli.main`) in this process.

Tolerance of the DDP-vs-one-process comparisons: the two runs see the same global batches (rank r takes items
r, r + 2, ... of the one order; see `EpochSeededSampler`) and every loss here is a mean over equally sized samples
(align: features of equal shape; distill: every cached answer runs to ``max_new_tokens``, so equal token
counts), so the global gradient is the same number computed in a different summation order. What is left is
float32 rounding (~1e-7 relative per step), which Adam's normalisation can lift to ~1e-5 on parameters whose
gradients are near zero over 6 steps; we allow 1e-4 absolute on weights and loss values. A sampler that gave
both ranks the same items, or a missing gradient all-reduce, changes the weights at the 1e-3..1e-2 level (lr 1e-2).
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from train_helpers import PROMPTS, write_dsec_sequence

REPO = Path(__file__).resolve().parents[2]
ENCODER = dict(vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=16, patch_size=8), num_images=3)
DRAFT = dict(text_config=dict(model_type="llama", vocab_size=125, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=4, bos_token_id=1, eos_token_id=2, pad_token_id=3),
             pool_grid=1)
DDP = ["--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp"]
TOL = dict(rtol=0.0, atol=1e-4)


def train_here(*args: str) -> None:
    """The same command, in this process (one-process runs)."""
    import warnings

    from evcascade.train.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(list(args)) == 0, f"python -m evcascade.train {' '.join(args)} failed"


def train_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, "-m", "evcascade.train", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert run.returncode == 0, f"python -m evcascade.train {' '.join(args)} failed:\n{run.stderr[-3000:]}"
    return run


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory):
    """Three gap-free DSEC sequences (so no window is empty and every rank's batch is full) and their cache."""
    from evcascade.models.tiny import tiny_tokenizer, tiny_video_llava
    from evcascade.train.datasets import ClipDataset, dsec_windows
    from evcascade.train.target_cache import build_target_cache

    root = tmp_path_factory.mktemp("dsec_ddp")
    for i, name in enumerate(("seq_a", "seq_b", "seq_c")):
        write_dsec_sequence(root, name, seed=10 + i)
    tokenizer = tiny_tokenizer()
    target = tiny_video_llava(tokenizer, seed=0, image_size=32, patch_size=16)
    cache = root.parent / "cache"
    # eos_token_id is never produced in 6 greedy steps by this random target: all answers have 6 tokens
    build_target_cache(target, tokenizer, ClipDataset(dsec_windows(root, prompts=PROMPTS), load_events=False), cache,
                       target_name="tiny:0", max_new_tokens=6, top_k=8, shard_size=4)
    return root, cache


def write_config(folder: Path, stage: str, root: Path, cache: Path, batch_size: int) -> Path:
    model = ({"encoder": ENCODER, "lr": 1e-2} if stage == "align" else
             {"draft_lm": DRAFT, "visual_source": "target", "lr": 1e-2})
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_steps": 6, "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "num_sanity_val_steps": 0, "default_root_dir": str(folder),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(folder), "name": "logs"}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(folder / "checkpoints"), "save_top_k": -1,
                                         "every_n_epochs": 1}}],
        },
        "model": {**model, "export_dir": str(folder / "export")},
        "data": {"target_cache": str(cache), "dsec_root": str(root), "val_sequences": ["seq_c"],
                 "batch_size": batch_size, "pad_id": 3},
    }
    if stage == "align":
        del config["data"]["pad_id"]
    path = folder / f"{stage}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return {k: v for k, v in state["state_dict"].items() if v.is_floating_point()}


def train_losses(folder: Path) -> dict[int, float]:
    versions = sorted((folder / "logs").iterdir())
    assert [v.name for v in versions] == ["version_0"], "only rank 0 writes logs"
    with open(versions[0] / "metrics.csv") as handle:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")}


def assert_weights_close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **TOL, msg=lambda m: f"{what}: {name}: {m}")


@pytest.mark.slow  # 3 two-process runs: ~35 s of CPU, mostly the interpreters' imports
@pytest.mark.parametrize("stage", ["align", "distill"])
def test_ddp_two_processes_match_one_process_of_the_same_global_batch(tmp_path, ddp_data, stage):
    """2 ranks x batch B == 1 process x batch 2B: same losses and weights; rank 0 alone logs and exports; (align)
    a checkpoint taken under DDP resumes under DDP (to the same weights) and in one process."""
    root, cache = ddp_data
    batch = 2 if stage == "align" else 4  # align: 8 train windows; distill: 16 (two prompts): 2 global steps/epoch
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    train_cli(stage, "--config", str(write_config(ddp, stage, root, cache, batch_size=batch)), *DDP)
    train_here(stage, "--config", str(write_config(single, stage, root, cache, batch_size=2 * batch)))

    ckpts = sorted(p.name for p in (ddp / "checkpoints").iterdir())
    assert ckpts == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt"]
    final_ddp, final_single = weights(ddp / "checkpoints" / ckpts[-1]), weights(single / "checkpoints" / ckpts[-1])
    initial = weights(ddp / "checkpoints" / ckpts[0])
    assert any((final_ddp[k] - initial[k]).abs().max() > 1e-3 for k in final_ddp), "training moved nothing"
    assert_weights_close(final_ddp, final_single, "DDP vs one process")
    losses_ddp, losses_single = train_losses(ddp), train_losses(single)
    assert sorted(losses_ddp) == list(range(6)) and losses_ddp.keys() == losses_single.keys()
    for step in losses_ddp:
        assert losses_ddp[step] == pytest.approx(losses_single[step], abs=TOL["atol"]), f"train/loss at step {step}"

    # the export (written by rank 0 only, at the end) holds the final weights
    exported = sorted(p.name for p in (ddp / "export").iterdir())
    if stage == "distill":
        from transformers import AutoModelForCausalLM

        import evcascade.models  # noqa: F401 - registers DraftLM with the Auto classes

        assert exported == ["draft_lm", "export.json"]
        draft = AutoModelForCausalLM.from_pretrained(ddp / "export" / "draft_lm")
        for name, value in draft.state_dict().items():
            if f"draft_lm.{name}" in final_ddp:
                assert torch.equal(value, final_ddp[f"draft_lm.{name}"]), name
        return
    from evcascade.models import AlignmentMLP

    assert exported == ["alignment", "event_encoder", "export.json", "frame_refiner"]
    mlp = AlignmentMLP.from_pretrained(ddp / "export" / "alignment")
    assert torch.equal(mlp.out_proj.weight, final_ddp["alignment.out_proj.weight"])

    # resume the epoch-1 checkpoint under DDP and in one process (batch 4): both end where the straight run did
    mid = ddp / "checkpoints" / ckpts[1]
    resume_ddp, resume_single = tmp_path / "resume_ddp", tmp_path / "resume_single"
    train_cli(stage, "--config", str(write_config(resume_ddp, stage, root, cache, batch_size=batch)), *DDP,
              "--ckpt_path", str(mid))
    train_here(stage, "--config", str(write_config(resume_single, stage, root, cache, batch_size=2 * batch)),
               "--ckpt_path", str(mid))
    for folder in (resume_ddp, resume_single):
        resumed = weights(folder / "checkpoints" / ckpts[-1])
        assert_weights_close(resumed, final_ddp, f"{folder.name} vs the straight DDP run")


# ---------------------------------------------------------------------------------------------- sampler
def test_ranks_split_one_order_and_read_the_cache_block_by_block(tmp_path, monkeypatch):
    """Lightning's DistributedSamplerWrapper over our sampler: disjoint ranks whose steps together are the
    one-process batches; with a budget below the cache, every rank loads each shard once an epoch."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    from evcascade.train.datamodules import EpochSeededSampler
    from evcascade.train.target_cache import TargetCache, TargetCacheWriter

    meta = {"target": "t", "feature_layer": -1, "top_k": 2, "layout": {}}
    with TargetCacheWriter(tmp_path / "c", meta, shard_size=4) as writer:
        for i in range(32):
            writer.put(f"k{i}", {"x": torch.full((256,), float(i))}, kind="features", clip=f"k{i}")
    cache = TargetCache(tmp_path / "c")
    keys = cache.keys()
    shards = [cache.shard_of(k) for k in keys]
    sizes = {name: cache.shard_bytes(name) for name in set(shards)}
    budget = 2 * max(sizes.values())  # two of the eight shards fit

    def sampler():
        return EpochSeededSampler(len(keys), seed=0, item_shards=shards, shard_bytes=sizes, budget_bytes=budget)

    order = list(sampler())
    assert sorted(order) == list(range(32)) and order != list(range(32))
    per_rank = [list(DistributedSamplerWrapper(sampler(), num_replicas=2, rank=r, shuffle=False)) for r in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == list(range(32)) and not set(per_rank[0]) & set(per_rank[1])
    for step in range(4):  # per-rank batch 4, global batch 8 = the one-process batch
        assert sorted(per_rank[0][4 * step: 4 * step + 4] + per_rank[1][4 * step: 4 * step + 4]) == \
            sorted(order[8 * step: 8 * step + 8])

    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    for rank in range(2):
        loads.clear()
        reader = TargetCache(tmp_path / "c", memory_bytes=budget)
        for index in per_rank[rank]:
            assert float(reader.get(keys[index])["x"][0]) == index
        assert len(loads) == len(set(loads)) == 8, f"rank {rank} reloaded shards: {len(loads)} loads"
    loads.clear()
    plain = EpochSeededSampler(len(keys), seed=0)  # without shard blocks: a plain permutation thrashes the budget
    reader = TargetCache(tmp_path / "c", memory_bytes=budget)
    [reader.get(keys[i]) for i in list(DistributedSamplerWrapper(plain, num_replicas=2, rank=0, shuffle=False))]
    assert len(loads) > 8


# ---------------------------------------------------------------------------------------------- sharded cache
def _kill_after(args):
    """Child process: build part ``index`` of the cache and SIGKILL itself when asked for window ``die_at``."""
    windows, folder, die_at = args
    from evcascade.models.tiny import tiny_tokenizer, tiny_video_llava
    from evcascade.train.datasets import ClipDataset
    from evcascade.train.target_cache import build_target_cache

    class Dies(ClipDataset):
        def __getitem__(self, index):
            if index >= die_at:
                os.kill(os.getpid(), signal.SIGKILL)  # no flush, no __exit__: a real kill
            return super().__getitem__(index)

    from evcascade.models.alignment import target_video_layout

    tokenizer = tiny_tokenizer()
    target = tiny_video_llava(tokenizer, seed=0, image_size=32, patch_size=16)
    num_frames = target_video_layout(target.config)[0]
    build_target_cache(target, tokenizer, Dies(windows, num_frames=num_frames, load_events=False), folder,
                       target_name="tiny:0", max_new_tokens=6, top_k=8, shard_size=4)


@pytest.fixture(scope="module")
def world6(tmp_path_factory) -> Path:
    """Six short synthetic-world scenes (a manifest): three windows per cache worker."""
    from evcascade.data.layout import write_world
    from evcascade.data.world import WorldConfig

    return write_world(tmp_path_factory.mktemp("world6"), num_scenes=6, seed=5,
                       config=WorldConfig(duration_us=400_000, max_objects=1))


def cache_main_here(*args: str, capsys) -> str:
    capsys.readouterr()
    train_here("cache", *args)
    return capsys.readouterr().out


def test_two_cache_workers_equal_one_and_a_killed_worker_resumes(tmp_path, world6, capsys):
    """``cache --shard I/2`` x 2 (worker 1 SIGKILLed after writing shards, then rerun) == one ``cache`` run, entry
    for entry and in the same order. Worker 0 runs as its own process (the command), at the same time as the
    doomed worker 1 (a forked process); worker 1's rerun and the one-worker reference run in this process."""
    from evcascade.train.datasets import manifest_windows
    from evcascade.train.target_cache import TargetCache, part_folder, shard_slice

    base = ["cache", "--target", "tiny:0", "--manifest", str(world6), "--max_new_tokens", "6",
            "--top_k", "8", "--dtype", "float32", "--shard_size", "4"]
    train_here(*base, "--out", str(tmp_path / "one"))

    sharded = tmp_path / "two"
    windows = manifest_windows(world6)
    part1 = windows[shard_slice(len(windows), 1, 2)]
    killed = multiprocessing.get_context("fork").Process(target=_kill_after, args=((part1, part_folder(sharded, 1, 2), 2),))
    killed.start()
    worker0 = subprocess.Popen([sys.executable, "-m", "evcascade.train", *base, "--out", str(sharded), "--shard", "0/2"],
                               cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
                                              "PYTHONWARNINGS": "ignore"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed.join(120)
    assert killed.exitcode == -signal.SIGKILL
    survived = TargetCache(part_folder(sharded, 1, 2))  # the shards written before the kill (2 windows' worth)
    assert len(survived) > 0 and len(set(survived.index[k]["shard"] for k in survived.keys())) >= 2
    with pytest.raises(FileNotFoundError, match=r"parts \[1\] of 2 are not complete|parts \[0, 1\] of 2"):
        TargetCache(sharded)
    out, err = worker0.communicate(timeout=300)
    assert worker0.returncode == 0, err[-3000:]
    assert "parts [1] of 2 are not complete" in out
    counts = cache_main_here(*base[1:], "--out", str(sharded), "--shard", "1/2", capsys=capsys)
    assert "merged the parts" in counts and "'cached': 0" not in counts  # resumed, not redone

    one, two = TargetCache(tmp_path / "one"), TargetCache(sharded)
    assert two.keys() == one.keys() and len(one) > 0
    for key in one.keys():
        a, b = one.get(key), two.get(key)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), key
    assert {two.shard_of(k).split("/")[0] for k in two.keys()} == {"part-0-of-2", "part-1-of-2"}
