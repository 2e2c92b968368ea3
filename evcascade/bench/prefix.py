"""``python -m evcascade.bench prefix``: prefix sharing in batched verification, on and off, side by side.

B questions about ONE clip (a held-out synthetic-world scene) are verified together by a ``BatchDecoder`` whose
rows either reference the clip's visual prefix (``share_prefix=True``, ``decoding/shared_prefix.py``) or copy it
into each row (``False``, the earlier path). Warm regime: the clip's prefix is in the verifier's prefix cache before
the timed run (its first computation is no row's cost). Each row drafts ``--draft-k`` tokens per step (a drafter
whose tokens are always rejected, so every step is a full ``B x (k + 1)`` verify forward and the tails are cut), for
``--steps`` steps after the step that feeds the questions. Per target (the bundled cascade's "real" target and
``bench/demo.py``'s cost twin of it, ``--twin-hidden`` x ``--twin-layers``) and B:

    kv_mib_copy / kv_mib_shared   keys+values the batch holds after the questions' step (``KVBatch.nbytes``)
    verify_ms_copy / _shared      median batched verify forward (over steps and ``--repeats`` alternating runs)
    speedup                       verify_ms_copy / verify_ms_shared (and of the two paths' fastest forwards: on a
                                  loaded machine the minima say more about the work than the medians)
    identical                     both paths' answers equal (and equal to the rows' batch-1 answers)

The bundled targets' clips are short (their prefix is a few dozen positions); Video-LLaVA-7B's is ~2100. So each
target is timed again on a prefix of ``--long-prefixes`` random ids (no answers: one batched forward of B x (k + 1)
new tokens after it, copied vs shared, ``max_logit_diff`` between the two paths' logits).

Output: the table, ``prefix.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch

from evcascade.bench.common import (add_machine_args, add_twin_args, environment_info, format_table,
                                    report_main)
from evcascade.decoding.drafters import Draft, Drafter
from evcascade.errors import InputError


class _RejectedDrafter(Drafter):
    """Proposes ``k`` copies of an id the target will not choose next (its batch-1 ``reference`` answer's next id,
    plus one): every verify forward is full width and every draft is rejected."""

    name, can_review = "rejected", True

    def __init__(self, reference: list[int], vocab_size: int) -> None:
        self.reference, self.vocab_size = reference, vocab_size

    def begin(self, context, **kwargs) -> None:
        pass

    def propose(self, generated, k):
        n = generated.shape[1]
        wrong = (self.reference[n] + 1) % self.vocab_size if n < len(self.reference) else 0
        return Draft(torch.full((1, k), wrong, dtype=torch.long))


def _measure(verifier, requests, references, *, share: bool, draft_k: int, steps: int, pad: int):
    """One batched run: (answers, KV bytes after the questions' step, verify seconds of each later step)."""
    from evcascade.decoding.batch import BatchDecoder, BatchRequest
    from evcascade.decoding.engine import GenerationOptions

    decoder = BatchDecoder(verifier, [], pad_token_id=pad, share_prefix=share)
    if decoder.share_prefix != share:
        raise InputError(f"this target cannot share prefixes (attention {verifier.model.config._attn_implementation})")
    options = GenerationOptions(max_new_tokens=steps + 2, draft_k=draft_k, eos_token_ids=())
    for index, ((request, context), reference) in enumerate(zip(requests, references)):
        drafter = _RejectedDrafter(reference, verifier.text_vocab_size)
        decoder.add(BatchRequest(request, context, options, index, drafter=drafter))
    answers = {result.tag: result.token_ids for result in decoder.step()}  # the questions join the rows' own positions
    kv_bytes = decoder.kv.nbytes()
    verify_s = []
    while decoder.rows:
        before = decoder.timings["verify"]
        for result in decoder.step():
            answers[result.tag] = result.token_ids
        verify_s.append(decoder.timings["verify"] - before)
    return [answers[i] for i in range(len(requests))], kv_bytes, verify_s


def _forward_at(verifier, prefix_length: int, batch_size: int, block: int, repeats: int, seed: int):
    """A clip-sized prefix made up of random ids (``prefix_length`` positions, as long as a real target's clip),
    ``batch_size`` rows on it, one batched forward of ``block`` new tokens per row, copied and shared: per path
    (KV bytes, seconds of each of ``repeats`` alternating forwards, logits)."""
    from evcascade.decoding.batch import BatchDecoder
    from evcascade.decoding.shared_prefix import text_decoder

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, verifier.text_vocab_size, (1, prefix_length), generator=gen)
    with torch.no_grad():
        out = text_decoder(verifier.model)(input_ids=ids.to(verifier.device), use_cache=True)
    layers = [(layer.keys, layer.values) for layer in out.cache.layers]  # [1, H, P, D]
    new_ids = torch.randint(1, verifier.text_vocab_size, (batch_size, block), generator=gen).to(verifier.device)
    position_ids = prefix_length + torch.arange(block, device=verifier.device).expand(batch_size, -1)
    decoders = {}
    for share in (False, True):
        decoder = decoders[share] = BatchDecoder(verifier, [], share_prefix=share)
        for _ in range(batch_size):
            decoder.kv.add_row(layers, prefix_key=("random ids", prefix_length) if share else None)
    results = {share: [decoder.kv.nbytes(), [], None] for share, decoder in decoders.items()}
    for _ in range(repeats):
        for share, decoder in decoders.items():
            mask = torch.cat([decoder.kv.mask, torch.ones(batch_size, block, dtype=torch.bool,
                                                          device=verifier.device)], dim=1).long()
            started = time.perf_counter()
            logits, _ = decoder._forward(new_ids, mask, position_ids)
            results[share][1].append(time.perf_counter() - started)
            results[share][2] = logits
    return {share: (nbytes, times, logits) for share, (nbytes, times, logits) in results.items()}


