"""``python -m evcascade.bench demo``: the bundled demo cascade side by side with Hugging Face's decoders.

On held-out synthetic-world scenes (``--scenes N --seed S``), every question of every scene is answered greedily,
with the same inputs, by every row of two regimes; every answer is checked identical to its kind's reference (the
cold HF generate answer) and the run exits 1 otherwise. The rows are declared in one place, ``row_specs``: each
``RowSpec`` names its regime and its reference, and ``DemoBench.prepare`` gives every row of a regime the same
precondition, untimed:

cold   every answer starts with empty caches, for every row: our verifier's video features and prefix KV, the
       drafters' per-clip memos (event tokens, key-frame encode, visual prefix) are cleared
       (``VideoLlavaVerifier.clear_caches``, ``EventDrafterPrefix.clear``); HF ``generate`` keeps nothing.
warm   a second question on a clip already seen: our caches hold the clip (an untimed answer to another question
       on it filled them); HF gets HF's own best practice, a ``DynamicCache`` over the shared prefix (system
       prompt + video tokens, computed once per clip with ``pixel_values_videos``) deep-copied into
       ``generate(input_ids=full_prompt, past_key_values=...)`` per answer (the copy is timed). HF's assisted and
       prompt-lookup modes do not reproduce plain generate from a prompt cache in transformers 5.24 (tested), so
       they are cold-only rows (``skipped`` says why).

kind "real" (the cascade's own models)
    HF generate                        the reference: ``generate(input_ids, pixel_values_videos, do_sample=False)``
    HF assisted (L1 LM, text only)     ``generate(assistant_model=<L1 DraftLM's language_model>)``; the assistant
                                       reads the target's ids, ``<video>`` placeholders included, as plain ids
    HF prompt lookup                   ``generate(prompt_lookup_num_tokens=--draft-k)``
    ours, no drafter                   our loop with no levels
    ours: n-gram / n-gram + L1 / full cascade (adaptive) / full cascade (static k)
kind "cost-twin" (the real cascade's accept/reject pattern on a realistically sized target)
    twin: HF generate, twin: ours, no drafter, twin: full cascade replayed (adaptive, and static k),
    twin: n-gram + L1 replayed

Three ratios decompose every headline (``decomposition``): speculation alone = full cascade / our no-drafter
loop in the same regime; caching alone = our warm no-drafter loop / HF generate with its prompt cache (cold: the
same ratio is our loop's overhead against HF's, nothing being cached); end to end = full cascade / HF generate.
Each is given for all answers and for the long-answer slice: the answers whose reference has at least
``--long-tokens`` (16) tokens, a rule that picks the longer captions of today's ~8-token world and every caption
of a world with 30-80-token captions. A profile (ms per answer: vision / prefill / draft / verify / engine
overhead) says where our rows' time goes.

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

Per row: tokens/s (answer tokens / wall seconds, summed over answers), speedup over its kind's HF generate and
over its kind's no-drafter loop (same regime, same slice), tau (tokens per target forward; plain decoding is 1), target forwards, first
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
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from evcascade.bench.common import (add_held_out_world_args, add_twin_args, environment_info, format_table,
                                    fresh_levels, mismatch_exit_code, save_report)
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


PROFILE = ("vision_s", "prefill_s", "draft_s", "verify_s", "overhead_s")


@dataclass
class RowTotals:
    """Running sums of one row over every answer of one slice ("all", or "long": the long-answer slice)."""

    name: str
    kind: str
    regime: str = ""
    part: str = "all"
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
    profile_s: dict[str, float] = field(default_factory=dict)
    """Our rows: seconds in the vision tower, prefill, drafting, verifying and the engine's own overhead."""

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
        for key in PROFILE:
            self.profile_s[key] = self.profile_s.get(key, 0.0) + stats[key]
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
        per_answer_ms = {key[:-2] + "_ms": 1e3 * value / self.answers for key, value in self.profile_s.items()} \
            if self.answers else {}
        return {
            "row": self.name, "kind": self.kind, "regime": self.regime, "slice": self.part,
            "answers": self.answers, "tokens": self.tokens,
            "seconds": self.seconds, "tokens_per_s": self.tokens / self.seconds if self.seconds > 0 else 0.0,
            "tau": self.tokens / self.forwards if self.forwards else None, "target_forwards": self.forwards,
            "first_token_ms": 1e3 * statistics.fmean(self.first_token_s) if self.first_token_s else None,
            "answer_ms": 1e3 * self.seconds / self.answers if self.answers else None, "profile_ms": per_answer_ms,
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


def build_twin(target, *, hidden_size: int, num_layers: int, seed: int = 0, dtype: torch.dtype | None = None):
    """An untrained twin of a ``VideoLlavaForConditionalGeneration``: the same config, vocabulary and ids, a text
    model of ``hidden_size`` x ``num_layers`` (random, seeded), the target's vision towers copied (so key-frame
    features match) and a fresh projector onto the new width, made on the target's device in ``dtype`` (default: the
    target's; a 7B twin is never made in float32 on the host). Its generation config has no EOS."""
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
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or target.dtype)
    try:
        with torch.device(target.device):
            twin = VideoLlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    for tower in ("video_tower", "image_tower"):
        getattr(twin.model, tower).load_state_dict(getattr(target.model, tower).state_dict())
    twin.generation_config.eos_token_id = None  # exactly max_new_tokens tokens per answer
    twin.generation_config.pad_token_id = config.text_config.pad_token_id
    return twin


