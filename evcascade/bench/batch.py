"""``python -m evcascade.bench batch``: batched verification at B = 1, 2, 4, 8 concurrent questions.

Held-out synthetic-world questions (``--scenes N``, the questions of one scene in order, so a group of B asks
about one or two clips) are answered in groups of B, greedy, in two regimes: *cold* (every cache emptied before
each group: a clip's first request pays its vision tower and visual prefill, as HF ``generate`` pays them per
row; later requests on the clip share that prefix, referenced, or copied into their rows with ``--prefix-sharing
off``) and *warm* (the group's clips seen before: an untimed two-token pass primes the video features,
visual-prefix KV and draft features; HF's batched ``generate`` keeps no cache across calls, so it has cold rows
only). Rows, each at every B:

kind "real" (the bundled cascade's own target)
    cascade batched           ``BatchDecoder`` with the cascade's top model level drafting ``--draft-k`` per row
    target-only batched       ``BatchDecoder`` with no drafter (one token per row per forward)
    HF generate batched       ``generate`` on the left-padded group (attention mask, stacked frames)
kind "cost-twin" (``bench/demo.py``'s untrained, realistically sized twin of the target; ``--no-twin`` skips it)
    twin: cascade replayed batched   each row's real accept/reject pattern replayed (``bench/replay.py``), the
                                     real level drafting alongside to pay its cost
    twin: target-only batched, twin: HF generate batched
    twin: cascade replayed, continuous   (warm) every question submitted at once to a ``BatchScheduler`` of B
                                     rows, which refills rows as answers finish; latency includes queueing

Every answer is checked equal to its batch-1 reference (the real target's own greedy answer from our batch-1
loop; the twin's likewise); HF's batched rows are checked too. Per row: throughput (answer tokens / wall seconds
over all groups), per-request latency (ours: from the request's prefill to its last token; HF: the group's
wall time, every row finishing together), mean and 90th percentile, and tau (tokens per target forward per row).
HF pads every row of a group to the longest answer (static batching): only each row's own tokens are counted.

Per row also: rows per forward (how full the batch ran), tokens per row forward (a joining row feeds its question
with its first block), the padding share of the token slots computed (0 when packed; ``--packing off`` pads), and
where the wall time went (batched verify forwards / drafting / batch-1 prefills).

The ceiling: a batched verify forward of B rows x (k + 1) tokens costs ``T_v(B, k+1)`` (measured on the twin's
text model here, median of 5); at the twin cascade's measured tau, no batched decoder can beat
``B * tau / T_v(B, k+1)`` tokens/s (the issue's measure). The *work ceiling* prices the tokens a row really fed per
forward instead, ``T_v(B, n)`` with n its tokens per row forward: every question's own tokens must be fed once,
by any decoder. The table reports each twin cascade row's share of both; for the continuous rows also over the
steps that ran with all B rows busy (the service's steady state; end to end also holds the drain, when the queue is
empty and the last answers finish with fewer rows). ``--min-tokens 16`` keeps the long answers, where decoding
rather than joining dominates. Output: the table, ``batch.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
from dataclasses import replace
import sys
import time
from typing import Any

import torch

from evcascade.bench.common import (add_machine_args, add_twin_args, environment_info, format_table,
                                    report_main)
from evcascade.errors import InputError

REAL, TWIN = "real", "cost-twin"


def _fresh_contexts(group) -> list:
    """The group's drafting contexts on new Events / Video objects, one pair per clip (cold: the drafters' memos
    miss once per clip, as the target's vision tower and visual prefill run once per clip of the group)."""
    from evcascade.decoding.drafters import DraftContext

    fresh: dict[int, tuple] = {}
    contexts = []
    for question in group:
        clip = question["clip"]
        events, video = fresh.setdefault(id(clip), (copy.copy(clip.events), copy.copy(clip.video)))
        contexts.append(DraftContext(question["text_ids"], events=events, video=video))
    return contexts


