"""Test data writers of the training tests (imported by conftest.py and the tests; a module name no other
test folder uses)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evcascade.events.container import Events

SENSOR = (64, 48)  # (W, H) of the test DSEC event camera and images
FRAME_DT_US = 50_000  # DSEC's 20 Hz
T0_US = 1_000_000
PROMPTS = ("what is moving ?", "what colour is the object ?")


def write_dsec_sequence(root: Path, name: str, *, num_images: int = 12, seed: int = 0, events_layout: str = "events/left",
                        gap_us: tuple[int, int] | None = None, events_per_ms: int = 2) -> Path:
    """A DSEC sequence: events.h5 (random events, t_offset) and rectified PNGs with timestamps.txt.

    ``gap_us`` = [start, end) on the image clock where no events fire (to make empty windows)."""
    import cv2

    from evcascade.events.io import write_events

    rng = np.random.default_rng(seed)
    folder = root / name
    stamps = T0_US + FRAME_DT_US * np.arange(num_images, dtype=np.int64)  # [N]
    png_dir = folder / "images" / "left" / "rectified"
    png_dir.mkdir(parents=True)
    (folder / "images" / "timestamps.txt").write_text("".join(f"{t}\n" for t in stamps))
    for i in range(num_images):
        image = rng.integers(0, 255, size=(SENSOR[1], SENSOR[0], 3), dtype=np.uint8)
        cv2.imwrite(str(png_dir / f"{i:06d}.png"), image)
    start, end = int(stamps[0]) - 20_000, int(stamps[-1]) + 20_000
    n = (end - start) // 1000 * events_per_ms
    t_us = np.sort(rng.integers(start, end, size=n))
    if gap_us is not None:
        t_us = t_us[(t_us < gap_us[0]) | (t_us >= gap_us[1])]
    events = Events.from_arrays(rng.integers(0, SENSOR[0], t_us.size), rng.integers(0, SENSOR[1], t_us.size), t_us,
                                rng.integers(0, 2, t_us.size), sensor_size=SENSOR)
    (folder / events_layout).mkdir(parents=True)
    write_events(folder / events_layout / "events.h5", events, t_offset_us=start)
    return folder