def run_benchmark(model: str = "bundled", *, seed: int = 9000, batch_sizes=(1, 2, 4, 8), draft_k: int = 8,
                  steps: int = 6, repeats: int = 2, twin: bool = True, twin_hidden: int = 1024, twin_layers: int = 8,
                  long_prefixes: tuple[int, ...] = (2100,), device: str = "cpu") -> dict[str, Any]:
    from evcascade.bench.demo import build_twin
    from evcascade.cascade import Cascade
    from evcascade.clip import load_clip
    from evcascade.data.world import make_world_sample, scene_seeds
    from evcascade.decoding.drafters import DraftContext
    from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
    from evcascade.decoding.verifier import VerifyRequest, VideoLlavaVerifier

    if not batch_sizes or min(batch_sizes) < 1 or steps < 1 or repeats < 1 or draft_k < 0:
        raise InputError(f"batch sizes, --steps and --repeats must be >= 1 and --draft-k >= 0, got "
                         f"{list(batch_sizes)}, {steps}, {repeats}, {draft_k}")
    cascade = Cascade.from_pretrained(model, device=device)
    verifier = cascade.verifier
    sample = make_world_sample(scene_seeds(seed, 1)[0])
    clip = load_clip(sample.events, sample.video, num_frames=cascade.num_frames)
    pixels = verifier.pixel_values(clip.video.frames)
    questions = [qa.question for qa in sample.qa]
    built = [cascade.prompter(questions[i % len(questions)]) for i in range(max(batch_sizes))]
    requests = [(VerifyRequest(b.target_ids, pixels, "bench-clip"), DraftContext(b.text_ids)) for b in built]
    targets = {"real": verifier}
    if twin:
        targets["cost-twin"] = VideoLlavaVerifier(
            build_twin(verifier.model, hidden_size=twin_hidden, num_layers=twin_layers, seed=seed),
            preprocess_config=verifier.preprocess_config, eos_token_ids=())
    pad = cascade._pad_token_id()
    rows = []
    for kind, target in targets.items():
        for batch_size in batch_sizes:
            group = requests[:batch_size]
            # batch-1 answers (which also puts the clip's prefix into the verifier's cache: the warm regime)
            references = [CascadeDecoder(target, []).generate(request, context, GenerationOptions(
                max_new_tokens=steps + 2, draft_k=0, eos_token_ids=())).token_ids[0].tolist()
                for request, context in group]
            runs = {False: [], True: []}
            for _ in range(repeats):
                for share in (False, True):  # alternating: both see the same machine state
                    runs[share].append(_measure(target, group, references, share=share, draft_k=draft_k,
                                                steps=steps, pad=pad))
            times = {share: [s for run in runs[share] for s in run[2]] for share in runs}
            verify_ms = {share: 1e3 * statistics.median(times[share]) for share in runs}
            kv_mib = {share: runs[share][0][1] / 2**20 for share in runs}
            rows.append({"target": kind, "B": batch_size, "prefix_positions": verifier_prefix(target, group[0][0]),
                         "kv_mib_copy": kv_mib[False], "kv_mib_shared": kv_mib[True],
                         "verify_ms_copy": verify_ms[False], "verify_ms_shared": verify_ms[True],
                         "speedup": verify_ms[False] / verify_ms[True],
                         "speedup_of_minima": min(times[False]) / min(times[True]),
                         "identical": all(run[0] == references for share in runs for run in runs[share])})
    for kind, target in targets.items():  # clips as long as Video-LLaVA-7B's (8 x 257 video tokens + the prompt)
        for prefix_length in long_prefixes:
            for batch_size in batch_sizes:
                measured = _forward_at(target, prefix_length, batch_size, draft_k + 1, max(3, 2 * repeats), seed)
                diff = float((measured[True][2] - measured[False][2]).abs().max())
                rows.append({"target": f"{kind}, random-id prefix", "B": batch_size, "prefix_positions": prefix_length,
                             "kv_mib_copy": measured[False][0] / 2**20, "kv_mib_shared": measured[True][0] / 2**20,
                             "verify_ms_copy": 1e3 * statistics.median(measured[False][1]),
                             "verify_ms_shared": 1e3 * statistics.median(measured[True][1]),
                             "speedup": statistics.median(measured[False][1]) / statistics.median(measured[True][1]),
                             "speedup_of_minima": min(measured[False][1]) / min(measured[True][1]),
                             "max_logit_diff": diff,
                             "identical": diff < 1e-3})
    return {"benchmark": "prefix", "model": model, "cascade": repr(cascade), "environment": environment_info(device),
            "config": {"seed": seed, "batch_sizes": list(batch_sizes), "draft_k": draft_k, "steps": steps,
                       "repeats": repeats, "twin": twin, "twin_hidden": twin_hidden, "twin_layers": twin_layers,
                       "long_prefixes": list(long_prefixes), "attention": {kind: t.model.config.get_text_config()._attn_implementation
                                     for kind, t in targets.items()}, "threads": torch.get_num_threads()},
            "rows": rows, "outputs_identical": all(row["identical"] for row in rows)}


