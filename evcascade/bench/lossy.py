"""``python -m evcascade.bench lossy``: speed against fidelity for every opt-in lossy acceptance rule.

On held-out synthetic-world scenes (``--scenes N --seed S``, each made with ``make_world_sample``), every question
of every scene is answered by the target alone (the reference), by the lossless cascade, and by the cascade with
each rule at each lenience. Per (rule, lenience) row: tokens/s, tau, speedup over the lossless cascade, and the
fidelity figures that always come with a lossy rule: exact-match rate and token agreement with the target's
greedy answer, and the task accuracy on the scene graph's answers (``QA.is_correct``: any phrasing of the right
answer; also as a fraction of the target's own).
Output: a table, ``lossy.json`` and ``lossy.png`` (one speed/fidelity curve per rule) under ``--out``.

Every answer is greedy. Each configuration gets its own decoder (so adaptive policies do not learn from another
rule's acceptances) and its own n-gram memory (so no run drafts from another run's answer to the same question).
Clips are warmed first (the target's run fills the video-feature and prefix caches, and each drafting level
computes the clip's draft visual features, memoised per clip), so every cascade row decodes from the same cached
state and no row pays the clip's encoders. The modality rule's agreement map is computed once per clip from those
same draft features (the projector and two cosines) and its time is charged to that rule's rows. Every
configuration's first answer is decoded once untimed (then with a fresh decoder) so that lazy initialisation is
charged to no rule.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evcascade.bench.common import (add_held_out_world_args, environment_info, format_table, fresh_levels,
                                    save_report)
from evcascade.errors import InputError

DEFAULT_RULES = ("lossy_sps", "token_v1", "token_v2", "token_v3", "typical", "fuzzy", "modality")
DEFAULT_LENIENCE = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
AIM_ACCURACY_RATIO, AIM_SPEEDUP = 0.98, 1.5


@dataclass
class Totals:
    """Running sums of one configuration over every answer."""

    tokens: int = 0
    forwards: int = 0
    seconds: float = 0.0
    answers: int = 0
    exact: int = 0
    agreement: float = 0.0
    correct: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, ids: list[int], text: str, stats, reference: list[int] | None, qa, extra_s: float = 0.0):
        self.tokens += len(ids)
        self.forwards += stats.target_forwards
        self.seconds += stats.total_s + extra_s
        self.answers += 1
        self.correct += int(qa.is_correct(text))
        if reference is not None:
            self.exact += int(ids == reference)
            self.agreement += token_agreement(ids, reference)

    def row(self, baseline_tps: float | None, target_accuracy: float | None) -> dict[str, Any]:
        tps = self.tokens / self.seconds if self.seconds > 0 else 0.0
        accuracy = self.correct / self.answers if self.answers else 0.0
        return {
            "tokens_per_s": tps, "tau": self.tokens / self.forwards if self.forwards else 0.0,
            "speedup": tps / baseline_tps if baseline_tps else None,
            "exact_match": self.exact / self.answers if self.answers else 0.0,
            "token_agreement": self.agreement / self.answers if self.answers else 0.0,
            "accuracy": accuracy,
            "accuracy_ratio": accuracy / target_accuracy if target_accuracy else None,
            "answers": self.answers, "tokens": self.tokens,
        }


def token_agreement(ids: list[int], reference: list[int]) -> float:
    """Fraction of positions where two answers hold the same token, over the longer one (1.0 for two empties).

    >>> token_agreement([1, 2, 3], [1, 5, 3, 4])
    0.5
    """
    longest = max(len(ids), len(reference))
    return sum(a == b for a, b in zip(ids, reference)) / longest if longest else 1.0


def _event_prefix(levels):
    """The prefix function of the first event-drafter level with an alignment (None if there is none)."""
    for level in levels:
        prefix = getattr(level, "prefix_fn", None)
        if getattr(prefix, "alignment", None) is not None:
            return prefix
    return None


def run_benchmark(model: str, *, scenes: int, seed: int, rules=DEFAULT_RULES, lenience=DEFAULT_LENIENCE,
                  questions: int | None = None, max_new_tokens: int = 40, draft_k: int = 5, adaptive: bool = True,
                  device: str = "cpu", world: dict | None = None, levels: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Answer every question of ``scenes`` held-out scenes with every configuration; the report as a dict.
    ``levels`` names the cascade levels that draft (default: all)."""
    from evcascade.cascade import Cascade
    from evcascade.clip import load_clip
    from evcascade.data.world import WorldConfig, make_world_sample, scene_seeds
    from evcascade.decoding.drafters import DraftContext
    from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
    from evcascade.decoding.lossy import RULES, check_lenience
    from evcascade.decoding.modality import AGREEMENT_KEY, agreement_for_request
    from evcascade.decoding.verifier import VerifyRequest

    unknown = [r for r in rules if r not in RULES or r == "lossless"]
    if unknown:
        raise InputError(f"--rules: unknown lossy rule(s) {unknown}; choose from {[r for r in RULES if r != 'lossless']}")
    for value in lenience:
        check_lenience(value)
    if scenes < 1:
        raise InputError(f"--scenes must be >= 1, got {scenes}")
    load_before = os.getloadavg()
    cascade = Cascade.from_pretrained(model, device=device)
    if levels:
        known = [level.name for level in cascade.levels]
        unknown = [name for name in levels if name not in known]
        if unknown:
            raise InputError(f"--levels: {unknown} not in the cascade's levels {known}")
    drafting = [level for level in cascade.levels if not levels or level.name in levels]
    prefix = _event_prefix(drafting)
    skipped = {}
    if prefix is None and "modality" in rules:
        skipped["modality"] = "the cascade has no event drafter level with an alignment: no agreement map"
        rules = tuple(r for r in rules if r != "modality")
    configs = [("target", 0.0), ("lossless", 0.0)] + [(r, float(v)) for r in rules for v in lenience]
    decoders = {c: CascadeDecoder(cascade.verifier, [] if c[0] == "target" else fresh_levels(drafting))
                for c in configs}
    totals = {c: Totals() for c in configs}
    world_config = WorldConfig(**(world or {}))
    agreements = []
    from tqdm import tqdm

    for scene_seed in tqdm(scene_seeds(seed, scenes), desc="lossy bench", unit="scene", file=sys.stderr):
        sample = make_world_sample(scene_seed, world_config)
        clip = load_clip(sample.events, sample.video, num_frames=cascade.num_frames)
        pixels = cascade.verifier.pixel_values(clip.video.frames)  # [1, T, 3, S, S]
        clip_context = DraftContext(torch.zeros(1, 0, dtype=torch.long), events=clip.events, video=clip.video)
        for level in drafting:  # the clip's draft features, once and untimed: common to every row, like the video's
            if getattr(level, "prefix_fn", None) is not None:
                level.prefix_fn(clip_context)
        agreement, agreement_s = None, 0.0
        if "modality" in rules:
            cascade.verifier.video_features(pixels)  # the target's features, as every row finds them: cached
            started = time.perf_counter()
            agreement = agreement_for_request(cascade.verifier, prefix, clip_context, pixels)
            agreement_s = time.perf_counter() - started
            agreements.append(agreement.clip)
        for index, qa in enumerate(sample.qa[:questions]):
            built = cascade.prompter(qa.question)
            request = VerifyRequest(built.target_ids, pixels)
            context = DraftContext(built.text_ids, events=clip.events, video=clip.video)
            reference = None
            for config in configs:
                name, value = config
                # a modality configuration computes its agreement map once per clip: charged to its first answer
                extra_s = agreement_s if name == "modality" and index == 0 else 0.0
                options = {"acceptance": name, "lenience": value} if name not in ("target", "lossless") else {}
                gen = GenerationOptions(**{**cascade.generation_defaults, "max_new_tokens": max_new_tokens,
                                           "draft_k": draft_k, "adaptive": adaptive, "tokenizer": cascade.tokenizer,
                                           **options})
                run_context = context
                if name == "modality":
                    run_context = DraftContext(context.prompt_ids, events=context.events, video=context.video,
                                               extras={**context.extras, AGREEMENT_KEY: agreement})
                if not totals[config].answers:  # an untimed first answer: lazy initialisation is no rule's cost
                    decoders[config].generate(request, run_context, gen)
                    decoders[config] = CascadeDecoder(cascade.verifier, [] if name == "target" else
                                                      fresh_levels(drafting))
                result = decoders[config].generate(request, run_context, gen)
                ids = result.token_ids[0].tolist()
                if name == "target":
                    reference = ids
                totals[config].add(ids, result.text or "", result.stats, reference, qa, extra_s)
    target_row = totals[("target", 0.0)].row(None, None)
    lossless_row = totals[("lossless", 0.0)].row(None, None)
    target_accuracy = target_row["accuracy"]
    rows = []
    for config in configs:
        name, value = config
        row = {"rule": name, "lenience": value,
               **totals[config].row(lossless_row["tokens_per_s"], target_accuracy)}
        rows.append(row)
    aims = [r for r in rows if r["rule"] not in ("target", "lossless") and r["speedup"] is not None
            and r["speedup"] >= AIM_SPEEDUP and (r["accuracy_ratio"] or 0.0) >= AIM_ACCURACY_RATIO]
    return {
        "benchmark": "lossy", "model": model, "cascade": repr(cascade), "environment": environment_info(device, load_before),
        "regime": "warm: every row (ours only) finds the clip's target features cached; rules are compared with "
                  "each other and with the lossless cascade, never with HF",
        "config": {"scenes": scenes, "seed": seed, "rules": list(rules), "lenience": list(lenience),
                   "questions_per_scene": questions, "max_new_tokens": max_new_tokens, "draft_k": draft_k,
                   "levels": [level.name for level in drafting],
                   "adaptive": adaptive,
                   "world": world or {}},
        "skipped": skipped,
        "target": target_row, "lossless": lossless_row, "rows": rows,
        "clip_agreement": {"mean": sum(agreements) / len(agreements) if agreements else None,
                           "per_clip": agreements},
        "aim": {"accuracy_ratio": AIM_ACCURACY_RATIO, "speedup": AIM_SPEEDUP,
                "met_by": [(r["rule"], r["lenience"]) for r in aims]},
    }


