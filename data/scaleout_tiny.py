"""1 vs 2 processes on CPU with the tiny configs: cache windows/s (1 vs 2 workers) and align / distill steps/s and
samples/s (1 process of batch 2B vs DDP 2 x B, the same global batch). Prints a table, writes JSON.

    python data/scaleout_tiny.py --out runs/scaleout_tiny --json docs/bench/train_scaleout_tiny.json

Every row runs the public command (``python -m evcascade.train ...``); training rows are timed by the
`StepTimer` callback (steps after the first 2, validation excluded), cache rows by the command's own timing of
its windows (the target's loading excluded). The load average is recorded with each row: on a shared machine
two processes only help if two cores are free.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from dsec_end_to_end import CONFIGS, PY, REPO, load_average, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/scaleout_tiny"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log = open(out / "log.txt", "w")
    rows = []
    run([PY, REPO / "data" / "make_world.py", "--out", out / "world", "--num-scenes", args.scenes, "--seed", "0",
         "--no-progress"], log)
    manifest = out / "world" / "manifest.json"
    base = [PY, "-m", "evcascade.train", "cache", "--config", CONFIGS / "cache_tiny.yaml", "--manifest", manifest]
    text, _ = run([*base, "--out", out / "cache_1"], log)
    seconds = [float(s) for s in re.findall(r"\(([\d.]+) s, [\d.]+ windows/s\)", text)]
    rows.append({"row": "cache, 1 worker", "windows_per_s": round(args.scenes / seconds[0], 2), "load": load_average()})
    workers = [run([*base, "--out", out / "cache_2", "--shard", f"{i}/2"], log, background=True) for i in range(2)]
    texts = [w.communicate()[0] for w in workers]
    seconds = [float(s) for s in re.findall(r"\(([\d.]+) s, [\d.]+ windows/s\)", "".join(texts))]
    rows.append({"row": "cache, 2 workers", "windows_per_s": round(args.scenes / max(seconds), 2), "load": load_average()})
    for stage, batch in (("align", 4), ("distill", 8)):
        for procs in (1, 2):
            folder = out / f"{stage}_{procs}"
            timer = folder / "timer.json"
            callbacks = json.dumps([{"class_path": "evcascade.train.callbacks.StepTimer", "init_args": {"out": str(timer)}}])
            extra = ["--trainer.devices", "2", "--trainer.strategy", "ddp"] if procs == 2 else []
            run([PY, "-m", "evcascade.train", stage, "--config", CONFIGS / f"{stage}_tiny.yaml", *extra,
                 "--trainer.max_steps", args.steps, "--trainer.callbacks", callbacks, "--trainer.logger", "false",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", folder,
                 "--model.export_dir", folder / "export", "--data.manifest", manifest,
                 "--data.target_cache", out / "cache_2", "--data.batch_size", batch // procs], log)
            result = json.loads(timer.read_text())
            rows.append({"row": f"{stage}, {procs} process{'es' if procs > 1 else ''} x batch {batch // procs}",
                         "steps_per_s": result["steps_per_s"], "samples_per_s": result["samples_per_s"],
                         "load": load_average()})
    print(f"\n{'row':<34} {'windows/s':>10} {'steps/s':>8} {'samples/s':>10}  load average (1, 5, 15 min)")
    for row in rows:
        print(f"{row['row']:<34} {row.get('windows_per_s', ''):>10} {row.get('steps_per_s', ''):>8} "
              f"{row.get('samples_per_s', ''):>10}  {row['load']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
