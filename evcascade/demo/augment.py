"""Codec augmentation: frames round-tripped through JPEG, so the demo target also reads decoded video files.

The world is rendered losslessly, but a clip stored as ``mp4v`` (``evcascade.video.write_video``) comes back
with block and chroma-subsampling artefacts: on the bundled sample, a mean absolute error of ~4 grey levels
and ~40 at the 99th percentile, around object edges, where colour and shape live. JPEG at quality 60-95
makes errors of the same size and kind (DCT blocks, 4:2:0 chroma), at a fraction of a millisecond a frame.

>>> frames = np.full((1, 2, 16, 16, 3), 128, dtype=np.uint8)
>>> out = jpeg_roundtrip(frames, np.random.default_rng(0), probability=1.0)
>>> out.shape == frames.shape, int(np.abs(out.astype(int) - 128).max()) <= 2
(True, True)
"""

from __future__ import annotations

import numpy as np

from evcascade.errors import InputError


def jpeg_roundtrip(frames: np.ndarray, rng: np.random.Generator, *, probability: float = 0.5,
                   quality_range: tuple[int, int] = (60, 95)) -> np.ndarray:
    """A copy of ``frames`` uint8 ``[B, T, H, W, 3]`` where each clip, with ``probability``, went through JPEG.

    One quality per clip, drawn uniformly from ``quality_range``; the input is never modified.
    """
    import cv2

    if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        raise InputError(f"frames must be uint8 [B, T, H, W, 3], got {frames.dtype} {frames.shape}")
    if not 0.0 <= probability <= 1.0:
        raise InputError(f"probability must be in [0, 1], got {probability!r}")
    out = frames.copy()
    for b in np.flatnonzero(rng.random(len(frames)) < probability):
        quality = int(rng.integers(quality_range[0], quality_range[1] + 1))
        for t in range(frames.shape[1]):
            ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(frames[b, t, :, :, ::-1]),
                                      [cv2.IMWRITE_JPEG_QUALITY, quality])  # OpenCV wants BGR
            assert ok, "OpenCV failed to encode a JPEG"
            out[b, t] = cv2.imdecode(buffer, cv2.IMREAD_COLOR)[:, :, ::-1]
    return out
