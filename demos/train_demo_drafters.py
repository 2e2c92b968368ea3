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
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"
STAGES = ("world", "cache", "align", "distill_events", "distill_frame", "assemble")
LEVELS = {  # level name -> (distill config, the align pieces it uses)
    "events": ("distill_demo_events.yaml", ("event_encoder", "alignment")),
    "events_frame": ("distill_demo_frame.yaml", ("event_encoder", "alignment", "frame_refiner")),
}
DISTILL_STAGES = {"distill_events": "events", "distill_frame": "events_frame"}  # stage -> level it trains


def _config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def _train(stage: str, config: str, max_steps: int | None) -> None:
    from evcascade.train.cli import main as train_main

    args = [stage, "--config", str(CONFIGS / config)]
    if max_steps is not None:
        args.append(f"--trainer.max_steps={max_steps}")
    if train_main(args) != 0:
        raise SystemExit(f"`python -m evcascade.train {' '.join(args)}` failed")


def assemble(cascade_dir: Path) -> dict:
    """Copy each level's pieces (align export + its distilled draft LM) into ``cascade_dir/levels/<name>`` and
    write ``cascade.json`` with the n-gram level first, then L1 and L2."""
    align_export = Path(_config("align_demo.yaml")["model"]["export_dir"])
    spec_path = cascade_dir / "cascade.json"
    spec = json.loads(spec_path.read_text())
    levels = [{"type": "ngram", "name": "ngram"}]
    for name, (config, pieces) in LEVELS.items():
        distill_export = Path(_config(config)["model"]["export_dir"])
        folder = cascade_dir / "levels" / name
        if folder.exists():
            shutil.rmtree(folder)
        for piece in pieces:
            shutil.copytree(align_export / piece, folder / piece)
        shutil.copytree(distill_export / "draft_lm", folder / "draft_lm")
        level = {"type": "event_drafter", "name": name, "path": f"levels/{name}"}
        record = json.loads((distill_export / "export.json").read_text())["pieces"]["draft_lm"]
        if "val_acceptance" in record:  # the policy's starting estimate: drafts from the first answer on
            level["prior_acceptance"] = round(record["val_acceptance"], 3)
        levels.append(level)
    spec["levels"] = levels
    # the world's answers run 7-17 tokens: a block of 8 covers most in the prefill's judgement alone
    spec.setdefault("generation", {})["draft_k"] = 8
    spec["description"] = (
        "The demo cascade: a 2-frame VideoLlava trained on the synthetic world (demos/train_demo_target.py), "
        "verifying prompt-lookup drafts, an L1 event drafter and an L2 event + key-frame drafter "
        "(demos/train_demo_drafters.py).")
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cascade", type=Path, default=Path("evcascade/assets/demo_cascade"),
                        help="the cascade folder whose target the drafters imitate (levels are written into it)")
    parser.add_argument("--world-scenes", type=int, default=2000, help="training scenes, if the world is missing")
    parser.add_argument("--align-steps", type=int, help="override align_demo.yaml's trainer.max_steps")
    parser.add_argument("--distill-steps", type=int, help="override the distill configs' trainer.max_steps")
    parser.add_argument("--redo", nargs="*", default=[], choices=STAGES, help="run these stages even if done")
    parser.add_argument("--only", nargs="*", choices=STAGES, help="run only these stages")
    args = parser.parse_args(argv)

    cache = _config("cache_demo.yaml")
    manifest = Path(cache["manifest"])
    done = {
        "world": manifest.is_file(),
        "cache": False,  # resumable: a finished cache is a quick no-op
        "align": (Path(_config("align_demo.yaml")["model"]["export_dir"]) / "alignment").is_dir(),
        **{stage: (Path(_config(LEVELS[level][0])["model"]["export_dir"]) / "draft_lm").is_dir()
           for stage, level in DISTILL_STAGES.items()},
        "assemble": False,
    }
    for stage in STAGES:
        if (args.only and stage not in args.only) or (done[stage] and stage not in args.redo):
            print(f"[{stage}] skipped ({'not asked' if args.only and stage not in args.only else 'done'})")
            continue
        print(f"[{stage}]", flush=True)
        if stage == "world":
            from evcascade.data.layout import write_world
            from evcascade.data.world import WorldConfig

            write_world(manifest.parent, args.world_scenes, 0, WorldConfig(), progress=True)
        elif stage == "cache":
            from evcascade.train.cli import main as train_main

            if train_main(["cache", "--config", str(CONFIGS / "cache_demo.yaml"),
                           f"--target={args.cascade / 'target'}"]) != 0:
                raise SystemExit("the cache stage failed")
        elif stage == "align":
            _train("align", "align_demo.yaml", args.align_steps)
        elif stage in DISTILL_STAGES:
            _train("distill", LEVELS[DISTILL_STAGES[stage]][0], args.distill_steps)
        else:
            spec = assemble(args.cascade)
            print(f"wrote {args.cascade / 'cascade.json'}: levels {[level['name'] for level in spec['levels']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
