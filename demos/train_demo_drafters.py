"""Train the bundled demo cascade's drafters (L1: events, L2: events + key frame) against the demo target.

It runs the training issue's stages, exactly the commands a user would type, then lays the results out as
levels of the bundled cascade::

    python data/make_world.py --out runs/world_demo --num-scenes 2000 --seed 0          # the world (if missing)
    python -m evcascade.train cache   --config configs/train/cache_demo.yaml              # target's answers + features
    python -m evcascade.train align   --config configs/train/align_demo.yaml              # encoder, alignment, refiner
    python -m evcascade.train distill --config configs/train/distill_demo_events.yaml     # L1 draft LM
    python -m evcascade.train distill --config configs/train/distill_demo_frame.yaml      # L2 draft LM
    -> <cascade>/levels/events/        event_encoder/ alignment/ draft_lm/
       <cascade>/levels/events_frame/  event_encoder/ alignment/ frame_refiner/ draft_lm/
       <cascade>/cascade.json          levels: ngram, events, events_frame

Reproduce the shipped drafters (on one core of a 2-core CPU, about an hour in all)::

    python demos/train_demo_drafters.py --cascade evcascade/assets/demo_cascade

Stages whose output exists are skipped (the cache also resumes), so a run can be continued; ``--redo STAGE``
runs a stage again. ``--align-steps`` / ``--distill-steps`` override the configs' ``trainer.max_steps``.

The paraphrase world (``evcascade.data.questions``: the same scenes, a target that says each answer in any of its
phrasings) is ``--variant paraphrase``: it fine-tunes the bundled target on every phrasing (video tower frozen),
caches its answers, fine-tunes the bundled L1 and L2 draft LMs on them (the bundled alignment is reused: the video
features did not change) and assembles a second cascade::

    python demos/train_demo_drafters.py --variant paraphrase --cascade runs/paraphrase/cascade

The windows world (detailed captions, questions about windows of 50 ms - 1.5 s: ``evcascade.data.questions``) is
``--variant windows``, the bundled cascade since: a world whose manifest asks about each scene's whole clip and one
window of it, the bundled target fine-tuned on it (video tower frozen, ``--phrasing skewed``, the tokenizer grown by
the detailed captions' words and the embeddings with ``resize_token_embeddings``), the bundled draft LMs grown the
same way as warm starts (stage ``warm``), cache, distill L1 and L2, assemble; then copy the cascade over the bundle::

    python demos/train_demo_drafters.py --variant windows --world-scenes 400 --distill-steps 1000 --eval-scenes 20
    cp -r runs/windows/cascade/. evcascade/assets/demo_cascade/     # only once it beats the bundle (train/README.md)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "train"
STAGES = ("world", "target", "warm", "cache", "align", "distill_events", "distill_frame", "assemble", "evaluate")
HELD_OUT_SEED = 1_000_003  # the held-out scenes of demos/train_demo_target.py (its EVAL_SEED_OFFSET from seed 0)
PIECES = {  # level name -> the align pieces it uses
    "events": ("event_encoder", "alignment"),
    "events_frame": ("event_encoder", "alignment", "frame_refiner"),
}
DISTILL_STAGES = {"distill_events": "events", "distill_frame": "events_frame"}  # stage -> level it trains
BUNDLED_TARGET = ROOT / "evcascade" / "assets" / "demo_cascade" / "target"
VARIANTS = {  # configs per variant: cache, align (None: the distill configs' align_dir exists already), distills
    "demo": {"cascade": "evcascade/assets/demo_cascade", "cache": "cache_demo.yaml", "align": "align_demo.yaml",
             "levels": {"events": "distill_demo_events.yaml", "events_frame": "distill_demo_frame.yaml"},
             "description": "The demo cascade: a 2-frame VideoLlava trained on the synthetic world "
                            "(demos/train_demo_target.py), verifying prompt-lookup drafts, an L1 event drafter and "
                            "an L2 event + key-frame drafter (demos/train_demo_drafters.py)."},
    "paraphrase": {"cascade": "runs/paraphrase/cascade", "cache": "cache_paraphrase.yaml", "align": None,
                   "levels": {"events": "distill_paraphrase_events.yaml",
                              "events_frame": "distill_paraphrase_frame.yaml"},
                   "description": "The paraphrase-world cascade: the demo target fine-tuned to say each answer in "
                                  "any of its phrasings (evcascade.data.questions), verifying prompt-lookup drafts "
                                  "and the demo L1 / L2 drafters fine-tuned on its answers "
                                  "(demos/train_demo_drafters.py --variant paraphrase)."},
    "windows": {"cascade": "runs/windows/cascade", "cache": "cache_windows.yaml", "align": None,
                "world_windows_per_scene": 1, "warm": "runs/windows/warm", "max_new_tokens": 64,
                "levels": {"events": "distill_windows_events.yaml", "events_frame": "distill_windows_frame.yaml"},
                "description": "The demo cascade: a 2-frame VideoLlava trained on the synthetic world "
                               "(demos/train_demo_target.py), fine-tuned on detailed captions and on windows of "
                               "50 ms - 1.5 s, verifying prompt-lookup drafts, an L1 event drafter and an L2 event + "
                               "key-frame drafter (demos/train_demo_drafters.py --variant windows)."},
}
TARGET_ARGS = {  # each variant's fine-tune(s) of the bundled target, in order; the last one writes <cascade>/target
    "paraphrase": [(
        "--init", str(BUNDLED_TARGET), "--freeze-vision", "--phrasing", "uniform", "--vision-warmup-fraction", "0",
        "--curriculum-fraction", "0", "--vision-weight", "0", "--scene-weight", "0", "--lr", "5e-4",
        "--warmup-steps", "50", "--train-scenes", "4000", "--no-mp4-eval", "--minutes", "12",
    )],
    "windows": [(  # from the first bundled target (57 words): the tokenizer grows, the LM learns windows and details
        "--init", str(BUNDLED_TARGET), "--freeze-vision", "--phrasing", "skewed", "--windows-per-scene", "3",
        "--vision-warmup-fraction", "0", "--curriculum-fraction", "0", "--vision-weight", "0", "--scene-weight",
        "0.5", "--lr", "8e-4", "--warmup-steps", "100", "--train-scenes", "4000", "--no-mp4-eval", "--minutes", "25",
        "--out", "runs/windows/target_stage1",
    ), (  # then more whole clips (half the windows), where "far" lives: stage 1 said "a little" for most fast objects
        "--init", "runs/windows/target_stage1", "--freeze-vision", "--phrasing", "skewed", "--windows-per-scene", "2",
        "--full-window-probability", "0.5", "--vision-warmup-fraction", "0", "--curriculum-fraction", "0",
        "--vision-weight", "0", "--scene-weight", "0.3", "--lr", "4e-4", "--warmup-steps", "50", "--train-scenes",
        "2000", "--no-mp4-eval", "--minutes", "10",
    )],
}


def _config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def _train(stage: str, config: str, max_steps: int | None) -> None:
    from evcascade.train.cli import main as train_main

    args = [stage, "--config", str(CONFIGS / config)]
    if max_steps is not None:
        args.append(f"--trainer.max_steps={max_steps}")
    if train_main(args) != 0:
        raise SystemExit(f"`python -m evcascade.train {' '.join(args)}` failed")


def assemble(cascade_dir: Path, variant: str = "demo") -> dict:
    """Copy each level's pieces (align export + its distilled draft LM) into ``cascade_dir/levels/<name>`` and
    write ``cascade.json`` (a new one if there is none) with the n-gram level first, then L1 and L2."""
    spec_path = cascade_dir / "cascade.json"
    spec = (json.loads(spec_path.read_text()) if spec_path.is_file() else
            {"format": "evcascade.cascade", "version": 1, "name": variant, "target": "target",
             "generation": {"max_new_tokens": VARIANTS[variant].get("max_new_tokens", 48)}})
    levels = [{"type": "ngram", "name": "ngram"}]
    for name, config in VARIANTS[variant]["levels"].items():
        model = _config(config)["model"]
        distill_export, align_export = Path(model["export_dir"]), Path(model["align_dir"])
        folder = cascade_dir / "levels" / name
        if folder.exists():
            shutil.rmtree(folder)
        for piece in PIECES[name]:
            shutil.copytree(align_export / piece, folder / piece)
        shutil.copytree(distill_export / "draft_lm", folder / "draft_lm")
        level = {"type": "event_drafter", "name": name, "path": f"levels/{name}"}
        record = json.loads((distill_export / "export.json").read_text())["pieces"]["draft_lm"]
        if "val_acceptance" in record:  # the policy's starting estimate: drafts from the first answer on
            level["prior_acceptance"] = round(record["val_acceptance"], 3)
        levels.append(level)
    spec["levels"] = levels
    # the short answers run 7-17 tokens: a block of 8 covers most in the prefill's judgement alone
    spec.setdefault("generation", {})["draft_k"] = 8
    spec["description"] = VARIANTS[variant]["description"]
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    return spec


def evaluate(cascade_dir: Path, num_scenes: int, out_dir: Path = Path("runs/world_heldout")) -> dict:
    """Accuracy of the cascade's greedy answers on held-out scenes written as files (mp4, events.h5), per question
    kind and per window length (``evcascade.demo.evaluation.evaluate_cascade``): each scene's whole clip and two
    windows of it; writes ``cascade_eval.json`` into the cascade folder and prints the tables."""
    import time


    from evcascade.bench.common import environment_info, format_table
    from evcascade.cascade import Cascade
    from evcascade.data.layout import write_world
    from evcascade.data.world import WorldConfig, scene_seeds
    from evcascade.demo.evaluation import evaluate_cascade

    manifest = write_world(out_dir, num_scenes, HELD_OUT_SEED, WorldConfig(), windows_per_scene=2, progress=True)
    overlap = set(scene_seeds(HELD_OUT_SEED, num_scenes)) & set(scene_seeds(0, 20_000))
    if overlap:
        raise SystemExit(f"held-out seeds {sorted(overlap)} are training seeds")
    cascade = Cascade.from_pretrained(cascade_dir)
    start = time.perf_counter()
    summary, records = evaluate_cascade(cascade, manifest, progress=True)
    kinds = [k for k in summary["per_kind"] if k != "mean"]
    print(format_table([{"kind": k, **summary["per_kind"][k], "tau": round(summary["tau"].get(k, float("nan")), 2),
                         "tokens": round(summary["tokens"].get(k, float("nan")), 1)} for k in kinds]))
    print(format_table([{"window": name, **{k: round(t[k]["accuracy"], 3) for k in kinds if k in t},
                         "questions": sum(t[k]["total"] for k in kinds if k in t)}
                        for name, t in summary["per_window"].items()]))
    report = {**summary, "questions": len(records), "held_out_scenes": num_scenes, "held_out_seed": HELD_OUT_SEED,
              "clips": len({r["id"] for r in records}), "seconds": time.perf_counter() - start,
              "command": f"python demos/train_demo_drafters.py --variant windows --only evaluate --eval-scenes {num_scenes}",
              "environment": environment_info("cpu"),
              "wrong_examples": [r for r in records if not r["correct"]][:30]}
    (cascade_dir / "cascade_eval.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"mean over kinds {summary['per_kind']['mean']:.3f}; wrote {cascade_dir / 'cascade_eval.json'}")
    return report


def warm_start(out: Path, target: Path) -> None:
    """The bundled drafters as warm starts for a target whose vocabulary grew: each level's draft LM with its
    embeddings resized to the target tokenizer's size (``resize_token_embeddings``: trained rows kept, new rows
    drawn around their mean), and the bundled alignment pieces copied as an align export (``out/align``)."""
    from transformers import AutoTokenizer

    from evcascade.models import DraftLM

    bundled = BUNDLED_TARGET.parent / "levels"
    vocab_size = len(AutoTokenizer.from_pretrained(target))
    for level in PIECES:
        draft = DraftLM.from_pretrained(bundled / level / "draft_lm")
        draft.resize_token_embeddings(vocab_size)
        draft.save_pretrained(out / level / "draft_lm")
    for piece in PIECES["events_frame"]:
        if (out / "align" / piece).exists():
            shutil.rmtree(out / "align" / piece)
        shutil.copytree(bundled / "events_frame" / piece, out / "align" / piece)
    print(f"warm starts in {out}: draft LMs at vocabulary {vocab_size}, the bundled alignment")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cascade", type=Path, default=None,
                        help="the cascade folder whose target the drafters imitate (levels are written into it); "
                             "default: the variant's own (evcascade/assets/demo_cascade, runs/paraphrase/cascade)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="demo",
                        help="demo: the bundled cascade's drafters; paraphrase: the paraphrase world's cascade")
    parser.add_argument("--world-scenes", type=int, default=2000, help="training scenes, if the world is missing")
    parser.add_argument("--eval-scenes", type=int, default=40,
                        help="held-out scenes of the evaluate stage (each: the whole clip and two windows)")
    parser.add_argument("--align-steps", type=int, help="override align_demo.yaml's trainer.max_steps")
    parser.add_argument("--distill-steps", type=int, help="override the distill configs' trainer.max_steps")
    parser.add_argument("--redo", nargs="*", default=[], choices=STAGES, help="run these stages even if done")
    parser.add_argument("--only", nargs="*", choices=STAGES, help="run only these stages")
    args = parser.parse_args(argv)

    variant = VARIANTS[args.variant]
    if args.cascade is None:
        args.cascade = Path(variant["cascade"])
    manifest = Path(_config(variant["cache"])["manifest"])
    done = {
        "world": manifest.is_file(),
        # the demo variant's target is trained by demos/train_demo_target.py; the paraphrase one is fine-tuned here
        "target": args.variant == "demo" or (args.cascade / "target" / "config.json").is_file(),
        "warm": "warm" not in variant or all((Path(variant["warm"]) / level / "draft_lm").is_dir()
                                             for level in PIECES),
        "cache": False,  # resumable: a finished cache is a quick no-op
        "align": variant["align"] is None or (Path(_config(variant["align"])["model"]["export_dir"]) / "alignment").is_dir(),
        **{stage: (Path(_config(variant["levels"][level])["model"]["export_dir"]) / "draft_lm").is_dir()
           for stage, level in DISTILL_STAGES.items()},
        "assemble": False,
        "evaluate": "world_windows_per_scene" not in variant,  # the windows world's cascade is evaluated here
    }
    for stage in STAGES:
        if (args.only and stage not in args.only) or (done[stage] and stage not in args.redo):
            print(f"[{stage}] skipped ({'not asked' if args.only and stage not in args.only else 'done'})")
            continue
        print(f"[{stage}]", flush=True)
        if stage == "world":
            from evcascade.data.layout import write_world
            from evcascade.data.world import WorldConfig

            write_world(manifest.parent, args.world_scenes, 0, WorldConfig(),
                        windows_per_scene=variant.get("world_windows_per_scene", 0), progress=True)
        elif stage == "target":
            import subprocess

            stages = TARGET_ARGS[args.variant]
            for i, stage_args in enumerate(stages):
                out = ("--out", str(args.cascade / "target")) if i == len(stages) - 1 else ()
                command = [sys.executable, str(ROOT / "demos" / "train_demo_target.py"), *stage_args, *out]
                if subprocess.run(command).returncode != 0:
                    raise SystemExit(f"`{' '.join(command)}` failed")
        elif stage == "warm":
            warm_start(Path(variant["warm"]), args.cascade / "target")
        elif stage == "cache":
            from evcascade.train.cli import main as train_main

            if train_main(["cache", "--config", str(CONFIGS / variant["cache"]),
                           f"--target={args.cascade / 'target'}"]) != 0:
                raise SystemExit("the cache stage failed")
        elif stage == "align":
            _train("align", variant["align"], args.align_steps)
        elif stage in DISTILL_STAGES:
            _train("distill", variant["levels"][DISTILL_STAGES[stage]], args.distill_steps)
        elif stage == "evaluate":
            evaluate(args.cascade, args.eval_scenes)
        else:
            spec = assemble(args.cascade, args.variant)
            print(f"wrote {args.cascade / 'cascade.json'}: levels {[level['name'] for level in spec['levels']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