# ----------------------------------------------------------------------------------------------- row specs


@dataclass(frozen=True)
class RowSpec:
    """One table row, declared in one place: what answers (HF ``generate`` or our decoder), in which regime, and
    whose output it must equal. What a regime means is the same for every row of it (``prepare_answer``):

    cold  before every timed answer the clip is unseen: our verifier's video features and prefix KV and every
          drafter's per-clip memos (event tokens, key-frame encode, visual prefix) are cleared; HF ``generate``
          keeps nothing between calls, so it pays the vision tower and the visual prefill every time too.
    warm  a second question on a clip already seen: our caches hold the clip (filled by an untimed answer to
          another question on it); HF gets the documented prompt-cache reuse: a ``DynamicCache`` over the shared
          prefix (system prompt + video tokens, with ``pixel_values_videos``) computed once per clip, untimed, and
          ``copy.deepcopy``-ed into ``generate(past_key_values=...)`` for every answer (the copy is timed).
    """

    name: str
    kind: str
    """REAL (the cascade's own target) or TWIN (the cost twin)."""
    regime: str
    """COLD or WARM."""
    runner: str
    """"hf" (``generate``) or "ours" (``CascadeDecoder.generate``)."""
    hf_mode: str = "plain"
    """hf rows: "plain", "assisted" (the L1 LM as assistant) or "lookup" (prompt lookup)."""
    roles: tuple[str, ...] = ()
    """ours rows: () no drafter, ("all",) every level, or role names ("ngram", "l1"); twin rows replay them."""
    adaptive: bool = True
    reference: str = ""
    """The row whose answers this one must equal (every row: its kind's cold HF generate)."""

    @property
    def key(self) -> str:
        return f"{self.regime} | {self.name}"


COLD, WARM = "cold", "warm"
WARM_SKIPPED = {
    f"{WARM} | HF assisted (L1 LM, text only)": "HF's speculative modes with a prompt cache are not lossless in "
    "transformers 5.24: prompt lookup from a DynamicCache of a tiny Video-LLaVA's video prefix returned other tokens "
    "than plain generate (tests/bench/test_demo_bench.py shows it), so they are cold-only rows",
}
WARM_SKIPPED[f"{WARM} | HF prompt lookup"] = WARM_SKIPPED[f"{WARM} | HF assisted (L1 LM, text only)"]
REGIMES = (COLD, WARM)
HF_PLAIN, OURS_PLAIN, FULL = "HF generate", "ours, no drafter", "ours: full cascade"
TWIN_HF, TWIN_PLAIN, TWIN_FULL = "twin: HF generate", "twin: ours, no drafter", "twin: full cascade replayed"


def row_specs(regime: str, *, twin: bool) -> list[RowSpec]:
    """Every row of one regime, real then twin; each checked against its kind's cold HF generate."""
    real, cost = f"{COLD} | {HF_PLAIN}", f"{COLD} | {TWIN_HF}"
    specs = [RowSpec(HF_PLAIN, REAL, regime, "hf", reference=real)]
    if regime == COLD:  # see WARM_SKIPPED: HF's speculative modes do not take a prompt cache correctly
        specs += [RowSpec("HF assisted (L1 LM, text only)", REAL, regime, "hf", "assisted", ("l1",), reference=real),
                  RowSpec("HF prompt lookup", REAL, regime, "hf", "lookup", reference=real)]
    specs += [RowSpec(OURS_PLAIN, REAL, regime, "ours", reference=real),
             RowSpec("ours: n-gram", REAL, regime, "ours", roles=("ngram",), reference=real),
             RowSpec("ours: n-gram + L1", REAL, regime, "ours", roles=("ngram", "l1"), reference=real),
             RowSpec(FULL, REAL, regime, "ours", roles=("all",), reference=real),
             RowSpec("ours: full cascade (static k)", REAL, regime, "ours", roles=("all",), adaptive=False,
                     reference=real)]
    if twin:
        specs += [RowSpec(TWIN_HF, TWIN, regime, "hf", reference=cost),
                  RowSpec(TWIN_PLAIN, TWIN, regime, "ours", reference=cost),
                  RowSpec(TWIN_FULL, TWIN, regime, "ours", roles=("all",), reference=cost),
                  RowSpec("twin: full cascade replayed (static k)", TWIN, regime, "ours", roles=("all",),
                          adaptive=False, reference=cost),
                  RowSpec("twin: n-gram + L1 replayed", TWIN, regime, "ours", roles=("ngram", "l1"), reference=cost)]
    return specs


