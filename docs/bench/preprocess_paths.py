"""Which frame preprocessing the verifier uses: the reference processor, or a torch port of it?

Measures, side by side on the same frames, ``VideoLlavaImageProcessor`` (Pillow; what ``evcascade.preprocess``
calls) against the torch two-pass port evcascade used before (antialiased bicubic per axis, uint8 rounding
between the passes): time per 8-frame clip (median of repeats, one thread) and the largest difference after
normalisation. The port is kept here only as the candidate being measured.

    OMP_NUM_THREADS=1 python docs/bench/preprocess_paths.py --repeats 7 --json docs/bench/preprocess_paths.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from evcascade.preprocess import CLIP_MEAN, CLIP_STD, preprocess_frames

SHAPES = [(64, 64), (480, 640), (1080, 1440), (1000, 300), (245, 708), (708, 245)]  # (H, W)


def torch_two_pass(frames: np.ndarray, size: int = 224, crop: int = 224) -> torch.Tensor:
    """The former torch path: horizontal pass, round, vertical pass, round (PIL's order for most shapes)."""
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    height, width = pixels.shape[-2:]
    out_h, out_w = (int(size * height / width), size) if width <= height else (size, int(size * width / height))
    if out_w != width:
        pixels = F.interpolate(pixels, size=(height, out_w), mode="bicubic", antialias=True).round_().clamp_(0, 255)
    if out_h != height:
        pixels = F.interpolate(pixels, size=(out_h, out_w), mode="bicubic", antialias=True).round_().clamp_(0, 255)
    top, left = (out_h - crop) // 2, (out_w - crop) // 2
    pixels = pixels[:, :, top:top + crop, left:left + crop]
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels / 255 - mean) / std


def median_ms(fn, repeats: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'frame HxW':>11} | {'reference ms':>12} | {'torch port ms':>13} | {'port/ref':>8} | max |diff|")
    for height, width in SHAPES:
        frames = rng.integers(0, 256, (args.frames, height, width, 3), dtype=np.uint8)
        reference_ms = median_ms(lambda: preprocess_frames(frames), args.repeats)
        port_ms = median_ms(lambda: torch_two_pass(frames), args.repeats)
        diff = float((torch_two_pass(frames) - preprocess_frames(frames)).abs().max())
        rows.append({"height": height, "width": width, "reference_ms": round(reference_ms, 2),
                     "torch_port_ms": round(port_ms, 2), "max_abs_diff": round(diff, 4)})
        print(f"{height:>5}x{width:<5} | {reference_ms:12.1f} | {port_ms:13.1f} | {port_ms / reference_ms:8.2f} | {diff:.4f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"frames_per_clip": args.frames, "repeats": args.repeats, "threads": 1,
                       "machine": platform.machine(), "torch": torch.__version__, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
