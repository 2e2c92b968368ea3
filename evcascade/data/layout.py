"""Write synthetic-world scenes as DSEC-like folders plus a manifest that training reads.

::

    <out>/
    ├── manifest.json              one entry per scene: events, video, prompts, answers (paths relative)
    └── scene_00000/
        ├── events.h5              DSEC layout (events/{x,y,t,p}, t_offset, ms_to_idx)
        ├── video.mp4              mp4v, frame i at t0_us + round(i * 1e6 / fps) on the events' clock
        └── annotations.json       scene graph, caption, QA pairs, video fps and t0_us, event summary

Prompts in the manifest are bare questions (``what is moving ?``); the model's chat template is
added by whoever feeds a model. A scene's seed is derived from the set seed and its index
(``scene_seeds``), so scene 7 is the same whether 10 or 10 000 scenes are written.

With ``windows_per_scene`` each scene also gets that many entries asking about a window of it
(``scene_00007_w0``: the same files, ``start_us`` / ``end_us`` on the events' clock, the window's questions and
answers, ``qa_pairs(scene, window)``), windows drawn by ``sample_window_us`` (50 ms - 1.5 s) from the scene's seed.
A scene folder already written for the same seed is kept (its annotations refreshed), so a world can be re-asked
without rendering it again.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from evcascade.data.world import (
    WorldConfig, WorldSample, make_world_sample, sample_scene, sample_window_us, scene_seeds,
)
from evcascade.errors import InputError

MANIFEST_VERSION = 1


def annotations(sample: WorldSample, config: WorldConfig) -> dict:
    """The ``annotations.json`` content of one scene: everything but the pixels and the events."""
    video, events = sample.video, sample.events
    return {
        "scene": sample.scene.to_dict(),
        "caption": sample.caption,
        "qa": [qa.to_dict() for qa in sample.qa],
        "video": {"fps": float(config.fps), "t0_us": int(video.start_us), "num_frames": len(video),
                  "width": video.width, "height": video.height},
        "events": {"num_events": len(events), "sensor_size": list(events.sensor_size),
                   "start_us": events.start_us, "end_us": events.end_us},
        "config": config_dict(config),
    }


def write_scene(sample: WorldSample, folder, config: WorldConfig | None = None) -> dict:
    """Write one scene's ``events.h5``, ``video.mp4`` and ``annotations.json`` into ``folder``; returns the notes.

    The video is read back (``video_info``) to make sure the written file decodes to every frame.
    """
    from evcascade.events.io import write_events
    from evcascade.video import video_info, write_video

    config = config or WorldConfig()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_events(folder / "events.h5", sample.events)
    video_path = write_video(folder / "video.mp4", sample.video, config.fps)
    info = video_info(video_path, video_offset_us=sample.video.start_us)
    if info.num_frames != len(sample.video):  # a codec that drops frames would silently shift the clock
        raise RuntimeError(f"{video_path}: wrote {len(sample.video)} frames, read back {info.num_frames}")
    notes = annotations(sample, config)
    (folder / "annotations.json").write_text(json.dumps(notes, indent=1))
    return notes


def _refresh_scene(folder: Path, scene_seed: int, config: WorldConfig) -> dict | None:
    """The notes of a scene folder already written for ``scene_seed`` with ``config``, its caption and questions
    asked again (they may have changed since); None when the folder is missing, incomplete or another scene's."""
    from evcascade.data.questions import caption, qa_pairs

    path = folder / "annotations.json"
    if not all((folder / name).is_file() for name in ("events.h5", "video.mp4", "annotations.json")):
        return None
    try:
        notes = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if notes.get("scene", {}).get("seed") != scene_seed or notes.get("config") != config_dict(config):
        return None
    scene = sample_scene(scene_seed, config)
    notes["caption"], notes["qa"] = caption(scene), [qa.to_dict() for qa in qa_pairs(scene, fps=config.fps)]
    path.write_text(json.dumps(notes, indent=1))
    return notes


