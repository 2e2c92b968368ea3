"""A prerendered pool of synthetic-world scenes for training and evaluating the demo target.

Rendering is the slow part of the world (~20 ms a scene for 4 frames on one core), and a tiny model
needs tens of thousands of scene views, so scenes are rendered once into a pool (cached as ``.npz``) and
reused across epochs. Only the frames the target sees are rendered: ``render_frames`` at the timestamps
that ``Video.sample(num_frames)`` would pick from the full video (``sample_frame_indices``), which gives
the very pixels of the full render. Events are not simulated (the target never sees them).

>>> from evcascade.data.world import WorldConfig
>>> pool = render_pool([1, 2], WorldConfig(), num_frames=2)
>>> pool.frames.shape, len(pool)
((2, 2, 64, 64, 3), 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evcascade.data.world import Scene, WorldConfig, sample_scene
from evcascade.errors import InputError


@dataclass(frozen=True, eq=False)
class ScenePool:
    """Scenes with the frames the target sees: ``frames`` uint8 ``[N, T, H, W, 3]``, one scene graph each."""

    seeds: np.ndarray  # int64 [N]
    frames: np.ndarray  # uint8 [N, T, H, W, 3]
    frame_times_us: np.ndarray  # int64 [T], the same for every scene
    scenes: tuple[Scene, ...]

    def __len__(self) -> int:
        return len(self.scenes)


def sampled_frame_times_us(config: WorldConfig, num_frames: int) -> np.ndarray:
    """Timestamps of the ``num_frames`` frames that ``Video.sample`` picks from a whole world video, ``int64 [T]``."""
    from evcascade.video import sample_frame_indices

    times_us = config.frame_times_us()
    return times_us[sample_frame_indices(len(times_us), num_frames)]


def render_pool(seeds: Sequence[int], config: WorldConfig, num_frames: int, *, progress: bool = False) -> ScenePool:
    """Render the scenes of ``seeds`` (``sample_scene(seed, config)``) at the target's ``num_frames`` frame times."""
    from evcascade.data.render import render_frames

    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise InputError(f"num_frames must be an int >= 1, got {num_frames!r}")
    times_us = sampled_frame_times_us(config, num_frames)
    seeds = np.asarray(list(seeds), dtype=np.int64)
    frames = np.empty((len(seeds), num_frames, config.height, config.width, 3), dtype=np.uint8)
    iterator = range(len(seeds))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="render scenes", unit="scene")
    scenes = []
    for i in iterator:
        scene = sample_scene(int(seeds[i]), config)
        frames[i] = render_frames(scene, times_us, config.supersample)
        scenes.append(scene)
    return ScenePool(seeds, frames, times_us, tuple(scenes))


def load_or_render_pool(path: str | Path | None, seeds: Sequence[int], config: WorldConfig, num_frames: int,
                        *, progress: bool = False) -> ScenePool:
    """``render_pool``, cached in the ``.npz`` at ``path``; a cache of the first scenes is extended, not redone.

    ``scene_seeds(seed, n)`` lists the same first seeds for any ``n``, so a larger pool reuses a smaller one.
    """
    seeds = np.asarray(list(seeds), dtype=np.int64)
    times_us = sampled_frame_times_us(config, num_frames)
    cached_frames = np.zeros((0, num_frames, config.height, config.width, 3), dtype=np.uint8)
    if path is not None and Path(path).is_file():
        with np.load(path) as cached:
            n = min(len(cached["seeds"]), len(seeds))
            if (np.array_equal(cached["seeds"][:n], seeds[:n]) and np.array_equal(cached["frame_times_us"], times_us)
                    and cached["frames"].shape[2:4] == (config.height, config.width)):
                cached_frames = cached["frames"][:n]
    rest = render_pool(seeds[len(cached_frames):], config, num_frames, progress=progress)
    frames = np.concatenate([cached_frames, rest.frames]) if len(cached_frames) else rest.frames
    scenes = tuple(sample_scene(int(s), config) for s in seeds[: len(cached_frames)]) + rest.scenes  # cheap
    if path is not None and len(rest):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, seeds=seeds, frames=frames, frame_times_us=times_us)
    return ScenePool(seeds, frames, times_us, scenes)


def mp4_pool(pool: ScenePool, config: WorldConfig, *, progress: bool = False) -> ScenePool:
    """``pool`` as a user would feed it: each whole video written as ``mp4v`` and read back with ``read_video``.

    This renders every frame of each scene (not only the sampled ones), so it costs ~8x ``render_pool``.
    """
    import tempfile

    from evcascade.data.render import render_frames
    from evcascade.video import Video, read_video, write_video

    num_frames = pool.frames.shape[1]
    times_us = config.frame_times_us()
    frames = np.empty_like(pool.frames)
    iterator = range(len(pool))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="mp4 round trip", unit="scene")
    with tempfile.TemporaryDirectory() as folder:
        for i in iterator:
            video = Video(render_frames(pool.scenes[i], times_us, config.supersample), times_us)
            path = write_video(Path(folder) / "clip.mp4", video, config.fps)
            frames[i] = read_video(path, num_frames).frames
    return ScenePool(pool.seeds, frames, pool.frame_times_us, pool.scenes)
