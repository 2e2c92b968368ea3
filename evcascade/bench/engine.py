"""``python -m evcascade.bench engine``: the cascade engine at controlled acceptance, against the EWIF bound.

A random-weight Llama target large enough to be memory-bound on the machine and a drafter 20-100x cheaper.
Side by side in one run, greedy, every output checked identical to Hugging Face ``generate``:

- HF ``generate`` (plain), HF assisted generation with the small model as assistant, HF prompt lookup;
- our engine with no drafter (its overhead against HF's loop);
- our engine with an ``OracleDrafter`` (``bench/oracle.py``) accepted with probability a in {0.5, 0.7, 0.9},
  at a static k (the bound-maximising one) and with the adaptive policy; its cost is a real small model's.

Two bounds on the speedup over plain decoding, from costs measured in the same run (T_1: one 1-token target
forward, T_v(n): an n-token verify, T_d(k): drafting k tokens, c = T_d(k) / (k T_1)):

    EWIF (classic)       (1 - a^(k+1)) / ((1 - a)(k c + 1))         a verify of k+1 tokens costs one forward
    measured-cost bound  E[tokens](a, k) * T_1 / (T_d(k) + T_v(k+1))  a verify costs what it costs here

each maximised over k >= 0 (k = 0: do not draft, bound 1; the adaptive policy may choose it). On a CPU a (k+1)-token
verify is far from free, so the 85% target is judged against the measured-cost bound, read as a throughput:
``% of cost bound`` = a row's decode-phase tokens/s over max_k E[tokens](a, k) / (T_d(k) + T_v(k+1)), so HF's
own loop overhead cannot inflate it; the costs are measured again in every repeat round, just before its rows, and
each run is judged against its own round's costs (a shared machine's load moves between rounds). The decode phase is defined alike for every row: the tokens after the first
over the time from the first token to the last; every row's first token comes from the prompt's prefill alone
(our rows run with ``draft_in_prefill=False`` here, so the prefill judges no draft block). Each row reports its
spread over the repeats (min-max); a row whose *every* run is above its bound is flagged (``above bound``): that
is a bug in the bound or the bench, not noise. Per-step
overhead is the engine's own time (everything but target forwards and drafter calls) per step, as a share of T_1.

A second part times the first token of two questions about one clip on a Video-LLaVA target (8 frames,
257 visual tokens each): the second question reuses the clip's features and visual-prefix KV cache.

On the shared 2-core development VM: ``--target-size small`` 2-5 minutes (HF assisted generation with a
random assistant is the slowest row), ``large`` (467M parameters) ~10 minutes of rows plus ~4 for the
first-token part. On a machine shared with other work pass ``--threads 1``: two threads contending for busy
cores made every row slower and far noisier. Costs (for the bounds) are measured once before the rows; the
bounds are ratios of costs, so a uniform load change cancels, an uneven one does not.
``--preset 7b`` builds Video-LLaVA-7B / llama-68m shapes (random weights) for a GPU:
``--device cuda --dtype bf16 --preset 7b``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from evcascade.bench.common import environment_info, format_table, mismatch_exit_code, save_report
from evcascade.bench.oracle import OracleDrafter
from evcascade.decoding.drafters import DraftContext
from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
from evcascade.decoding.model_drafter import ModelDrafter
from evcascade.decoding.policy import ewif, expected_tokens
from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest, VideoLlavaVerifier
from evcascade.errors import InputError


# ----------------------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class LlamaShape:
    """A Llama's size (random weights are made from it)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    vocab_size: int = 32000
    intermediate_size: int | None = None
    """None: 2 x hidden (the tiny factory's default)."""

    def config(self, **overrides):
        from evcascade.models.tiny import tiny_llama_config

        extra = {} if self.intermediate_size is None else {"intermediate_size": self.intermediate_size}
        return tiny_llama_config(self.vocab_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
                                 num_heads=self.num_heads, **extra, **overrides)


@dataclass(frozen=True)
class VideoShape:
    """A Video-LLaVA's size for the time-to-first-token part."""

    num_frames: int
    image_size: int
    patch_size: int
    vision: LlamaShape
    """The CLIP tower's hidden / layers / heads (vocab unused)."""
    text: LlamaShape


