"""``python -m evcascade.bench provisional``: how soon a provisional answer comes, and how often the verified one
confirms it.

On held-out synthetic-world scenes (``--scenes N --seed S``), every question is asked through
``Cascade.generate(provisional=...)``: the best drafting level's own greedy answer first
(``decoding/provisional.py``), then the lossless cascade's verified answer. Per question we record:

- time to provisional (from the call to the provisional answer) and time to verified (from the call to the
  verified answer, the provisional's drafting included: they run one after the other), and the verified answer's
  time when asked without a provisional one (what the provisional costs the verified answer);
- exact agreement (token for token) and task-level agreement (exact, or both answers right by the world's
  ``QA.is_correct``: the same fact in another phrasing);
- per event window: the drafters see only the last ``--windows-ms`` of the clip's events (the target sees the
  same frames whatever the window). The bundled world's clips are 1.5 s and its drafters were trained on whole
  clips, so the short windows show what a drafter that never saw them does;
- two regimes, each for every row: *cold* (every cache emptied: the target's video features and visual-prefix
  KV, the drafters' per-clip features) and *warm* (the same question again on a clip already seen).

The cost twin (``--no-twin`` skips it): the real cascade's accept/reject pattern replayed on an untrained,
realistically sized twin of the target (``bench/demo.py``'s ``build_twin``, ``bench/replay.py``), timed; the
provisional answer's time is the real drafter's own (a drafter does not get slower with a bigger target), and the
twin's verified time is the provisional's drafting plus the twin's replayed cascade, as they run in sequence.

Output: a table per window and question kind, ``provisional.json`` (every question's record) under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from typing import Any

import torch

from evcascade.bench.common import add_held_out_world_args, environment_info, format_table, write_json
from evcascade.errors import InputError

AIM_SPEEDUP = 5.0
AIM_AGREEMENT = 0.9


def _fresh_clip(clip):
    """The clip with new Events / Video objects (the drafters' per-clip memos are keyed by identity)."""
    from dataclasses import replace

    return replace(clip, events=copy.copy(clip.events), video=copy.copy(clip.video))


def _clear_caches(cascade, twin_verifier=None) -> None:
    """Cold regime: the verifiers' feature and prefix caches emptied, the n-gram's memory of past answers too."""
    for verifier in (cascade.verifier, twin_verifier):
        if verifier is not None:
            verifier.feature_cache.clear()
            verifier.prefix_cache.clear()


def _forget_answers(cascade) -> None:
    """No row drafts from a previous answer to the same question (the n-gram level remembers answers)."""
    for level in cascade.decoder.levels:
        if hasattr(level, "memory"):
            level.memory.clear()


def run_benchmark(model: str, *, scenes: int, seed: int, questions: int | None = None, max_new_tokens: int = 48,
                  draft_k: int = 8, windows_ms: tuple[float, ...] = (50, 250, 500, 1500), twin: bool = True,
                  twin_hidden: int = 1024, twin_layers: int = 8, device: str = "cpu") -> dict[str, Any]:
    from evcascade.bench.demo import build_twin
    from evcascade.bench.engine import hf_run
    from evcascade.bench.replay import ReplayDrafter
    from evcascade.cascade import Cascade
    from evcascade.clip import Clip, load_clip
    from evcascade.data.world import make_world_sample, scene_seeds
    from evcascade.decoding.drafters import DraftContext
    from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
    from evcascade.decoding.policy import AdaptivePolicy
    from evcascade.decoding.provisional import provisional_level
    from evcascade.decoding.verifier import VerifyRequest, VideoLlavaVerifier

    if scenes < 1 or not windows_ms or min(windows_ms) <= 0:
        raise InputError(f"--scenes must be >= 1 and --windows-ms positive, got {scenes} and {list(windows_ms)}")
    cascade = Cascade.from_pretrained(model, device=device)
    level = provisional_level(cascade.levels)
    options = {"max_new_tokens": max_new_tokens, "draft_k": draft_k}
    twin_model = twin_verifier = None
    if twin:
        twin_model = build_twin(cascade.verifier.model, hidden_size=twin_hidden, num_layers=twin_layers, seed=seed)
        twin_verifier = VideoLlavaVerifier(twin_model, preprocess_config=cascade.verifier.preprocess_config,
                                           eos_token_ids=())
        twin_policy = AdaptivePolicy()
    vocab_size = int(cascade.verifier.model.get_output_embeddings().weight.shape[0])
    records: list[dict[str, Any]] = []
    warmed = False
    from tqdm import tqdm

    for scene_seed in tqdm(scene_seeds(seed, scenes), desc="provisional bench", unit="scene", file=sys.stderr):
        sample = make_world_sample(scene_seed)
        full = load_clip(sample.events, sample.video, num_frames=cascade.num_frames)
        for qa in sample.qa[:questions]:
            built = cascade.prompter(qa.question)
            twin_reference = None
            for window_ms in windows_ms:
                window_us = int(round(window_ms * 1000))
                start_us = max(full.events_start_us, full.end_us - window_us)
                clip = Clip(full.events.window(start_us, full.end_us), full.video, full.start_us, full.end_us, start_us)
                if not warmed:  # lazy initialisation is no row's cost
                    cascade.generate(prompt=qa.question, clip=clip, provisional=lambda early: None, **options)
                    warmed = True
                for regime in ("cold", "warm"):
                    if regime == "cold":
                        _clear_caches(cascade)
                        clip = _fresh_clip(clip)
                    _forget_answers(cascade)
                    answer = cascade.generate(prompt=qa.question, clip=clip, provisional=lambda early: None, **options)
                    if regime == "cold":
                        _clear_caches(cascade)
                        clip = _fresh_clip(clip)
                    _forget_answers(cascade)
                    alone = cascade.generate(prompt=qa.question, clip=clip, **options)
                    early = answer.provisional
                    record = {
                        "scene_seed": scene_seed, "kind": qa.kind, "question": qa.question, "truth": qa.answer,
                        "window_ms": window_ms, "regime": regime, "num_events": len(clip.events),
                        "provisional": early.text, "verified": answer.text, "provisional_tokens": len(early.token_ids),
                        "verified_tokens": len(answer.token_ids),
                        "provisional_ms": 1e3 * early.latency_s, "verified_ms": 1e3 * answer.latency_s,
                        "verified_alone_ms": 1e3 * alone.latency_s, "exact": bool(early.confirmed),
                        "first_difference_token": early.first_difference_token,
                        "provisional_correct": qa.is_correct(early.text), "verified_correct": qa.is_correct(answer.text),
                        "lossless": alone.token_ids == answer.token_ids,
                    }
                    record["task_agree"] = record["exact"] or (record["provisional_correct"] and record["verified_correct"])
                    if twin and answer.token_ids:
                        reference = answer.token_ids
                        ended_by_eos = len(reference) < max_new_tokens and reference[-1] in cascade.verifier.eos_token_ids
                        length = len(reference) + int(ended_by_eos)
                        if twin_reference is None or len(twin_reference) != length:
                            twin_reference = hf_run(twin_model, built.target_ids, length,
                                                    pixel_values_videos=cascade.verifier.pixel_values(full.video.frames)).token_ids
                        context = DraftContext(built.text_ids, events=clip.events, video=clip.video)
                        replay = [ReplayDrafter(None, torch.tensor([twin_reference]), vocab_size=vocab_size, level=lv,
                                                level_context=context, level_answer=reference, name=lv.name)
                                  for lv in cascade.decoder.levels]
                        decoder = CascadeDecoder(twin_verifier, replay, policy=twin_policy)
                        pixels = twin_verifier.pixel_values(clip.video.frames)
                        twin_options = GenerationOptions(max_new_tokens=length, draft_k=draft_k, eos_token_ids=())
                        if regime == "cold":
                            _clear_caches(cascade, twin_verifier)
                        _forget_answers(cascade)
                        started = time.perf_counter()
                        result = decoder.generate(VerifyRequest(built.target_ids, pixels), context, twin_options)
                        twin_s = time.perf_counter() - started
                        record["twin_cascade_ms"] = 1e3 * twin_s
                        record["twin_verified_ms"] = record["provisional_ms"] + 1e3 * twin_s
                        record["twin_lossless"] = result.token_ids[0].tolist() == twin_reference
                    records.append(record)
    report = {"benchmark": "provisional", "model": model, "cascade": repr(cascade), "provisional_level": level.name,
              "environment": environment_info(device),
              "config": {"scenes": scenes, "seed": seed, "questions_per_scene": questions, "max_new_tokens": max_new_tokens,
                         "draft_k": draft_k, "windows_ms": list(windows_ms), "twin": twin, "twin_hidden": twin_hidden,
                         "twin_layers": twin_layers,
                         "world": "bundled demo world (canonical phrasings, 1.5 s clips); windows crop the drafters' events"},
              "records": records}
    report["rows"] = summarise(records)
    report["aim"] = _aim(report["rows"])
    report["all_lossless"] = all(r["lossless"] and r.get("twin_lossless", True) for r in records)
    return report


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (regime, window, kind) and per (regime, window) over all kinds: medians and agreement rates."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["regime"], r["window_ms"], r["kind"]), []).append(r)
        groups.setdefault((r["regime"], r["window_ms"], "all"), []).append(r)
    rows = []
    for (regime, window_ms, kind), group in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1],
                                                                                     item[0][2] != "all", item[0][2])):
        median = lambda key: statistics.median(r[key] for r in group) if key in group[0] else None  # noqa: E731
        row = {"regime": regime, "window_ms": window_ms, "kind": kind, "answers": len(group),
               "provisional_ms": median("provisional_ms"), "verified_ms": median("verified_ms"),
               "verified_alone_ms": median("verified_alone_ms"),
               "exact": sum(r["exact"] for r in group) / len(group),
               "task_agree": sum(r["task_agree"] for r in group) / len(group),
               "provisional_correct": sum(r["provisional_correct"] for r in group) / len(group),
               "verified_correct": sum(r["verified_correct"] for r in group) / len(group)}
        row["sooner"] = row["verified_ms"] / row["provisional_ms"] if row["provisional_ms"] else None
        if "twin_verified_ms" in group[0]:
            row["twin_verified_ms"] = median("twin_verified_ms")
            row["twin_sooner"] = row["twin_verified_ms"] / row["provisional_ms"] if row["provisional_ms"] else None
        rows.append(row)
    return rows


