"""Shared fixtures of the training tests: a DSEC-format folder, a synthetic-world manifest, a tiny target, caches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evcascade.models.tiny import tiny_tokenizer, tiny_video_llava

from train_helpers import PROMPTS, T0_US, write_dsec_sequence


@pytest.fixture(scope="session")
def dsec_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dsec")
    write_dsec_sequence(root, "seq_a", seed=1)
    write_dsec_sequence(root, "seq_b", seed=2, events_layout="events_left")
    # no events in [1.44 s, 1.52 s): of the 50 ms windows, only the one ending at key frame 1.50 s is empty
    write_dsec_sequence(root, "seq_c", seed=3, gap_us=(T0_US + 440_000, T0_US + 520_000))
    return root


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def target(tokenizer):
    torch.manual_seed(0)
    return tiny_video_llava(tokenizer, seed=0, image_size=32, patch_size=16)


@pytest.fixture(scope="session")
def dsec_cache(tmp_path_factory, dsec_root, target, tokenizer) -> Path:
    from evcascade.train.datasets import ClipDataset, dsec_windows
    from evcascade.train.target_cache import build_target_cache

    folder = tmp_path_factory.mktemp("cache") / "dsec"
    windows = dsec_windows(dsec_root, prompts=PROMPTS[:1])
    build_target_cache(target, tokenizer, ClipDataset(windows, load_events=False), folder, target_name="tiny:0",
                       max_new_tokens=6, top_k=8, shard_size=8)
    return folder


@pytest.fixture(scope="session")
def world_manifest(tmp_path_factory) -> Path:
    """Two short synthetic-world scenes written by `evcascade.data.layout` (its manifest.json)."""
    from evcascade.data.layout import write_world
    from evcascade.data.world import WorldConfig

    config = WorldConfig(duration_us=600_000, max_objects=1)
    return write_world(tmp_path_factory.mktemp("world"), num_scenes=2, seed=3, config=config)