@dataclass(frozen=True)
class BenchSize:
    """One ``--target-size``: text target, drafter, prompt length, video target."""

    target: LlamaShape
    drafter: LlamaShape
    prompt_tokens: int
    video: VideoShape


_CLIP_SMALL = LlamaShape(hidden_size=128, num_layers=2, num_heads=4)
SIZES: dict[str, BenchSize] = {
    # for the smoke test: seconds in all
    "tiny": BenchSize(LlamaShape(64, 2, 4, vocab_size=512), LlamaShape(32, 1, 4, vocab_size=512), 16,
                      VideoShape(2, 32, 16, LlamaShape(32, 1, 4), LlamaShape(32, 1, 4))),
    "small": BenchSize(LlamaShape(512, 4, 8), LlamaShape(256, 2, 4), 300,
                       VideoShape(8, 224, 14, _CLIP_SMALL, LlamaShape(512, 4, 8))),
    "medium": BenchSize(LlamaShape(1024, 8, 16), LlamaShape(256, 2, 4), 300,
                        VideoShape(8, 224, 14, _CLIP_SMALL, LlamaShape(768, 6, 12))),
    "large": BenchSize(LlamaShape(2048, 8, 32), LlamaShape(256, 2, 4), 300,
                       VideoShape(8, 224, 14, _CLIP_SMALL, LlamaShape(1024, 8, 16))),
    # Video-LLaVA-7B-hf (Vicuna-7B v1.5 + CLIP ViT-L/14 at 224) and JackFram/llama-68m shapes: for a GPU
    "7b": BenchSize(LlamaShape(4096, 32, 32, intermediate_size=11008),
                    LlamaShape(768, 2, 12, intermediate_size=3072), 300,
                    VideoShape(8, 224, 14, LlamaShape(1024, 24, 16, intermediate_size=4096),
                               LlamaShape(4096, 32, 32, vocab_size=32064, intermediate_size=11008))),
}


@dataclass(frozen=True)
class EngineBenchConfig:
    """Everything a run depends on (recorded in the JSON)."""

    target_size: str = "small"
    device: str = "cpu"
    dtype: str = "float32"
    new_tokens: int = 64
    """Answer length (EOS is disabled so every row decodes exactly this many)."""
    repeats: int = 3
    """Timed runs per row (median reported), after one warm-up run."""
    acceptances: tuple[float, ...] = (0.5, 0.7, 0.9)
    k_max: int = 8
    """Largest draft length the bounds search and the adaptive policy may use."""
    threads: int | None = None
    seed: int = 0
    ttft: bool = True
    """Run the Video-LLaVA time-to-first-token part."""
    hf_context_rows: bool = True
    """Run HF assisted generation and prompt lookup too."""

    def __post_init__(self) -> None:
        if self.target_size not in SIZES:
            raise InputError(f"target_size must be one of {sorted(SIZES)}, got {self.target_size!r}")
        if self.new_tokens < 2:
            raise InputError(f"new_tokens must be >= 2, got {self.new_tokens}")
        if self.repeats < 1 or self.k_max < 1:
            raise InputError(f"repeats and k_max must be >= 1, got {self.repeats} and {self.k_max}")
        if not all(0.0 <= a < 1.0 for a in self.acceptances):
            raise InputError(f"acceptances must lie in [0, 1), got {self.acceptances}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {self.device!r} asked for but torch sees no CUDA device")

    @property
    def torch_dtype(self) -> torch.dtype:
        from evcascade.decoding.verifier import resolve_dtype

        return resolve_dtype(self.dtype)


def build(model_class, config, device: str, dtype: torch.dtype):
    """A random-weight ``model_class(config)`` made directly on ``device`` in ``dtype`` (a 7B model never
    exists in float32 on the host)."""
    config._attn_implementation = "sdpa" if device.startswith("cuda") else "eager"
    for sub in ("text_config", "vision_config"):
        if hasattr(config, sub):
            getattr(config, sub)._attn_implementation = config._attn_implementation
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


# ----------------------------------------------------------------------------------------------- costs and bounds


