"""Follow a live event stream through the Python API: a video is replayed as a camera, its events simulated on
the fly, and a `LiveSession` answers every N ms of stream time while the producer threads keep pushing.

    python demos/live_stream.py --video evcascade/assets/sample/video.mp4 --every-ms 250

By default it asks the bundled demo cascade (a small Video-LLaVA trained on the synthetic world, with its event
drafters); ``--model`` takes a preset or a folder written by ``Cascade.save_pretrained``. If no cascade is
installed at all it falls back to an untrained tiny cascade so that the plumbing can be watched; its answers
are then noise, and it says so.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import numpy as np

from evcascade.cascade import Cascade, resolve_model
from evcascade.errors import InputError
from evcascade.events import simulate
from evcascade.live import LiveSession
from evcascade.logs import configured, resolve_level
from evcascade.video import read_video, video_info


def load_cascade(name: str) -> tuple[Cascade, str]:
    if resolve_model(name) is not None:
        return Cascade.from_pretrained(name), name
    from evcascade.models.tiny import tiny_tokenizer, tiny_video_llava

    tok = tiny_tokenizer()
    return Cascade.from_models(tiny_video_llava(tok), tok), "untrained tiny cascade (answers are noise)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python demos/live_stream.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", required=True, help="video replayed as the camera (its events are simulated)")
    parser.add_argument("--model", default="bundled", help="bundled (default), a preset or a cascade folder")
    parser.add_argument("--prompt", default="what is moving ?", help="the question asked every --every-ms")
    parser.add_argument("--every-ms", type=float, default=250.0, help="ask every N ms of stream time")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed (1.0 = real time)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length limit")
    args = parser.parse_args(argv)
    with configured(resolve_level(0)):  # quiet like the main command: no weight-loading bars
        return run(args)


def run(args: argparse.Namespace) -> int:
    try:
        info = video_info(args.video)
        video = read_video(args.video, num_frames=info.num_frames)
        cascade, label = load_cascade(args.model)
    except InputError as exc:
        print(f"live_stream: error: {exc}", file=sys.stderr)
        return 2
    print(f"model: {label}; {len(video)} frames at {info.fps:.1f} fps; asking every {args.every_ms:.0f} ms")
    height, width = video.frames.shape[1:3]
    session = LiveSession(cascade, (width, height), event_window_us=50_000,
                          video_window_us=int(1e6 * min(1.0, len(video) / info.fps)))
    events = simulate(video.frames, video.timestamps_us, seed=0)  # the "camera's" event stream
    done = threading.Event()

    def camera() -> None:
        start = time.perf_counter()
        for i, t_us in enumerate(video.timestamps_us):
            wait = (t_us - video.timestamps_us[0]) / 1e6 / args.speed - (time.perf_counter() - start)
            if wait > 0:
                time.sleep(wait)
            previous = video.timestamps_us[i - 1] if i else t_us - 1
            session.push_events(events.window(int(previous), int(t_us)))  # packets as a driver delivers them
            session.push_frame(video.frames[i], int(t_us))
        done.set()

    producer = threading.Thread(target=camera, name="camera", daemon=True)
    producer.start()
    next_ask_us = video.timestamps_us[0] + args.every_ms * 1000
    while not done.is_set() or next_ask_us <= video.timestamps_us[-1]:
        newest = session.events.newest_us
        if newest is None or newest < next_ask_us:
            if done.is_set():
                break
            time.sleep(0.005)
            continue
        t0 = time.perf_counter()
        answer = session.ask(args.prompt, max_new_tokens=args.max_new_tokens)
        latency_ms = (time.perf_counter() - t0) * 1000
        print(f"[stream {newest / 1000:7.1f} ms] {answer.text!r}  ({latency_ms:.0f} ms, tau {answer.stats.tau:.2f}, "
              f"{answer.inputs['num_events']} events in window)")
        next_ask_us += args.every_ms * 1000
    producer.join()
    stats = session.events.stats
    print(f"pushed {stats.pushed} events, kept {stats.kept}, ring memory {session.memory_bytes() / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