def clear_clip_caches(verifier, levels) -> None:
    """Empty every per-clip cache a cold answer must not find: the verifier's video features and prefix KV, and
    the drafters' memos (event tokens, key-frame features, visual prefix; L1 and L2 may share one encoder)."""
    verifier.clear_caches()
    for level in levels:
        prefix_fn = getattr(getattr(level, "cost_model", level), "prefix_fn", None)
        if hasattr(prefix_fn, "clear"):
            prefix_fn.clear()


def hf_prompt_cache(model, prompt_ids: torch.LongTensor, pixels: torch.Tensor):
    """HF's documented prompt-cache reuse: a ``DynamicCache`` over the prompt up to its last video token (system
    prompt + video tokens), computed with ``pixel_values_videos``; ``(prefix ids, cache)``."""
    from transformers import DynamicCache

    video = (prompt_ids[0] == model.config.video_token_id).nonzero().flatten()
    prefix_ids = prompt_ids[:, : int(video[-1]) + 1]  # [1, P]
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=prefix_ids, pixel_values_videos=pixels.to(model.dtype), cache=cache, use_cache=True)
    return prefix_ids, cache


def hf_answer(model, prompt_ids, pixels, new_tokens: int, prompt_cache=None, **kwargs):
    """One timed ``generate``: cold with ``pixel_values_videos``; warm from a deep copy of ``prompt_cache`` (timed)
    and without them (the video tokens are already in the cache: passing pixels again is an error)."""
    pixels = pixels.to(model.dtype)
    if prompt_cache is None:
        return hf_run(model, prompt_ids, new_tokens, pixel_values_videos=pixels, **kwargs)
    prefix_ids, cache = prompt_cache
    if not torch.equal(prompt_ids[:, : prefix_ids.shape[1]], prefix_ids):
        raise InputError("the prompt does not start with the cached prefix")  # a bench bug, never a user error
    started = time.perf_counter()
    copied = copy.deepcopy(cache)
    copy_s = time.perf_counter() - started
    with warnings.catch_warnings():  # 5.24 renames the argument; the documented pattern still works
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        run = hf_run(model, prompt_ids, new_tokens, past_key_values=copied, **kwargs)
    run.wall_s += copy_s
    run.first_token_s += copy_s
    return run


def _ours(decoder, request, context, options) -> tuple[list[int], float, float, dict[str, Any]]:
    """One ``CascadeDecoder.generate``, timed from outside as the HF rows are: (ids, wall s, first token s, stats)."""
    started = time.perf_counter()
    result = decoder.generate(request, context, options)
    wall_s = time.perf_counter() - started
    return result.token_ids[0].tolist(), wall_s, result.stats.time_to_first_token_s, result.stats.to_dict()


def long_answer(reference: list[int], long_tokens: int) -> bool:
    """The long-answer slice's rule: the target's own (reference) answer has at least ``long_tokens`` tokens.
    With the default 16 (twice the current world's ~8-token mean) it holds the longer captions of today's world
    and every caption of a world whose captions run 30-80 tokens."""
    return len(reference) >= long_tokens


@dataclass
class Question:
    """One question on one clip: every row's inputs, and the references once the HF rows have answered."""

    qa: Any
    built: Any
    other_built: Any
    """Another question on the same clip: what the warm regime's untimed first answer asks."""
    clip: Any
    pixels: torch.Tensor
    options: Any
    references: dict[str, list[int]] = field(default_factory=dict)
    """kind -> the cold HF generate answer."""
    long: bool = False

    def request(self, built=None):
        from evcascade.decoding.verifier import VerifyRequest

        return VerifyRequest((built or self.built).target_ids, self.pixels)

    def context(self, built=None):
        from evcascade.decoding.drafters import DraftContext

        return DraftContext((built or self.built).text_ids, events=self.clip.events, video=self.clip.video)