@dataclass
class Costs:
    """Measured seconds: ``verify_s[n]`` an n-token target forward (n=1 is T_1), ``draft_s[k]`` k drafted tokens."""

    verify_s: dict[int, float]
    draft_s: dict[int, float]

    @property
    def target_forward_s(self) -> float:
        return self.verify_s[1]

    @property
    def cost_ratio(self) -> float:
        """c: seconds per drafted token over seconds of a 1-token target forward (mean over k)."""
        return statistics.fmean(self.draft_s[k] / k for k in self.draft_s) / self.target_forward_s

    def classic_bound(self, acceptance: float, k: int) -> float:
        """EWIF: a (k+1)-token verify priced as one forward (k = 0, not drafting: 1)."""
        return ewif(acceptance, k, self.cost_ratio)

    def draft_seconds(self, k: int) -> float:
        """T_d(k); drafting nothing costs nothing."""
        return 0.0 if k == 0 else self.draft_s[k]

    def measured_bound(self, acceptance: float, k: int) -> float:
        """Speedup over plain decoding (one T_1 per token) with the measured draft and verify costs.

        >>> Costs({1: 1.0, 3: 1.5}, {2: 0.1}).measured_bound(0.5, 2)  # 1.75 tokens in 1.6 forwards' time
        1.09375
        >>> Costs({1: 1.0, 3: 1.5}, {2: 0.1}).measured_bound(0.5, 0)  # not drafting: plain decoding
        1.0
        """
        return expected_tokens([acceptance] * k) * self.target_forward_s / (self.draft_seconds(k) + self.verify_s[k + 1])

    def bound_tokens_per_s(self, acceptance: float) -> tuple[int, float]:
        """``(k, tokens/s)``: the most decode-phase tokens per second any k >= 0 can give at these costs,
        E[tokens](a, k) / (T_d(k) + T_v(k+1)); a bound on any row's own throughput, whatever its baseline."""
        k, bound = self.best(self.measured_bound, acceptance)
        return k, bound / self.target_forward_s

    def best(self, bound: Callable[[float, int], float], acceptance: float) -> tuple[int, float]:
        """``(k, bound)`` maximising ``bound(acceptance, k)`` over k = 0 (do not draft) and the measured k >= 1.

        >>> Costs({1: 1.0, 2: 1.9, 3: 2.8}, {1: 0.5, 2: 1.0}).best(Costs.measured_bound.__get__(
        ...     Costs({1: 1.0, 2: 1.9, 3: 2.8}, {1: 0.5, 2: 1.0})), 0.3)  # drafting never pays here
        (0, 1.0)
        """
        return max(((k, bound(acceptance, k)) for k in [0, *sorted(self.draft_s)]), key=lambda pair: pair[1])


