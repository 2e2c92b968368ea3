"""A DSEC-layout sequence set, end to end through the public commands, on CPU: world -> cache -> align -> distill
-> export -> infer, with the DSEC configs (only paths and sizes changed; every change printed).

    python data/dsec_end_to_end.py --out runs/dsec_e2e --json docs/bench/train_dsec_e2e.json   # ~15 min, 2 CPU cores

1. ``evcascade.data.dsec.write_dsec_sequence``: synthetic-world scenes (20 Hz, 1.5 s each) as DSEC sequences
   (``events/left/events.h5`` with a t_offset above 2**32, ``images/left/rectified/*.png``, ``images/timestamps.txt``).
2. ``cache`` with ``configs/train/cache_dsec.yaml``: once with one worker and once as two workers (``--shard 0/2``
   and ``1/2`` at the same time); the two caches are compared entry for entry; windows/s of each.
3. ``align`` with ``align_dsec.yaml`` and ``distill`` with ``distill_dsec.yaml`` on the two-worker (merged) cache;
   the same distill with ``distill_dsec_ddp.yaml`` on 2 CPU processes (the DDP config as shipped, sizes changed)
   for steps/s of 1 vs 2 processes at one global batch (32 = 1 x 16 x accumulate 2 = 2 x 16 x 1).
4. ``export`` of both checkpoints, a cascade folder (the bundled target + n-gram + the new event level), then
   ``python -m evcascade.infer --events <seq>/events/left/events.h5 --video <seq>/images/left`` on the held-out
   sequence, in cascade and target mode: the answers must be equal (greedy is lossless).

The target is the bundled demo VideoLlava (it knows the synthetic world; Video-LLaVA-7B does not run here) and
the drafter pieces start from the bundled demo L1's event encoder and draft LM (in place of CLIP ViT-L and
Llama-68M). Writes ``<out>/summary.json``; prints each command and its wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "train"
BUNDLED = REPO / "evcascade" / "assets" / "demo_cascade"
# the synthetic world's question bank (the bundled target's), in place of cache_dsec.yaml's driving questions
QUESTIONS = ["what is moving ?", "describe the video .", "how many objects are there ?", "which is faster ?"]
PY = sys.executable


def run(args: list[str], log, *, env=None, background: bool = False):
    line = " ".join(str(a) for a in args)
    print(f"$ {line}", file=log, flush=True)
    print(f"$ {line}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", **(env or {})}
    if background:
        return subprocess.Popen([str(a) for a in args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    started = time.perf_counter()
    done = subprocess.run([str(a) for a in args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    seconds = time.perf_counter() - started
    tail = "\n".join(line for line in done.stdout.splitlines() if line.strip() and "\r" not in line)[-2500:]
    print(tail, file=log, flush=True)
    print(f"  -> exit {done.returncode}, {seconds:.1f} s", file=log, flush=True)
    print(f"  -> exit {done.returncode}, {seconds:.1f} s", flush=True)
    if done.returncode != 0:
        print(done.stdout[-4000:])
        raise SystemExit(f"failed: {line}")
    return done.stdout, seconds


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def checkpoint_callbacks(folder: Path, monitor: str, timer: Path | None = None) -> str:
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(folder / "checkpoints"), "save_last": True, "save_top_k": 1,
                                "monitor": monitor, "mode": "max"}}]
    if timer is not None:
        callbacks.append({"class_path": "evcascade.train.callbacks.StepTimer", "init_args": {"out": str(timer)}})
    return json.dumps(callbacks)


def trainer_overrides(folder: Path, steps: int, val_every: int) -> list[str]:
    """CPU in place of GPU, fewer steps, this run's folders."""
    return ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(val_every), "--trainer.log_every_n_steps", "10",
            "--trainer.default_root_dir", str(folder), "--trainer.logger.init_args.save_dir", str(folder),
            "--trainer.enable_progress_bar", "false"]


