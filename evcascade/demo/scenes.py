"""A prerendered pool of synthetic-world scenes for training and evaluating the demo target.

Rendering is the slow part of the world (~20 ms a scene for 4 frames on one core), and a tiny model
needs tens of thousands of scene views, so scenes are rendered once into a pool (cached as ``.npz``) and
reused across epochs. Each entry is a scene and a window ``[start_us, end_us)`` of it (the whole clip unless
``windows_us`` says otherwise), and only the frames the target sees are rendered: ``render_frames`` at the
timestamps that ``Video.sample(num_frames, start_us, end_us)`` would pick from the full video
(``sample_frame_indices`` over the window's frames), which gives the very pixels of the full render. Events are
not simulated (the target never sees them).

>>> from evcascade.data.world import WorldConfig
>>> pool = render_pool([1, 2], WorldConfig(), num_frames=2, windows_us=[(0, 1_500_000), (100_000, 600_000)])
>>> pool.frames.shape, pool.frame_times_us.tolist()
((2, 2, 64, 64, 3), [[0, 1450000], [100000, 550000]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evcascade.data.world import Scene, WorldConfig, sample_scene, window_frame_times_us
from evcascade.errors import InputError


@dataclass(frozen=True, eq=False)
class ScenePool:
    """Scene windows with the frames the target sees: ``frames`` uint8 ``[N, T, H, W, 3]``, a scene graph each."""

    seeds: np.ndarray  # int64 [N]
    frames: np.ndarray  # uint8 [N, T, H, W, 3]
    frame_times_us: np.ndarray  # int64 [N, T], each entry's sampled frame times
    scenes: tuple[Scene, ...]
    windows_us: np.ndarray  # int64 [N, 2], each entry's window [start_us, end_us)

    def __len__(self) -> int:
        return len(self.scenes)


def sampled_frame_times_us(config: WorldConfig, num_frames: int,
                           window_us: tuple[int, int] | None = None) -> np.ndarray:
    """Timestamps of the ``num_frames`` frames that ``Video.sample`` picks from a world video's window (None: the
    whole video), ``int64 [T]``; a window with fewer frames repeats them, as ``Video.sample`` does."""
    from evcascade.video import sample_frame_indices

    times_us = window_frame_times_us(config, window_us)
    return times_us[sample_frame_indices(len(times_us), num_frames)]


def _windows(windows_us, count: int, config: WorldConfig) -> np.ndarray:
    if windows_us is None:
        return np.tile(np.array([0, config.duration_us], dtype=np.int64), (count, 1))
    windows = np.asarray(windows_us, dtype=np.int64).reshape(-1, 2)
    if len(windows) != count:
        raise InputError(f"{len(windows)} windows for {count} seeds")
    return windows


def render_pool(seeds: Sequence[int], config: WorldConfig, num_frames: int, *, windows_us=None,
                progress: bool = False) -> ScenePool:
    """Render the scenes of ``seeds`` (``sample_scene(seed, config)``) at the target's ``num_frames`` frame times
    of each one's window (``windows_us`` ``[N, 2]``; None: the whole clips)."""
    from evcascade.data.render import render_frames

    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise InputError(f"num_frames must be an int >= 1, got {num_frames!r}")
    seeds = np.asarray(list(seeds), dtype=np.int64)
    windows = _windows(windows_us, len(seeds), config)
    times_us = np.stack([sampled_frame_times_us(config, num_frames, tuple(w)) for w in windows]) if len(seeds) else \
        np.zeros((0, num_frames), dtype=np.int64)
    frames = np.empty((len(seeds), num_frames, config.height, config.width, 3), dtype=np.uint8)
    iterator = range(len(seeds))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="render scenes", unit="scene")
    scenes = []
    for i in iterator:
        scene = sample_scene(int(seeds[i]), config)
        frames[i] = render_frames(scene, times_us[i], config.supersample)
        scenes.append(scene)
    return ScenePool(seeds, frames, times_us, tuple(scenes), windows)


def load_or_render_pool(path: str | Path | None, seeds: Sequence[int], config: WorldConfig, num_frames: int,
                        *, windows_us=None, progress: bool = False) -> ScenePool:
    """``render_pool``, cached in the ``.npz`` at ``path``; a cache of the first entries is extended, not redone.

    ``scene_seeds(seed, n)`` lists the same first seeds for any ``n``, so a larger pool reuses a smaller one (when
    the windows of those first entries are the same too).
    """
    seeds = np.asarray(list(seeds), dtype=np.int64)
    windows = _windows(windows_us, len(seeds), config)
    cached_frames = np.zeros((0, num_frames, config.height, config.width, 3), dtype=np.uint8)
    if path is not None and Path(path).is_file():
        with np.load(path) as cached:
            n = min(len(cached["seeds"]), len(seeds))
            if ("windows_us" in cached and np.array_equal(cached["seeds"][:n], seeds[:n])
                    and np.array_equal(cached["windows_us"][:n], windows[:n])
                    and cached["frames"].shape[1:4] == (num_frames, config.height, config.width)):
                cached_frames = cached["frames"][:n]
    n = len(cached_frames)
    rest = render_pool(seeds[n:], config, num_frames, windows_us=windows[n:], progress=progress)
    frames = np.concatenate([cached_frames, rest.frames]) if n else rest.frames
    scenes = tuple(sample_scene(int(s), config) for s in seeds[:n]) + rest.scenes  # cheap
    times_us = np.stack([sampled_frame_times_us(config, num_frames, tuple(w)) for w in windows])
    if path is not None and len(rest):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, seeds=seeds, frames=frames, frame_times_us=times_us, windows_us=windows)
    return ScenePool(seeds, frames, times_us, scenes, windows)


def mp4_pool(pool: ScenePool, config: WorldConfig, *, progress: bool = False) -> ScenePool:
    """``pool`` as a user would feed it: each whole video written as ``mp4v`` and read back with ``read_video`` (over
    each entry's window).

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
            start_us, end_us = (int(t) for t in pool.windows_us[i])
            frames[i] = read_video(path, num_frames, start_us, end_us).frames
    return ScenePool(pool.seeds, frames, pool.frame_times_us, pool.scenes, pool.windows_us)
