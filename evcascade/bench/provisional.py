"""``python -m evcascade.bench provisional``: how soon a provisional answer comes, how many of the verified answer's
facts it states, and what drafting it costs the verified answer.

On held-out synthetic-world scenes (``--scenes N --seed S``), each cascade of ``--models`` (default: the
``bundled-windows`` cascade, trained on windows of 50 ms - 1.5 s, and ``bundled`` beside it) is asked every question
about the last ``--windows-ms`` of each clip, the way a robot asks about the newest moments (``LiveSession``): the
target sees that window's frames and the drafters its events (``load_clip(start_us=..., end_us=...)``), and the
ground truth is what is true of that window (``qa_pairs(scene, window_us)``: an object that does not travel
``MOTION_THRESHOLD_PX`` between the window's first and last frames does not move there). Every question goes through
``Cascade.generate(provisional=...)``: the best drafting level's own greedy answer (``decoding/provisional.py``),
drafted on a thread of its own beside the lossless verified decode. Per question we record:

- time to provisional and time to verified (both from the call), and the verified answer's time when asked without
  a provisional one: on a CPU the two threads compete for the cores, so ``verified_ms / verified_alone_ms`` is what
  drafting a provisional answer costs the verified one;
- agreement of the provisional answer with the verified one: exact (token for token), task-level (exact, or both
  right by the window's ``QA.is_correct``) and fact-level (``data/facts.py``: the share of the verified answer's
  facts, such as each object's colour, which way and how far it moves, the count, that the provisional answer
  states the same, pooled over answers; and the share of the provisional answer's facts the verified one states);
- both answers' accuracy against the window's truth;
- two regimes, each for every row: *cold* (every cache emptied: the target's video features and visual-prefix
  KV, the drafters' per-clip features) and *warm* (the same question again on a clip already seen).

The cost twin (``--no-twin`` skips it): the real cascade's accept/reject pattern replayed on an untrained,
realistically sized twin of the target (``bench/demo.py``'s ``build_twin``, ``bench/replay.py``), timed with the real
provisional answer drafted beside it (``twin_verified_ms``, ``twin_provisional_ms``) and without (``twin_alone_ms``).
A label, not a measurement of a real model.

Output: a table per cascade, regime, window and question kind, ``provisional.json`` (every question's record) under
``--out``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
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


def _window_clip(sample, num_frames: int, window_ms: float):
    """The clip of the last ``window_ms`` of a world sample (its events and frames, as a live session asks)."""
    from evcascade.clip import load_clip

    full = load_clip(sample.events, sample.video, num_frames=num_frames)
    end_us = full.end_us
    start_us = max(full.start_us, end_us - int(round(window_ms * 1000)))
    with warnings.catch_warnings():  # a window holding one frame repeats it, as asked: no news here
        warnings.filterwarnings("ignore", message=".*repeated to", category=UserWarning)
        return load_clip(sample.events, sample.video, num_frames=num_frames, start_us=start_us, end_us=end_us)


def run_benchmark(models: tuple[str, ...] = ("bundled-windows", "bundled"), *, scenes: int, seed: int,
                  questions: int | None = None, max_new_tokens: int = 80, draft_k: int = 8,
                  windows_ms: tuple[float, ...] = (50, 250, 500, 1500), twin: bool = True, twin_hidden: int = 1024,
                  twin_layers: int = 8, device: str = "cpu", duration_us: int | None = None,
                  level: str | None = None, mix: float = 0.0) -> dict[str, Any]:
    from evcascade.cascade import Cascade
    from evcascade.data.world import WorldConfig
    from evcascade.decoding.provisional import provisional_level

    if scenes < 1 or not windows_ms or min(windows_ms) <= 0 or not models:
        raise InputError(f"--scenes must be >= 1, --windows-ms positive and --models non-empty, got {scenes}, "
                         f"{list(windows_ms)} and {list(models)}")
    if not mix >= 0:
        raise InputError(f"--provisional-mix must be >= 0, got {mix}")
    world = WorldConfig(**({"duration_us": duration_us} if duration_us else {}))
    records: list[dict[str, Any]] = []
    cascades = {}
    for model in models:
        cascade = Cascade.from_pretrained(model, device=device)
        cascade.provisional_level, cascade.provisional_mix = level, mix
        provisional_level(cascade.levels, level)  # a bad --provisional-level is named before any measuring
        cascades[model] = cascade
        records += _measure(model, cascade, scenes=scenes, seed=seed, questions=questions,
                            max_new_tokens=max_new_tokens, draft_k=draft_k, windows_ms=windows_ms, twin=twin,
                            twin_hidden=twin_hidden, twin_layers=twin_layers, world=world)
    report = {"benchmark": "provisional", "models": list(models),
              "cascades": {m: repr(c) for m, c in cascades.items()},
              "provisional_level": {m: provisional_level(c.levels, level).name for m, c in cascades.items()},
              "environment": environment_info(device),
              "config": {"scenes": scenes, "seed": seed, "questions_per_scene": questions, "max_new_tokens": max_new_tokens,
                         "draft_k": draft_k, "windows_ms": list(windows_ms), "twin": twin, "twin_hidden": twin_hidden,
                         "twin_layers": twin_layers, "duration_us": world.duration_us, "provisional_mix": mix,
                         "world": f"synthetic world, {world.duration_us / 1e6:g} s clips; each question about the clip's last window (frames and "
                                  "events), judged by qa_pairs(scene, window_us)"},
              "records": records}
    report["rows"] = summarise(records)
    report["attributes"] = attribute_rows(records)
    report["aim"] = _aim(report["rows"])
    report["all_lossless"] = all(r["lossless"] and r.get("twin_lossless", True) for r in records)
    return report


def _measure(model: str, cascade, *, scenes: int, seed: int, questions: int | None, max_new_tokens: int,
             draft_k: int, windows_ms: tuple[float, ...], twin: bool, twin_hidden: int,
             twin_layers: int, world) -> list[dict[str, Any]]:
    """Every question of every window of every scene, cold and warm, on one cascade (module docstring)."""
    from tqdm import tqdm

    from evcascade.bench.demo import build_twin
    from evcascade.bench.engine import hf_run
    from evcascade.bench.replay import ReplayDrafter
    from evcascade.data.facts import fact_agreement
    from evcascade.data.questions import qa_pairs
    from evcascade.data.world import make_world_sample, scene_seeds
    from evcascade.decoding.drafters import DraftContext
    from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
    from evcascade.decoding.policy import AdaptivePolicy
    from evcascade.decoding.verifier import VerifyRequest, VideoLlavaVerifier

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
    for scene_seed in tqdm(scene_seeds(seed, scenes), desc=f"provisional bench ({model})", unit="scene",
                           file=sys.stderr):
        sample = make_world_sample(scene_seed, world)
        for window_ms in windows_ms:
            clip = _window_clip(sample, cascade.num_frames, window_ms)
            for qa in qa_pairs(sample.scene, (clip.start_us, clip.end_us))[:questions]:
                built = cascade.prompter(qa.question)
                twin_reference = None
                if not warmed:  # lazy initialisation (the drafting copy, the scheduler of threads) is no row's cost
                    cascade.generate(prompt=qa.question, clip=clip, provisional=lambda early: None, **options)
                    warmed = True
                for regime in ("cold", "warm"):
                    def fresh(clip):
                        if regime == "cold":
                            _clear_caches(cascade, twin_verifier)
                            clip = _fresh_clip(clip)
                        _forget_answers(cascade)
                        return clip

                    clip = fresh(clip)
                    answer = cascade.generate(prompt=qa.question, clip=clip, provisional=lambda early: None, **options)
                    clip = fresh(clip)
                    alone = cascade.generate(prompt=qa.question, clip=clip, **options)
                    early = answer.provisional
                    facts = fact_agreement(early.text, answer.text)
                    record = {
                        "model": model, "scene_seed": scene_seed, "kind": qa.kind, "question": qa.question,
                        "truth": qa.answer, "window_ms": window_ms, "window_us": [clip.start_us, clip.end_us],
                        "regime": regime, "num_events": len(clip.events),
                        "provisional": early.text, "verified": answer.text, "provisional_tokens": len(early.token_ids),
                        "verified_tokens": len(answer.token_ids),
                        "provisional_ms": 1e3 * early.latency_s, "verified_ms": 1e3 * answer.latency_s,
                        "verified_alone_ms": 1e3 * alone.latency_s, "exact": bool(early.confirmed),
                        "first_difference_token": early.first_difference_token,
                        "provisional_correct": qa.is_correct(early.text), "verified_correct": qa.is_correct(answer.text),
                        "facts_verified": facts.verified, "facts_provisional": facts.provisional,
                        "facts_same": facts.same, "lossless": alone.token_ids == answer.token_ids,
                    }
                    record["task_agree"] = record["exact"] or (record["provisional_correct"] and record["verified_correct"])
                    if twin and answer.token_ids:
                        reference = answer.token_ids
                        ended_by_eos = len(reference) < max_new_tokens and reference[-1] in cascade.verifier.eos_token_ids
                        length = len(reference) + int(ended_by_eos)
                        if twin_reference is None or len(twin_reference) != length:
                            twin_reference = hf_run(twin_model, built.target_ids, length,
                                                    pixel_values_videos=cascade.verifier.pixel_values(clip.video.frames)).token_ids
                        twin_options = GenerationOptions(max_new_tokens=length, draft_k=draft_k, eos_token_ids=())
                        for with_provisional in (True, False):
                            clip = fresh(clip)
                            context = DraftContext(built.text_ids, events=clip.events, video=clip.video)
                            replay = [ReplayDrafter(None, torch.tensor([twin_reference]), vocab_size=vocab_size, level=lv,
                                                    level_context=context, level_answer=reference, name=lv.name)
                                      for lv in cascade.decoder.levels]
                            decoder = CascadeDecoder(twin_verifier, replay, policy=twin_policy)
                            started = time.perf_counter()
                            drafting = (cascade.draft_provisional(qa.question, clip, started_s=started, **options)
                                        if with_provisional else None)
                            pixels = twin_verifier.pixel_values(clip.video.frames)
                            result = decoder.generate(VerifyRequest(built.target_ids, pixels), context, twin_options)
                            twin_ms = 1e3 * (time.perf_counter() - started)
                            if drafting is not None:
                                record["twin_verified_ms"] = twin_ms
                                record["twin_provisional_ms"] = 1e3 * drafting.result().latency_s
                            else:
                                record["twin_alone_ms"] = twin_ms
                        record["twin_lossless"] = result.token_ids[0].tolist() == twin_reference
                    records.append(record)
    return records


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (cascade, regime, window, kind) and per (cascade, regime, window) over all kinds: medians of the
    times, agreement and accuracy rates, facts pooled over answers."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        for kind in (r["kind"], "all"):
            groups.setdefault((r.get("model", ""), r["regime"], r["window_ms"], kind), []).append(r)

    def order(item):
        model, regime, window_ms, kind = item[0]
        return (model, regime, window_ms, kind != "all", kind)

    rows = []
    for (model, regime, window_ms, kind), group in sorted(groups.items(), key=order):
        median = lambda key: statistics.median(r[key] for r in group) if key in group[0] else None  # noqa: E731
        rate = lambda key: sum(bool(r[key]) for r in group) / len(group)  # noqa: E731
        verified_facts = sum(r["facts_verified"] for r in group)
        provisional_facts = sum(r["facts_provisional"] for r in group)
        same = sum(r["facts_same"] for r in group)
        row = {"model": model, "regime": regime, "window_ms": window_ms, "kind": kind, "answers": len(group),
               "provisional_ms": median("provisional_ms"), "verified_ms": median("verified_ms"),
               "verified_alone_ms": median("verified_alone_ms"),
               "first": sum(r["provisional_ms"] < r["verified_ms"] for r in group) / len(group),
               "facts": same / verified_facts if verified_facts else 1.0,
               "fact_precision": same / provisional_facts if provisional_facts else 1.0,
               "exact": rate("exact"), "task_agree": rate("task_agree"),
               "provisional_correct": rate("provisional_correct"), "verified_correct": rate("verified_correct")}
        row["sooner"] = row["verified_ms"] / row["provisional_ms"] if row["provisional_ms"] else None
        row["verified_cost"] = row["verified_ms"] / row["verified_alone_ms"] if row["verified_alone_ms"] else None
        if "twin_verified_ms" in group[0]:
            row["twin_provisional_ms"] = median("twin_provisional_ms")
            row["twin_verified_ms"] = median("twin_verified_ms")
            row["twin_alone_ms"] = median("twin_alone_ms")
            row["twin_sooner"] = (row["twin_verified_ms"] / row["twin_provisional_ms"]
                                  if row["twin_provisional_ms"] else None)
            row["twin_cost"] = row["twin_verified_ms"] / row["twin_alone_ms"] if row["twin_alone_ms"] else None
        rows.append(row)
    return rows


def attribute_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where provisional answers lose facts: per cascade and window, for each attribute of the verified answers'
    facts (``data/facts.py``: colour, size, motion, distance, count, moving, camera ...), how many there were and the
    share the provisional answers state the same (cold regime: greedy answers are the same warm)."""
    from evcascade.data.facts import answer_facts

    counts: dict[tuple, list[int]] = {}
    for r in records:
        if r["regime"] != "cold":
            continue
        provisional, verified = answer_facts(r["provisional"]), answer_facts(r["verified"])
        for key, value in verified.items():
            subject, attribute = key
            name = f"camera {attribute}" if subject == "camera" else ("other" if subject == "sentence" else attribute)
            for window in (r["window_ms"], "all"):
                entry = counts.setdefault((r.get("model", ""), window, name), [0, 0])
                entry[0] += 1
                entry[1] += int(provisional.get(key) == value)
    return [{"model": model, "window_ms": window, "attribute": name, "facts": total, "same": same / total}
            for (model, window, name), (total, same) in sorted(counts.items(), key=lambda item: (
                item[0][0], item[0][1] == "all", item[0][1] if item[0][1] != "all" else 0, item[0][2]))]