class DemoBench:
    """The rows' shared state (cascade, twin, totals) and the three steps every row takes per question:
    ``prepare`` (the regime's precondition, untimed), ``answer`` (timed), ``record``."""

    def __init__(self, cascade, *, max_new_tokens: int, draft_k: int, twin: bool, twin_hidden: int,
                 twin_layers: int, seed: int, long_tokens: int, twin_dtype: torch.dtype | None = None) -> None:
        from evcascade.decoding.policy import AdaptivePolicy
        from evcascade.decoding.verifier import VideoLlavaVerifier

        self.cascade, self.target = cascade, cascade.verifier.model
        self.max_new_tokens, self.draft_k, self.long_tokens = max_new_tokens, draft_k, long_tokens
        self.roles = find_roles(cascade.levels)
        self.skipped: dict[str, str] = dict(WARM_SKIPPED)
        self.specs = []
        for spec in row_specs(COLD, twin=twin) + row_specs(WARM, twin=twin):
            missing = [role for role in spec.roles if role != "all" and getattr(self.roles, role) is None]
            if missing:
                self.skipped[spec.key] = (f"the cascade has no {' / '.join(missing)} level "
                                          f"(levels: {[level.name for level in cascade.levels]})")
            else:
                self.specs.append(spec)
        self.totals = {(spec.key, part): RowTotals(spec.name, spec.kind, regime=spec.regime, part=part)
                       for spec in self.specs for part in ("all", "long")}
        self.decoders: dict[str, Any] = {}  # our real rows' decoders: own levels, n-gram memory and policy each
        self.twin_model = self.twin_verifier = None
        self.twin_policies: dict[str, AdaptivePolicy] = {}
        self.twin_cost_levels: dict[str, list] = {}
        if twin:
            self.twin_model = build_twin(self.target, hidden_size=twin_hidden, num_layers=twin_layers, seed=seed,
                                         dtype=twin_dtype)
            self.twin_verifier = VideoLlavaVerifier(self.twin_model, eos_token_ids=(),
                                                    preprocess_config=cascade.verifier.preprocess_config)
            self.twin_policies = {spec.key: AdaptivePolicy() for spec in self.specs if spec.kind == TWIN and spec.roles}
            # per regime, the real levels that pay the replayed drafts' cost (memory copied from its full row)
            self.twin_cost_levels = {regime: fresh_levels(cascade.levels) for regime in REGIMES}
        self.twin_costs: dict[str, Any] | None = None
        self.teacher_forced: dict[str, list[int]] = {}  # level -> [hits, positions] after the first answer token
        self.vocab_size = int(self.target.get_output_embeddings().weight.shape[0])
        self.prompt_caches: dict[str, Any] = {}  # kind -> HF's prompt cache of the current clip

    # -- the regime's precondition

    def new_clip(self) -> None:
        """A new clip: HF's prompt caches are for the last one."""
        self.prompt_caches = {}

    def prepare(self, spec: RowSpec, q: Question) -> None:
        """Untimed, identical for every row of a regime: cold empties every per-clip cache (ours; HF keeps none);
        warm makes sure the clip has been seen (ours: an answer to another question on it; HF: its prompt cache)."""
        from evcascade.decoding.engine import CascadeDecoder, GenerationOptions

        verifier = self.cascade.verifier if spec.kind == REAL else self.twin_verifier
        model = self.target if spec.kind == REAL else self.twin_model
        if spec.regime == COLD:
            clear_clip_caches(verifier, self.cascade.levels)
        elif spec.runner == "hf":
            if spec.kind not in self.prompt_caches:
                self.prompt_caches[spec.kind] = hf_prompt_cache(model, q.built.target_ids, q.pixels)
        else:
            primer = replace(q.options, max_new_tokens=1)  # fills the verifier's caches and the drafters' memos
            CascadeDecoder(self.cascade.verifier, fresh_levels(self.cascade.levels)).generate(
                q.request(q.other_built), q.context(q.other_built), primer)
            if spec.kind == TWIN:
                CascadeDecoder(verifier, []).generate(q.request(q.other_built), q.context(q.other_built),
                                                      GenerationOptions(max_new_tokens=1, draft_k=0,
                                                                        adaptive=False, eos_token_ids=()))

    # -- the timed answers

    def answer(self, spec: RowSpec, q: Question) -> tuple[list[int], float, float, dict[str, Any] | None]:
        """One timed answer of ``spec``'s row: (ids, wall s, first token s, our stats or None)."""
        if spec.kind == REAL and spec.runner == "hf":
            kwargs = {"assisted": {"assistant_model": getattr(self.roles.l1, "model", None) and
                                   self.roles.l1.model.language_model},
                      "lookup": {"prompt_lookup_num_tokens": self.draft_k}}.get(spec.hf_mode, {})
            run = hf_answer(self.target, q.built.target_ids, q.pixels, self.max_new_tokens,
                            self.prompt_caches.get(REAL) if spec.regime == WARM else None, **kwargs)
            return run.token_ids, run.wall_s, run.first_token_s, None
        if spec.kind == REAL:
            decoder = self.decoders[spec.key]
            return _ours(decoder, q.request(), q.context(), _row_options(q.options, spec))
        length, _ = self.twin_length(q)
        if spec.runner == "hf":
            run = hf_answer(self.twin_model, q.built.target_ids, q.pixels, length,
                            self.prompt_caches.get(TWIN) if spec.regime == WARM else None)
            return run.token_ids, run.wall_s, run.first_token_s, None
        return _ours(self.twin_decoder(spec, q), q.request(), q.context(), self.twin_options(spec, length))

    def twin_length(self, q: Question) -> tuple[int, bool]:
        """The twin's answer length: the real one, plus the token a real verify computed after a drafted EOS."""
        reference = q.references[REAL]
        ended_by_eos = len(reference) < self.max_new_tokens and reference[-1] in self.cascade.verifier.eos_token_ids
        return len(reference) + int(ended_by_eos), ended_by_eos

    def twin_options(self, spec: RowSpec, length: int):
        from evcascade.decoding.engine import GenerationOptions

        if not spec.roles:
            return GenerationOptions(max_new_tokens=length, draft_k=0, adaptive=False, eos_token_ids=())
        return GenerationOptions(max_new_tokens=length, draft_k=self.draft_k, adaptive=spec.adaptive,
                                 eos_token_ids=())

    def twin_decoder(self, spec: RowSpec, q: Question):
        """A decoder whose levels replay the real levels' blocks for this answer on the twin (``bench/replay.py``)."""
        from evcascade.decoding.engine import CascadeDecoder

        levels = []
        if spec.roles:
            wanted = None if spec.roles == ("all",) else {getattr(self.roles, role).name for role in spec.roles}
            reference_ids = torch.tensor([q.references[TWIN]])  # [1, n]
            levels = [ReplayDrafter(None, reference_ids, vocab_size=self.vocab_size, level=level,
                                    level_context=q.context(), level_answer=q.references[REAL], name=level.name)
                      for level in self.twin_cost_levels[spec.regime] if wanted is None or level.name in wanted]
        return CascadeDecoder(self.twin_verifier, levels, policy=self.twin_policies.get(spec.key))

    def ensure_ready(self, spec: RowSpec, q: Question) -> None:
        """A row's first answer runs once untimed (lazy initialisation is no row's cost); our real rows then get
        a fresh decoder with fresh levels (a fresh n-gram memory: the warm-up answer is not remembered)."""
        from evcascade.decoding.engine import CascadeDecoder

        if self.totals[(spec.key, "all")].answers:
            return
        if spec.kind == REAL and spec.runner == "ours":
            self.decoders[spec.key] = CascadeDecoder(self.cascade.verifier, self.levels_for(spec.roles))
        self.prepare(spec, q)
        self.answer(spec, q)
        if spec.kind == REAL and spec.runner == "ours":
            self.decoders[spec.key] = CascadeDecoder(self.cascade.verifier, self.levels_for(spec.roles))

    def levels_for(self, wanted: tuple[str, ...]) -> list:
        fresh = fresh_levels(self.cascade.levels)  # a new n-gram memory per row
        if wanted == ("all",):
            return fresh
        picked = [getattr(self.roles, role) for role in wanted]
        return [new for old, new in zip(self.cascade.levels, fresh) if any(old is p for p in picked)]

    # -- one question, every row

    def run_question(self, q: Question) -> None:
        """Every row answers ``q``: prepared for its regime (untimed), timed, checked against its reference.
        The rows run in ``row_specs`` order, so each kind's cold HF generate answers first: its answer is the
        reference (and decides the long-answer slice) for every row after it."""
        for spec in self.specs:
            if spec.kind == TWIN and not q.references.get(REAL):
                continue  # an empty real answer: nothing to replay
            self.ensure_ready(spec, q)
            if spec.key.endswith(f"| {FULL}"):
                self.before_full_row(spec, q)
            self.prepare(spec, q)
            ids, wall_s, first_s, stats = self.answer(spec, q)
            if spec.key == spec.reference:
                q.references[spec.kind] = ids
                q.long = q.long or (spec.kind == REAL and long_answer(ids, self.long_tokens))
                if spec.kind == TWIN and self.twin_costs is None:
                    self.measure_twin_costs(q)
            for part in ("all", "long") if q.long else ("all",):
                self.totals[(spec.key, part)].add(ids, q.references[spec.kind], wall_s, first_s, stats, q.qa.kind,
                                                  forwards=len(ids) if spec.hf_mode == "plain" else None)

    def measure_twin_costs(self, q: Question) -> None:
        """The twin's per-forward costs and c (once, on the first answer)."""
        cost_level = self.roles.l1 if self.roles.l1 is not None else self.roles.ngram
        if cost_level is not None:
            self.twin_costs = _twin_costs(self.twin_verifier, cost_level, q.built.text_ids, q.references[TWIN],
                                          self.draft_k)

    def before_full_row(self, spec: RowSpec, q: Question) -> None:
        """The twin's replaying levels get the memory the full cascade holds now; cold: teacher-forced agreement."""
        decoder = self.decoders[spec.key]
        for real_level, cost_level in zip(decoder.levels, self.twin_cost_levels.get(spec.regime, ())):
            if hasattr(real_level, "memory"):
                cost_level.memory = copy.copy(real_level.memory)
        if spec.regime != COLD:
            return
        for real_level in decoder.levels:
            hits = teacher_forced_hits(real_level, q.context(), q.references[REAL])
            forced = self.teacher_forced.setdefault(real_level.name, [0, 0])
            forced[0], forced[1] = forced[0] + sum(hits[1:]), forced[1] + len(hits[1:])


