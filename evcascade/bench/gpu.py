"""``python -m evcascade.bench gpu``: the suite to run the day a GPU is lent, one table, < 8 minutes on one GPU.

Three parts, each a few rows of one table:

(i)   lossless check at Video-LLaVA-7B's language-model size (Vicuna-7B shapes, random weights, bf16): for
      ``--prompts`` random prompts, the cascade (an ``OracleDrafter`` at a = 0.8, static k, so every verify
      judges several tokens in one forward) against HF ``generate``; and, per answer position, whether the
      argmax of one multi-token forward over prompt + answer (how a verify sees the tokens) equals the token HF
      chose one 1-token forward at a time. bf16 kernels sum in a different order for a k-token forward than for
      a 1-token one, so where the top two logits are closer than that rounding noise the argmax can flip: the
      row counts the flips and the largest top-2 margin among them (a flip at a large margin would be a bug).
(ii)  engine oracle rows at a in {0.7, 0.9} on the 7B-shaped target (``bench/engine.py``'s rows and bounds).
(iii) the demo cascade's measured acceptance replayed on a 7B-size cost twin (``bench/demo.py``'s twin rows,
      hidden 4096 x 32 layers), cold and warm.

``--size tiny`` runs the same code with tiny shapes on the CPU in seconds (the test suite does). Exit code 1
when an output differs from its reference in parts (ii)/(iii), which must be exact; part (i)'s count is a
measurement, reported, never an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from evcascade.bench.common import environment_info, format_table, write_json
from evcascade.errors import InputError


@dataclass(frozen=True)
class SuiteSize:
    """One ``--size``: the engine bench size and the demo twin's text model."""

    engine_size: str
    twin_hidden: int
    twin_layers: int
    scenes: int
    questions: int | None
    prompts: int
    prompt_tokens: int
    new_tokens: int


SUITE_SIZES = {
    "7b": SuiteSize("7b", 4096, 32, scenes=4, questions=None, prompts=20, prompt_tokens=300, new_tokens=32),
    "tiny": SuiteSize("tiny", 64, 1, scenes=1, questions=1, prompts=20, prompt_tokens=16, new_tokens=12),
}


def lossless_check(size: SuiteSize, device: str, dtype: torch.dtype, *, acceptance: float = 0.8, draft_k: int = 4,
                   seed: int = 0) -> dict[str, Any]:
    """Part (i): cascade vs HF generate over ``size.prompts`` prompts, and the near-tie flips between a
    multi-token forward and 1-token forwards."""
    from transformers import LlamaForCausalLM

    from evcascade.bench.engine import SIZES, build, hf_run
    from evcascade.bench.oracle import OracleDrafter
    from evcascade.decoding.drafters import DraftContext
    from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
    from evcascade.decoding.model_drafter import ModelDrafter
    from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest

    shapes = SIZES[size.engine_size]
    torch.manual_seed(seed)
    target = build(LlamaForCausalLM, shapes.target.config(eos_token_id=None), device, dtype)
    small = build(LlamaForCausalLM, shapes.drafter.config(eos_token_id=None), device, dtype)
    for model in (target, small):
        model.generation_config.eos_token_id, model.generation_config.pad_token_id = None, 0
    vocab = min(shapes.target.vocab_size, shapes.drafter.vocab_size)
    verifier = CausalLMVerifier(target, text_vocab_size=vocab, eos_token_ids=())
    options = GenerationOptions(max_new_tokens=size.new_tokens, draft_k=draft_k, adaptive=False, eos_token_ids=())
    generator = torch.Generator().manual_seed(seed)
    identical, flips, positions, flip_margins, first_divergence = 0, 0, 0, [], []
    hf_s = ours_s = 0.0
    for _ in range(size.prompts):
        prompt = torch.randint(4, vocab, (1, size.prompt_tokens), generator=generator).to(device)  # [1, L]
        reference = hf_run(target, prompt, size.new_tokens)
        reference_ids = torch.tensor([reference.token_ids], device=device)  # [1, N]
        oracle = OracleDrafter(reference_ids, acceptance, vocab_size=vocab, seed=seed,
                               cost_model=ModelDrafter(small, vocab_size=vocab, name="cost"))
        started = time.perf_counter()
        result = CascadeDecoder(verifier, [oracle]).generate(VerifyRequest(prompt), DraftContext(prompt), options)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        ours_s += time.perf_counter() - started
        hf_s += reference.wall_s
        ids = result.token_ids[0].tolist()
        identical += ids == reference.token_ids
        if ids != reference.token_ids:
            first_divergence.append(next(i for i, (a, b) in enumerate(zip(ids, reference.token_ids)) if a != b))
        with torch.no_grad():  # one forward over prompt + answer: row L-1+p judges answer position p
            logits = target(torch.cat([prompt, reference_ids[:, :-1]], dim=1)).logits[0, prompt.shape[1] - 1:]
        logits = logits.float()  # [N, V]
        chosen = logits.argmax(dim=-1)
        wrong = (chosen != reference_ids[0]).nonzero().flatten().tolist()
        flips += len(wrong)
        positions += reference_ids.shape[1]
        for position in wrong:
            flip_margins.append(float(logits[position, chosen[position]] - logits[position, reference_ids[0, position]]))
    del target, small, verifier
    return {"prompts": size.prompts, "identical": identical, "first_divergence_positions": first_divergence,
            "argmax_flips": flips, "positions": positions,
            "largest_flip_margin": max(flip_margins) if flip_margins else None,
            "hf_s": hf_s, "ours_s": ours_s, "acceptance": acceptance, "draft_k": draft_k}


