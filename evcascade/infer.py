"""``python -m evcascade.infer``: answer a question about an event recording and its video.

    python -m evcascade.infer --events rec/events.h5 --video rec/video.mp4 --prompt "what is moving?"

Prints the answer (streamed) and its stats on stdout; stderr holds one progress line while loading, and more
only with ``-v`` / ``-vv`` or ``EVCASCADE_LOG=info|debug``. Exit codes: 0 ok (also when stdout is closed early,
as by ``| head -1``), 2 bad arguments or input (one line on stderr naming the bad value), 1 internal error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Sequence

from evcascade.errors import InputError

logger = logging.getLogger("evcascade.infer")  # not __name__: that is "__main__" under python -m
PROG = "python -m evcascade.infer"
DEFAULT_PROMPT = "what is moving ?"
BUNDLED_MODEL = "bundled"
DEFAULT_LENIENCE = 0.3
"""``--lenience`` when a lossy ``--acceptance`` is given without one (TokenV3 / typical / modality take every
phrasing the target hesitates over from 0.2-0.3 on, in the paraphrase world's lossy benchmark)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(message)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The CLI's flags; each maps one-to-one onto a field of the request or the generation options.

    ``prog`` is how the user started it (``evcascade infer`` from the console script).
    """
    from evcascade.decoding.lossy import RULES as ACCEPTANCE_RULES

    p = _Parser(prog=prog, description=__doc__.split("\n")[0].split(": ", 1)[1])
    p.add_argument("--events", required=True, help="event file (DSEC .h5, .h5, .npz, .npy, .txt/.csv, .raw, .dat, .aedat4, .aedat, .es) or ROS bag (.bag, ROS 2 folder, .db3, .mcap)")
    p.add_argument("--video", required=True, help="video file (.mp4, ...), DSEC sequence/images folder or ROS bag")
    p.add_argument("--events-topic", default=None, help="ROS bags: the event topic (default: the bag's only one)")
    p.add_argument("--video-topic", default=None, help="ROS bags: the image topic (default: the bag's only one)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"question (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--start-us", type=int, default=None, help="window start on the events clock (us)")
    p.add_argument("--end-us", type=int, default=None, help="window end on the events clock (us, exclusive)")
    p.add_argument("--video-offset-us", type=int, default=None,
                   help="added to video timestamps to reach the events clock (default: a clockless video such as "
                        "an mp4 whose times miss the events' starts at the first event; a DSEC folder keeps its own)")
    p.add_argument("--sort-events", action="store_true", help="sort unsorted event timestamps (reads the whole file)")
    p.add_argument("--sensor-size", type=_sensor_size, default=None, metavar="WxH",
                   help="sensor size for event files that do not record it, e.g. 640x480")
    p.add_argument("--num-frames", type=int, default=None,
                   help="frames sampled from the video window (default: what the model takes; 8 without a model)")
    p.add_argument("--model", default=BUNDLED_MODEL, help="preset name or local folder (default: the bundled demo cascade)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's own (32 if it has none)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--mode", default="cascade", choices=["cascade", "target"], help="target = the target model alone")
    p.add_argument("--acceptance", default="lossless", choices=list(ACCEPTANCE_RULES),
                   help="verification rule: lossless (default: the answer is the target's own) or an opt-in lossy "
                        "rule that accepts more drafts (evcascade.decoding.lossy; modality needs an event level)")
    p.add_argument("--lenience", type=float, default=None,
                   help="the lossy rule's lenience in [0, 1] (0 = lossless; default 0.3 with a lossy rule)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickled event files (runs code from the file)")
    p.add_argument("--provisional", action="store_true",
                   help="first print the best drafting level's own answer (unverified, marked provisional, with its "
                        "latency), then the verified answer and whether it confirmed the provisional one")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of human output")
    p.add_argument("--stats", action="store_true", help="print the full stats block")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="say more on stderr (-v: loading steps, library warnings; -vv: debug); or EVCASCADE_LOG=info|debug")
    return p


def _sensor_size(text: str) -> tuple[int, int]:
    """``--sensor-size 640x480`` -> (640, 480)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"expected WxH with positive integers, e.g. 640x480, got {text!r}")
    return int(parts[0]), int(parts[1])


# Hints in the library's errors name Python arguments; on the command line the flags are what a user can pass.
CLI_WORDING: dict[str, str] = {
    "pass sort=True": "pass --sort-events",
    "pass sensor_size=(W, H)": "pass --sensor-size WxH",
    "pass allow_pickle=True": "pass --allow-pickle",
    "pass video_offset_us": "pass --video-offset-us",
    "or start_us and end_us": "or --start-us and --end-us",
    "pass start_us and end_us": "pass --start-us and --end-us",
}


def cli_wording(message: str) -> str:
    """An error or note from the library, with its hints naming this command's flags."""
    for python_words, cli_words in CLI_WORDING.items():
        message = message.replace(python_words, cli_words)
    return message


