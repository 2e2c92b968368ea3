"""``python -m evcascade.bench soak --minutes N``: live sessions under DSEC-like load for N minutes, nothing lost.

Per camera (``--cameras``), one ``LiveSession`` fed by an event producer thread and a frame producer thread on a
simulated clock that may run faster than real time (``--time-scale``): events at a DSEC-like base rate with bursts
up to ``--burst-rate`` (10 M events/s by default) in 1 ms packets, frames at 20 Hz (640 x 480 RGB). The clock
misbehaves on purpose: gaps (no events for a while), forward clock jumps, and late packets / frames stamped
before what the session already holds (out of order: the session refuses them with an ``InputError`` naming
the timestamps, and the producer carries on). ``--askers`` threads ask questions of random sessions, each with
``timeout_s`` (every ask returns an answer or a clear error: none hangs).

Reported: RSS over time (sampled every ``--sample-s``) against the configured rings' bound (``max_events`` x 13
bytes + ``max_frames`` x one frame, per camera), events and frames pushed, packets refused, answers served,
errors by type and message (none dropped: every ask is accounted for), and whether every thread finished
within ``--grace-s`` of the end (no deadlock). JSON: ``soak.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evcascade.bench.common import environment_info, format_table, report_main
from evcascade.errors import InputError

QUESTIONS = ("what is moving ?", "describe the video .", "how many objects are there ?", "which is faster ?",
             "where does the circle move ?", "what colour is the moving square ?")
EVENT_BYTES = 13  # x, y uint16, t_us int64, p int8 (the ring's four arrays)


def rss_bytes() -> int:
    """This process's resident set size (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class SoakConfig:
    """One soak run's load and bounds."""

    seconds: float = 60.0
    """Real seconds the producers and askers run."""
    cameras: int = 2
    """Sessions, each with its own event and frame producer."""
    askers: int = 3
    """Threads asking questions of random sessions."""
    time_scale: float = 1.0
    """Simulated seconds per real second the producers aim for (they may fall behind; the report says)."""
    base_rate: float = 1e6
    """Events per simulated second between bursts."""
    burst_rate: float = 10e6
    """Events per simulated second in a burst."""
    sensor_size: tuple[int, int] = (640, 480)
    frame_hz: float = 20.0
    max_events: int = 2_000_000
    max_frames: int = 32
    event_window_us: int = 50_000
    video_window_us: int = 1_000_000
    timeout_s: float = 30.0
    """Each ask's timeout."""
    max_new_tokens: int = 16
    batched: bool = True
    """Sessions ask through the cascade's batch scheduler (shared by all); False: one question at a time."""
    sample_s: float = 0.5
    grace_s: float = 60.0
    """How long after the end every thread must have finished (else: a deadlock is reported)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("seconds", "time_scale", "base_rate", "burst_rate", "frame_hz", "timeout_s", "sample_s", "grace_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("cameras", "askers", "max_events", "max_frames", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    def ring_bound_bytes(self) -> int:
        width, height = self.sensor_size
        return self.cameras * (self.max_events * EVENT_BYTES + self.max_frames * width * height * 3)


@dataclass
class Tally:
    """Thread-safe counters of one run."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    latencies_s: list[float] = field(default_factory=list)

    def add(self, key: str, amount: int = 1) -> None:
        with self.lock:
            self.counts[key] += amount

    def error(self, where: str, exc: BaseException) -> None:
        message = str(exc).split(":")[0][:80]  # the message's stable head (numbers vary)
        with self.lock:
            self.errors[f"{where}: {type(exc).__name__}: {message}"] += 1


def _event_producer(session, config: SoakConfig, camera: int, stop: threading.Event, tally: Tally,
                    clock: dict[str, int]) -> None:
    """1 ms packets on a simulated clock: base rate, bursts, gaps, forward jumps, now and then a late packet."""
    rng = np.random.default_rng(config.seed + 101 * camera)
    width, height = config.sensor_size
    pool = 10 * int(config.burst_rate / 1000) + 1  # reused random coordinates: generation is not the bottleneck
    xs = rng.integers(0, width, pool).astype(np.uint16)
    ys = rng.integers(0, height, pool).astype(np.uint16)
    ps = rng.integers(0, 2, pool).astype(np.int8)
    t_us, started, offset = 0, time.perf_counter(), 0
    burst_left = gap_left = 0
    while not stop.is_set():
        # keep simulated time near time_scale x real time (sleep when ahead; when behind, the report shows it)
        ahead_s = t_us / 1e6 / config.time_scale - (time.perf_counter() - started)
        if ahead_s > 0.002:
            time.sleep(min(ahead_s, 0.05))
        roll = rng.random()
        if burst_left == 0 and gap_left == 0:
            if roll < 0.002:
                burst_left = int(rng.integers(20, 200))  # a 20-200 ms burst
            elif roll < 0.003:
                gap_left = int(rng.integers(50, 500))  # a 50-500 ms silence
            elif roll < 0.0035:
                t_us += int(rng.integers(1, 5)) * 1_000_000  # the clock jumps forward 1-4 s
                tally.add("clock_jumps")
        rate = config.burst_rate if burst_left else config.base_rate
        burst_left, gap_left = max(0, burst_left - 1), max(0, gap_left - 1)
        late = roll > 0.998 and t_us > 10_000  # a packet stamped 5-10 ms in the past
        start_us = t_us - int(rng.integers(5_000, 10_000)) if late else t_us
        count = 0 if gap_left else int(rate / 1000)
        if count:
            offset = (offset + count) % (pool - count)
            t = np.sort(rng.integers(start_us, start_us + 1000, count)).astype(np.int64)
            try:
                session.push_events((xs[offset: offset + count], ys[offset: offset + count], t, ps[offset: offset + count]))
                tally.add("events_pushed", count)
            except InputError as exc:
                tally.add("packets_refused")
                tally.error("push_events", exc)
            except BaseException as exc:  # anything else is a bug: counted, never swallowed silently
                tally.error("push_events", exc)
        if not late:
            t_us += 1000
        with tally.lock:
            clock[f"camera{camera}"] = t_us


