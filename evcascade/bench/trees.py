"""``python -m evcascade.bench trees``: chain cascade vs token-tree cascade, greedy and seeded sampling, cold.

On held-out synthetic-world scenes, the questions of the chosen kinds (default: the caption, the long-answer
slice) are answered by every row with the bundled (or given) cascade. Every answer is **cold** for every row:
the target's clip features and visual-prefix KV cache are cleared and the clip is loaded afresh (so the drafters'
per-clip memos miss too) before each answer; the load is not timed, the vision tower and prefills are.

Rows (each keeps its own decoder, policy and n-gram memory across answers; its first answer is an untimed
warm-up):

greedy
    target (no drafter)          the target alone, our loop
    chain cascade                one chain per step (``GenerationOptions(trees=False)``)
    tree cascade                 the policy adds branches where its measured costs say they pay
    tree cascade (all branches)  every candidate branch joins every step: what trees can give in tau
seeded sampling (``--sample-seeds`` seeds per question, ``--temperature``)
    target (coupled)             the target alone with coupled sampling: the reference answer per seed
    chain / tree cascade (coupled), and the all-branches tree
    chain cascade (speculative)  standard speculative sampling (its answers follow the same distribution, but are
                                 not the target-alone answer for the seed)
static k (both groups): the fixed cascade (L2 reviewing L1 reviewing the n-gram, ``--draft-k`` per block) as a
    chain and as a tree with every candidate branch: the adaptive policy's tau moves run to run with timings (a
    flat optimum on CPU), so trees' tau is compared on the static plan

Per row: answers, tokens, tokens/s (answer tokens / wall seconds, summed), speedup over the row group's target
row, tau (tokens per target forward), target forwards, draft acceptance (accepted / drafted chain tokens), tree
steps and branch tokens kept, and ``identical``: the share of answers equal, token for token, to the target
row's answer (greedy; coupled sampling with the same seed).

Cost model on a larger target (``--twin-hidden/--twin-layers``, 0 to skip): the demo target is tiny and
overhead-bound on a CPU, so each row's verify sizes are logged and re-priced with the verify cost per size of an
untrained Video-LLaVA twin (measured here, ``T_twin(n)``): ``tokens / (sum_steps T_twin(n_step) + prefill +
drafting)``. It is a model (the policy still decided on the tiny target's costs), reported as such.
Output: a table and ``<out>/<name>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from evcascade.bench.common import environment_info, format_table, fresh_levels, write_json
from evcascade.decoding.verifier import Verifier
from evcascade.errors import InputError


class SizeLog(Verifier):
    """A verifier that forwards every call to ``inner`` and logs the size of each target forward (prefills apart)."""

    def __init__(self, inner: Verifier) -> None:
        self.inner, self.sizes = inner, []
        for name in ("vocab_size", "text_vocab_size", "eos_token_ids", "device", "dtype", "max_positions",
                     "drafts_in_prefill", "supports_trees"):
            setattr(self, name, getattr(inner, name))

    @property
    def timings(self) -> dict[str, float]:
        return self.inner.timings

    def prefill(self, request):
        return self.inner.prefill(request)

    def prefill_with_draft(self, request, draft_ids):
        return self.inner.prefill_with_draft(request, draft_ids)

    def prefill_with_tree(self, request, token_ids, parents):
        return self.inner.prefill_with_tree(request, token_ids, parents)

    def verify(self, token_ids):
        self.sizes.append(int(token_ids.shape[1]))
        return self.inner.verify(token_ids)

    def verify_tree(self, token_ids, parents):
        self.sizes.append(int(token_ids.shape[1]))
        return self.inner.verify_tree(token_ids, parents)

    def keep_tree_path(self, path):
        return self.inner.keep_tree_path(path)

    def rollback(self, num_tokens):
        return self.inner.rollback(num_tokens)

    @property
    def cache_length(self) -> int:
        return self.inner.cache_length


@dataclass
class Row:
    """One row: its options and decoder, and its totals over the timed answers."""

    name: str
    group: str  # "greedy" or "sampling"
    reference: str  # the row whose answers this one must equal
    levels: bool
    options: dict[str, Any]
    all_branches: bool = False
    decoder: Any = None
    log: SizeLog | None = None
    answers: int = 0
    identical: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    tree_steps: int = 0
    branch_nodes: int = 0
    branch_accepted: int = 0
    prefill_s: float = 0.0
    vision_s: float = 0.0
    draft_s: float = 0.0
    sizes: list[int] = field(default_factory=list)


def _all_branches_policy():
    from evcascade.decoding.policy import AdaptivePolicy

    class AllBranches(AdaptivePolicy):
        """Every candidate branch node joins every tree (trees' tau, whatever they cost)."""

        def tree_nodes(self, chain_levels, branches, drafting_seconds=0.0):
            return [(i, j) for i, branch in enumerate(branches) for j in range(branch.num_tokens)]

    return AllBranches()


def twin_verify_costs(target, *, hidden_size: int, num_layers: int, max_nodes: int, repeats: int = 5,
                      prompt_length: int = 64) -> dict[int, float]:
    """Median seconds of one verify forward of ``n`` tokens (n = 1..max_nodes) on an untrained text model of the
    target's vocabulary at ``hidden_size`` x ``num_layers`` (head size 64) after ``prompt_length`` cached tokens."""
    import statistics

    from transformers import LlamaConfig, LlamaForCausalLM

    from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest

    vocab = int(target.get_output_embeddings().weight.shape[0])
    heads = max(1, hidden_size // 64)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=4096)
    torch.manual_seed(0)
    verifier = CausalLMVerifier(LlamaForCausalLM(config).eval())
    prompt = torch.randint(3, vocab, (1, prompt_length), generator=torch.Generator().manual_seed(0))
    verifier.prefill(VerifyRequest(prompt))
    costs = {}
    for n in range(1, max_nodes + 1):
        ids = torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(n))
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            verifier.verify(ids)
            times.append(time.perf_counter() - started)
            verifier.rollback(n)
        costs[n] = statistics.median(times)
    return costs


def run_benchmark(model: str, *, scenes: int, seed: int, kinds: tuple[str, ...], max_new_tokens: int, draft_k: int,
                  sample_seeds: int, temperature: float, twin_hidden: int, twin_layers: int,
                  device: str = "cpu") -> dict[str, Any]:
    from evcascade.cascade import Cascade
    from evcascade.clip import load_clip
    from evcascade.data.world import WorldConfig, make_world_sample, scene_seeds
    from evcascade.decoding.drafters import DraftContext
    from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
    from evcascade.decoding.verifier import VerifyRequest

    for flag, value in (("--scenes", scenes), ("--max-new-tokens", max_new_tokens), ("--draft-k", draft_k)):
        if value < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
    if sample_seeds < 0:
        raise InputError(f"--sample-seeds must be >= 0, got {sample_seeds}")
    cascade = Cascade.from_pretrained(model, device=device)
    sampled = dict(do_sample=True, temperature=temperature)
    rows = [
        Row("target (no drafter)", "greedy", "target (no drafter)", False, dict(draft_k=0, adaptive=False)),
        Row("chain cascade", "greedy", "target (no drafter)", True, dict(trees=False)),
        Row("tree cascade", "greedy", "target (no drafter)", True, dict(trees=True)),
        Row("tree cascade (all branches)", "greedy", "target (no drafter)", True, dict(trees=True), all_branches=True),
        Row("chain cascade (static k)", "greedy", "target (no drafter)", True, dict(trees=False, adaptive=False)),
        Row("tree cascade (static k)", "greedy", "target (no drafter)", True, dict(trees=True, adaptive=False)),
    ]
    if sample_seeds:
        rows += [
            Row("target (coupled)", "sampling", "target (coupled)", False, dict(draft_k=0, adaptive=False, **sampled)),
            Row("chain cascade (coupled)", "sampling", "target (coupled)", True, dict(trees=False, **sampled)),
            Row("tree cascade (coupled)", "sampling", "target (coupled)", True, dict(trees=True, **sampled)),
            Row("tree cascade (coupled, all branches)", "sampling", "target (coupled)", True,
                dict(trees=True, **sampled), all_branches=True),
            Row("chain cascade (speculative)", "sampling", "target (coupled)", True,
                dict(sampling="speculative", **sampled)),
            Row("chain cascade (coupled, static k)", "sampling", "target (coupled)", True,
                dict(trees=False, adaptive=False, **sampled)),
            Row("tree cascade (coupled, static k)", "sampling", "target (coupled)", True,
                dict(trees=True, adaptive=False, **sampled)),
            Row("chain cascade (speculative, static k)", "sampling", "target (coupled)", True,
                dict(sampling="speculative", adaptive=False, **sampled)),
        ]
    base = {**cascade.generation_defaults, "max_new_tokens": max_new_tokens, "draft_k": draft_k}
    for row in rows:
        row.log = SizeLog(cascade.verifier)
        policy = _all_branches_policy() if row.all_branches else None
        row.decoder = CascadeDecoder(row.log, fresh_levels(cascade.levels) if row.levels else [], policy=policy)

    def cold_inputs(sample, question):
        """A fresh clip (new Events/Video objects: the drafters' per-clip memos miss) and empty target caches."""
        cascade.verifier.feature_cache.clear()
        cascade.verifier.prefix_cache.clear()
        clip = load_clip(sample.events, sample.video, num_frames=cascade.num_frames)
        built = cascade.prompter(question)
        pixels = cascade.verifier.pixel_values(clip.video.frames)
        return (VerifyRequest(built.target_ids, pixels),
                DraftContext(built.text_ids, events=clip.events, video=clip.video))

    questions = []
    for scene_seed in scene_seeds(seed, scenes):
        sample = make_world_sample(scene_seed, WorldConfig())
        questions += [(scene_seed, sample, qa) for qa in sample.qa if qa.kind in kinds]
    if not questions:
        raise InputError(f"no questions of kinds {list(kinds)} in {scenes} scenes")
    from tqdm import tqdm

    references: dict[tuple, list[int]] = {}
    warmed: set[str] = set()
    for scene_seed, sample, qa in tqdm(questions, desc="trees bench", unit="question", file=sys.stderr):
        for row in rows:
            seeds = [None] if row.group == "greedy" else list(range(sample_seeds))
            for sample_seed in seeds:
                options = GenerationOptions(**{**base, **row.options, "seed": sample_seed})
                if row.name not in warmed:  # untimed warm-up: lazy initialisation is no row's cost
                    row.decoder.generate(*cold_inputs(sample, qa.question), options)
                    warmed.add(row.name)
                request, context = cold_inputs(sample, qa.question)
                start_sizes = len(row.log.sizes)
                started = time.perf_counter()
                result = row.decoder.generate(request, context, options)
                wall_s = time.perf_counter() - started
                ids, stats = result.token_ids[0].tolist(), result.stats
                key = (scene_seed, qa.question, sample_seed)
                if row.name == row.reference:
                    references[key] = ids
                row.answers += 1
                row.identical += int(ids == references[key])
                row.tokens += len(ids)
                row.wall_s += wall_s
                row.forwards += stats.target_forwards
                row.drafted += sum(level.drafted for level in stats.levels)
                row.accepted += sum(level.accepted for level in stats.levels)
                row.tree_steps += stats.tree_steps
                row.branch_nodes += stats.branch_nodes
                row.branch_accepted += stats.branch_accepted
                row.prefill_s += stats.prefill_s
                row.vision_s += stats.vision_s
                row.draft_s += stats.draft_s
                row.sizes += row.log.sizes[start_sizes:]

    twin = None
    if twin_hidden and twin_layers:
        most = max(max(row.sizes, default=1) for row in rows)
        twin = {"hidden_size": twin_hidden, "num_layers": twin_layers,
                "verify_s_by_size": twin_verify_costs(cascade.verifier.model, hidden_size=twin_hidden,
                                                      num_layers=twin_layers, max_nodes=most)}
        twin["prefill_s"] = twin["verify_s_by_size"][1]  # a cached-prefix prefill re-priced as one 1-token forward

    table = []
    targets = {row.name: row for row in rows if row.name == row.reference}
    for row in rows:
        tokens_per_s = row.tokens / row.wall_s if row.wall_s else 0.0
        out = {"row": row.name, "group": row.group, "answers": row.answers, "tokens": row.tokens,
               "tokens_per_s": tokens_per_s, "tau": row.tokens / row.forwards if row.forwards else 0.0,
               "target_forwards": row.forwards, "acceptance": row.accepted / row.drafted if row.drafted else 0.0,
               "tree_steps": row.tree_steps, "branch_nodes": row.branch_nodes,
               "branch_accepted": row.branch_accepted, "identical": row.identical / row.answers if row.answers else 0.0,
               "wall_s": row.wall_s, "draft_s": row.draft_s, "prefill_s": row.prefill_s, "vision_s": row.vision_s,
               "verify_sizes": _histogram(row.sizes)}
        if twin is not None:
            costs = twin["verify_s_by_size"]
            seconds = sum(costs[n] for n in row.sizes) + row.answers * twin["prefill_s"] + row.draft_s
            out["twin_model_tokens_per_s"] = row.tokens / seconds if seconds else 0.0
        table.append(out)
    for out in table:
        reference = next(r for r in table if r["row"] == targets[next(row.reference for row in rows
                                                                      if row.name == out["row"])].name)
        out["speedup"] = out["tokens_per_s"] / reference["tokens_per_s"] if reference["tokens_per_s"] else 0.0
        if twin is not None:
            out["twin_model_speedup"] = (out["twin_model_tokens_per_s"] / reference["twin_model_tokens_per_s"]
                                         if reference["twin_model_tokens_per_s"] else 0.0)
    return {
        "benchmark": "trees", "model": model, "cascade": repr(cascade), "environment": environment_info(device),
        "regime": "cold (target features, visual prefix and drafter clip memos empty before every answer)",
        "config": {"scenes": scenes, "seed": seed, "kinds": list(kinds), "questions": len(questions),
                   "max_new_tokens": max_new_tokens, "draft_k": draft_k, "sample_seeds": sample_seeds,
                   "temperature": temperature},
        "rows": table, "twin_model": twin,
        "coupled_identical": all(r["identical"] == 1.0 for r in table if "speculative" not in r["row"]),
    }


def _histogram(sizes: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for n in sizes:
        out[n] = out.get(n, 0) + 1
    return dict(sorted(out.items()))


COLUMNS = ["row", "answers", "tokens", "tokens_per_s", "speedup", "tau", "target_forwards", "acceptance",
           "tree_steps", "branch_accepted", "identical"]


def format_report(report: dict[str, Any]) -> str:
    columns = COLUMNS + (["twin_model_tokens_per_s", "twin_model_speedup"] if report["twin_model"] else [])
    config = report["config"]
    lines = [f"trees bench, {report['regime']}: {config['questions']} questions of kinds {config['kinds']}, "
             f"draft_k {config['draft_k']}, {config['sample_seeds']} seeds per question at temperature "
             f"{config['temperature']}", format_table(report["rows"], columns)]
    if report["twin_model"]:
        twin = report["twin_model"]
        lines.append(f"twin model: verify cost per size of a {twin['hidden_size']} x {twin['num_layers']} text model, "
                     "ms: " + ", ".join(f"{n}: {s * 1e3:.1f}" for n, s in twin["verify_s_by_size"].items()))
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evcascade.bench trees", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="bundled", help="cascade folder, preset or 'bundled'")
    p.add_argument("--scenes", type=int, default=20, help="held-out scenes")
    p.add_argument("--seed", type=int, default=9000, help="seed of the held-out scene seeds")
    p.add_argument("--kinds", default="caption", help="comma-separated question kinds (default: the long answers)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--draft-k", type=int, default=8)
    p.add_argument("--sample-seeds", type=int, default=3, help="sampling seeds per question (0: greedy only)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--twin-hidden", type=int, default=1024, help="cost-model twin width (0: no twin)")
    p.add_argument("--twin-layers", type=int, default=8)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="bench_out", help="folder for <name>.json")
    p.add_argument("--name", default="trees", help="report name")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run_benchmark(args.model, scenes=args.scenes, seed=args.seed,
                               kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()),
                               max_new_tokens=args.max_new_tokens, draft_k=args.draft_k,
                               sample_seeds=args.sample_seeds, temperature=args.temperature,
                               twin_hidden=args.twin_hidden, twin_layers=args.twin_layers, device=args.device)
    except InputError as error:
        print(f"evcascade.bench trees: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    path = write_json(args.out, args.name, report)
    print(f"wrote {path}")
    if not report["coupled_identical"]:
        print("OUTPUT MISMATCH: a greedy or coupled row differs from the target alone", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