def _clear(verifier) -> None:
    verifier.feature_cache.clear()
    verifier.prefix_cache.clear()


def _hold_every_clip(verifier, levels, clips: int) -> None:
    """Let ``verifier``'s feature and prefix caches and the drafting levels' clip memos hold every clip of the run
    (a service sizes them to the clips it serves at once), so that the warm regime is warm for every row (the
    continuous row asks about every clip in turn; small LRUs would recompute evicted clips there)."""
    for cache in (verifier.feature_cache, verifier.prefix_cache):
        cache.maxsize = max(cache.maxsize, clips + 1)
    for level in levels:
        prefix_fn = getattr(level, "prefix_fn", None)
        if hasattr(prefix_fn, "memo_size"):
            prefix_fn.memo_size = max(prefix_fn.memo_size, clips + 1)


def _hf_batched(model, questions, new_tokens: list[int], pad_token_id: int, eos: tuple[int, ...]):
    """HF ``generate`` on a left-padded group: (answers cut at their EOS and length, wall seconds)."""
    width = max(q["target_ids"].shape[1] for q in questions)
    input_ids = torch.full((len(questions), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(questions), width, dtype=torch.long)
    for b, q in enumerate(questions):
        length = q["target_ids"].shape[1]
        input_ids[b, width - length:] = q["target_ids"][0]
        mask[b, width - length:] = 1
    pixels = torch.cat([q["pixels"] for q in questions])  # [B, T, 3, S, S]
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=mask, pixel_values_videos=pixels, do_sample=False,
                             max_new_tokens=max(new_tokens), pad_token_id=pad_token_id)
    wall_s = time.perf_counter() - started
    answers = []
    for b, n in enumerate(new_tokens):
        ids = out[b, width: width + n].tolist()
        cut = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
        answers.append(ids[:cut])
    return answers, wall_s


def _verify_cost_s(model, batch_size: int, context_length: int, block: int, repeats: int = 5) -> float:
    """Median seconds of one text forward of ``batch_size`` x ``block`` tokens after ``context_length`` cached ones."""
    from transformers import DynamicCache

    language = model.model.language_model if hasattr(model.model, "language_model") else model
    ids = torch.randint(1, 50, (batch_size, context_length))
    with torch.no_grad():
        base = language(input_ids=ids, use_cache=True).cache
        layers = [(layer.keys, layer.values) for layer in base.layers]
        times = []
        for _ in range(repeats):
            cache = DynamicCache(ddp_cache_data=layers)
            new = torch.randint(1, 50, (batch_size, block))
            started = time.perf_counter()
            hidden = language(input_ids=new, cache=cache, use_cache=True).last_hidden_state
            model.lm_head(hidden)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


class _FullBatchClock:
    """Times the steps of ``decoder`` that ran with all ``batch_size`` rows busy: the answer tokens they committed and
    the wall seconds from the end of the step before (the joins between steps included). A continuous run's
    end-to-end throughput also holds the drain, when the queue is empty and the rows finish one by one; this is the
    service's steady state while questions keep coming."""

    def __init__(self, decoder, batch_size: int) -> None:
        self.tokens, self.seconds = 0, 0.0
        step, previous_end = decoder.step, [None]

        def timed():
            busy = len(decoder.rows) == batch_size
            before = sum(row.generated.shape[1] for row in decoder.rows)
            results = step()
            now = time.perf_counter()
            if busy and previous_end[0] is not None:
                after = sum(row.generated.shape[1] for row in decoder.rows) + sum(len(r.token_ids) for r in results)
                self.tokens += after - before
                self.seconds += now - previous_end[0]
            previous_end[0] = now
            return results

        decoder.step = timed