def validate(args: argparse.Namespace) -> None:
    """Check flag values that argparse cannot; raise InputError naming the bad value."""
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.num_frames is not None and args.num_frames < 1:
        raise InputError(f"--num-frames must be >= 1, got {args.num_frames}")
    if not args.temperature > 0:
        raise InputError(f"--temperature must be > 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise InputError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.start_us is not None and args.end_us is not None and args.start_us >= args.end_us:
        raise InputError(f"--start-us must be < --end-us, got {args.start_us} >= {args.end_us}")
    if not (args.device == "cpu" or args.device == "cuda" or args.device.startswith("cuda:")):
        raise InputError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--device {args.device} asked for, but no CUDA device is available here; use --device cpu")
    if args.lenience is not None:
        if args.acceptance == "lossless":
            from evcascade.decoding.lossy import RULES

            raise InputError(f"--lenience {args.lenience} needs a lossy --acceptance rule "
                             f"(one of {', '.join(r for r in RULES if r != 'lossless')})")
        if not 0 <= args.lenience <= 1:
            raise InputError(f"--lenience must be in [0, 1] (0 = lossless), got {args.lenience}")
    if args.acceptance != "lossless" and args.mode == "target":
        raise InputError(f"--acceptance {args.acceptance} judges drafts; --mode target has none (use --mode cascade)")
    if not args.prompt.strip():
        raise InputError("--prompt is empty; ask a question, e.g. --prompt 'what is moving?'")
    for flag, path in (("--events", args.events), ("--video", args.video)):
        if not Path(path).expanduser().exists():
            raise InputError(f"{flag}: no such file or folder: {path!r}")


class _Spinner:
    """``with _Spinner("loading model", quiet):`` a spinner on a terminal's stderr that erases itself when done
    (one plain line when stderr is not a terminal)."""

    def __init__(self, message: str, quiet: bool) -> None:
        self.message, self.quiet = message, quiet
        self.live = not quiet and sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        for frame in itertools.cycle("|/-\\"):
            if self._stop.wait(0.1):
                break
            print(f"\r{self.message} {frame}", end="", file=sys.stderr, flush=True)

    def __enter__(self) -> "_Spinner":
        if self.live:
            self._thread.start()
        elif not self.quiet:
            print(f"{self.message} ...", file=sys.stderr, flush=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self._stop.set()
            self._thread.join()
            print("\r\033[K", end="", file=sys.stderr, flush=True)  # the line goes: the answer is what counts


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load the clip and the model, answer; returns the JSON-able result (also used by the human printer)."""
    from evcascade.cascade import Cascade, resolve_model
    from evcascade.clip import ClockAlignmentWarning, load_clip

    quiet = args.json
    timings: dict[str, float] = {}
    source = resolve_model(args.model)  # a bad --model fails before any slow loading
    cascade = None
    what = f"loading model {args.model} and the clip" if source is not None else "loading the clip"
    with _Spinner(what, quiet):
        if source is not None:
            t0 = time.perf_counter()
            cascade = Cascade.from_pretrained(args.model, device=args.device, dtype=args.dtype)
            timings["load_model"] = time.perf_counter() - t0
            logger.info("loaded %r in %.1f s", cascade, timings["load_model"])
            if args.num_frames is not None and args.num_frames != cascade.num_frames:
                raise InputError(f"--num-frames {args.num_frames}: the model {args.model!r} takes "
                                 f"{cascade.num_frames} frames")
        num_frames = cascade.num_frames if cascade is not None else (args.num_frames or 8)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ClockAlignmentWarning)  # said below, naming the flag
            clip = load_clip(
                args.events, args.video, start_us=args.start_us, end_us=args.end_us,
                video_offset_us=args.video_offset_us, num_frames=num_frames, allow_pickle=args.allow_pickle,
                events_topic=args.events_topic, video_topic=args.video_topic,
                sort=args.sort_events, sensor_size=args.sensor_size,
            )
        timings["load_clip"] = time.perf_counter() - t0
        logger.info("loaded the clip in %.1f s: %d events, %d frames, window [%d, %d) us", timings["load_clip"],
                    len(clip.events), len(clip.video), clip.start_us, clip.end_us)
    if clip.alignment.automatic:
        print(clip.alignment.message(override="--video-offset-us"), file=sys.stderr, flush=True)
    inputs = {
        "events": str(args.events), "video": str(args.video), "prompt": args.prompt,
        "window_us": [clip.start_us, clip.end_us], "num_events": len(clip.events),
        "num_frames": len(clip.video), "video_offset_us": clip.alignment.video_offset_us,
        "alignment": clip.alignment.to_dict(),
    }
    result: dict[str, Any] = {"model": args.model, "mode": args.mode, "inputs": inputs, "timings_s": timings}
    if cascade is None:
        # No bundled demo cascade installed: run the data layer to the point the models would start.
        from evcascade.events import event_images

        t1 = time.perf_counter()
        images = event_images(clip.events, num_images=5)
        timings["event_images"] = time.perf_counter() - t1
        result.update(text=None, token_ids=[], note=(
            "data layer only: no bundled demo cascade is installed; pass --model PRESET_OR_FOLDER for a real one"),
            data_layer={"event_images_shape": list(images.shape), "key_frame_shape": list(clip.video.key_frame.shape)})
        return result
    options: dict[str, Any] = {"do_sample": args.do_sample, "temperature": args.temperature, "top_p": args.top_p,
                               "seed": args.seed}
    if args.acceptance != "lossless":
        options.update(acceptance=args.acceptance, lenience=DEFAULT_LENIENCE if args.lenience is None else args.lenience)
    if args.max_new_tokens is not None or "max_new_tokens" not in cascade.generation_defaults:
        options["max_new_tokens"] = args.max_new_tokens or 32
    streaming = not quiet
    started = []  # "answer: " goes out with the first piece, so an early error leaves stdout clean
    # the provisional answer is drafted beside the verified decode: pieces that beat its line wait for it
    printing, state = threading.Lock(), {"held": [] if args.provisional else None}

    def emit(piece: str) -> None:
        print(piece if started else f"answer: {piece}", end="", flush=True)
        started.append(True)

    def show(piece: str) -> None:
        with printing:
            if state["held"] is not None:
                state["held"].append(piece)
            else:
                emit(piece)

    def show_provisional(early) -> None:
        with printing:
            if streaming:
                print(f"provisional ({early.level}, {early.latency_s * 1000:.0f} ms, unverified): {early.text}",
                      flush=True)
            held, state["held"] = state["held"], None
            for piece in held:
                emit(piece)

    answer = cascade.generate(prompt=args.prompt, clip=clip, mode=args.mode, on_text=show if streaming else None,
                              provisional=show_provisional if args.provisional else None, **options)
    if streaming:
        print("" if started else "answer: ", flush=True)
    if answer.provisional is not None:
        early = answer.provisional
        result["provisional"] = early.to_dict()
        verdict = ("confirmed the provisional answer" if early.confirmed else
                   f"differs from the provisional answer from token {early.first_difference_token}"
                   + (f" (character {early.first_difference_char})" if early.first_difference_char is not None else ""))
        result["verdict"] = f"verified in {answer.latency_s * 1000:.0f} ms: {verdict}"
    timings["generate"] = answer.stats.total_s
    result.update(text=answer.text, token_ids=answer.token_ids, token_sources=answer.token_sources,
                  stats=answer.stats.to_dict(),
                  summary=answer.stats.summary(), streamed=streaming)
    return result


def print_human(result: dict[str, Any], show_stats: bool) -> None:
    inputs = result["inputs"]
    if result.get("text") is not None and not result.get("streamed"):
        print(f"answer: {result['text']}")
    start_us, end_us = inputs["window_us"]
    print(f"clip: {inputs['num_events']} events, {inputs['num_frames']} frames, window [{start_us}, {end_us}) us")
    if result.get("note"):
        print(f"note: {result['note']}")
        dl = result["data_layer"]
        print(f"event images {dl['event_images_shape']}, key frame {dl['key_frame_shape']}")
    if result.get("verdict"):
        print(result["verdict"])
    if result.get("summary"):
        print(result["summary"])
    if show_stats and result.get("stats"):
        print(json.dumps(result["stats"], indent=2))
    print("timings: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result["timings_s"].items()))


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the command; returns the exit code (see the module docstring)."""
    from evcascade.logs import configured, resolve_level

    debug = bool(os.environ.get("EVCASCADE_DEBUG"))
    try:
        args = build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
        level = resolve_level(args.verbose)
        validate(args)
    except InputError as exc:
        print(f"evcascade: error: {cli_wording(str(exc))}", file=sys.stderr)
        return 2
    with configured(level):
        try:
            result = run(args)
            if args.json:
                print(json.dumps(result, default=str))
            else:
                print_human(result, args.stats)
            sys.stdout.flush()
        except BrokenPipeError:
            return _stdout_closed()
        except InputError as exc:
            print(f"evcascade: error: {cli_wording(str(exc))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("evcascade: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # an internal error: a bug, not a user mistake
            if debug or level <= logging.DEBUG:
                traceback.print_exc()
            print(f"evcascade: internal error: {type(exc).__name__}: {exc} (set EVCASCADE_DEBUG=1 for the traceback)",
                  file=sys.stderr)
            return 1
    return 0


def _stdout_closed() -> int:
    """The reader of our stdout went away (``| head -1``): not an error. Point stdout at devnull so the
    interpreter's final flush does not raise again (the recipe in Python's ``signal`` docs), exit quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