def run_suite(size_name: str, device: str, dtype_name: str, seed: int = 0) -> dict[str, Any]:
    """All three parts; the report with one table (``rows``)."""
    from evcascade.bench import demo, engine
    from evcascade.decoding.verifier import resolve_dtype

    if size_name not in SUITE_SIZES:
        raise InputError(f"--size must be one of {sorted(SUITE_SIZES)}, got {size_name!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for but torch sees no CUDA device")
    size = SUITE_SIZES[size_name]
    dtype = resolve_dtype(dtype_name)
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []

    # (i) lossless
    check = lossless_check(size, device, dtype, seed=seed)
    rows.append({"part": "i lossless", "row": "cascade vs HF generate", "setting": f"a {check['acceptance']}, static "
                 f"k {check['draft_k']}", "value": f"{check['identical']}/{check['prompts']} answers identical",
                 "speedup": check["hf_s"] / check["ours_s"] if check["ours_s"] else None,
                 "note": f"first divergences at {check['first_divergence_positions'] or '-'}"})
    rows.append({"part": "i lossless", "row": "k-token forward vs 1-token argmax", "setting": dtype_name,
                 "value": f"{check['argmax_flips']}/{check['positions']} positions flip",
                 "note": "largest top-2 margin among flips: "
                         + ("-" if check["largest_flip_margin"] is None else f"{check['largest_flip_margin']:.4g}")})
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    # (ii) engine oracle rows at a in {0.7, 0.9}
    config = engine.EngineBenchConfig(target_size=size.engine_size, device=device, dtype=dtype_name,
                                      new_tokens=64 if size_name == "7b" else 12, repeats=2,
                                      acceptances=(0.7, 0.9), k_max=8 if size_name == "7b" else 4, seed=seed,
                                      ttft=False, hf_context_rows=False)
    engine_report = engine.run_benchmark(config, progress=False)
    for row in engine_report["rows"]:
        if row["a"] == "" and row["row"] != "ours, no drafter":
            continue
        rows.append({"part": "ii engine", "row": row["row"], "setting": ", ".join(f"{key} {row[key]}" for key in ("a", "k") if row[key] != ""),
                     "value": f"{row['% of cost bound']:.0f}% of cost bound" if "% of cost bound" in row else "",
                     "speedup": row["decode speedup"], "tau": row.get("tau"), "identical": row["identical"],
                     "note": f"decode min-max {row['decode min-max']}"})
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    # (iii) the demo cascade's acceptance on a 7B-size twin, cold and warm
    demo_report = demo.run_benchmark("bundled", scenes=size.scenes, seed=9000, questions=size.questions,
                                     twin_hidden=size.twin_hidden, twin_layers=size.twin_layers, device=device,
                                     twin_dtype=dtype)
    for row in demo_report["rows"]:
        if row["kind"] != demo.TWIN or row["slice"] != "all":
            continue
        rows.append({"part": "iii twin", "row": row["row"], "setting": row["regime"],
                     "value": f"{row['tokens_per_s']:.1f} tok/s", "speedup": row["speedup"], "tau": row["tau"],
                     "identical": row["identical"], "note": f"vs ours no drafter {row['speedup_vs_ours']:.2f}x"})
    outputs_identical = engine_report["outputs_identical"] and demo_report["outputs_identical"]
    return {"benchmark": "gpu", "size": size_name, "device": device, "dtype": dtype_name,
            "environment": environment_info(device, load_before), "seconds": time.perf_counter() - started,
            "rows": rows, "lossless": check, "outputs_identical": outputs_identical,
            "demo_decomposition": demo_report["decomposition"], "engine_targets": engine_report["targets"]}


COLUMNS = ("part", "row", "setting", "value", "speedup", "tau", "identical", "note")


def main(argv: list[str] | None = None) -> int:
    """Run the suite, print its table, write ``gpu.json``; 2 on a usage error, 1 if an exact row differs."""
    parser = argparse.ArgumentParser(prog="python -m evcascade.bench gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="7b", choices=sorted(SUITE_SIZES), help="7b (a GPU) or tiny (CPU, CI)")
    parser.add_argument("--device", default=None, help="default: cuda for 7b, cpu for tiny")
    parser.add_argument("--dtype", default=None, help="default: bf16 for 7b, float32 for tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_out", help="folder for gpu.json")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    device = args.device or ("cuda" if args.size == "7b" else "cpu")
    dtype = args.dtype or ("bf16" if args.size == "7b" else "float32")
    try:
        report = run_suite(args.size, device, dtype, args.seed)
    except InputError as error:
        print(f"evcascade.bench gpu: {error}", file=sys.stderr)
        return 2
    print(f"GPU suite, size {args.size}, {device}, {dtype}, {report['seconds']:.0f} s")
    print(format_table(report["rows"], COLUMNS))
    print(f"wrote {write_json(args.out, 'gpu', report)}")
    if not report["outputs_identical"]:
        print("OUTPUT MISMATCH in an engine or twin row (these must be exact)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