def _aim(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per regime and window (all kinds): provisional >= 5x sooner at the twin's cost, task agreement >= 90%."""
    out = {}
    for row in rows:
        if row["kind"] != "all":
            continue
        sooner = row.get("twin_sooner")
        out[f"{row['regime']} {row['window_ms']:g} ms"] = {
            "twin_sooner": sooner, "sooner_met": bool(sooner and sooner >= AIM_SPEEDUP),
            "task_agree": row["task_agree"], "agree_met": row["task_agree"] >= AIM_AGREEMENT}
    return out


COLUMNS = ("regime", "window_ms", "kind", "answers", "provisional_ms", "verified_ms", "verified_alone_ms", "sooner",
           "twin_verified_ms", "twin_sooner", "exact", "task_agree", "provisional_correct", "verified_correct")


def format_report(report: dict[str, Any]) -> str:
    config = report["config"]
    lines = [f"provisional answers ({report['provisional_level']}) vs verified, {config['scenes']} held-out scenes "
             f"(seed {config['seed']}), {report['cascade']}; {config['world']}; times are medians in ms",
             format_table(report["rows"], COLUMNS), ""]
    for key, aim in report["aim"].items():
        lines.append(f"aim {key}: twin {aim['twin_sooner'] or 0:.1f}x sooner (>= {AIM_SPEEDUP:g}: {aim['sooner_met']}), "
                     f"task agreement {aim['task_agree']:.3f} (>= {AIM_AGREEMENT}: {aim['agree_met']})")
    lines.append(f"verified answers equal to the cascade's without a provisional one (and the twin's to its "
                 f"reference): {report['all_lossless']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evcascade.bench provisional", description=__doc__.split("\n")[0])
    add_held_out_world_args(parser, "provisional", max_new_tokens=48, draft_k=8)
    parser.add_argument("--windows-ms", default="50,250,500,1500", help="the drafters' event windows (ms)")
    parser.add_argument("--twin-hidden", type=int, default=1024)
    parser.add_argument("--twin-layers", type=int, default=8)
    parser.add_argument("--no-twin", action="store_true")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        windows = tuple(float(w) for w in args.windows_ms.split(","))
        report = run_benchmark(args.model, scenes=args.scenes, seed=args.seed, questions=args.questions,
                               max_new_tokens=args.max_new_tokens, draft_k=args.draft_k, windows_ms=windows,
                               twin=not args.no_twin, twin_hidden=args.twin_hidden, twin_layers=args.twin_layers,
                               device=args.device)
    except ValueError as error:  # InputError is a ValueError; a bad --windows-ms too
        print(f"evcascade.bench provisional: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    path = write_json(args.out, "provisional", report)
    print(f"wrote {path}")
    return 0 if report["all_lossless"] else 1


if __name__ == "__main__":
    sys.exit(main())
