"""``python -m evcascade.bench events``: event data layer speed, ours against tonic and EventGPT's drawing loop.

On N synthetic events (uniform pixels, polarities and times) in one 50 ms window at 640x480, a
DSEC-sized burst, it times side by side in one run: reading the 50 ms window back from a DSEC
``events.h5`` with ``read_events``, histogram, voxel grid (5 bins), time surface and
event_images(5), each against its reference (tonic's functional/transform, or an EventGPT-style
per-event Python loop), every reference timed on the same events as ours, and checks the outputs
agree in the same run. Prints a table and writes ``events.json`` (with the machine's load and the commit).
``--baseline-events N`` times the slow loop on the first N events only and scales its time linearly to the
window; the row then says so (``extrapolated``, with the measured size).

Targets (from the issue): every representation >= 5x faster than tonic on CPU; a 50 ms window
read + event_images(5) under 50 ms on CPU.

Ours and the reference are timed alternately (median of --repeats) so that load from other
processes hits both alike. On a machine shared with other work, pass ``--threads 1``: two torch
threads contending for busy cores made our rows several times slower and very noisy.
``--tune-malloc`` stops glibc from returning freed memory to the OS (see ``tune_malloc``); on the
development VM that halved most rows once h5py had run in the process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from evcascade.events.container import Events

WIDTH, HEIGHT = 640, 480
WINDOW_US = 50_000
NUM_BINS = 5
NUM_IMAGES = 5
TAU_US = 10_000.0


def eventgpt_images_loop(events: Events, num_images: int = NUM_IMAGES) -> np.ndarray:
    """EventGPT's event images drawn its way, one event at a time in Python: the slow reference, uint8 ``[I, H, W, 3]``.

    Same grouping and colours as XduSyL/EventGPT ``get_event_images_list`` / ``generate_event_image``
    (N // num_images events per image, the last takes the rest; white background, OFF blue,
    ON red, later events overwrite earlier ones), drawn at sensor size so shapes are comparable.
    """
    width, height = events.sensor_size
    n = len(events)
    per_image = n // num_images
    images = np.full((num_images, height, width, 3), 255, dtype=np.uint8)
    for image in range(num_images):
        lo, hi = image * per_image, (n if image == num_images - 1 else (image + 1) * per_image)
        canvas = images[image]
        for x, y, p in zip(events.x[lo:hi], events.y[lo:hi], events.p[lo:hi]):
            if p == 0:
                canvas[y, x] = np.array([0, 0, 255])  # blue for OFF
            else:
                canvas[y, x] = np.array([255, 0, 0])  # red for ON
    return images


def tune_malloc() -> bool:
    """Keep freed memory in the process (glibc only), so repeated large allocations stop page-faulting.

    By default glibc returns large freed blocks to the OS, and every fresh 1 M-event temporary
    then costs thousands of page faults, which dominate these millisecond-scale operations on
    some machines (VMs especially). Same effect as ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` in the environment. Returns whether it was applied.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        # 32 MiB is the largest mmap threshold glibc accepts (half its heap size); blocks below it
        # come from the heap, which is never trimmed below 2 GiB
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False


def synthetic_events(n: int, start_us: int, span_us: int, seed: int) -> Events:
    """``n`` uniformly random events at 640x480 in ``[start_us, start_us + span_us)``."""
    rng = np.random.default_rng(seed)
    t_us = np.sort(rng.integers(start_us, start_us + span_us, n))
    return Events(
        x=rng.integers(0, WIDTH, n).astype(np.uint16), y=rng.integers(0, HEIGHT, n).astype(np.uint16),
        t_us=t_us.astype(np.int64), p=rng.integers(0, 2, n).astype(np.int8), sensor_size=(WIDTH, HEIGHT),
    )


def timed_ms(fn: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> tuple[float, Any]:
    """Wall time of one call in ms, and its result."""
    start = time.perf_counter()
    result = fn()
    sync()
    return (time.perf_counter() - start) * 1e3, result


def median_ms(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = lambda: None) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls after one warm-up call, and the last result."""
    result = timed_ms(fn, sync)[1]
    times = []
    for _ in range(repeats):
        ms, result = timed_ms(fn, sync)
        times.append(ms)
    return statistics.median(times), result


def side_by_side(
    ours: Callable[[], Any], reference: Callable[[], Any], repeats: int, sync: Callable[[], None]
) -> tuple[float, Any, float, Any]:
    """Median ms and result of ``ours`` and of ``reference``, timed alternately so load drift hits both alike."""
    ours_out, ref_out = timed_ms(ours, sync)[1], timed_ms(reference)[1]  # warm-up
    ours_times, ref_times = [], []
    for _ in range(repeats):
        ms, ours_out = timed_ms(ours, sync)
        ours_times.append(ms)
        ms, ref_out = timed_ms(reference)
        ref_times.append(ms)
    return statistics.median(ours_times), ours_out, statistics.median(ref_times), ref_out


def run(num_events: int, repeats: int, device: str, baseline_events: int | None = None,
        seed: int = 0) -> list[dict[str, Any]]:
    """Time every row and check agreement; returns the table rows."""
    import tonic.functional as tonic_f
    import torch
    from tonic.transforms import ToVoxelGrid

    from evcascade.events.representations import event_images, histogram, time_surface, voxel_grid

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    events = synthetic_events(num_events, WINDOW_US, WINDOW_US, seed)  # the window [50 ms, 100 ms)
    structured = events.to_structured()  # tonic's input, prepared outside its timing
    end_us = WINDOW_US + WINDOW_US
    rows: list[dict[str, Any]] = []

    def row(op: str, ours_ms: float, reference: str, ref_ms: float | None, agree: bool | str, note: str = "") -> None:
        rows.append({
            "op": op, "events": num_events, "ours_ms": ours_ms, "reference": reference,
            "reference_ms": "" if ref_ms is None else ref_ms,
            "speedup": "" if ref_ms is None else ref_ms / ours_ms, "agree": agree, "note": note,
        })

    # ---- 50 ms window read from a DSEC file holding three windows (so the reader has to seek)
    read_window = None
    try:
        from evcascade.events.io import read_events, write_events
    except ImportError as err:  # evcascade.events.io is written in parallel; the row waits for it
        row("read 50 ms window (DSEC h5)", float("nan"), "-", None, "-", f"skipped: {err}")
    else:
        tmp = tempfile.TemporaryDirectory()
        before = synthetic_events(num_events, 0, WINDOW_US, seed + 1)
        after = synthetic_events(num_events, 2 * WINDOW_US, WINDOW_US, seed + 2)
        path = write_events(Path(tmp.name) / "events.h5", Events.concatenate([before, events, after]))

        def read_window() -> Events:
            return read_events(path, WINDOW_US, end_us)

        ms, got = median_ms(read_window, repeats)
        same = len(got) == num_events and all(
            np.array_equal(getattr(got, f), getattr(events, f)) for f in ("x", "y", "t_us", "p")
        )
        row("read 50 ms window (DSEC h5)", ms, "-", None, same, f"file holds {3 * num_events} events")

    # ---- histogram vs tonic to_frame_numpy (one frame over the window)
    ms, ours, ref_ms, ref = side_by_side(
        lambda: histogram(events, device=device),
        lambda: tonic_f.to_frame_numpy(structured, (WIDTH, HEIGHT, 2), time_window=WINDOW_US), repeats, sync,
    )
    row("histogram", ms, "tonic to_frame_numpy", ref_ms, bool(np.array_equal(ours.cpu().numpy(), ref[0])))

    # ---- voxel grid vs tonic ToVoxelGrid
    ms, ours, ref_ms, ref = side_by_side(
        lambda: voxel_grid(events, NUM_BINS, device=device),
        lambda: ToVoxelGrid(sensor_size=(WIDTH, HEIGHT, 2), n_time_bins=NUM_BINS)(structured), repeats, sync,
    )
    agree = bool(np.allclose(ours.cpu().numpy(), ref[:, 0], atol=1e-4))
    row(f"voxel_grid({NUM_BINS})", ms, "tonic ToVoxelGrid", ref_ms, agree)

    # ---- time surface vs tonic to_timesurface_numpy (one slice ending at the window end)
    dt_us = end_us - int(events.t_us[0])
    ms, ours, ref_ms, ref = side_by_side(
        lambda: time_surface(events, TAU_US, end_us=end_us, device=device),
        lambda: tonic_f.to_timesurface_numpy(structured, (WIDTH, HEIGHT, 2), dt=dt_us, tau=TAU_US), repeats, sync,
    )
    row("time_surface", ms, "tonic to_timesurface_numpy", ref_ms,
        bool(np.allclose(ours.cpu().numpy(), ref[0], rtol=1e-5, atol=1e-6)))

    # ---- event images vs EventGPT's per-event loop, on the same events unless --baseline-events says otherwise
    sample = events if baseline_events is None else events[: min(baseline_events, num_events)]
    if len(sample) == num_events:  # ~1 s a call for 1 M events: alternated with ours, fewer repeats
        ms, ours, loop_ms, loop_images = side_by_side(
            lambda: event_images(events, NUM_IMAGES, device=device),
            lambda: eventgpt_images_loop(events, NUM_IMAGES), min(repeats, 3), sync)
        same = bool(np.array_equal(ours.cpu().numpy(), loop_images))
        row(f"event_images({NUM_IMAGES})", ms, "EventGPT per-event loop", loop_ms, same,
            f"both timed on the same {num_events} events")
    else:
        ms, _ = median_ms(lambda: event_images(events, NUM_IMAGES, device=device), repeats, sync)
        loop_ms, loop_images = median_ms(lambda: eventgpt_images_loop(sample, NUM_IMAGES), 1)
        same = bool(np.array_equal(event_images(sample, NUM_IMAGES, device=device).cpu().numpy(), loop_images))
        row(f"event_images({NUM_IMAGES})", ms, "EventGPT per-event loop (extrapolated)",
            loop_ms * num_events / len(sample), same,
            f"extrapolated: loop timed on {len(sample)} events, scaled x{num_events / len(sample):.1f}")

    # ---- the end-to-end target: read a 50 ms window and draw its event images
    if read_window is not None:
        ms, images = median_ms(lambda: event_images(read_window(), NUM_IMAGES, device=device), repeats, sync)
        same = bool(torch.equal(images, event_images(events, NUM_IMAGES, device=device)))
        row(f"read 50 ms + event_images({NUM_IMAGES})", ms, "target", 50.0, same,
            f"target < 50 ms: {'met' if ms < 50.0 else 'MISSED'} (speedup = target / ours)")
        tmp.cleanup()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the events benchmark; ``--help`` lists the options."""
    from evcascade.bench.common import environment_info, format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m evcascade.bench events", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench_out", help="folder for events.json (default: bench_out)")
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the 50 ms window (default 1e6)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per row; the median is reported")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] for our representations (tonic is CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--tune-malloc", action="store_true",
                        help="keep freed memory in the process (glibc mallopt) so large temporaries stop page-faulting")
    parser.add_argument("--baseline-events", type=int, default=None,
                        help="time the slow EventGPT loop on this many events only and scale it linearly to --events "
                             "(the row is labelled extrapolated); default: the same events as ours")
    args = parser.parse_args(argv)
    if args.events < NUM_IMAGES or args.repeats < 1 or (args.baseline_events is not None
                                                         and args.baseline_events < NUM_IMAGES):
        parser.error(f"--events and --baseline-events must be >= {NUM_IMAGES} and --repeats >= 1")
    import torch

    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        parser.error(f"--device must be cpu or an available cuda device, got {args.device!r}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    malloc_tuned = tune_malloc() if args.tune_malloc else False
    import os

    load_before = os.getloadavg()

    rows = run(args.events, args.repeats, args.device, args.baseline_events)
    columns = ["op", "events", "ours_ms", "reference", "reference_ms", "speedup", "agree", "note"]
    print(format_table(rows, columns))
    env = environment_info(args.device, load_before)
    env["malloc_tuned"] = malloc_tuned
    print(f"device={args.device} torch_threads={env['torch_threads']} repeats={args.repeats} malloc_tuned={malloc_tuned}")
    path = write_json(args.out, "events", {"environment": env, "args": vars(args), "rows": rows,
                                          "regime": "cold: nothing is cached between calls"})
    print(f"wrote {path}")
    return 0