def _frame_producer(session, config: SoakConfig, camera: int, stop: threading.Event, tally: Tally,
                    clock: dict[str, int]) -> None:
    """Frames at ``frame_hz`` on the event producer's clock; now and then one stamped in the past (refused)."""
    rng = np.random.default_rng(config.seed + 7 + 101 * camera)
    width, height = config.sensor_size
    frames = [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(4)]
    period_s = 1 / config.frame_hz / config.time_scale
    last_us, index = -1, 0
    while not stop.is_set():
        time.sleep(period_s)
        with tally.lock:
            now_us = clock.get(f"camera{camera}", 0)
        stamp = now_us
        if rng.random() < 0.02 and last_us > 100_000:
            stamp = last_us - 50_000  # a late frame
        elif stamp <= last_us:
            continue  # the event clock has not moved: no new frame yet
        try:
            session.push_frame(frames[index % len(frames)], stamp)
            tally.add("frames_pushed")
            last_us, index = stamp, index + 1
        except InputError as exc:
            tally.add("frames_refused")
            tally.error("push_frame", exc)
        except BaseException as exc:
            tally.error("push_frame", exc)


def _asker(sessions, config: SoakConfig, worker: int, stop: threading.Event, tally: Tally) -> None:
    rng = random.Random(config.seed + 1000 + worker)
    while not stop.is_set():
        session = rng.choice(sessions)
        started = time.perf_counter()
        tally.add("asks")
        try:
            answer = session.ask(rng.choice(QUESTIONS), max_new_tokens=config.max_new_tokens,
                                 timeout_s=config.timeout_s)
            with tally.lock:
                tally.counts["answers"] += 1
                tally.counts["answer_tokens"] += len(answer.token_ids)
                tally.latencies_s.append(time.perf_counter() - started)
        except TimeoutError as exc:
            tally.add("timeouts")
            tally.error("ask", exc)
        except BaseException as exc:  # InputError (e.g. no frames yet) or a bug: counted by type and message
            tally.add("ask_errors")
            tally.error("ask", exc)
        time.sleep(rng.uniform(0, 0.05))