def _recorded_window(rng: np.random.Generator, notes: dict, config: WorldConfig) -> tuple[int, int]:
    """A window (``sample_window_us``) cut to what both recordings hold, as the training stages require
    (``evcascade.clip.clip_window``): events from the first to one past the last, frames to one past the last;
    drawn again in the rare case that the cut holds no frame."""
    frame_times_us = config.frame_times_us()
    lo_us = max(int(notes["events"]["start_us"]), int(frame_times_us[0]))
    hi_us = min(int(notes["events"]["end_us"]), int(frame_times_us[-1]) + 1)
    for _ in range(100):
        start_us, end_us = sample_window_us(rng, config, full_probability=0.0)
        start_us, end_us = max(start_us, lo_us), min(end_us, hi_us)
        if start_us < end_us and ((frame_times_us >= start_us) & (frame_times_us < end_us)).any():
            return start_us, end_us
    raise InputError(f"no window of the recordings [{lo_us}, {hi_us}) us holds a frame")


def write_world(out_dir, num_scenes: int, seed: int = 0, config: WorldConfig | None = None, *,
                windows_per_scene: int = 0, progress: bool = False) -> Path:
    """Generate ``num_scenes`` scenes from ``seed`` into ``out_dir``; returns the path of ``manifest.json``.

    ``windows_per_scene``: entries per scene asking about a window of it, besides the whole clip (module docstring).
    """
    from evcascade.data.questions import qa_pairs

    if isinstance(num_scenes, bool) or not isinstance(num_scenes, int) or num_scenes < 1:
        raise InputError(f"num_scenes must be an integer >= 1, got {num_scenes!r}")
    if isinstance(windows_per_scene, bool) or not isinstance(windows_per_scene, int) or windows_per_scene < 0:
        raise InputError(f"windows_per_scene must be an integer >= 0, got {windows_per_scene!r}")
    config = config or WorldConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = scene_seeds(seed, num_scenes)
    iterator = enumerate(seeds)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=num_scenes, desc="scenes", unit="scene")
    entries = []
    for index, scene_seed in iterator:
        name = f"scene_{index:05d}"
        notes = _refresh_scene(out_dir / name, scene_seed, config)
        if notes is None:
            notes = write_scene(make_world_sample(scene_seed, config), out_dir / name, config)
        entries.append({
            "id": name, "seed": scene_seed,
            "events": f"{name}/events.h5", "video": f"{name}/video.mp4", "annotations": f"{name}/annotations.json",
            "video_offset_us": 0, "t0_us": notes["video"]["t0_us"], "fps": notes["video"]["fps"],
            "prompts": [qa["question"] for qa in notes["qa"]],
            "answers": [qa["answer"] for qa in notes["qa"]],
            "kinds": [qa["kind"] for qa in notes["qa"]],
            "needs": [qa["needs"] for qa in notes["qa"]],
        })
        rng = np.random.default_rng([scene_seed, 11])
        scene, whole = (sample_scene(scene_seed, config) if windows_per_scene else None), entries[-1]
        for j in range(windows_per_scene):
            start_us, end_us = _recorded_window(rng, notes, config)
            qas = qa_pairs(scene, (start_us, end_us), fps=config.fps)
            entries.append({**whole, "id": f"{name}_w{j}", "start_us": start_us, "end_us": end_us,
                            "prompts": [qa.question for qa in qas], "answers": [qa.answer for qa in qas],
                            "kinds": [qa.kind for qa in qas], "needs": [qa.needs for qa in qas]})
    manifest = {"version": MANIFEST_VERSION, "generator": "evcascade.data.world", "seed": seed,
                "config": config_dict(config), "scenes": entries}
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path


def config_dict(config: WorldConfig) -> dict:
    """``config`` as JSON-ready data (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}


def read_manifest(path) -> dict:
    """A manifest written by ``write_world``, with every scene path made absolute."""
    from evcascade.errors import require_file

    path = require_file(path)
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{str(path)!r}: not a JSON manifest ({exc})") from None
    if manifest.get("version") != MANIFEST_VERSION or "scenes" not in manifest:
        raise InputError(f"{str(path)!r}: expected a version {MANIFEST_VERSION} manifest with 'scenes'")
    for entry in manifest["scenes"]:
        for key in ("events", "video", "annotations"):
            entry[key] = str(path.parent / entry[key])
    return manifest
