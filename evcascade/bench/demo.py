"""``python -m evcascade.bench demo``: the bundled demo cascade side by side with Hugging Face's decoders.

On held-out synthetic-world scenes (``--scenes N --seed S``), every question of every scene is answered greedily,
with the same inputs, by every row; every answer is checked identical to the reference (``identical``). Rows:

kind "real" (the cascade's own models)
    target (HF generate)               the reference: ``generate(input_ids, pixel_values_videos, do_sample=False)``
    target (ours, no drafter)          our loop with no levels (its overhead; clip features and prefix KV cached)
    HF assisted (L1 LM, text only)     ``generate(assistant_model=<L1 DraftLM's language_model>)``; the assistant
                                       reads the target's ids, ``<video>`` placeholders included, as plain ids
    HF prompt lookup                   ``generate(prompt_lookup_num_tokens=--draft-k)``
    ours: n-gram / n-gram + L1 / full cascade (adaptive) / full cascade (static k)
kind "cost-twin" (the real cascade's accept/reject pattern on a realistically sized target)
    twin: HF generate, twin: target (ours, no drafter), twin: full cascade replayed (adaptive, and static k),
    twin: n-gram + L1 replayed

Why a cost twin: the demo target is tiny and overhead-bound on a CPU (a drafter forward costs ~0.3 of a target
forward, where a 7B target's real drafters sit near 0.02-0.05), so its speedups say little about a real
deployment. The twin is an untrained ``VideoLlavaForConditionalGeneration`` with the real target's vocabulary,
token ids and vision tower (so the L2 level's key-frame features are the ones it was built for) and a large
random text model (``--twin-hidden``, ``--twin-layers``). Its own answers are meaningless, so the real
cascade's acceptance is replayed on it (``bench/replay.py``): under greedy verification a block drafted from
position s keeps exactly the drafts before the first one that differs from the real answer ``y``, so for each
block the twin asks for, the real level drafts after ``y[:s]`` as it would have in the real run (same context,
same n-gram memory: this also pays its real cost), and a ``ReplayDrafter`` hands the twin its own answer ``z``
over the matching prefix and wrong ids after it. The twin then accepts exactly what the real target accepted
(the static-k rows of both kinds show identical per-position acceptance). The twin has no EOS and answers with
``len(y)`` tokens, plus one when ``y`` ended with EOS (a real verify that accepted a drafted EOS computed the
token after it too, then cut it). Known approximation at the answer's end only: when the real target wrote the EOS
itself, the twin needs one forward more for that extra token; drafts the real run made past its EOS are not
replayed (fewer drafted, never fewer accepted). Acceptance by position is otherwise exact. Reported with it: the twin's cost ratio c (one L1 draft token / one twin forward), and per level
the teacher-forced agreement ``(level's greedy token after y[:p]) == y[p]`` (policy-free, ``teacher_forced_hits``).

Per row: tokens/s (answer tokens / wall seconds, summed over answers), speedup over the row's HF generate,
speedup over our no-drafter loop, tau (tokens per target forward; plain decoding is 1), target forwards, first
token ms, and per level the acceptance by position and its conditional acceptance (the a of EWIF). For the
full cascade, per question kind and level the acceptance (is L2 worth it on colour questions?) and how many
tokens L2 drafted (did the adaptive policy keep it?). Every row gets its own levels (its own n-gram memory) and
decoder, and decodes its first answer once untimed so that lazy initialisation is charged to no row.
Levels are found by role: the n-gram; L1 = the first event drafter without a frame refiner; L2 = the first
with one. A row that needs a missing level is listed under ``skipped`` with the reason.
Output: a table, ``demo.json`` and ``demo.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evcascade.bench.common import (add_held_out_world_args, environment_info, format_table, fresh_levels,
                                    mismatch_exit_code, save_report)
from evcascade.bench.engine import conditional_acceptance, hf_run, measure_costs
from evcascade.bench.replay import ReplayDrafter, teacher_forced_hits
from evcascade.errors import InputError

AIM_TAU = 4.0
REAL, TWIN = "real", "cost-twin"


# ----------------------------------------------------------------------------------------------- bookkeeping


def _add_by_position(total: list[int], counts: list[int]) -> None:
    """``total += counts`` position-wise, growing ``total`` as needed (in place: ``total`` is ours)."""
    total.extend([0] * (len(counts) - len(total)))
    for position, count in enumerate(counts):
        total[position] += count


@dataclass
class RowTotals:
    """Running sums of one row over every answer."""

    name: str
    kind: str
    tokens: int = 0
    seconds: float = 0.0
    forwards: int | None = 0
    """None for HF's speculative rows: ``generate`` does not report its target forwards."""
    first_token_s: list[float] = field(default_factory=list)
    answers: int = 0
    identical: bool = True
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    levels: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    """level name -> {"drafted_by_position", "accepted_by_position"} summed over answers."""
    by_kind: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    """question kind -> level name -> [accepted, drafted]."""

    def add(self, ids: list[int], reference: list[int], wall_s: float, first_token_s: float,
            stats: dict[str, Any] | None = None, question_kind: str = "", forwards: int | None = None) -> None:
        self.tokens += len(ids)
        self.seconds += wall_s
        self.first_token_s.append(first_token_s)
        self.answers += 1
        if ids != reference:
            self.identical = False
            self.mismatches.append({"answer": self.answers - 1, "ids": ids, "reference": reference})
        if stats is None:
            self.forwards = None if forwards is None or self.forwards is None else self.forwards + forwards
            return
        self.forwards = None if self.forwards is None else self.forwards + stats["target_forwards"]
        for level in stats["levels"]:
            total = self.levels.setdefault(level["name"], {"drafted_by_position": [], "accepted_by_position": []})
            _add_by_position(total["drafted_by_position"], level["drafted_by_position"])
            _add_by_position(total["accepted_by_position"], level["accepted_by_position"])
            counts = self.by_kind.setdefault(question_kind, {}).setdefault(level["name"], [0, 0])
            counts[0] += sum(level["accepted_by_position"])
            counts[1] += sum(level["drafted_by_position"])

    def row(self) -> dict[str, Any]:
        levels = {name: {**record, "drafted": sum(record["drafted_by_position"]),
                         "accepted": sum(record["accepted_by_position"]),
                         "conditional_acceptance": conditional_acceptance(record)}
                  for name, record in self.levels.items()}
        return {
            "row": self.name, "kind": self.kind, "answers": self.answers, "tokens": self.tokens,
            "seconds": self.seconds, "tokens_per_s": self.tokens / self.seconds if self.seconds > 0 else 0.0,
            "tau": self.tokens / self.forwards if self.forwards else None, "target_forwards": self.forwards,
            "first_token_ms": 1e3 * statistics.fmean(self.first_token_s) if self.first_token_s else None,
            "identical": self.identical, "mismatches": self.mismatches[:5], "levels": levels,
            "acceptance": ", ".join(f"{name} {record['accepted']}/{record['drafted']}" for name, record in levels.items()),
            "by_kind": {kind: {name: {"accepted": a, "drafted": d, "rate": a / d if d else None}
                               for name, (a, d) in counts.items()} for kind, counts in self.by_kind.items()},
        }