def data_overrides(out: Path, cache: Path, val: str, batch: int) -> list[str]:
    return ["--data.target_cache", str(cache), "--data.dsec_root", str(out / "dsec" / "train"),
            "--data.val_sequences", json.dumps([val]), "--data.num_frames", "2", "--data.event_window_us", "400000",
            "--data.batch_size", str(batch), "--data.num_workers", "0"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/dsec_e2e"))
    parser.add_argument("--sequences", type=int, default=8, help="scenes, one DSEC sequence each (the last is held out)")
    parser.add_argument("--seconds", type=float, default=1.5, help="length of each sequence (the world's scenes)")
    parser.add_argument("--align-steps", type=int, default=300)
    parser.add_argument("--distill-steps", type=int, default=300)
    parser.add_argument("--ddp-steps", type=int, default=40, help="steps of the 1- vs 2-process throughput runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log = open(out / "log.txt", "w")
    summary: dict = {"load_average_start": load_average()}

    # 1. the world, in DSEC's sequence layout
    from evcascade.data.dsec import DEFAULT_T_OFFSET_US, write_dsec_sequence
    from evcascade.data.world import WorldConfig, make_world_sample, scene_seeds

    started = time.perf_counter()
    config = WorldConfig(duration_us=int(args.seconds * 1e6), fps=20.0)
    names = [f"synth_{i:02d}_a" for i in range(args.sequences)]
    for name, seed in zip(names, scene_seeds(7, args.sequences)):
        sample = make_world_sample(seed, config)
        write_dsec_sequence(sample, out / "dsec" / "train" / name)
    summary["world"] = {"sequences": names, "t_offset_us": DEFAULT_T_OFFSET_US, "frames_per_sequence": len(sample.video),
                        "seconds": round(time.perf_counter() - started, 1)}
    print(f"wrote {len(names)} DSEC sequences in {summary['world']['seconds']} s", file=log, flush=True)
    val = names[-1]

    # 2. cache: 1 worker, then 2 workers at once; identical?
    cache_args = [PY, "-m", "evcascade.train", "cache", "--config", CONFIGS / "cache_dsec.yaml",
                  "--target", BUNDLED / "target", "--target_dtype", "float32", "--device", "cpu",
                  "--dsec_root", out / "dsec" / "train", "--prompts", json.dumps(QUESTIONS), "--max_new_tokens", "48",
                  "--event_window_us", "400000"]
    stdout, one_s = run([*cache_args, "--out", out / "cache_1"], log)
    load_1 = load_average()
    started = time.perf_counter()
    workers = [run([*cache_args, "--out", out / "cache_2", "--shard", f"{i}/2"], log, background=True) for i in range(2)]
    outputs = [w.communicate()[0] for w in workers]
    two_s = time.perf_counter() - started
    for w, text in zip(workers, outputs):
        print("\n".join(line for line in text.splitlines() if line.startswith("target cache")), file=log, flush=True)
        if w.returncode != 0:
            raise SystemExit(text[-3000:])
    import torch

    from evcascade.train.target_cache import TargetCache

    one, two = TargetCache(out / "cache_1"), TargetCache(out / "cache_2")
    identical = one.keys() == two.keys() and all(
        torch.equal(one.get(k)[n], two.get(k)[n]) for k in one.keys() for n in one.get(k))
    windows = len(one.keys("features"))

    def loop_seconds(text: str) -> list[float]:  # each worker's own timing of its windows (target load excluded)
        return [float(m) for m in re.findall(r"\(([\d.]+) s, [\d.]+ windows/s\)", text)]

    one_loop, two_loops = loop_seconds(stdout), loop_seconds("".join(outputs))
    summary["cache"] = {"windows": windows, "answers": len(one.keys("answer")), "identical_1_vs_2_workers": identical,
                        "one_worker_command_s": round(one_s, 1), "two_workers_command_s": round(two_s, 1),
                        "one_worker_loop_s": one_loop, "two_workers_loop_s": two_loops,
                        "one_worker_windows_per_s": round(windows / one_loop[0], 2),
                        "two_workers_windows_per_s": round(windows / max(two_loops), 2),
                        "load_average_after_1": load_1, "load_average_after_2": load_average(),
                        "bytes_on_disk": sum(p.stat().st_size for p in (out / "cache_2").rglob("*.pt"))}
    print(f"cache: {summary['cache']}", file=log, flush=True)
    if not identical:
        raise SystemExit("the two-worker cache differs from the one-worker cache")
    cache = out / "cache_2"

    # 3. align, distill (1 process), distill (2 processes, the DDP config)
    align_dir = out / "align"
    run([PY, "-m", "evcascade.train", "align", "--config", CONFIGS / "align_dsec.yaml",
         *trainer_overrides(align_dir, args.align_steps, 100),
         "--trainer.callbacks", checkpoint_callbacks(align_dir, "val/cosine"),
         "--model.encoder", BUNDLED / "levels" / "events_frame" / "event_encoder", "--model.encoder_overrides", "null",
         "--model.alignment_hidden_size", "128", "--model.refiner_fusion_size", "64", "--model.lr", "2e-3",
         "--model.warmup_steps", "20", "--model.export_dir", out / "export",
         *data_overrides(out, cache, val, 16)], log)
    distill_common = ["--model.draft_lm", BUNDLED / "levels" / "events_frame" / "draft_lm",
                      "--model.draft_overrides", "null", "--model.align_dir", out / "export", "--model.lr", "1e-3",
                      "--model.warmup_steps", "20", "--data.pad_id", "3"]
    distill_dir = out / "distill"
    run([PY, "-m", "evcascade.train", "distill", "--config", CONFIGS / "distill_dsec.yaml",
         *trainer_overrides(distill_dir, args.distill_steps, 100),
         "--trainer.callbacks", checkpoint_callbacks(distill_dir, "val/acceptance"),
         *distill_common, "--model.export_dir", out / "export", *data_overrides(out, cache, val, 16)], log)
    throughput = {}
    for procs, config_name in ((1, "distill_dsec.yaml"), (2, "distill_dsec_ddp.yaml")):
        folder = out / f"distill_{procs}proc"
        timer = folder / "step_timer.json"
        extra = ["--trainer.devices", str(procs)] + (["--trainer.strategy", "ddp"] if procs > 1 else [])
        run([PY, "-m", "evcascade.train", "distill", "--config", CONFIGS / config_name,
             *trainer_overrides(folder, args.ddp_steps, 10_000), *extra,
             "--trainer.callbacks", checkpoint_callbacks(folder, "val/acceptance", timer),
             *distill_common, "--model.export_dir", folder / "export",
             *data_overrides(out, cache, val, 16)], log)  # global batch 32: 1 x 16 x accumulate 2 = 2 x 16 x 1
        throughput[procs] = {**json.loads(timer.read_text()), "load_average": load_average()}
    summary["distill_throughput_global_batch_32"] = throughput

    # 4. export from the checkpoints (the public command), assemble a cascade, infer on the held-out sequence
    exported = out / "export_from_ckpt"
    for stage, folder in (("align", align_dir), ("distill", distill_dir)):
        run([PY, "-m", "evcascade.train", "export", "--stage", stage, "--ckpt_path",
             folder / "checkpoints" / "last.ckpt", "--out", exported], log)
    cascade = out / "cascade"
    (cascade / "levels").mkdir(parents=True)
    shutil.copytree(BUNDLED / "target", cascade / "target")
    shutil.copytree(exported, cascade / "levels" / "events_frame", ignore=shutil.ignore_patterns("export.json"))
    record = json.loads((out / "export" / "export.json").read_text())["pieces"]["draft_lm"]
    spec = {"format": "evcascade.cascade", "version": 1, "name": "dsec-synthetic", "target": "target",
            "description": "data/dsec_end_to_end.py: the bundled demo target with an event + key-frame level "
                           "trained on DSEC-layout sequences",
            "levels": [{"type": "ngram", "name": "ngram"},
                       {"type": "event_drafter", "name": "events_frame", "path": "levels/events_frame",
                        "prior_acceptance": round(record.get("val_acceptance", 0.5), 3)}],
            "generation": {"max_new_tokens": 48, "draft_k": 8}}
    (cascade / "cascade.json").write_text(json.dumps(spec, indent=2) + "\n")
    seq = out / "dsec" / "train" / val
    stamps = [int(line) for line in (seq / "images" / "timestamps.txt").read_text().split()]
    end = stamps[-1] + 1
    start = end - 400_000  # the last key frame's window, as dsec_windows cuts them (video_window_us 400 ms)
    answers = {}
    for prompt in QUESTIONS:
        for mode in ("cascade", "target"):
            stdout, _ = run([PY, "-m", "evcascade.infer", "--events", seq / "events" / "left" / "events.h5",
                             "--video", seq / "images" / "left", "--model", cascade, "--prompt", prompt,
                             "--start-us", start, "--end-us", end, "--mode", mode, "--json"], log)
            answer = json.loads(stdout[stdout.index("{"):])
            answers.setdefault(prompt, {})[mode] = {"text": answer["text"], "tau": answer["stats"].get("tau")}
    summary["infer"] = {"sequence": val, "window_us": [start, end], "answers": answers,
                        "cascade_equals_target": all(a["cascade"]["text"] == a["target"]["text"] for a in answers.values())}
    summary["load_average_end"] = load_average()
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), **summary}, indent=1) + "\n")
    print(json.dumps(summary, indent=1), file=log, flush=True)
    print(json.dumps(summary, indent=1))
    return 0 if summary["infer"]["cascade_equals_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