def verifier_prefix(verifier, request) -> int:
    """Positions of the request's shared visual prefix (through its last ``<video>`` token)."""
    is_video = (request.prompt_ids[0] == verifier.video_token_id).nonzero().flatten()
    return int(is_video[-1]) + 1


COLUMNS = ("target", "B", "prefix_positions", "kv_mib_copy", "kv_mib_shared", "verify_ms_copy", "verify_ms_shared",
           "speedup", "speedup_of_minima", "max_logit_diff", "identical")


def format_report(report: dict[str, Any]) -> str:
    config = report["config"]
    return "\n".join([
        f"prefix sharing, B questions on one clip, warm, draft_k {config['draft_k']} (rejected: full-width "
        f"forwards), {config['steps']} timed steps x {config['repeats']} runs, attention {config['attention']}, "
        f"{config['threads']} threads", format_table(report["rows"], COLUMNS),
        f"every answer equal to its batch-1 answer, shared and copied: {report['outputs_identical']}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evcascade.bench prefix", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--seed", type=int, default=9000)
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--draft-k", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    add_twin_args(parser)
    parser.add_argument("--long-prefixes", default="2100", help="random-id prefix lengths to time too ('' for none)")
    add_machine_args(parser, "prefix.json")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)

    def build() -> dict[str, Any]:
        sizes = tuple(int(b) for b in args.batch_sizes.split(","))
        return run_benchmark(args.model, seed=args.seed, batch_sizes=sizes, draft_k=args.draft_k, steps=args.steps,
                             repeats=args.repeats, twin=not args.no_twin, twin_hidden=args.twin_hidden,
                             twin_layers=args.twin_layers, device=args.device,
                             long_prefixes=tuple(int(p) for p in args.long_prefixes.split(",") if p))

    return report_main("prefix", args.out, build, format_report)

if __name__ == "__main__":
    sys.exit(main())
