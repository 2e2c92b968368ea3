"""Train, evaluate and save the demo target: a small real Video-LLaVA for the synthetic world.

Reproduce the shipped target (``evcascade/assets/demo_cascade/target`` + ``target_eval.json``)::

    python demos/train_demo_target.py --out evcascade/assets/demo_cascade/target --minutes 55 --seed 0 --threads 1

(shipped: 15 404 steps in 55 min on one busy core of a 2-core CPU; exact match >= 0.997 for every question
kind on 2 391 questions about 300 held-out scenes, the same on those clips written as mp4 and decoded)

The paraphrase-world target (``evcascade.data.questions``) is the shipped one fine-tuned on every phrasing of
every answer, its video tower and projector frozen (so the drafters' alignment to its video features still holds)::

    python demos/train_demo_target.py --init evcascade/assets/demo_cascade/target --freeze-vision \
        --phrasing uniform --vision-warmup-fraction 0 --curriculum-fraction 0 --vision-weight 0 --scene-weight 0 \
        --lr 5e-4 --warmup-steps 50 --train-scenes 4000 --no-mp4-eval --minutes 12 --out runs/paraphrase/target

The windows-world target (detailed captions, questions about windows of 50 ms - 1.5 s; ``--windows-per-scene``)
is the shipped one fine-tuned in two stages, video tower frozen, the tokenizer grown by the detailed captions'
words and the embeddings with ``resize_token_embeddings`` (``demos/train_demo_drafters.py``'s ``TARGET_ARGS``
hold both commands; figures in ``train/README.md``)::

    python demos/train_demo_target.py --init evcascade/assets/demo_cascade/target --freeze-vision --phrasing skewed \
        --windows-per-scene 3 --vision-warmup-fraction 0 --curriculum-fraction 0 --vision-weight 0 --scene-weight 0.5 \
        --lr 8e-4 --warmup-steps 100 --train-scenes 4000 --no-mp4-eval --minutes 25 --out runs/windows/target_stage1
    python demos/train_demo_target.py --init runs/windows/target_stage1 --freeze-vision --phrasing skewed \
        --windows-per-scene 2 --full-window-probability 0.5 --vision-warmup-fraction 0 --curriculum-fraction 0 \
        --vision-weight 0 --scene-weight 0.3 --lr 4e-4 --warmup-steps 50 --train-scenes 2000 --no-mp4-eval \
        --minutes 10 --out runs/windows/cascade/target

With ``--windows-per-scene`` the held-out scenes are also asked about one shorter window each, and the table per
window length (``evcascade.demo.evaluation.WINDOW_BINS_MS``) is printed and saved (``per_window``).

What it does: render a pool of training scenes (cached under ``--cache-dir``), train the VideoLlava with
the scene-graph recipe of ``evcascade.demo.target`` for ``--minutes`` of wall time (a tqdm bar shows the
losses), then answer every question of ``--eval-scenes`` held-out scenes (seeds disjoint from training)
with greedy ``generate`` and print the exact-match table per question kind. It writes the model
(safetensors) and the world tokenizer into ``--out`` and the table, per-question records excluded, into
``<out>_eval.json`` next to it. Every field of ``DemoTargetConfig`` and ``RecipeConfig`` is a flag
(``--text-layers 4``, ``--lr 2e-3``, ...). The run is time-budgeted, so the step count (and so the
weights) depends on the machine's speed; the eval JSON records the steps taken.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

EVAL_SEED_OFFSET = 1_000_003  # held-out scenes come from a different set seed (and are checked disjoint)


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = field.default
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(default), default=default,
                            help=f"{cls.__name__}.{field.name} (default {default})")


def _from_args(cls, args: argparse.Namespace, skip: tuple[str, ...] = ()):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in skip})


def parse_args(argv=None) -> argparse.Namespace:
    from evcascade.demo.target import DemoTargetConfig, RecipeConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the model and tokenizer")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock training budget")
    parser.add_argument("--seed", type=int, default=0, help="seeds the scenes, the weights and the batches")
    parser.add_argument("--train-scenes", type=int, default=20_000, help="scenes in the training pool")
    parser.add_argument("--eval-scenes", type=int, default=300, help="held-out scenes (every question of each)")
    parser.add_argument("--windows-per-scene", type=int, default=0,
                        help="train on this many windows of each training scene (sample_window_us: the whole clip "
                             "with --full-window-probability, else 50 ms - 1.5 s), and evaluate each held-out scene "
                             "on one more window besides the whole clip; 0: whole clips only")
    parser.add_argument("--full-window-probability", type=float, default=0.25,
                        help="share of training windows that are the whole clip")
    parser.add_argument("--no-mp4-eval", action="store_true",
                        help="skip the second evaluation on the held-out clips written as mp4 and decoded")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this saved demo target (its sizes, not the size flags) instead of random weights")
    parser.add_argument("--freeze-vision", action="store_true",
                        help="train the language model only: video tower and projector stay as they are")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/evcascade_demo_cache"),
                        help="where rendered scene pools are cached")
    _add_dataclass_flags(parser, DemoTargetConfig)
    _add_dataclass_flags(parser, RecipeConfig, skip=("kind_weights",))
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    import torch
    from tqdm import tqdm

    from evcascade.bench.common import environment_info, format_table
    from evcascade.data.layout import config_dict
    import numpy as np

    from evcascade.data.world import WorldConfig, sample_window_us, scene_seeds
    from evcascade.demo.evaluation import accuracy_table, evaluate_target, window_table
    from evcascade.demo.scenes import load_or_render_pool, mp4_pool
    from evcascade.demo.supervision import SceneGraphHeads
    from evcascade.demo.target import (
        DemoTargetConfig,
        ExampleEncoder,
        RecipeConfig,
        build_demo_target,
        demo_config_of,
        load_demo_target,
        save_demo_target,
        train_target,
    )
    from evcascade.demo.tokenizer import world_tokenizer

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model_config = _from_args(DemoTargetConfig, args)
    recipe = _from_args(RecipeConfig, args, skip=("kind_weights",))
    world = WorldConfig()

    train_seeds = scene_seeds(args.seed, args.train_scenes)
    taken = set(train_seeds)
    eval_seeds = [s for s in scene_seeds(args.seed + EVAL_SEED_OFFSET, args.eval_scenes + 16) if s not in taken]
    eval_seeds = eval_seeds[: args.eval_scenes]
    tag = f"s{args.seed}_t{model_config.num_frames}"
    train_windows = None
    if args.windows_per_scene > 0:  # each scene seen through several windows, drawn from one seeded stream
        rng = np.random.default_rng([args.seed, 7])
        train_seeds = [s for s in train_seeds for _ in range(args.windows_per_scene)]
        train_windows = [sample_window_us(rng, world, full_probability=args.full_window_probability)
                         for _ in train_seeds]
        tag += f"_w{args.windows_per_scene}_f{args.full_window_probability:g}"
    train_pool = load_or_render_pool(args.cache_dir / f"train_{tag}.npz", train_seeds, world,
                                     model_config.num_frames, windows_us=train_windows, progress=True)
    eval_pool = load_or_render_pool(args.cache_dir / f"eval_s{args.seed}_t{model_config.num_frames}.npz", eval_seeds,
                                    world, model_config.num_frames, progress=True)
    window_pool = None
    if args.windows_per_scene > 0:  # the held-out scenes again, each through one window shorter than the clip
        rng = np.random.default_rng([args.seed + EVAL_SEED_OFFSET, 7])
        eval_windows = [sample_window_us(rng, world, full_probability=0.0) for _ in eval_seeds]
        window_pool = load_or_render_pool(args.cache_dir / f"evalwin_s{args.seed}_t{model_config.num_frames}.npz",
                                          eval_seeds, world, model_config.num_frames, windows_us=eval_windows,
                                          progress=True)

    tokenizer = world_tokenizer()
    if args.init is not None:
        model = load_demo_target(args.init)
        model_config = dataclasses.replace(model_config, **demo_config_of(model.config))
        if model.get_input_embeddings().num_embeddings < len(tokenizer):  # the world grew words: append their rows
            model.resize_token_embeddings(len(tokenizer))
    else:
        model = build_demo_target(tokenizer, model_config, seed=args.seed)
    if args.freeze_vision:
        for module in (model.model.video_tower, model.model.image_tower, model.model.multi_modal_projector):
            module.requires_grad_(False)
    heads = SceneGraphHeads(model_config.vision_hidden_size, model_config.text_hidden_size)
    encoder = ExampleEncoder(tokenizer, model.config)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"demo target: {num_params / 1e6:.2f}M parameters, {model.config.video_seq_length} visual tokens; "
          f"{len(train_pool)} training scenes, {len(eval_pool)} held-out scenes", flush=True)

    bar = tqdm(total=int(args.minutes * 60), desc="train", unit="s", bar_format="{l_bar}{bar}| {n}/{total}s {postfix}")

    def on_step(step: int, progress: float, losses: dict) -> None:
        bar.n = int(progress * args.minutes * 60)
        bar.set_postfix(step=step, **{k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
        bar.refresh()

    summary = train_target(model, heads, encoder, train_pool, minutes=args.minutes, seed=args.seed, recipe=recipe,
                           on_step=on_step)
    bar.close()
    start = time.perf_counter()
    table, records = evaluate_target(model, encoder, eval_pool)
    window_records = []
    if window_pool is not None:
        _, window_records = evaluate_target(model, encoder, window_pool)
    mp4_table = None
    if not args.no_mp4_eval:  # what users feed: clips stored as mp4 and decoded
        mp4_table, _ = evaluate_target(model, encoder, mp4_pool(eval_pool, world, progress=True))
    eval_seconds = time.perf_counter() - start

    rows = [{"kind": k, "accuracy": v["accuracy"], "correct": v["correct"], "total": v["total"],
             **({"accuracy_mp4": mp4_table[k]["accuracy"]} if mp4_table else {})}
            for k, v in table.items() if k != "mean"]
    print(format_table(rows))
    print(f"mean over kinds {table['mean']:.3f}" + (f" (mp4 {mp4_table['mean']:.3f})" if mp4_table else "")
          + f"; {summary['steps']} steps in {summary['seconds'] / 60:.1f} min")
    per_window = window_table(records + window_records) if window_records else None
    if per_window:
        kinds = [k for k in accuracy_table(records + window_records) if k != "mean"]
        print("accuracy per window length (the whole clips and one shorter window per held-out scene):")
        print(format_table([{"window": name, **{k: round(t[k]["accuracy"], 3) for k in kinds if k in t},
                             "questions": sum(t[k]["total"] for k in kinds if k in t)}
                            for name, t in per_window.items()]))

    args.out.mkdir(parents=True, exist_ok=True)
    save_demo_target(model, tokenizer, args.out)
    report = {
        "per_kind": table,
        "per_kind_mp4": mp4_table,
        "per_kind_windows": accuracy_table(window_records) if window_records else None,
        "per_window": per_window,
        "windows_per_scene": args.windows_per_scene,
        "full_window_probability": args.full_window_probability,
        "questions": len(records),
        "window_questions": len(window_records),
        "held_out_scenes": len(eval_pool),
        "command": "python demos/train_demo_target.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "minutes": args.minutes,
        "seed": args.seed,
        "parameters": num_params,
        "steps": summary["steps"],
        "final_losses": summary["final_losses"],
        "eval_seconds": eval_seconds,
        "model_config": dataclasses.asdict(model_config),
        "init": str(args.init) if args.init is not None else None,
        "freeze_vision": args.freeze_vision,
        "recipe": dataclasses.asdict(recipe),
        "world_config": config_dict(world),
        "train_scenes": len(train_pool),
        "environment": environment_info("cpu"),
        "wrong_examples": [r for r in records + window_records if not r["correct"]][:30],
    }
    eval_path = args.out.parent / f"{args.out.name}_eval.json"
    eval_path.write_text(json.dumps(report, indent=1))
    print(f"saved {args.out} and {eval_path}")
    return report


if __name__ == "__main__":
    main()