def run_benchmark(model: str, *, scenes: int, seed: int, questions: int | None = None, max_new_tokens: int = 48,
                  draft_k: int = 8, twin_hidden: int = 1024, twin_layers: int = 8, twin: bool = True,
                  device: str = "cpu", world: dict | None = None, long_tokens: int = 16,
                  twin_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Answer every question of ``scenes`` held-out scenes with every row of both regimes; the report as a dict."""
    from evcascade.cascade import Cascade
    from evcascade.clip import load_clip
    from evcascade.data.world import WorldConfig, make_world_sample, scene_seeds
    from evcascade.decoding.engine import GenerationOptions
    from tqdm import tqdm

    for flag, value, low in (("--scenes", scenes, 1), ("--max-new-tokens", max_new_tokens, 1),
                             ("--draft-k", draft_k, 1), ("--questions", 1 if questions is None else questions, 1),
                             ("--long-tokens", long_tokens, 1)):
        if value < low:
            raise InputError(f"{flag} must be >= {low}, got {value}")
    load_before = os.getloadavg()
    cascade = Cascade.from_pretrained(model, device=device)
    bench = DemoBench(cascade, max_new_tokens=max_new_tokens, draft_k=draft_k, twin=twin, twin_hidden=twin_hidden,
                      twin_layers=twin_layers, seed=seed, long_tokens=long_tokens, twin_dtype=twin_dtype)
    options = GenerationOptions(**{**cascade.generation_defaults, "max_new_tokens": max_new_tokens,
                                   "draft_k": draft_k, "tokenizer": cascade.tokenizer})
    answers: list[dict[str, Any]] = []
    for scene_seed in tqdm(scene_seeds(seed, scenes), desc="demo bench", unit="scene", file=sys.stderr):
        sample = make_world_sample(scene_seed, WorldConfig(**(world or {})))
        clip = load_clip(sample.events, sample.video, num_frames=cascade.num_frames)
        pixels = cascade.verifier.pixel_values(clip.video.frames)  # [1, T, 3, S, S]: every row's input
        qas = sample.qa[:questions]
        bench.new_clip()
        for index, qa in enumerate(qas):
            other = qas[index - 1] if index else qas[min(1, len(qas) - 1)]
            q = Question(qa, cascade.prompter(qa.question), cascade.prompter(other.question), clip, pixels, options)
            bench.run_question(q)
            answers.append({"scene_seed": scene_seed, "kind": qa.kind, "question": qa.question, "answer": qa.answer,
                            "target_answer": cascade.tokenizer.decode(q.references[REAL]),
                            "target_tokens": len(q.references[REAL]), "long": q.long})

    rows = [bench.totals[key].row() for key in bench.totals]
    _add_speedups(rows)
    roles = bench.roles
    report = {
        "benchmark": "demo", "model": model, "cascade": repr(cascade),
        "environment": environment_info(device, load_before),
        "regimes": {COLD: "every answer starts with empty caches (ours: verifier features + prefix KV, drafter "
                          "memos; HF generate keeps none)",
                    WARM: "a second question on a clip already seen (ours: caches hold the clip; HF: prompt cache "
                          "over system prompt + video tokens, deep-copied into generate per answer)"},
        "config": {"scenes": scenes, "seed": seed, "questions_per_scene": questions, "max_new_tokens": max_new_tokens,
                   "draft_k": draft_k, "twin": twin, "twin_hidden": twin_hidden, "twin_layers": twin_layers,
                   "world": world or {}, "long_tokens": long_tokens,
                   "long_rule": f"the target's own answer has >= {long_tokens} tokens"},
        "levels": {role: getattr(roles, role).name if getattr(roles, role) is not None else None
                   for role in ("ngram", "l1", "l2")},
        "skipped": bench.skipped, "rows": rows, "answers": answers,
        "outputs_identical": all(row["identical"] for row in rows),
        "params": {"target": _num_params(bench.target),
                   "twin": _num_params(bench.twin_model) if bench.twin_model is not None else None,
                   **{f"{role}_draft_lm": _num_params(getattr(roles, role).model)
                      for role in ("l1", "l2") if getattr(roles, role) is not None}},
        "twin_costs": bench.twin_costs,
        "teacher_forced_acceptance": {name: {"hits": h, "positions": n, "rate": h / n if n else None}
                                      for name, (h, n) in bench.teacher_forced.items()},
    }
    report["decomposition"] = decomposition(rows)
    report["aim"] = _aim(report)
    return report


def _find(rows, name: str, regime: str, part: str = "all"):
    return next((r for r in rows if r["row"] == name and r["regime"] == regime and r["slice"] == part), None)


def _ratio(a, b) -> float | None:
    return a["tokens_per_s"] / b["tokens_per_s"] if a and b and b["tokens_per_s"] and a["answers"] else None


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """Each row's speedup over its kind's HF generate and over our no-drafter loop, same regime and slice."""
    for row in rows:
        hf_name, ours_name = (HF_PLAIN, OURS_PLAIN) if row["kind"] == REAL else (TWIN_HF, TWIN_PLAIN)
        row["speedup"] = _ratio(row, _find(rows, hf_name, row["regime"], row["slice"]))
        row["speedup_vs_ours"] = _ratio(row, _find(rows, ours_name, row["regime"], row["slice"]))


def decomposition(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per kind, slice and regime: (a) speculation alone = full cascade / our no-drafter loop; (b) caching alone
    (warm) = our no-drafter loop / HF generate with its prompt cache (cold: our loop / HF, overhead alone);
    (c) end to end = full cascade / HF generate."""
    out = []
    for kind, hf_name, plain, full in ((REAL, HF_PLAIN, OURS_PLAIN, FULL), (TWIN, TWIN_HF, TWIN_PLAIN, TWIN_FULL)):
        for part in ("all", "long"):
            for regime in REGIMES:
                hf, ours, cascade = (_find(rows, name, regime, part) for name in (hf_name, plain, full))
                if hf is None or not hf["answers"]:
                    continue
                out.append({"kind": kind, "slice": part, "regime": regime, "answers": hf["answers"],
                            "speculation alone": _ratio(cascade, ours), "caching / loop alone": _ratio(ours, hf),
                            "end to end": _ratio(cascade, hf)})
    return out


def _row_options(options, spec: RowSpec):
    """``options`` for one of our rows: no drafts for the plain loop, the row's adaptive/static choice otherwise."""
    return replace(options, draft_k=0 if not spec.roles else options.draft_k, adaptive=spec.adaptive and bool(spec.roles))


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


# the targets for speculation alone (full cascade over our own no-drafter loop, same regime)
TARGETS = {(REAL, "long", COLD): 1.5, (REAL, "long", WARM): 1.8, (TWIN, "all", COLD): 3.0}


def _aim(report: dict[str, Any]) -> dict[str, Any]:
    """The aims, judged from the rows: speculation-alone targets (met or missed by how much), tau >= 4 and the
    fastest real row (cold full cascade); L2 more accepted than L1 on colour questions, or dropped by the policy."""
    rows = report["rows"]
    full = _find(rows, FULL, COLD)
    real = [r for r in rows if r["kind"] == REAL and r["regime"] == COLD and r["slice"] == "all"]
    fastest = max(real, key=lambda r: r["tokens_per_s"])["row"] if real else None
    out: dict[str, Any] = {"tau": full["tau"], "tau_met": bool(full["tau"] and full["tau"] >= AIM_TAU),
                           "fastest_real_row": fastest, "fastest_met": fastest == FULL, "speculation_targets": []}
    for (kind, part, regime), aim in TARGETS.items():
        entry = next((d for d in report["decomposition"]
                      if (d["kind"], d["slice"], d["regime"]) == (kind, part, regime)), None)
        value = entry["speculation alone"] if entry else None
        out["speculation_targets"].append({"kind": kind, "slice": part, "regime": regime, "target": aim,
                                           "measured": value, "met": value is not None and value >= aim,
                                           "short_by": None if value is None else max(0.0, aim - value)})
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

COLUMNS = ("row", "tokens_per_s", "speedup", "speedup_vs_ours", "tau", "target_forwards", "first_token_ms",
           "answer_ms", "acceptance", "identical")
DECOMPOSITION_COLUMNS = ("kind", "slice", "regime", "answers", "speculation alone", "caching / loop alone",
                         "end to end")
DECOMPOSITION_NOTE = ("speculation alone = full cascade / our no-drafter loop (same regime); caching / loop alone = "
                      "our no-drafter loop / HF generate (warm: HF with its prompt cache, so this is what our caching "
                      "and loop buy over HF at its best; cold: nothing is cached, so this is our loop's overhead "
                      "against HF's); end to end = full cascade / HF generate")


def profile_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Where each of our rows' time goes, ms per answer (all answers): vision / prefill / draft / verify / overhead;
    HF rows give their total only (``generate`` reports no breakdown)."""
    out = []
    for row in report["rows"]:
        if row["slice"] != "all":
            continue
        entry = {"regime": row["regime"], "row": row["row"], "answer_ms": row["answer_ms"]}
        entry.update({key: value for key, value in row["profile_ms"].items()})
        out.append(entry)
    return out


def format_report(report: dict[str, Any]) -> str:
    """The tables and the lines under them, as printed."""
    config = report["config"]
    env = report["environment"]
    lines = [f"demo cascade on {config['scenes']} held-out scenes (seed {config['seed']}), {report['cascade']}, "
             f"greedy, max_new_tokens {config['max_new_tokens']}, draft_k {config['draft_k']}; "
             f"load average before {env['loadavg_before'][0]:.2f}, after {env['loadavg_after'][0]:.2f}; "
             f"commit {env['git_commit']}"]
    for regime in REGIMES:
        lines += ["", f"{regime.upper()}: {report['regimes'][regime]}"]
        for kind in (REAL, TWIN):
            for part in ("all", "long"):
                rows = [r for r in report["rows"] if (r["regime"], r["kind"], r["slice"]) == (regime, kind, part)]
                if rows and rows[0]["answers"]:
                    title = "all answers" if part == "all" else f"long-answer slice ({config['long_rule']})"
                    lines += [f"{regime} | {kind} rows | {title}, {rows[0]['answers']} answers",
                              format_table(rows, COLUMNS)]
    lines += ["", "decomposition (tokens/s ratios): " + DECOMPOSITION_NOTE,
              format_table(report["decomposition"], DECOMPOSITION_COLUMNS),
              "", "profile, ms per answer (ours: vision / prefill / draft / verify / engine overhead; HF: total only)",
              format_table(profile_rows(report), ("regime", "row", "answer_ms") + tuple(k[:-2] + "_ms" for k in PROFILE)),
              ""]
    for row in report["rows"]:
        if row["slice"] != "all" or row["regime"] != COLD:
            continue
        for name, level in row["levels"].items():
            by_position = " ".join(f"{a}/{d}" for a, d in zip(level["accepted_by_position"], level["drafted_by_position"]))
            lines.append(f"cold | {row['row']} | {name}: {level['accepted']}/{level['drafted']} accepted, conditional "
                         f"{level['conditional_acceptance']:.2f}; by position {by_position or '-'}")
    full = _find(report["rows"], FULL, COLD)
    lines.append("cold full cascade, acceptance per question kind: " + "; ".join(
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
    for target in aim["speculation_targets"]:
        measured = "n/a" if target["measured"] is None else f"{target['measured']:.2f}x"
        lines.append(f"target: speculation alone, {target['kind']} {target['slice']} {target['regime']} >= "
                     f"{target['target']}x: measured {measured} "
                     + ("(met)" if target["met"] else f"(missed by {target['short_by']:.2f}x)" if target["measured"]
                        is not None else ""))
    lines.append(f"aim: cold full cascade tau {aim['tau'] or 0:.2f} (>= {AIM_TAU}: {aim['tau_met']}); fastest cold "
                 f"real row {aim['fastest_real_row']!r} ({'met' if aim['fastest_met'] else 'not met'}); L2: "
                 + (aim["l2"] if "l2" in aim else f"colour acceptance {aim['colour_acceptance']}, "
                    f"L2 drafted {aim['l2_drafted']} tokens"))
    lines.append(f"outputs identical to the reference (cold HF generate) in every row: {report['outputs_identical']}")
    for row, why in report["skipped"].items():
        lines.append(f"skipped {row}: {why}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Tokens/s per row (all answers), one panel per kind and regime; tau and speedup written on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(kind, regime) for kind in (REAL, TWIN) for regime in REGIMES
              if any((r["kind"], r["regime"]) == (kind, regime) for r in report["rows"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for axis, (kind, regime) in zip(axes[0], panels):
        rows = [r for r in report["rows"] if (r["kind"], r["regime"], r["slice"]) == (kind, regime, "all")]
        axis.barh(range(len(rows)), [r["tokens_per_s"] for r in rows],
                  color="tab:blue" if kind == REAL else "tab:orange", alpha=1.0 if regime == COLD else 0.6)
        axis.set_yticks(range(len(rows)), [r["row"] for r in rows], fontsize=7)
        axis.invert_yaxis()
        for index, r in enumerate(rows):
            tau = f"tau {r['tau']:.2f}" if r["tau"] else "tau ?"
            axis.annotate(f" {tau}, {r.get('speedup') or 0:.2f}x", (r["tokens_per_s"], index), va="center", fontsize=7)
        axis.set_xlabel("tokens/s")
        axis.set_title(f"{kind} rows, {regime}")
        axis.margins(x=0.35)
    fig.suptitle(f"demo cascade side by side ({report['config']['scenes']} scenes, greedy, outputs identical: "
                 f"{report['outputs_identical']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evcascade.bench demo", description=__doc__.split("\n")[0])
    add_held_out_world_args(parser, "demo", max_new_tokens=48, draft_k=8)
    add_twin_args(parser)
    parser.add_argument("--long-tokens", type=int, default=16,
                        help="the long-answer slice: answers whose target answer has at least this many tokens")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run, print the tables, write ``demo.json`` and ``demo.png``; 2 on a usage error, 1 if an output differs."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    world = {"duration_us": args.duration_us} if args.duration_us else None
    try:
        report = run_benchmark(args.model, scenes=args.scenes, seed=args.seed, questions=args.questions,
                               max_new_tokens=args.max_new_tokens, draft_k=args.draft_k, twin_hidden=args.twin_hidden,
                               twin_layers=args.twin_layers, twin=not args.no_twin, device=args.device, world=world,
                               long_tokens=args.long_tokens)
    except InputError as error:
        print(f"evcascade.bench demo: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    save_report(args.out, "demo", report, plot)
    return mismatch_exit_code(report, "their reference's greedy answer")


if __name__ == "__main__":
    sys.exit(main())