def run_soak(cascade, config: SoakConfig) -> dict[str, Any]:
    """Run the load for ``config.seconds``; the report (see the module docstring)."""
    from evcascade.live import LiveSession

    sessions = [LiveSession(cascade, config.sensor_size, event_window_us=config.event_window_us,
                            video_window_us=config.video_window_us, max_events=config.max_events,
                            max_frames=config.max_frames, batched=config.batched) for _ in range(config.cameras)]
    stop, tally, clock = threading.Event(), Tally(), {}
    threads = []
    for camera, session in enumerate(sessions):
        threads.append(threading.Thread(target=_event_producer, args=(session, config, camera, stop, tally, clock),
                                        daemon=True, name=f"events{camera}"))
        threads.append(threading.Thread(target=_frame_producer, args=(session, config, camera, stop, tally, clock),
                                        daemon=True, name=f"frames{camera}"))
    threads += [threading.Thread(target=_asker, args=(sessions, config, w, stop, tally), daemon=True,
                                 name=f"asker{w}") for w in range(config.askers)]
    baseline = rss_bytes()
    samples = [(0.0, baseline, 0)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    while time.perf_counter() - started < config.seconds:
        time.sleep(config.sample_s)
        samples.append((time.perf_counter() - started, rss_bytes(), sum(s.memory_bytes() for s in sessions)))
    stop.set()
    deadline = time.perf_counter() + config.grace_s
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.perf_counter()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    elapsed = time.perf_counter() - started
    counts = dict(tally.counts)
    rss = [r for _, r, _ in samples]
    half = len(samples) // 2
    bound = config.ring_bound_bytes()
    asks = counts.get("asks", 0)
    accounted = counts.get("answers", 0) + counts.get("timeouts", 0) + counts.get("ask_errors", 0)
    simulated_s = max(clock.values(), default=0) / 1e6
    ring_kept = max(s for _, _, s in samples)
    report = {
        "benchmark": "soak", "cascade": repr(cascade), "environment": environment_info(),
        "config": {k: v for k, v in config.__dict__.items()},
        "elapsed_s": elapsed, "simulated_s": simulated_s, "counts": counts,
        "events_per_real_s": counts.get("events_pushed", 0) / elapsed,
        "errors": dict(tally.errors),
        "latency_ms": {"median": 1e3 * float(np.median(tally.latencies_s)) if tally.latencies_s else None,
                       "max": 1e3 * max(tally.latencies_s) if tally.latencies_s else None},
        "rss_mb": {"baseline": baseline / 2**20, "max": max(rss) / 2**20, "end": rss[-1] / 2**20,
                   "max_first_half": max(rss[: half + 1]) / 2**20, "max_second_half": max(rss[half:]) / 2**20},
        "rss_samples": [(round(t, 2), round(r / 2**20, 1), round(s / 2**20, 1)) for t, r, s in samples],
        "ring_bound_mb": bound / 2**20, "ring_max_mb": ring_kept / 2**20,
        "stuck_threads": stuck,
    }
    report["checks"] = {
        "no_deadlock": not stuck,
        "every_ask_accounted": asks == accounted,
        "rings_within_bound": ring_kept <= bound,
        # growth beyond the rings and the decoding working set: what a leak would show
        "rss_bounded": max(rss) - baseline <= bound + 512 * 2**20,
        "no_unexpected_errors": not [key for key in tally.errors
                                     if "InputError" not in key and "TimeoutError" not in key],
    }
    report["ok"] = all(report["checks"].values())
    return report


def format_report(report: dict[str, Any]) -> str:
    c, counts, rss = report["config"], report["counts"], report["rss_mb"]
    lines = [f"soak: {report['elapsed_s']:.0f} s real, {report['simulated_s']:.0f} s simulated, {c['cameras']} cameras, "
             f"{c['askers']} askers, batched={c['batched']}, {report['cascade']}",
             f"events pushed {counts.get('events_pushed', 0):,} ({report['events_per_real_s'] / 1e6:.2f} M/s real; "
             f"bursts {c['burst_rate'] / 1e6:g} M/s simulated), frames {counts.get('frames_pushed', 0)}, "
             f"packets refused {counts.get('packets_refused', 0)}, frames refused {counts.get('frames_refused', 0)}, "
             f"clock jumps {counts.get('clock_jumps', 0)}",
             f"asks {counts.get('asks', 0)}: answers {counts.get('answers', 0)}, timeouts {counts.get('timeouts', 0)}, "
             f"errors {counts.get('ask_errors', 0)}; latency median {report['latency_ms']['median'] or 0:.0f} ms, "
             f"max {report['latency_ms']['max'] or 0:.0f} ms",
             f"RSS MB: baseline {rss['baseline']:.0f}, max {rss['max']:.0f} (first half {rss['max_first_half']:.0f}, "
             f"second half {rss['max_second_half']:.0f}), end {rss['end']:.0f}; rings held at most "
             f"{report['ring_max_mb']:.0f} MB of a {report['ring_bound_mb']:.0f} MB bound",
             format_table([{"error": k, "count": v} for k, v in sorted(report["errors"].items())] or
                          [{"error": "(none)", "count": 0}]),
             "checks: " + ", ".join(f"{k} {v}" for k, v in report["checks"].items()) + f" -> ok {report['ok']}"]
    if report["stuck_threads"]:
        lines.append(f"STUCK THREADS: {report['stuck_threads']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evcascade.bench soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--askers", type=int, default=3)
    parser.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--burst-rate", type=float, default=10e6, help="events per simulated second in bursts")
    parser.add_argument("--base-rate", type=float, default=1e6)
    parser.add_argument("--max-events", type=int, default=2_000_000, help="each session's event ring")
    parser.add_argument("--max-frames", type=int, default=32, help="each session's frame ring")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="each ask's timeout")
    parser.add_argument("--unbatched", action="store_true", help="ask one question at a time (no batch scheduler)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default="bench_out")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    import torch

    from evcascade.cascade import Cascade

    if args.threads:
        torch.set_num_threads(args.threads)

    def build() -> dict:
        config = SoakConfig(seconds=60 * args.minutes, cameras=args.cameras, askers=args.askers,
                            time_scale=args.time_scale, burst_rate=args.burst_rate, base_rate=args.base_rate,
                            max_events=args.max_events, max_frames=args.max_frames, timeout_s=args.timeout_s,
                            batched=not args.unbatched)
        return run_soak(Cascade.from_pretrained(args.model), config)

    return report_main("soak", args.out, build, format_report, ok="ok")

if __name__ == "__main__":
    sys.exit(main())