COLUMNS = ("rule", "lenience", "tokens_per_s", "tau", "speedup", "exact_match", "token_agreement", "accuracy",
           "accuracy_ratio")


def format_report(report: dict[str, Any]) -> str:
    lines = [f"lossy acceptance on {report['config']['scenes']} held-out scenes, {report['cascade']}",
             format_table(report["rows"], COLUMNS)]
    met = report["aim"]["met_by"]
    lines.append(f"aim (>= {AIM_ACCURACY_RATIO:.0%} of the target's accuracy at >= {AIM_SPEEDUP}x the lossless "
                 f"cascade): {'met by ' + ', '.join(f'{r}@{v:g}' for r, v in met) if met else 'not met'}")
    for rule, why in report["skipped"].items():
        lines.append(f"skipped {rule}: {why}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Speed/fidelity curves: speedup over the lossless cascade (x) against task-accuracy ratio and exact match."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, metric, label in ((axes[0], "accuracy_ratio", "task accuracy / target's"),
                                (axes[1], "exact_match", "exact match with the target's answer")):
        for rule in report["config"]["rules"]:
            points = [r for r in report["rows"] if r["rule"] == rule and r["speedup"] is not None]
            if not points:
                continue
            xs, ys = [p["speedup"] for p in points], [p[metric] if p[metric] is not None else 0.0 for p in points]
            axis.plot(xs, ys, marker="o", label=rule)
            for p, x, y in zip(points, xs, ys):
                axis.annotate(f"{p['lenience']:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        axis.axvline(1.0, color="grey", lw=0.8)
        axis.set_xlabel("speedup over the lossless cascade (tokens/s)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].axhline(AIM_ACCURACY_RATIO, color="grey", ls="--", lw=0.8)
    axes[0].legend(fontsize=7)
    fig.suptitle("lossy acceptance: speed against fidelity (labels: lenience)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evcascade.bench lossy", description=__doc__.split("\n")[0])
    add_held_out_world_args(parser, "lossy", max_new_tokens=40, draft_k=5)
    parser.add_argument("--rules", default=",".join(DEFAULT_RULES), help="comma-separated lossy rules")
    parser.add_argument("--lenience", default=",".join(f"{v:g}" for v in DEFAULT_LENIENCE),
                        help="comma-separated lenience values in [0, 1]")
    parser.add_argument("--static", action="store_true", help="static cascade with --draft-k (default: adaptive)")
    parser.add_argument("--levels", help="comma-separated level names to draft with (default: all the cascade's); "
                                         "with --static, one level gives every rule the same plan, so tau compares rules")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write ``lossy.json`` and ``lossy.png``; 2 on a usage error."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        lenience = tuple(float(v) for v in args.lenience.split(",") if v.strip())
    except ValueError:
        print(f"evcascade.bench lossy: --lenience must be comma-separated numbers, got {args.lenience!r}",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    world = {"duration_us": args.duration_us} if args.duration_us else None
    try:
        report = run_benchmark(args.model, scenes=args.scenes, seed=args.seed,
                               rules=tuple(r.strip() for r in args.rules.split(",") if r.strip()),
                               lenience=lenience, questions=args.questions, max_new_tokens=args.max_new_tokens,
                               draft_k=args.draft_k, adaptive=not args.static, device=args.device, world=world,
                               levels=tuple(n.strip() for n in args.levels.split(",") if n.strip()) if args.levels else None)
    except InputError as error:
        print(f"evcascade.bench lossy: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    save_report(args.out, "lossy", report, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
