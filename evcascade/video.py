"""Video clips: `Video` (uint8 RGB frames + timestamps) and `read_video`.

Placeholder contract; `read_video` and the DSEC image-folder reader live here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evcascade.errors import InputError


@dataclass(frozen=True, eq=False)
class Video:
    """Frames ``uint8 [T, H, W, 3]`` (RGB) with ``timestamps_us`` ``int64 [T]`` ascending."""

    frames: np.ndarray
    timestamps_us: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.frames, np.ndarray) or self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise InputError(f"Video.frames must be uint8 [T, H, W, 3], got shape {getattr(self.frames, 'shape', None)}")
        if self.frames.dtype != np.uint8:
            raise InputError(f"Video.frames must be uint8, got {self.frames.dtype}")
        ts = np.asarray(self.timestamps_us)
        if ts.ndim != 1 or ts.shape[0] != self.frames.shape[0]:
            raise InputError(f"Video.timestamps_us must be [T={self.frames.shape[0]}], got shape {ts.shape}")
        object.__setattr__(self, "timestamps_us", ts.astype(np.int64))

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def key_frame(self) -> np.ndarray:
        """The latest frame in the clip, ``uint8 [H, W, 3]``: the one the frame refiner sees."""
        if len(self) == 0:
            raise InputError("Video has no frames, so it has no key frame")
        return self.frames[-1]