class Totals:
    """One row's sums over its groups."""

    def __init__(self, name: str, kind: str, batch_size: int, regime: str) -> None:
        self.name, self.kind, self.batch_size, self.regime = name, kind, batch_size, regime
        self.tokens, self.seconds, self.latencies, self.forwards = 0, 0.0, [], 0
        self.identical, self.mismatches = True, []
        self.timings: dict[str, float] = {}
        self.shape = {"forwards": 0, "rows": 0, "tokens": 0, "slots": 0}  # our batched forwards (BatchDecoder.fed)

    def add_group(self, answers: list[list[int]], references: list[list[int]], wall_s: float,
                  latencies: list[float], forwards: int | None, timings: dict[str, float] | None = None,
                  shape: dict[str, int] | None = None) -> None:
        for key, count in (shape or {}).items():
            self.shape[key] = self.shape.get(key, 0) + count
        for key, seconds in (timings or {}).items():
            self.timings[key] = self.timings.get(key, 0.0) + seconds
        self.tokens += sum(len(a) for a in answers)
        self.seconds += wall_s
        self.latencies += latencies
        self.forwards = None if forwards is None or self.forwards is None else self.forwards + forwards
        for answer, reference in zip(answers, references):
            if answer != reference:
                self.identical = False
                self.mismatches.append({"ids": answer, "reference": reference})

    def row(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {"row": self.name, "kind": self.kind, "regime": self.regime, "B": self.batch_size, "answers": len(self.latencies),
                "tokens": self.tokens, "seconds": self.seconds,
                "tokens_per_s": self.tokens / self.seconds if self.seconds else 0.0,
                "latency_ms": 1e3 * statistics.fmean(ordered) if ordered else None,
                "latency_p90_ms": 1e3 * ordered[int(0.9 * (len(ordered) - 1))] if ordered else None,
                "tau": self.tokens / self.forwards if self.forwards else None,
                "identical": self.identical, "mismatches": self.mismatches[:3],
                # the batched forwards' shapes: mean rows per forward, and the share of computed token slots
                # that were padding (rows padded to the widest block of their step)
                "rows_per_forward": self.shape["rows"] / self.shape["forwards"] if self.shape["forwards"] else None,
                "tokens_per_row_forward": self.shape["tokens"] / self.shape["rows"] if self.shape["rows"] else None,
                "padding_share": 1 - self.shape["tokens"] / self.shape["slots"] if self.shape["slots"] else None,
                # continuous rows: the steps that ran with all B rows busy (the queue not yet drained)
                "full_batch_tokens_per_s": self.shape["full_tokens"] / self.shape["full_seconds"]
                if self.shape.get("full_seconds") else None,
                # where our rows' wall time went: batched verify forwards, drafting, batch-1 prefills
                **{f"{key}_share": seconds / self.seconds for key, seconds in self.timings.items() if self.seconds}}


def run_benchmark(model: str, *, scenes: int, seed: int, questions: int | None = None, max_new_tokens: int = 48,
                  min_tokens: int = 0, kinds: tuple[str, ...] | None = None, draft_k: int = 8, batch_sizes: tuple[int, ...] = (1, 2, 4, 8), regimes=("cold", "warm"),
                  twin: bool = True,
                  twin_hidden: int = 1024, twin_layers: int = 8, device: str = "cpu",
                  share_prefix: bool = True, pack: bool = True) -> dict[str, Any]:
    from evcascade.bench.demo import build_twin
    from evcascade.bench.replay import ReplayDrafter
    from evcascade.cascade import Cascade
    from evcascade.clip import load_clip
    from evcascade.data.world import make_world_sample, scene_seeds
    from evcascade.decoding.batch import BatchDecoder, BatchRequest, drafting_copy
    from evcascade.decoding.scheduler import BatchScheduler
    from evcascade.decoding.drafters import DraftContext
    from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
    from evcascade.decoding.verifier import VerifyRequest, VideoLlavaVerifier

    if scenes < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise InputError(f"--scenes and every batch size must be >= 1, got {scenes} and {list(batch_sizes)}")
    load_before = os.getloadavg()
    cascade = Cascade.from_pretrained(model, device=device)
    verifier, target = cascade.verifier, cascade.verifier.model
    _hold_every_clip(verifier, cascade.levels, scenes)
    pad = cascade._pad_token_id()
    eos = tuple(verifier.eos_token_ids)
    level = drafting_copy(cascade.levels)
    items = []
    for scene_seed in scene_seeds(seed, scenes):
        sample = make_world_sample(scene_seed)
        clip = load_clip(sample.events, sample.video, num_frames=cascade.num_frames)
        pixels = verifier.pixel_values(clip.video.frames)
        for qa in [qa for qa in sample.qa if kinds is None or qa.kind in kinds][:questions]:
            built = cascade.prompter(qa.question)
            items.append({"question": qa.question, "kind": qa.kind, "clip": clip, "pixels": pixels,
                          "target_ids": built.target_ids, "text_ids": built.text_ids,
                          "context": DraftContext(built.text_ids, events=clip.events, video=clip.video)})
    options = GenerationOptions(max_new_tokens=max_new_tokens, draft_k=draft_k, tokenizer=cascade.tokenizer)
    plain = GenerationOptions(max_new_tokens=max_new_tokens, draft_k=0)
    for q in items:  # the batch-1 reference: our own loop, the target alone
        q["reference"] = CascadeDecoder(verifier, []).generate(
            VerifyRequest(q["target_ids"], q["pixels"]), DraftContext(q["text_ids"]), plain).token_ids[0].tolist()
    asked = len(items)
    items = [q for q in items if len(q["reference"]) >= min_tokens]  # the long-answer slice: decode steps dominate
    if not items:
        raise InputError(f"no question of the {scenes} scenes has a target answer of >= {min_tokens} tokens "
                         f"(kinds {list(kinds) if kinds else 'all'})")

    twin_model = twin_verifier = None
    if twin:
        twin_model = build_twin(target, hidden_size=twin_hidden, num_layers=twin_layers, seed=seed)
        twin_verifier = VideoLlavaVerifier(twin_model, preprocess_config=verifier.preprocess_config, eos_token_ids=())
        _hold_every_clip(twin_verifier, (), scenes)
        for q in items:
            ref = q["reference"]
            q["twin_length"] = len(ref) + int(len(ref) < max_new_tokens and bool(ref) and ref[-1] in eos)
            q["twin_reference"] = CascadeDecoder(twin_verifier, []).generate(
                VerifyRequest(q["target_ids"], q["pixels"]), DraftContext(q["text_ids"]),
                GenerationOptions(max_new_tokens=q["twin_length"], draft_k=0, eos_token_ids=())).token_ids[0].tolist()
    vocab_size = int(target.get_output_embeddings().weight.shape[0])

    def ours(decoder_verifier, levels, group, make_options, drafter_of=None, cold=True, prime=True):
        """One group through a fresh ``BatchDecoder``: (answers, wall s, per-request latencies, forwards). Cold:
        every cache emptied first; warm: the group's clips primed (video features, visual-prefix KV, draft
        features) by an untimed two-token pass (one drafted token: the drafters prepare their clip features)."""
        if cold:
            _clear(decoder_verifier)
        elif prime:
            ours(decoder_verifier, levels, group, lambda q: replace(make_options(q), max_new_tokens=2), drafter_of,
                 cold=False, prime=False)
        batch = []
        contexts = _fresh_contexts(group) if cold else [q["context"] for q in group]
        for q, context in zip(group, contexts):
            batch.append(BatchRequest(VerifyRequest(q["target_ids"], q["pixels"]), context, make_options(q),
                                      drafter=drafter_of(q, context) if drafter_of else None))
        decoder = BatchDecoder(decoder_verifier, levels, pad_token_id=pad, share_prefix=share_prefix, pack=pack)
        started = time.perf_counter()
        results = decoder.run(batch)
        wall_s = time.perf_counter() - started
        return ([r.token_ids for r in results], wall_s, [r.stats.total_s for r in results],
                sum(r.stats.target_forwards for r in results), decoder.timings,
                {"forwards": decoder.forwards, **decoder.fed})

    def replay_drafter(q, context):
        return ReplayDrafter(None, torch.tensor([q["twin_reference"]]), vocab_size=vocab_size,
                             level=copy.copy(level), level_context=context, level_answer=q["reference"],
                             name=level.name)

    def twin_options(q, k=draft_k):
        return GenerationOptions(max_new_tokens=q["twin_length"], draft_k=k, eos_token_ids=())

    def continuous(batch_size: int):
        """Every question submitted at once to a scheduler of ``batch_size`` rows (warm): rows are refilled as
        answers finish. Latency counts from the submission (queueing included)."""
        ours(twin_verifier, [], items, lambda q: replace(twin_options(q), max_new_tokens=2), replay_drafter,
             cold=False, prime=False)
        scheduler = BatchScheduler(BatchDecoder(twin_verifier, [], pad_token_id=pad, share_prefix=share_prefix,
                                                pack=pack),
                                   max_batch=batch_size)
        full = _FullBatchClock(scheduler.decoder, batch_size)
        done_at: dict[int, float] = {}
        started = time.perf_counter()
        futures = []
        for index, q in enumerate(items):
            future = scheduler.submit(BatchRequest(VerifyRequest(q["target_ids"], q["pixels"]), q["context"],
                                                   twin_options(q), index, drafter=replay_drafter(q, q["context"])))
            future.add_done_callback(lambda _, index=index: done_at.__setitem__(index, time.perf_counter()))
            futures.append(future)
        results = [future.result() for future in futures]
        wall_s = time.perf_counter() - started
        scheduler.close()
        return ([r.token_ids for r in results], wall_s, [done_at[i] - started for i in range(len(items))],
                sum(r.stats.target_forwards for r in results), scheduler.decoder.timings,
                {"forwards": scheduler.decoder.forwards, **scheduler.decoder.fed, "full_tokens": full.tokens,
                 "full_seconds": full.seconds})

    rows: list[dict[str, Any]] = []
    warm_up = items[: max(batch_sizes)]  # untimed: lazy initialisation is no row's cost
    ours(verifier, cascade.levels, warm_up, lambda q: options)
    _hf_batched(target, warm_up[:2], [4, 4], pad, eos)
    from tqdm import tqdm

    for regime, batch_size in tqdm([(r, b) for r in regimes for b in batch_sizes], desc="batch bench",
                                   unit="config", file=sys.stderr):
        cold = regime == "cold"
        groups = [items[i: i + batch_size] for i in range(0, len(items), batch_size)]
        names = [("cascade batched", REAL), ("target-only batched", REAL)] + [("HF generate batched", REAL)] * cold
        if twin:
            names += [("twin: cascade replayed batched", TWIN), ("twin: target-only batched", TWIN)]
            names += [("twin: HF generate batched", TWIN)] * cold
        totals = {name: Totals(name, kind, batch_size, regime) for name, kind in names}
        def record(name, result, references):
            answers, wall_s, latencies, forwards, timings, shape = result
            totals[name].add_group(answers, references, wall_s, latencies, forwards, timings, shape)

        for group in groups:
            references = [q["reference"] for q in group]
            record("cascade batched", ours(verifier, cascade.levels, group, lambda q: options, cold=cold), references)
            record("target-only batched", ours(verifier, [], group, lambda q: plain, cold=cold), references)
            if cold:  # HF's batched generate has no cache across calls: it has only the cold regime
                answers, wall_s = _hf_batched(target, group, [max_new_tokens] * len(group), pad, eos)
                totals["HF generate batched"].add_group(answers, references, wall_s, [wall_s] * len(group), None)
            if twin:
                twin_refs = [q["twin_reference"] for q in group]
                record("twin: cascade replayed batched",
                       ours(twin_verifier, [], group, twin_options, drafter_of=replay_drafter, cold=cold), twin_refs)
                record("twin: target-only batched",
                       ours(twin_verifier, [], group, lambda q: twin_options(q, 0), cold=cold), twin_refs)
                if cold:
                    answers, wall_s = _hf_batched(twin_model, group, [q["twin_length"] for q in group], pad, ())
                    totals["twin: HF generate batched"].add_group(answers, twin_refs, wall_s, [wall_s] * len(group),
                                                                  None)
        if twin and not cold:
            name = "twin: cascade replayed, continuous"
            totals[name] = Totals(name, TWIN, batch_size, regime)
            record(name, continuous(batch_size), [q["twin_reference"] for q in items])
        rows += [t.row() for t in totals.values()]

    ceiling = {}
    if twin:
        context_length = int(statistics.median(q["target_ids"].shape[1] for q in items))
        costs: dict[tuple[int, int], float] = {}

        def verify_cost(batch_size: int, block: int) -> float:
            if (batch_size, block) not in costs:
                costs[batch_size, block] = _verify_cost_s(twin_model, batch_size, context_length, block)
            return costs[batch_size, block]

        for row in rows:
            if not row["row"].startswith("twin: cascade replayed"):
                continue
            batch_size = row["B"]
            # the ceiling: every forward a full B x (k + 1) block; and the work ceiling: B x the tokens a
            # row really fed per forward (its question's tokens are fed in its first step: no decoder avoids them)
            entry = {"tau": row["tau"]}
            for name, block in (("", draft_k + 1), ("work_", max(draft_k + 1, round(row["tokens_per_row_forward"])))):
                cost_s = verify_cost(batch_size, block)
                bound = batch_size * (row["tau"] or 1.0) / cost_s
                entry.update({f"{name}block": block, f"{name}verify_ms": 1e3 * cost_s,
                              f"{name}ceiling_tokens_per_s": bound,
                              f"{name}share_of_ceiling": row["tokens_per_s"] / bound})
                row[f"{name}share_of_ceiling"] = row["tokens_per_s"] / bound
                if row.get("full_batch_tokens_per_s"):
                    entry[f"{name}full_batch_share"] = row[f"full_batch_{name}share_of_ceiling"] = \
                        row["full_batch_tokens_per_s"] / bound
            ceiling[f"{row['row']}, {row['regime']} B={batch_size}"] = entry
    for row in rows:  # speedups over the row's own B = 1 and (cold rows only) HF's batched generate at the same B
        # HF's batched generate has cold rows only: a warm row against them would count the work its caches
        # skipped as speed, so only cold rows get this ratio
        same_b = {r["row"]: r for r in rows if r["B"] == row["B"] and r["regime"] == "cold" == row["regime"]}
        hf = same_b.get("HF generate batched" if row["kind"] == REAL else "twin: HF generate batched")
        row["vs_hf_same_B"] = row["tokens_per_s"] / hf["tokens_per_s"] if hf and hf["tokens_per_s"] else None
        first = next((r for r in rows if r["row"] == row["row"] and r["regime"] == row["regime"]
                      and r["B"] == min(batch_sizes)), None)
        row["vs_own_B1"] = row["tokens_per_s"] / first["tokens_per_s"] if first and first["tokens_per_s"] else None
    return {"benchmark": "batch", "model": model, "cascade": repr(cascade), "environment": environment_info(device, load_before),
            "config": {"scenes": scenes, "seed": seed, "questions": len(items), "asked": asked,
                       "min_tokens": min_tokens, "kinds": list(kinds) if kinds else None,
                       "mean_answer_tokens": statistics.fmean(len(q["reference"]) for q in items),
                       "max_new_tokens": max_new_tokens,
                       "draft_k": draft_k, "batch_sizes": list(batch_sizes), "twin": twin, "twin_hidden": twin_hidden,
                       "twin_layers": twin_layers, "regimes": list(regimes), "drafting_level": level.name if level else None,
                       "share_prefix": share_prefix, "pack": pack},
            "rows": rows, "ceiling": ceiling, "outputs_identical": all(r["identical"] for r in rows)}


COLUMNS = ("row", "kind", "regime", "B", "tokens_per_s", "vs_own_B1", "vs_hf_same_B", "latency_ms", "latency_p90_ms", "tau",
           "share_of_ceiling", "work_share_of_ceiling", "full_batch_tokens_per_s", "rows_per_forward",
           "tokens_per_row_forward", "padding_share", "verify_share", "draft_share", "prefill_share", "identical")


def format_report(report: dict[str, Any]) -> str:
    config = report["config"]
    lines = [f"batched verification, {config['questions']} questions (of {config['asked']}; target answers of >= "
             f"{config['min_tokens']} tokens, mean {config['mean_answer_tokens']:.1f}) from {config['scenes']} held-out scenes, "
             f"{report['cascade']}, drafting level {config['drafting_level']}, greedy, regimes {config['regimes']}, draft_k "
             f"{config['draft_k']}", format_table(report["rows"], COLUMNS), ""]
    for b, c in report["ceiling"].items():
        busy = (f" ({c['full_batch_share']:.0%} / {c['work_full_batch_share']:.0%} over the steps with all B rows "
                f"busy)" if c.get("full_batch_share") else "")
        lines.append(f"twin ceiling, {b}: T_v(B, k+1) {c['verify_ms']:.1f} ms, tau {c['tau'] or 0:.2f} -> "
                     f"{c['ceiling_tokens_per_s']:.1f} tokens/s; work ceiling T_v(B, {c['work_block']}) "
                     f"{c['work_verify_ms']:.1f} ms -> {c['work_ceiling_tokens_per_s']:.1f} tokens/s; the twin cascade "
                     f"reached {c['share_of_ceiling']:.0%} / {c['work_share_of_ceiling']:.0%}{busy}")
    lines.append(f"every answer equal to its batch-1 reference: {report['outputs_identical']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evcascade.bench batch", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bundled-windows",
                        help="the cascade (default: bundled-windows, the world with long captions and short windows)")
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=9000)
    parser.add_argument("--questions", type=int, help="first N questions per scene (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--min-tokens", type=int, default=0,
                        help="keep only questions whose target answer has >= N tokens (the long-answer slice)")
    parser.add_argument("--kinds", help="comma-separated question kinds to keep (default: all)")
    parser.add_argument("--draft-k", type=int, default=8)
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    add_twin_args(parser)
    parser.add_argument("--regimes", default="cold,warm", help="cold, warm or both")
    parser.add_argument("--packing", choices=("on", "off"), default="on",
                        help="packed verify forwards (on) or rows padded to the widest block (off)")
    parser.add_argument("--prefix-sharing", choices=("on", "off"), default="on",
                        help="rows on one clip share its visual prefix (on) or copy it (off)")
    add_machine_args(parser, "batch.json")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)

    def build() -> dict[str, Any]:
        sizes = tuple(int(b) for b in args.batch_sizes.split(","))
        regimes = tuple(args.regimes.split(","))
        if not set(regimes) <= {"cold", "warm"}:
            raise InputError(f"--regimes must be cold, warm or both, got {args.regimes!r}")
        return run_benchmark(args.model, scenes=args.scenes, seed=args.seed, questions=args.questions,
                             max_new_tokens=args.max_new_tokens, min_tokens=args.min_tokens,
                             kinds=tuple(args.kinds.split(",")) if args.kinds else None, draft_k=args.draft_k,
                             batch_sizes=sizes, regimes=regimes, twin=not args.no_twin, twin_hidden=args.twin_hidden,
                             twin_layers=args.twin_layers, device=args.device,
                             share_prefix=args.prefix_sharing == "on", pack=args.packing == "on")

    return report_main("batch", args.out, build, format_report)

if __name__ == "__main__":
    sys.exit(main())