def _median_times(calls: dict[int, Callable[[], Any]], device: torch.device, repeats: int) -> dict[int, float]:
    """Median seconds of each call, timed round-robin so that load from other processes hits every size alike."""
    for call in calls.values():  # warm-up: the first call at a new shape pays allocation and kernel selection
        call()
    times: dict[int, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            _sync(device)
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_costs(verifier: CausalLMVerifier, drafter: ModelDrafter, prompt_ids: torch.LongTensor,
                  answer_ids: torch.LongTensor, k_max: int, repeats: int = 9) -> Costs:
    """T_v(n) for n = 1..k_max+1 and T_d(k) for k = 1..k_max at a context of the prompt plus half the answer."""
    context = torch.cat([prompt_ids, answer_ids[:, : answer_ids.shape[1] // 2]], dim=1)  # [1, L + N/2]
    verifier.prefill(VerifyRequest(context))
    block = answer_ids[:, -(k_max + 1):].repeat(1, 2)[:, : k_max + 1]  # [1, k_max+1] any ids will do

    def verify(n: int) -> None:
        verifier.verify(block[:, :n])
        verifier.rollback(n)

    verify_s = _median_times({n: (lambda n=n: verify(n)) for n in range(1, k_max + 2)}, verifier.device, repeats)
    drafter.begin(DraftContext(prompt_ids))
    generated = answer_ids[:, : answer_ids.shape[1] // 2]
    drafter.propose(generated, 1)  # cache the answer so far: what follows times drafting alone
    draft_s = _median_times({k: (lambda k=k: drafter.propose(generated, k)) for k in range(1, k_max + 1)},
                            verifier.device, repeats)
    return Costs(verify_s, draft_s)


# ----------------------------------------------------------------------------------------------- timed rows


@dataclass
class Run:
    """One timed generation: its answer ids, wall time, time to first token and (ours) engine stats."""

    token_ids: list[int]
    wall_s: float
    first_token_s: float
    stats: dict[str, Any] | None = None
    round: int = 0
    """Which repeat round it ran in: its bound uses the costs measured in that round."""


class _FirstTokenClock:
    """A ``generate`` streamer noting when the first answer token arrives (its first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.start, self.first_token_s, self._puts = time.perf_counter(), float("nan"), 0

    def put(self, value) -> None:
        self._puts += 1
        if self._puts == 2:
            self.first_token_s = time.perf_counter() - self.start

    def end(self) -> None:
        pass


def hf_run(model, prompt_ids: torch.LongTensor, new_tokens: int, **generate_kwargs) -> Run:
    """``model.generate`` greedy for exactly ``new_tokens`` tokens (the model has no EOS), timed."""
    clock = _FirstTokenClock()
    with torch.no_grad():
        out = model.generate(prompt_ids, do_sample=False, max_new_tokens=new_tokens,
                             streamer=clock, **generate_kwargs)
    _sync(prompt_ids.device)
    wall = time.perf_counter() - clock.start
    return Run(out[0, prompt_ids.shape[1]:].tolist(), wall, clock.first_token_s)


def engine_run(decoder: CascadeDecoder, prompt_ids: torch.LongTensor, options: GenerationOptions) -> Run:
    """One ``CascadeDecoder.generate`` call, timed from outside as the HF rows are."""
    start = time.perf_counter()
    result = decoder.generate(VerifyRequest(prompt_ids), DraftContext(prompt_ids), options)
    _sync(prompt_ids.device)
    wall = time.perf_counter() - start
    return Run(result.token_ids[0].tolist(), wall, result.stats.time_to_first_token_s, result.stats.to_dict())


@dataclass
class Row:
    """A table row: how to run it, and its runs."""

    name: str
    run: Callable[[], Run]
    acceptance: float | None = None
    k: int | None = None
    runs: list[Run] = field(default_factory=list)


def conditional_acceptance(level: dict[str, Any]) -> float:
    """Kept drafts over drafts the target judged with every earlier draft of the block kept (the a of EWIF).

    >>> round(conditional_acceptance({"drafted_by_position": [10, 10, 10], "accepted_by_position": [8, 6, 3]}), 3)
    0.708
    """
    drafted, accepted = level["drafted_by_position"], level["accepted_by_position"]
    judged = [drafted[0]] + [min(d, a) for d, a in zip(drafted[1:], accepted)] if drafted else []
    return sum(accepted) / sum(judged) if sum(judged) else 0.0


def decode_tokens_per_s(run: Run, new_tokens: int) -> float:
    """The decode phase, defined alike for every row: the tokens after the first (``new_tokens - 1``) over the time
    from the first token to the last. Every row's first token is the prompt's prefill alone (HF's by construction;
    ours because the bench turns ``draft_in_prefill`` off), so every row's decode phase holds the same tokens."""
    return (new_tokens - 1) / (run.wall_s - run.first_token_s)


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarise(row: Row, baseline: Row, reference: list[int], costs: Costs, new_tokens: int,
              round_costs: list[Costs] | None = None) -> dict[str, Any]:
    """Medians of ``row``'s runs (and their min/median/max), speedups over ``baseline`` (HF plain) and, for oracle
    rows, the bounds: a row whose every run beats its cost bound is a bug, not noise (``above bound``)."""
    def median(values) -> float:
        return statistics.median(values)

    wall = median(r.wall_s for r in row.runs)
    decode_tps = [decode_tokens_per_s(r, new_tokens) for r in row.runs]
    base_wall = median(r.wall_s for r in baseline.runs)
    base_decode_tps = median(decode_tokens_per_s(r, new_tokens) for r in baseline.runs)
    speedups = [tps / base_decode_tps for tps in decode_tps]
    out: dict[str, Any] = {
        "row": row.name, "a": row.acceptance if row.acceptance is not None else "",
        "k": "" if row.k is None else row.k,
        "tok/s": new_tokens / wall, "speedup": base_wall / wall, "decode speedup": median(speedups),
        "decode speedup spread": _spread(speedups),
        "decode min-max": f"{min(speedups):.2f}-{max(speedups):.2f}",
        "first token ms": 1e3 * median(r.first_token_s for r in row.runs),
        "identical": all(r.token_ids == reference for r in row.runs),
        "wall_s": [r.wall_s for r in row.runs], "decode_tokens_per_s": decode_tps,
    }
    stats = [r.stats for r in row.runs if r.stats is not None]
    if stats:
        steps = median(s["steps"] for s in stats)
        out["tau"] = median(s["tau"] for s in stats)
        out["overhead % T1"] = 100 * median(s["overhead_s"] / max(1, s["steps"]) for s in stats) / costs.target_forward_s
        out["draft ms/step"] = 1e3 * median(s["draft_s"] / max(1, s["steps"]) for s in stats)
        out["verify ms/step"] = 1e3 * median(s["verify_s"] / max(1, s["steps"]) for s in stats)
        out["steps"] = steps
        if stats[0]["levels"]:
            out["acceptance measured"] = median(conditional_acceptance(s["levels"][0]) for s in stats)
    if row.acceptance is not None:
        classic_k, classic = costs.best(costs.classic_bound, row.acceptance)
        bound_k, bound_tps = costs.bound_tokens_per_s(row.acceptance)
        # each run against the bound of the costs measured in its own round: on a shared machine the load moves
        # between rounds, and a bound measured at another time would compare a run with another machine
        bounds = [(round_costs[r.round] if round_costs else costs).bound_tokens_per_s(row.acceptance)[1]
                  for r in row.runs]
        percents = [100 * tps / bound for tps, bound in zip(decode_tps, bounds)]
        out.update({"EWIF bound": classic, "EWIF k": classic_k, "cost bound k": bound_k,
                    "cost bound": bound_tps / base_decode_tps,  # as a speedup over HF generate's decode phase
                    "% of cost bound": median(percents), "% of cost bound spread": _spread(percents),
                    "% of cost bound per run": percents, "bound_tokens_per_s_per_run": bounds,
                    "% bound min-max": f"{min(percents):.0f}-{max(percents):.0f}",
                    "above bound": min(percents) > 100.0,
                    "% of EWIF": 100 * median(decode_tps) * costs.target_forward_s / classic})
    return out


# ----------------------------------------------------------------------------------------------- time to first token


def first_token_times(size: VideoShape, config: EngineBenchConfig, repeats: int) -> dict[str, Any]:
    """Time to first token of a first question on a clip (vision + visual prefill) and of a second question on
    the same clip (cached features and prefix KV); the second answer is checked against a cold verifier's."""
    from transformers import VideoLlavaForConditionalGeneration

    from evcascade.decoding.prompting import VideoLlavaPrompter
    from evcascade.models.tiny import tiny_tokenizer, tiny_video_llava_config

    tok = tiny_tokenizer()
    vl_config = tiny_video_llava_config(
        tok, vocab_size=max(size.text.vocab_size, len(tok)),  # a 32k output layer, as the real LM has
        num_frames=size.num_frames, image_size=size.image_size, patch_size=size.patch_size,
        vision_hidden_size=size.vision.hidden_size, vision_layers=size.vision.num_layers,
        text_hidden_size=size.text.hidden_size, text_layers=size.text.num_layers)
    vision, text = vl_config.vision_config, vl_config.text_config
    vision.num_attention_heads = size.vision.num_heads
    vision.intermediate_size = size.vision.intermediate_size or 4 * size.vision.hidden_size
    text.num_attention_heads = text.num_key_value_heads = size.text.num_heads
    text.intermediate_size = size.text.intermediate_size or 2 * size.text.hidden_size
    text.eos_token_id = None  # fixed-length answers
    torch.manual_seed(config.seed)
    model = build(VideoLlavaForConditionalGeneration, vl_config, config.device, config.torch_dtype)
    prompter = VideoLlavaPrompter(tok, model.config)
    first, second = prompter("what colour is the object ?"), prompter("where does it move ?")
    frames = torch.randint(0, 256, (size.num_frames, 256, 320, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(config.seed))
    options = GenerationOptions(max_new_tokens=4, draft_k=0, adaptive=False, eos_token_ids=())

    def ask(verifier: VideoLlavaVerifier, prompt) -> Any:
        pixels = verifier.pixel_values(frames)
        request = VerifyRequest(prompt.target_ids.to(config.device), pixels)
        return CascadeDecoder(verifier, []).generate(request, DraftContext(prompt.text_ids.to(config.device)), options)

    records = []
    for _ in range(repeats + 1):  # the first pair warms up
        verifier = VideoLlavaVerifier(model)
        cold = ask(verifier, first)
        warm = ask(verifier, second)
        records.append((cold.stats, warm.stats, warm.token_ids[0].tolist()))
    reference = ask(VideoLlavaVerifier(model), second).token_ids[0].tolist()
    records = records[1:]
    first_s = statistics.median(c.time_to_first_token_s for c, _, _ in records)
    second_s = statistics.median(w.time_to_first_token_s for _, w, _ in records)
    del model
    return {
        "visual_tokens": int(first.num_video_tokens), "prompt_tokens": int(first.target_ids.shape[1]),
        "lm_hidden": size.text.hidden_size, "lm_layers": size.text.num_layers,
        "first_question_ms": 1e3 * first_s, "second_question_ms": 1e3 * second_s, "ratio": second_s / first_s,
        "first_vision_ms": 1e3 * statistics.median(c.vision_s for c, _, _ in records),
        "first_prefill_ms": 1e3 * statistics.median(c.prefill_s for c, _, _ in records),
        "second_answer_identical_to_cold": all(ids == reference for _, _, ids in records),
    }


# ----------------------------------------------------------------------------------------------- the run


def run_benchmark(config: EngineBenchConfig, progress: bool = True) -> dict[str, Any]:
    """Build the models, measure costs, time every row (round-robin, median of ``repeats``), return the report."""
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    if config.threads:
        torch.set_num_threads(config.threads)
    load_before = os.getloadavg()
    size = SIZES[config.target_size]
    device, dtype = config.device, config.torch_dtype
    torch.manual_seed(config.seed)
    target = build(LlamaForCausalLM, size.target.config(eos_token_id=None), device, dtype)
    small = build(LlamaForCausalLM, size.drafter.config(eos_token_id=None), device, dtype)
    for model in (target, small):
        model.generation_config.eos_token_id = None  # fixed-length answers: EOS can never stop a row
        model.generation_config.pad_token_id = 0
    num_params = sum(p.numel() for p in target.parameters())
    drafter_params = sum(p.numel() for p in small.parameters())
    text_vocab = min(size.target.vocab_size, size.drafter.vocab_size)
    prompt_ids = torch.randint(4, text_vocab, (1, size.prompt_tokens),
                               generator=torch.Generator().manual_seed(config.seed)).to(device)  # [1, L]

    reference_run = hf_run(target, prompt_ids, config.new_tokens)  # also a warm-up
    reference = reference_run.token_ids
    reference_ids = torch.tensor([reference], device=device)  # [1, N]
    verifier = CausalLMVerifier(target, text_vocab_size=text_vocab, eos_token_ids=())
    costs = measure_costs(verifier, ModelDrafter(small, vocab_size=text_vocab), prompt_ids, reference_ids,
                          config.k_max)

    def ours(levels, **option_kwargs) -> Callable[[], Run]:
        decoder = CascadeDecoder(verifier, levels)
        # the first token is the prompt's alone, as HF's: every row's decode phase holds the same tokens
        options = GenerationOptions(max_new_tokens=config.new_tokens, eos_token_ids=(), draft_in_prefill=False,
                                    **option_kwargs)
        return lambda: engine_run(decoder, prompt_ids, options)

    def oracle(acceptance: float) -> OracleDrafter:
        return OracleDrafter(reference_ids, acceptance, vocab_size=text_vocab, seed=config.seed,
                             cost_model=ModelDrafter(small, vocab_size=text_vocab, name="cost"))

    rows = [Row("HF generate", lambda: hf_run(target, prompt_ids, config.new_tokens))]
    if config.hf_context_rows:
        rows += [Row("HF assisted (small model)", lambda: hf_run(target, prompt_ids, config.new_tokens,
                                                                 assistant_model=small)),
                 Row("HF prompt lookup", lambda: hf_run(target, prompt_ids, config.new_tokens,
                                                        prompt_lookup_num_tokens=10))]
    rows.append(Row("ours, no drafter", ours([], draft_k=0, adaptive=False)))
    for acceptance in config.acceptances:
        k, _ = costs.best(costs.measured_bound, acceptance)
        rows.append(Row("ours, oracle static k", ours([oracle(acceptance)], draft_k=k, adaptive=False), acceptance, k))
        rows.append(Row("ours, oracle adaptive", ours([oracle(acceptance)], draft_k=config.k_max, adaptive=True),
                        acceptance))

    total = len(rows) * (config.repeats + 1)
    with tqdm(total=total, desc="engine bench", disable=not progress, file=sys.stderr) as bar:
        for row in rows:  # warm-up: also lets the adaptive policy learn its estimates
            row.run()
            bar.update()
        round_costs = []
        for index in range(config.repeats):  # round-robin, so load from other processes hits every row alike
            round_costs.append(measure_costs(verifier, ModelDrafter(small, vocab_size=text_vocab), prompt_ids,
                                             reference_ids, config.k_max, repeats=3))
            for row in rows:
                run = row.run()
                run.round = index
                row.runs.append(run)
                bar.update()

    table = [summarise(row, rows[0], reference, costs, config.new_tokens, round_costs) for row in rows]
    report: dict[str, Any] = {
        "config": asdict(config), "sizes": asdict(size), "environment": environment_info(device, load_before),
        "regime": "cold: a text-only target keeps no cache between answers; every row prefills the whole prompt",
        "target_params": num_params, "drafter_params": drafter_params,
        "round_target_forward_ms": [1e3 * c.target_forward_s for c in round_costs],
        "costs": {"target_forward_ms": 1e3 * costs.target_forward_s, "cost_ratio_c": costs.cost_ratio,
                  "verify_ms": {n: 1e3 * s for n, s in costs.verify_s.items()},
                  "draft_ms": {k: 1e3 * s for k, s in costs.draft_s.items()}},
        "bounds": {str(a): {"ewif": costs.best(costs.classic_bound, a), "measured": costs.best(costs.measured_bound, a)}
                   for a in config.acceptances},
        "rows": table,
        "outputs_identical": all(row["identical"] for row in table),
    }
    oracle_rows = [r for r in table if r["a"] != ""]
    report["targets"] = {
        "min % of cost bound": min((r["% of cost bound"] for r in oracle_rows), default=float("nan")),
        "min % of cost bound at a >= 0.7": min((r["% of cost bound"] for r in oracle_rows if r["a"] >= 0.7),
                                               default=float("nan")),
        "rows above their bound beyond spread": [f"{r['row']} a={r['a']}" for r in oracle_rows if r["above bound"]],
        "max overhead % T1": max((r["overhead % T1"] for r in table if "overhead % T1" in r), default=float("nan")),
    }
    del rows, verifier, target, small  # free the text models before the video one is built (a 7B GPU run)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if config.ttft:
        report["first_token"] = first_token_times(size.video, config, config.repeats)
    return report


TABLE_COLUMNS = ("row", "a", "k", "tok/s", "speedup", "decode speedup", "decode min-max", "tau", "EWIF bound",
                 "cost bound", "cost bound k", "% of cost bound", "% bound min-max", "overhead % T1", "first token ms",
                 "identical")


def format_report(report: dict[str, Any]) -> str:
    """The table and the lines under it, as printed."""
    costs = report["costs"]
    lines = [format_table(report["rows"], TABLE_COLUMNS), "",
             f"target {report['target_params'] / 1e6:.0f}M params, drafter {report['drafter_params'] / 1e6:.1f}M; "
             f"T_1 = {costs['target_forward_ms']:.1f} ms, c = {costs['cost_ratio_c']:.3f}, "
             f"T_v(k+1) ms = {', '.join(f'{v:.1f}' for v in costs['verify_ms'].values())}",
             f"outputs identical to HF generate: {report['outputs_identical']}; "
             f"min % of cost bound {report['targets']['min % of cost bound']:.0f}, at a >= 0.7 "
             f"{report['targets']['min % of cost bound at a >= 0.7']:.0f} (target >= 85); rows above their bound "
             f"beyond their spread: {report['targets']['rows above their bound beyond spread'] or 'none'}; "
             f"max overhead {report['targets']['max overhead % T1']:.2f}% of T_1 (target < 5)"]
    first = report.get("first_token")
    if first:
        lines.append(f"first token, {first['visual_tokens']} visual tokens: first question {first['first_question_ms']:.0f} ms "
                     f"(vision {first['first_vision_ms']:.0f}, prefill {first['first_prefill_ms']:.0f}), second "
                     f"{first['second_question_ms']:.1f} ms, ratio {first['ratio']:.3f} (target < 0.25); "
                     f"second answer identical to a cold run: {first['second_answer_identical_to_cold']}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path) -> None:
    """Speedup (decode phase) against a: measured static / adaptive points and both bound curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costs = Costs({int(n): v / 1e3 for n, v in report["costs"]["verify_ms"].items()},
                  {int(k): v / 1e3 for k, v in report["costs"]["draft_ms"].items()})
    grid = [0.3 + 0.65 * i / 100 for i in range(101)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(grid, [costs.best(costs.classic_bound, a)[1] for a in grid], label=f"EWIF bound (c={costs.cost_ratio:.3f})")
    ax.plot(grid, [costs.best(costs.measured_bound, a)[1] for a in grid], label="measured-cost bound")
    for name, marker in (("ours, oracle static k", "o"), ("ours, oracle adaptive", "s")):
        points = [(r["a"], r["decode speedup"]) for r in report["rows"] if r["row"] == name]
        ax.plot(*zip(*points), marker, label=name) if points else None
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("acceptance a")
    ax.set_ylabel("speedup over HF generate (decode)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str]) -> tuple[EngineBenchConfig, str | None]:
    parser = argparse.ArgumentParser(prog="python -m evcascade.bench engine", description=__doc__.split("\n")[0])
    parser.add_argument("--target-size", default="small", choices=[s for s in SIZES if s != "7b"])
    parser.add_argument("--preset", choices=["7b"], help="Video-LLaVA-7B / llama-68m shapes (for a GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32 | bf16 | fp16")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k-max", type=int, default=8)
    parser.add_argument("--acceptances", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ttft", action="store_true", help="skip the Video-LLaVA first-token part")
    parser.add_argument("--no-hf-context", action="store_true", help="skip HF assisted / prompt lookup rows")
    parser.add_argument("--out", help="folder for engine.json and engine.png")
    args = parser.parse_args(argv)
    config = EngineBenchConfig(
        target_size=args.preset or args.target_size, device=args.device, dtype=args.dtype, new_tokens=args.new_tokens,
        repeats=args.repeats, acceptances=tuple(args.acceptances), k_max=args.k_max, threads=args.threads,
        seed=args.seed, ttft=not args.no_ttft, hf_context_rows=not args.no_hf_context)
    return config, args.out


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write ``engine.json`` and ``engine.png``; 1 if any output differs from HF's."""
    try:
        config, out = parse_args(list(sys.argv[1:] if argv is None else argv))
    except InputError as error:
        print(f"evcascade.bench engine: {error}", file=sys.stderr)
        return 2
    report = run_benchmark(config)
    print(format_report(report))
    if out:
        save_report(out, "engine", report, plot)
    if mismatch_exit_code(report, "HF generate's greedy answer"):
        return 1
    if report.get("first_token") and not report["first_token"]["second_answer_identical_to_cold"]:
        print("OUTPUT MISMATCH: the second question's answer differs from a cold verifier's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