# ----------------------------------------------------------------------------------------------- levels and twin


@dataclass(frozen=True)
class Roles:
    """The cascade's levels by role (None where the cascade has none)."""

    ngram: Any
    l1: Any
    l2: Any


def find_roles(levels) -> Roles:
    """The n-gram level, L1 (first event drafter without a frame refiner) and L2 (first with one)."""
    from evcascade.decoding.ngram import NGramDrafter

    def event_levels(with_key_frame: bool):
        return [level for level in levels
                if getattr(getattr(level, "prefix_fn", None), "uses_key_frame", None) is with_key_frame]

    ngram = next((level for level in levels if isinstance(level, NGramDrafter)), None)
    return Roles(ngram, next(iter(event_levels(False)), None), next(iter(event_levels(True)), None))


def build_twin(target, *, hidden_size: int, num_layers: int, seed: int = 0):
    """An untrained twin of a ``VideoLlavaForConditionalGeneration``: the same config, vocabulary and ids, a text
    model of ``hidden_size`` x ``num_layers`` (random, seeded), the target's vision towers copied (so key-frame
    features match) and a fresh projector onto the new width. Its generation config has no EOS."""
    from transformers import VideoLlavaForConditionalGeneration

    if hidden_size < 8 or num_layers < 1:
        raise InputError(f"--twin-hidden must be >= 8 and --twin-layers >= 1, got {hidden_size} and {num_layers}")
    config = copy.deepcopy(target.config)
    text = config.text_config
    num_heads = max(1, hidden_size // 64)  # head size 64, as Llama-7B's
    if hidden_size % num_heads:
        raise InputError(f"--twin-hidden must be a multiple of 64 above 64, got {hidden_size}")
    text.hidden_size, text.num_hidden_layers, text.intermediate_size = hidden_size, num_layers, 4 * hidden_size
    text.num_attention_heads = text.num_key_value_heads = num_heads
    text.head_dim = hidden_size // num_heads
    text.eos_token_id = None
    torch.manual_seed(seed)
    twin = VideoLlavaForConditionalGeneration(config).eval()
    for tower in ("video_tower", "image_tower"):
        getattr(twin.model, tower).load_state_dict(getattr(target.model, tower).state_dict())
    twin.generation_config.eos_token_id = None  # exactly max_new_tokens tokens per answer
    twin.generation_config.pad_token_id = config.text_config.pad_token_id
    return twin


# ----------------------------------------------------------------------------------------------- timed runs


def _ours(decoder, request, context, options) -> tuple[list[int], float, float, dict[str, Any]]:
    """One ``CascadeDecoder.generate``, timed from outside as the HF rows are: (ids, wall s, first token s, stats)."""
    started = time.perf_counter()
    result = decoder.generate(request, context, options)
    wall_s = time.perf_counter() - started
    return result.token_ids[0].tolist(), wall_s, result.stats.time_to_first_token_s, result.stats.to_dict()


@dataclass
class OursRow:
    """One of our rows: which levels (by role) it drafts with and how; its decoder is made on first use."""

    name: str
    roles: tuple[str, ...]
    """"all" or role names ("ngram", "l1") picked from the cascade."""
    adaptive: bool = True
    decoder: Any = None


def run_benchmark(model: str, *, scenes: int, seed: int, questions: int | None = None, max_new_tokens: int = 48,
                  draft_k: int = 8, twin_hidden: int = 1024, twin_layers: int = 8, twin: bool = True,
                  device: str = "cpu", world: dict | None = None) -> dict[str, Any]:
    """Answer every question of ``scenes`` held-out scenes with every row; the report as a dict."""
    from evcascade.cascade import Cascade
    from evcascade.clip import load_clip
    from evcascade.data.world import WorldConfig, make_world_sample, scene_seeds
    from evcascade.decoding.drafters import DraftContext
    from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
    from evcascade.decoding.policy import AdaptivePolicy
    from evcascade.decoding.verifier import VerifyRequest, VideoLlavaVerifier

    for flag, value, low in (("--scenes", scenes, 1), ("--max-new-tokens", max_new_tokens, 1),
                             ("--draft-k", draft_k, 1), ("--questions", 1 if questions is None else questions, 1)):
        if value < low:
            raise InputError(f"{flag} must be >= {low}, got {value}")
    cascade = Cascade.from_pretrained(model, device=device)
    target = cascade.verifier.model
    roles = find_roles(cascade.levels)
    skipped: dict[str, str] = {}

    # ---- the real rows
    def need(row: str, *wanted: str) -> bool:
        missing = [role for role in wanted if getattr(roles, role) is None]
        if missing:
            skipped[row] = f"the cascade has no {' / '.join(missing)} level (levels: {[l.name for l in cascade.levels]})"
        return not missing

    hf_rows: dict[str, dict[str, Any]] = {"target (HF generate)": {}}
    if need("HF assisted (L1 LM, text only)", "l1"):
        hf_rows["HF assisted (L1 LM, text only)"] = {"assistant_model": roles.l1.model.language_model}
    hf_rows["HF prompt lookup"] = {"prompt_lookup_num_tokens": draft_k}
    ours_rows = [OursRow("target (ours, no drafter)", ())]
    if need("ours: n-gram", "ngram"):
        ours_rows.append(OursRow("ours: n-gram", ("ngram",)))
    if need("ours: n-gram + L1", "ngram", "l1"):
        ours_rows.append(OursRow("ours: n-gram + L1", ("ngram", "l1")))
    ours_rows += [OursRow("ours: full cascade", ("all",)), OursRow("ours: full cascade (static k)", ("all",), False)]
    full_row = "ours: full cascade"

    def levels_for(wanted: tuple[str, ...]) -> list:
        fresh = fresh_levels(cascade.levels)  # a new n-gram memory per row
        if wanted == ("all",):
            return fresh
        picked = [getattr(roles, role) for role in wanted]
        return [new for old, new in zip(cascade.levels, fresh) if any(old is p for p in picked)]

    totals = {name: RowTotals(name, REAL) for name in hf_rows}
    totals.update({row.name: RowTotals(row.name, REAL) for row in ours_rows})

    # ---- the cost twin
    twin_model = twin_verifier = None
    twin_rows: list[str] = []
    twin_policies: dict[str, AdaptivePolicy] = {}
    twin_cost_levels = []
    if twin:
        twin_model = build_twin(target, hidden_size=twin_hidden, num_layers=twin_layers, seed=seed)
        twin_verifier = VideoLlavaVerifier(twin_model, preprocess_config=cascade.verifier.preprocess_config,
                                           eos_token_ids=())
        twin_rows = ["twin: HF generate", "twin: target (ours, no drafter)", "twin: full cascade replayed",
                     "twin: full cascade replayed (static k)"]
        if need("twin: n-gram + L1 replayed", "ngram", "l1"):
            twin_rows.append("twin: n-gram + L1 replayed")
        totals.update({name: RowTotals(name, TWIN) for name in twin_rows})
        twin_policies = {name: AdaptivePolicy() for name in twin_rows if "replayed" in name}
        twin_cost_levels = fresh_levels(cascade.levels)  # the real levels that pay the replayed drafts' cost
    twin_costs = None
    teacher_forced: dict[str, list[int]] = {}  # level -> [hits, positions] after the first answer token
    vocab_size = int(target.get_output_embeddings().weight.shape[0])

    world_config = WorldConfig(**(world or {}))
    answers: list[dict[str, Any]] = []
    from tqdm import tqdm

    for scene_seed in tqdm(scene_seeds(seed, scenes), desc="demo bench", unit="scene", file=sys.stderr):
        sample = make_world_sample(scene_seed, world_config)
        clip = load_clip(sample.events, sample.video, num_frames=cascade.num_frames)
        pixels = cascade.verifier.pixel_values(clip.video.frames)  # [1, T, 3, S, S]
        for qa in sample.qa[:questions]:
            built = cascade.prompter(qa.question)
            request = VerifyRequest(built.target_ids, pixels)
            context = DraftContext(built.text_ids, events=clip.events, video=clip.video)
            options = GenerationOptions(**{**cascade.generation_defaults, "max_new_tokens": max_new_tokens,
                                           "draft_k": draft_k, "tokenizer": cascade.tokenizer})

            def hf(model_, prompt_ids, new_tokens, **kwargs):
                return hf_run(model_, prompt_ids, new_tokens, pixel_values_videos=pixels, **kwargs)

            # HF rows; the first call of each is an untimed warm-up (lazy initialisation is no row's cost)
            reference: list[int] = []
            for name, kwargs in hf_rows.items():
                if not totals[name].answers:
                    hf(target, built.target_ids, max_new_tokens, **kwargs)
                run = hf(target, built.target_ids, max_new_tokens, **kwargs)
                if name == "target (HF generate)":
                    reference = run.token_ids
                plain = not kwargs
                totals[name].add(run.token_ids, reference, run.wall_s, run.first_token_s,
                                 forwards=len(run.token_ids) if plain else None)

            for row in ours_rows:
                if row.decoder is None:  # untimed first answer, then a fresh decoder and fresh n-gram memory
                    CascadeDecoder(cascade.verifier, levels_for(row.roles)).generate(
                        request, context, _row_options(options, row))
                    row.decoder = CascadeDecoder(cascade.verifier, levels_for(row.roles))
                if row.name == full_row and twin:
                    # the levels exactly as the full cascade holds them now: the twin's n-gram gets the same memory
                    for real_level, cost_level in zip(row.decoder.levels, twin_cost_levels):
                        if hasattr(real_level, "memory"):
                            cost_level.memory = copy.copy(real_level.memory)
                        hits = teacher_forced_hits(real_level, context, reference)
                        forced = teacher_forced.setdefault(real_level.name, [0, 0])
                        forced[0], forced[1] = forced[0] + sum(hits[1:]), forced[1] + len(hits[1:])
                ids, wall_s, first_s, stats = _ours(row.decoder, request, context, _row_options(options, row))
                totals[row.name].add(ids, reference, wall_s, first_s, stats, qa.kind)
            answers.append({"scene_seed": scene_seed, "kind": qa.kind, "question": qa.question,
                            "answer": qa.answer, "target_answer": cascade.tokenizer.decode(reference),
                            "target_tokens": len(reference)})
            if not twin or not reference:
                continue

            # ---- the twin's rows for this answer. The real run's last verify also computed the token after an EOS
            # (then cut by the stop): the twin makes that token too, so its forwards match the real run's
            ended_by_eos = len(reference) < max_new_tokens and reference[-1] in cascade.verifier.eos_token_ids
            length = len(reference) + int(ended_by_eos)
            twin_run = hf(twin_model, built.target_ids, length)
            twin_reference = twin_run.token_ids
            twin_options = GenerationOptions(max_new_tokens=length, draft_k=draft_k, eos_token_ids=())
            plain_options = GenerationOptions(max_new_tokens=length, draft_k=0, adaptive=False, eos_token_ids=())
            static_options = GenerationOptions(max_new_tokens=length, draft_k=draft_k, adaptive=False, eos_token_ids=())
            cost_level = roles.l1 if roles.l1 is not None else roles.ngram
            if twin_costs is None and cost_level is not None:
                twin_costs = _twin_costs(twin_verifier, cost_level, built.text_ids, twin_reference, draft_k)
            if not totals["twin: HF generate"].answers:
                twin_run = hf(twin_model, built.target_ids, length)  # the first was the warm-up
            totals["twin: HF generate"].add(twin_run.token_ids, twin_reference, twin_run.wall_s,
                                            twin_run.first_token_s, forwards=length)
            twin_reference_ids = torch.tensor([twin_reference])  # [1, n]
            for name in twin_rows[1:]:
                row_options = {"twin: target (ours, no drafter)": plain_options,
                               "twin: full cascade replayed (static k)": static_options}.get(name, twin_options)
                if name == "twin: target (ours, no drafter)":
                    levels = []
                else:
                    wanted = (roles.ngram.name, roles.l1.name) if name == "twin: n-gram + L1 replayed" else None
                    levels = [ReplayDrafter(None, twin_reference_ids, vocab_size=vocab_size, level=level,
                                            level_context=context, level_answer=reference, name=level.name)
                              for level in twin_cost_levels if wanted is None or level.name in wanted]
                decoder = CascadeDecoder(twin_verifier, levels, policy=twin_policies.get(name))
                if not totals[name].answers:
                    decoder.generate(request, context, row_options)  # untimed warm-up
                ids, wall_s, first_s, stats = _ours(decoder, request, context, row_options)
                totals[name].add(ids, twin_reference, wall_s, first_s, stats, qa.kind)

    rows = [totals[name].row() for name in totals]
    for group, base_name, ours_name in ((REAL, "target (HF generate)", "target (ours, no drafter)"),
                                        (TWIN, "twin: HF generate", "twin: target (ours, no drafter)")):
        base = next((r for r in rows if r["row"] == base_name), None)
        ours_base = next((r for r in rows if r["row"] == ours_name), None)
        for row in rows:
            if row["kind"] == group and base is not None:
                row["speedup"] = row["tokens_per_s"] / base["tokens_per_s"] if base["tokens_per_s"] else None
                row["speedup_vs_ours"] = (row["tokens_per_s"] / ours_base["tokens_per_s"]
                                          if ours_base and ours_base["tokens_per_s"] else None)
    report = {
        "benchmark": "demo", "model": model, "cascade": repr(cascade), "environment": environment_info(device),
        "config": {"scenes": scenes, "seed": seed, "questions_per_scene": questions, "max_new_tokens": max_new_tokens,
                   "draft_k": draft_k, "twin": twin, "twin_hidden": twin_hidden, "twin_layers": twin_layers,
                   "world": world or {}},
        "levels": {role: getattr(roles, role).name if getattr(roles, role) is not None else None
                   for role in ("ngram", "l1", "l2")},
        "skipped": skipped, "rows": rows, "answers": answers,
        "outputs_identical": all(row["identical"] for row in rows),
        "params": {"target": _num_params(target), "twin": _num_params(twin_model) if twin_model is not None else None,
                   **{f"{role}_draft_lm": _num_params(getattr(roles, role).model)
                      for role in ("l1", "l2") if getattr(roles, role) is not None}},
        "twin_costs": twin_costs,
        "teacher_forced_acceptance": {name: {"hits": h, "positions": n, "rate": h / n if n else None}
                                      for name, (h, n) in teacher_forced.items()},
    }
    report["aim"] = _aim(report, full_row)
    return report


def _row_options(options, row: OursRow):
    """``options`` for one of our rows: no drafts for the plain loop, the row's adaptive/static choice otherwise."""
    from dataclasses import replace

    return replace(options, draft_k=0 if not row.roles else options.draft_k, adaptive=row.adaptive and bool(row.roles))


def _twin_costs(verifier, level, prompt_ids: torch.LongTensor, answer: list[int], draft_k: int) -> dict[str, Any]:
    """The twin's per-forward costs and c = (one draft token of ``level``) / (one 1-token twin forward), measured
    with ``engine.measure_costs`` on a text-only context (the prompt's visual tokens left out: both sides shorter)."""
    answer_ids = torch.tensor([(answer * (2 * (draft_k + 2)))[: max(2 * (draft_k + 2), len(answer))]])  # [1, m]
    costs = measure_costs(verifier, level, prompt_ids, answer_ids, draft_k, repeats=5)
    return {"level": level.name, "cost_ratio_c": costs.cost_ratio, "target_forward_ms": 1e3 * costs.target_forward_s,
            "verify_ms": {n: 1e3 * s for n, s in costs.verify_s.items()},
            "draft_ms": {k: 1e3 * s for k, s in costs.draft_s.items()}}


def _num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _aim(report: dict[str, Any], full_row: str) -> dict[str, Any]:
    """The issue's aims, judged from the rows: full cascade tau >= 4 and the highest tokens/s of the real rows;
    L2 more accepted than L1 on colour questions, or dropped by the adaptive policy."""
    rows = {r["row"]: r for r in report["rows"]}
    full = rows[full_row]
    real = [r for r in report["rows"] if r["kind"] == REAL]
    fastest = max(real, key=lambda r: r["tokens_per_s"])["row"] if real else None
    out: dict[str, Any] = {"tau": full["tau"], "tau_met": bool(full["tau"] and full["tau"] >= AIM_TAU),
                           "fastest_real_row": fastest, "fastest_met": fastest == full_row}
    l1, l2 = report["levels"]["l1"], report["levels"]["l2"]
    if l1 is None or l2 is None:
        out["l2"] = "not judged: the cascade has no L1 and L2 levels"
        return out
    colour = full["by_kind"].get("colour", {})
    rate = {name: (colour.get(name) or {}).get("rate") for name in (l1, l2)}
    drafted = full["levels"].get(l2, {}).get("drafted", 0)
    out.update({"colour_acceptance": rate, "l2_drafted": drafted,
                "l2_better_on_colour": rate[l2] is not None and rate[l1] is not None and rate[l2] > rate[l1],
                "l2_dropped": drafted == 0})
    return out


# ----------------------------------------------------------------------------------------------- output

COLUMNS = ("row", "kind", "tokens_per_s", "speedup", "speedup_vs_ours", "tau", "target_forwards", "first_token_ms",
           "acceptance", "identical")


def format_report(report: dict[str, Any]) -> str:
    """The table and the lines under it, as printed."""
    config = report["config"]
    lines = [f"demo cascade on {config['scenes']} held-out scenes (seed {config['seed']}), {report['cascade']}, "
             f"greedy, max_new_tokens {config['max_new_tokens']}, draft_k {config['draft_k']}",
             format_table(report["rows"], COLUMNS), ""]
    for row in report["rows"]:
        for name, level in row["levels"].items():
            by_position = " ".join(f"{a}/{d}" for a, d in zip(level["accepted_by_position"], level["drafted_by_position"]))
            lines.append(f"{row['row']} | {name}: {level['accepted']}/{level['drafted']} accepted, conditional "
                         f"{level['conditional_acceptance']:.2f}; by position {by_position or '-'}")
    full = next(r for r in report["rows"] if r["row"] == "ours: full cascade")
    lines.append("full cascade, acceptance per question kind: " + "; ".join(
        f"{kind} " + ", ".join(f"{name} {v['accepted']}/{v['drafted']}" for name, v in levels.items())
        for kind, levels in full["by_kind"].items()))
    forced = report["teacher_forced_acceptance"]
    if forced:
        lines.append("teacher-forced next-token agreement with the target (positions 1..n-1): " + ", ".join(
            f"{name} {v['hits']}/{v['positions']}" for name, v in forced.items()))
    costs = report.get("twin_costs")
    if costs:
        lines.append(f"cost twin: {report['params']['twin'] / 1e6:.0f}M params (target {report['params']['target'] / 1e6:.1f}M); "
                     f"one twin forward {costs['target_forward_ms']:.1f} ms, c = {costs['cost_ratio_c']:.3f} "
                     f"(one {costs['level']} draft token / one twin forward)")
    aim = report["aim"]
    lines.append(f"aim: full cascade tau {aim['tau'] or 0:.2f} (>= {AIM_TAU}: {aim['tau_met']}); fastest real row "
                 f"{aim['fastest_real_row']!r} ({'met' if aim['fastest_met'] else 'not met'}); L2: "
                 + (aim["l2"] if "l2" in aim else f"colour acceptance {aim['colour_acceptance']}, "
                    f"L2 drafted {aim['l2_drafted']} tokens"))
    lines.append(f"outputs identical to the reference in every row: {report['outputs_identical']}")
    for row, why in report["skipped"].items():
        lines.append(f"skipped {row}: {why}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Tokens/s per row, one panel per kind (real / cost twin), tau and speedup written on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [kind for kind in (REAL, TWIN) if any(r["kind"] == kind for r in report["rows"])]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), squeeze=False)
    for axis, kind, colour in zip(axes[0], kinds, ("tab:blue", "tab:orange")):
        rows = [r for r in report["rows"] if r["kind"] == kind]
        axis.barh(range(len(rows)), [r["tokens_per_s"] for r in rows], color=colour)
        axis.set_yticks(range(len(rows)), [r["row"] for r in rows], fontsize=7)
        axis.invert_yaxis()
        for index, r in enumerate(rows):
            tau = f"tau {r['tau']:.2f}" if r["tau"] else "tau ?"
            axis.annotate(f" {tau}, {r.get('speedup') or 0:.2f}x", (r["tokens_per_s"], index), va="center", fontsize=7)
        axis.set_xlabel("tokens/s")
        axis.set_title(f"{kind} rows")
        axis.margins(x=0.3)
    fig.suptitle(f"demo cascade side by side ({report['config']['scenes']} scenes, greedy, outputs identical: "
                 f"{report['outputs_identical']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evcascade.bench demo", description=__doc__.split("\n")[0])
    add_held_out_world_args(parser, "demo", max_new_tokens=48, draft_k=8)
    parser.add_argument("--twin-hidden", type=int, default=1024, help="cost twin's text hidden size")
    parser.add_argument("--twin-layers", type=int, default=8, help="cost twin's text layers")
    parser.add_argument("--no-twin", action="store_true", help="skip the cost-twin rows")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write ``demo.json`` and ``demo.png``; 2 on a usage error, 1 if an output differs."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    world = {"duration_us": args.duration_us} if args.duration_us else None
    try:
        report = run_benchmark(args.model, scenes=args.scenes, seed=args.seed, questions=args.questions,
                               max_new_tokens=args.max_new_tokens, draft_k=args.draft_k, twin_hidden=args.twin_hidden,
                               twin_layers=args.twin_layers, twin=not args.no_twin, device=args.device, world=world)
    except InputError as error:
        print(f"evcascade.bench demo: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    save_report(args.out, "demo", report, plot)
    return mismatch_exit_code(report, "their reference's greedy answer")


if __name__ == "__main__":
    sys.exit(main())
