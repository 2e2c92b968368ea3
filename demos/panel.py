r"""A PNG panel of one answer: event images beside the video frames, the answer with each token coloured by the
level that proposed it, and the speed numbers.

    python demos/panel.py --events evcascade/assets/sample/events.h5 --video evcascade/assets/sample/video.mp4 \
        --prompt "describe the video ." --out docs/demo_panel.png

By default it answers with the bundled demo cascade; ``--model`` takes a preset or a folder written by
``Cascade.save_pretrained``. If no cascade is installed at all it draws the data part only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from evcascade.cascade import Cascade, resolve_model  # noqa: E402
from evcascade.clip import load_clip  # noqa: E402
from evcascade.errors import InputError  # noqa: E402
from evcascade.events import event_images  # noqa: E402
from evcascade.logs import configured, resolve_level  # noqa: E402

LEVEL_COLOURS = ["#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974"]
TARGET_COLOUR = "#bbbbbb"


def token_pieces(tokenizer, token_ids: list[int]) -> list[str]:
    """The text each token adds (incremental decoding keeps word-piece spacing right)."""
    pieces, previous = [], ""
    for i in range(len(token_ids)):
        text = tokenizer.decode(token_ids[: i + 1], skip_special_tokens=True)
        pieces.append(text[len(previous):] if text.startswith(previous) else text)
        previous = text
    return pieces


def draw_tokens(ax, pieces: list[str], sources: list[str], colours: dict[str, str], width_chars: int = 70) -> None:
    """Lay the answer out as coloured boxes, wrapping at ``width_chars`` characters."""
    ax.set_axis_off()
    x = y = 0
    char_w, line_h = 1.0 / width_chars, 0.16
    for piece, source in zip(pieces, sources):
        text = piece if piece.strip() else "·"
        w = max(1, len(text)) * char_w
        if x + w > 1.0:
            x, y = 0, y + line_h
        ax.add_patch(Rectangle((x, 1 - y - line_h * 0.9), w, line_h * 0.8, color=colours[source], alpha=0.55,
                               transform=ax.transAxes, lw=0))
        ax.text(x + 0.002, 1 - y - line_h * 0.5, text, family="monospace", fontsize=10, va="center",
                transform=ax.transAxes)
        x += w + char_w * 0.3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python demos/panel.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", required=True, help="event file (as python -m evcascade.infer takes)")
    parser.add_argument("--video", required=True, help="video file or DSEC image folder")
    parser.add_argument("--model", default="bundled", help="bundled (default), a preset or a cascade folder")
    parser.add_argument("--prompt", default="what is moving ?", help="the question")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit")
    parser.add_argument("--out", default="panel.png", help="PNG to write")
    args = parser.parse_args(argv)
    with configured(resolve_level(0)):  # quiet like the main command: no weight-loading bars
        return run(args)


def run(args: argparse.Namespace) -> int:
    try:
        cascade = Cascade.from_pretrained(args.model) if resolve_model(args.model) is not None else None
        clip = load_clip(args.events, args.video, num_frames=cascade.num_frames if cascade else 8)
        images = event_images(clip.events, num_images=5).numpy()
        answer = None
        if cascade is not None:
            answer = cascade.generate(prompt=args.prompt, clip=clip, max_new_tokens=args.max_new_tokens)
    except InputError as exc:
        print(f"panel: error: {exc}", file=sys.stderr)
        return 2

    fig = plt.figure(figsize=(12, 7.5 if answer else 4.5))
    rows = 4 if answer else 2
    grid = fig.add_gridspec(rows, max(5, len(clip.video)), height_ratios=[1, 1, 0.9, 0.6][:rows])
    for i, image in enumerate(images):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(image)
        ax.set_title(f"events {i + 1}/5", fontsize=8)
        ax.set_axis_off()
    for i, frame in enumerate(clip.video.frames):
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(frame)
        key = i == len(clip.video) - 1
        ax.set_title(f"{'key ' if key else ''}t={clip.video.timestamps_us[i] / 1000:.0f} ms", fontsize=8,
                     color="crimson" if key else "black")
        ax.set_axis_off()
    title = f"{len(clip.events)} events, window [{clip.start_us}, {clip.end_us}) us"
    if answer is not None:
        names = [level.name for level in cascade.levels]
        colours = {name: LEVEL_COLOURS[i % len(LEVEL_COLOURS)] for i, name in enumerate(names)}
        colours["target"] = TARGET_COLOUR
        ax = fig.add_subplot(grid[2, :])
        draw_tokens(ax, token_pieces(cascade.tokenizer, answer.token_ids), answer.token_sources, colours)
        ax.set_title(f"Q: {args.prompt}", loc="left", fontsize=10)
        stats = answer.stats
        lines = [f"tau {stats.tau:.2f} tokens/target forward   {stats.tokens_per_s:.1f} tokens/s   "
                 f"TTFT {stats.time_to_first_token_s * 1000:.0f} ms   acceptance rule: {stats.acceptance}"]
        lines += [f"{level.name}: drafted {level.drafted}, accepted {level.accepted} "
                  f"({level.acceptance_rate:.0%})" for level in stats.levels]
        ax = fig.add_subplot(grid[3, :])
        ax.set_axis_off()
        ax.text(0, 1, "\n".join(lines), family="monospace", fontsize=9, va="top", transform=ax.transAxes)
        handles = [Rectangle((0, 0), 1, 1, color=c, alpha=0.55) for c in colours.values()]
        fig.legend(handles, [f"drafted by {n}" if n != "target" else "target's own token" for n in colours],
                   loc="lower right", fontsize=8, ncol=len(colours))
        title += f"   model: {args.model}"
    else:
        title += "   (no model: data layer only)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    if answer is not None:  # the figures the panel draws, as text (what the README quotes)
        print(f"answer: {answer.text}\n{answer.stats.summary()}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
