"""DSEC and manifest windows, lazy reads, splits, bad input, and the target cache (contents and resume)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from evcascade.errors import InputError, InputFileNotFoundError
from evcascade.events.io import read_events
from evcascade.train.datasets import ClipDataset, dsec_windows, manifest_windows, split_windows
from evcascade.train.target_cache import TargetCache, TargetCacheWriter, answer_key, build_target_cache

from train_helpers import FRAME_DT_US, PROMPTS, T0_US


# ---------------------------------------------------------------------------------------------- DSEC
def test_dsec_windows_end_at_key_frames_and_read_only_the_window(dsec_root):
    import cv2

    windows = dsec_windows(dsec_root)
    # 12 images at 20 Hz; a 400 ms video window needs the 7 images before the key frame: keys 8..11
    assert [w.key for w in windows[:4]] == [f"seq_a/{T0_US + i * FRAME_DT_US}" for i in range(8, 12)]
    assert len(windows) == 12 and {w.group for w in windows} == {"seq_a", "seq_b", "seq_c"}
    window = windows[1]
    assert (window.start_us, window.end_us) == (T0_US + 9 * FRAME_DT_US + 1 - 400_000, T0_US + 9 * FRAME_DT_US + 1)
    sample = ClipDataset(windows)[1]
    assert sample["frames"].shape == (8, 48, 64, 3)
    key_png = cv2.cvtColor(cv2.imread(str(dsec_root / "seq_a/images/left/rectified/000009.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(sample["frames"][-1], key_png)  # the last frame is the key frame
    everything = read_events(dsec_root / "seq_a/events/left/events.h5")
    expected = everything.window(window.end_us - 50_000, window.end_us)
    assert len(expected) > 0
    np.testing.assert_array_equal(sample["events"].t_us, expected.t_us)
    np.testing.assert_array_equal(sample["events"].x, expected.x)
    # the gap in seq_c leaves exactly one window with no events
    counts = [ClipDataset([w])[0]["num_events"] for w in windows if w.group == "seq_c"]
    assert counts.count(0) == 1


def test_splits_are_by_sequence(dsec_root):
    windows = dsec_windows(dsec_root, stride_frames=2)
    train, val = split_windows(windows, val_fraction=0.3, seed=1)
    assert val and train and not {w.group for w in train} & {w.group for w in val}
    assert len(train) + len(val) == len(windows)
    train2, val2 = split_windows(windows, val_groups=["seq_b"])
    assert {w.group for w in val2} == {"seq_b"}
    with pytest.raises(InputError, match="seq_z"):
        split_windows(windows, val_groups=["seq_z"])


@pytest.fixture()
def broken_root(tmp_path, dsec_root):
    shutil.copytree(dsec_root / "seq_a", tmp_path / "seq_a")
    return tmp_path


def test_dsec_missing_events_file_names_sequence_and_file(broken_root):
    (broken_root / "seq_a/events/left/events.h5").unlink()
    with pytest.raises(InputFileNotFoundError, match=r"'seq_a'.*missing events file.*events\.h5"):
        dsec_windows(broken_root)
    shutil.rmtree(broken_root / "seq_a/events")  # a sequence with images only is not silently dropped
    with pytest.raises(InputFileNotFoundError, match=r"'seq_a'.*missing events file"):
        dsec_windows(broken_root)


def test_dsec_missing_timestamps_names_sequence_and_file(broken_root):
    (broken_root / "seq_a/images/timestamps.txt").unlink()
    with pytest.raises(InputFileNotFoundError, match=r"'seq_a'.*timestamps\.txt"):
        dsec_windows(broken_root)


def test_dsec_timestamp_count_mismatch(broken_root):
    stamps = broken_root / "seq_a/images/timestamps.txt"
    stamps.write_text("".join(stamps.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(InputError, match=r"'seq_a'.*lists 11 timestamps.*12 PNG"):
        dsec_windows(broken_root)


def test_dsec_clock_mismatch_names_both_files(broken_root):
    stamps = broken_root / "seq_a/images/timestamps.txt"
    shifted = [int(t) + 10**9 for t in stamps.read_text().split()]
    stamps.write_text("".join(f"{t}\n" for t in shifted))
    with pytest.raises(InputError, match=r"'seq_a'.*timestamps\.txt.*do not overlap.*events\.h5"):
        dsec_windows(broken_root)


def test_dsec_unknown_sequence_and_empty_folder(tmp_path, dsec_root):
    with pytest.raises(InputError, match="seq_q"):
        dsec_windows(dsec_root, sequences=["seq_q"])
    with pytest.raises(InputError, match="no DSEC sequences"):
        dsec_windows(tmp_path)


# ---------------------------------------------------------------------------------------------- manifests
def test_synthetic_world_manifest_plugs_in(world_manifest):
    from evcascade.video import read_video

    data = json.loads(world_manifest.read_text())
    windows = manifest_windows(world_manifest)
    assert [w.key for w in windows] == ["scene_00000", "scene_00001"]
    assert list(windows[0].prompts) == data["scenes"][0]["prompts"]
    assert list(windows[0].answers) == data["scenes"][0]["answers"]
    sample = ClipDataset(windows, num_frames=4)[0]
    scene_dir = world_manifest.parent / "scene_00000"
    events = read_events(scene_dir / "events.h5")
    w = windows[0]
    np.testing.assert_array_equal(sample["events"].t_us, events.window(w.end_us - 50_000, w.end_us).t_us)
    reference = read_video(scene_dir / "video.mp4", 4, w.start_us, w.end_us)
    np.testing.assert_array_equal(sample["frames"], reference.frames)


def test_csv_manifest_groups_prompts_and_resolves_relative_paths(world_manifest):
    csv_path = world_manifest.parent / "clips.csv"
    csv_path.write_text("id,events,video,prompt,answer,end_us\n"
                        "a,scene_00000/events.h5,scene_00000/video.mp4,what is moving ?,the circle,300000\n"
                        "a,scene_00000/events.h5,scene_00000/video.mp4,how many objects ?,one,300000\n"
                        "b,scene_00001/events.h5,scene_00001/video.mp4,,,\n")
    windows = manifest_windows(csv_path, video_window_us=200_000)
    assert [w.key for w in windows] == ["a", "b"]
    assert windows[0].prompts == ("what is moving ?", "how many objects ?") and windows[0].answers == ("the circle", "one")
    assert (windows[0].start_us, windows[0].end_us) == (100_000, 300_000)
    assert windows[1].prompts == () and windows[1].end_us - windows[1].start_us == 200_000


def test_empty_and_bad_manifests(tmp_path, world_manifest):
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(InputError, match="no entries"):
        manifest_windows(tmp_path / "empty.json")
    (tmp_path / "empty.csv").write_text("events,video\n")
    with pytest.raises(InputError, match="no entries"):
        manifest_windows(tmp_path / "empty.csv")
    (tmp_path / "nofile.json").write_text(json.dumps([{"events": "x.h5"}]))
    with pytest.raises(InputError, match=r"entry 0 lacks \['video'\]"):
        manifest_windows(tmp_path / "nofile.json")
    (tmp_path / "missing.json").write_text(json.dumps([{"events": "nope.h5", "video": "nope.mp4"}]))
    with pytest.raises(InputFileNotFoundError, match="nope.h5"):
        manifest_windows(tmp_path / "missing.json")
    with pytest.raises(InputFileNotFoundError):
        manifest_windows(tmp_path / "absent.json")


# ---------------------------------------------------------------------------------------------- target cache
def test_cache_holds_the_target_towers_features_and_greedy_answers(dsec_root, dsec_cache, target, tokenizer):
    from evcascade.decoding.prompting import VideoLlavaPrompter
    from evcascade.preprocess import preprocess_frames

    cache = TargetCache(dsec_cache)
    windows = dsec_windows(dsec_root)
    assert cache.keys("features") == [w.key for w in windows]
    assert cache.meta["layout"] == {"num_frames": 8, "grid": 2, "hidden_size": 32}
    frames = ClipDataset(windows[:1], load_events=False)[0]["frames"]
    pixels = preprocess_frames(frames, size=32, crop_size=32)  # [8, 3, 32, 32]
    with torch.no_grad():
        tower = target.model.video_tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(cache.get(windows[0].key)["video_features"], tower)
    entry = cache.get(answer_key(windows[0].key, PROMPTS[0]))
    prompt = VideoLlavaPrompter(tokenizer, target.config)(PROMPTS[0])
    reference = target.generate(input_ids=prompt.target_ids, attention_mask=torch.ones_like(prompt.target_ids),
                                pixel_values_videos=pixels[None], do_sample=False, max_new_tokens=6, pad_token_id=3)
    assert entry["answer_ids"].tolist() == reference[0, prompt.target_ids.shape[1]:].tolist()
    assert torch.equal(entry["topk_ids"][:, 0], entry["answer_ids"])  # greedy = top-1 of the raw logits
    assert torch.equal(entry["prompt_ids"], prompt.text_ids[0])
    assert entry["topk_logits"].shape == (entry["answer_ids"].shape[0], 8)


class _Killed(Exception):
    pass


class _DiesAt(ClipDataset):
    """A dataset whose reads fail from index ``die_at`` on, as a run killed part-way."""

    def __init__(self, windows, die_at):
        super().__init__(windows, load_events=False)
        self.die_at = die_at

    def __getitem__(self, index):
        if index >= self.die_at:
            raise _Killed(index)
        return super().__getitem__(index)


def test_cache_resumes_after_a_kill_and_refuses_another_target(tmp_path, dsec_root, dsec_cache, target, tokenizer):
    windows = dsec_windows(dsec_root, sequences=["seq_a"], prompts=PROMPTS[:1])
    folder = tmp_path / "cache"
    kwargs = dict(target_name="tiny:0", max_new_tokens=6, top_k=8, shard_size=3)
    with pytest.raises(_Killed):
        build_target_cache(target, tokenizer, _DiesAt(windows, die_at=2), folder, answers=False, **kwargs)
    assert len(TargetCache(folder)) == 2  # flushed on the way out; nothing half-written
    counts = build_target_cache(target, tokenizer, ClipDataset(windows, load_events=False), folder, **kwargs)
    assert counts == {"features": 2, "answers": 4, "cached": 2}
    resumed, reference = TargetCache(folder), TargetCache(dsec_cache)
    assert len(resumed) == 8
    for key in resumed.keys():
        for name, value in resumed.get(key).items():
            torch.testing.assert_close(value, reference.get(key)[name])
    with pytest.raises(InputError, match="another target"):
        TargetCacheWriter(folder, {**resumed.meta, "top_k": 4})
    with pytest.raises(InputError, match="not in the target cache"):
        resumed.get("seq_z/0")
    with pytest.raises(InputFileNotFoundError, match="not a target cache"):
        TargetCache(tmp_path)


def test_cache_keeps_shards_loaded_within_its_memory_budget(tmp_path, monkeypatch):
    """Shuffled reads of a cache that fits load every shard once; a budget below one shard keeps just one."""
    meta = {"target": "t", "feature_layer": -1, "top_k": 2, "layout": {}}
    with TargetCacheWriter(tmp_path / "c", meta, shard_size=2) as writer:
        for i in range(8):
            writer.put(f"k{i}", {"x": torch.full((4,), float(i))}, kind="features", clip=f"k{i}")
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    order = [0, 5, 2, 7, 1, 4, 6, 3, 0, 7]
    roomy = TargetCache(tmp_path / "c")
    assert [float(roomy.get(f"k{i}")["x"][0]) for i in order] == [float(i) for i in order]
    assert len(loads) == 4  # four shards, each read once
    loads.clear()
    tight = TargetCache(tmp_path / "c", memory_bytes=1)
    [tight.get(f"k{i}") for i in order]
    assert len(loads) == 10 and len(tight._shards) == 1  # each read here is in another shard than the last