def _aim(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per cascade, regime and window (all kinds): provisional >= 5x sooner at the twin's cost, >= 90% of the
    verified answers' facts stated the same."""
    out = {}
    for row in rows:
        if row["kind"] != "all":
            continue
        sooner = row.get("twin_sooner")
        out[f"{row['model']} {row['regime']} {row['window_ms']:g} ms"] = {
            "twin_sooner": sooner, "sooner_met": bool(sooner and sooner >= AIM_SPEEDUP),
            "facts": row["facts"], "facts_met": row["facts"] >= AIM_AGREEMENT,
            "task_agree": row["task_agree"]}
    return out


COLUMNS = ("model", "regime", "window_ms", "kind", "answers", "provisional_ms", "verified_ms", "verified_alone_ms",
           "verified_cost", "sooner", "first", "twin_provisional_ms", "twin_verified_ms", "twin_alone_ms", "twin_cost",
           "twin_sooner", "facts", "fact_precision", "exact", "task_agree", "provisional_correct", "verified_correct")


def format_report(report: dict[str, Any]) -> str:
    config = report["config"]
    mix = config.get("provisional_mix") or 0
    levels = ", ".join(f"{m}: {level}" + (f" + {mix:g} x the other model levels" if mix else "")
                       for m, level in report["provisional_level"].items())
    lines = [f"provisional answers ({levels}) vs verified, {config['scenes']} held-out scenes (seed {config['seed']}); "
             f"{config['world']}; times are medians in ms; facts = share of the verified answers' facts the "
             f"provisional ones state the same (pooled)",
             format_table(report["rows"], COLUMNS), "",
             "facts by attribute (cold): how many the verified answers state, and the share the provisional ones state "
             "the same", format_table(report["attributes"], ("model", "window_ms", "attribute", "facts", "same")), ""]
    for key, aim in report["aim"].items():
        sooner = (f"twin {aim['twin_sooner']:.1f}x sooner (>= {AIM_SPEEDUP:g}: {aim['sooner_met']})"
                  if aim["twin_sooner"] is not None else "no twin run")
        lines.append(f"aim {key}: {sooner}, "
                     f"facts {aim['facts']:.3f} (>= {AIM_AGREEMENT}: {aim['facts_met']}), "
                     f"task agreement {aim['task_agree']:.3f}")
    lines.append(f"verified answers equal to the cascade's without a provisional one (and the twin's to its "
                 f"reference): {report['all_lossless']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evcascade.bench provisional", description=__doc__.split("\n")[0])
    add_held_out_world_args(parser, "provisional", max_new_tokens=80, draft_k=8)
    parser.add_argument("--models", default="bundled-windows,bundled",
                        help="cascades to measure, comma-separated (folders, presets, 'bundled', 'bundled-windows'); "
                             "--model measures one")
    parser.add_argument("--windows-ms", default="50,250,500,1500",
                        help="windows asked about: the last N ms of each clip (frames and events), comma-separated")
    parser.set_defaults(model=None)  # --models unless one --model is named
    parser.add_argument("--twin-hidden", type=int, default=1024)
    parser.add_argument("--twin-layers", type=int, default=8)
    parser.add_argument("--no-twin", action="store_true")
    parser.add_argument("--provisional-level", help="the level that drafts provisional answers (default: the top "
                                                    "model level)")
    parser.add_argument("--provisional-mix", type=float, default=0.0,
                        help="> 0: the other model levels draft with it, their log-probabilities weighted by this")
    parser.add_argument("--report", help="summarise the records of a provisional.json written before again (print "
                                         "the tables, write the report under --out) instead of measuring")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.report:
        return _reprint(args.report, args.out)
    try:
        windows = tuple(float(w) for w in args.windows_ms.split(","))
        models = (args.model,) if args.model is not None else tuple(m for m in args.models.split(",") if m)
        report = run_benchmark(models, scenes=args.scenes, seed=args.seed, questions=args.questions,
                               max_new_tokens=args.max_new_tokens, draft_k=args.draft_k, windows_ms=windows,
                               twin=not args.no_twin, twin_hidden=args.twin_hidden, twin_layers=args.twin_layers,
                               device=args.device, duration_us=args.duration_us, level=args.provisional_level,
                               mix=args.provisional_mix)
    except ValueError as error:  # InputError is a ValueError; a bad --windows-ms too
        print(f"evcascade.bench provisional: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    path = write_json(args.out, "provisional", report)
    print(f"wrote {path}")
    return 0 if report["all_lossless"] else 1


def _reprint(path: str, out: str) -> int:
    """Summarise the records of a saved report again (a new column or table needs no new run), print it and write
    it as ``provisional.json`` under ``out``."""
    import json

    from evcascade.errors import require_file

    try:
        report = json.loads(require_file(path).read_text())
    except (ValueError, OSError) as error:  # FileNotFoundError, InputError and a JSON error are all named
        print(f"evcascade.bench provisional: {path!r}: {error}", file=sys.stderr)
        return 2
    if report.get("benchmark") != "provisional" or "records" not in report:
        print(f"evcascade.bench provisional: {path!r} is not a provisional report", file=sys.stderr)
        return 2
    report["rows"] = summarise(report["records"])
    report["attributes"] = attribute_rows(report["records"])
    report["aim"] = _aim(report["rows"])
    print(format_report(report))
    print(f"wrote {write_json(out, 'provisional', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
