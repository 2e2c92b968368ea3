"""Logits processing shared by the target and every drafter: temperature, top-k, top-p, then a token choice.

Speculative sampling is lossless only if the target's and the drafter's distributions are processed by the
same function, so both sides call ``probabilities`` here. The warpers follow Hugging Face ``generate``'s order
and tie rules (temperature -> top-k -> top-p; top-k keeps ties with the k-th logit; top-p keeps the smallest
set whose mass exceeds ``top_p``, at least one token), so ``do_sample=True`` here samples the distribution
``generate`` samples with the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evcascade.errors import InputError


@dataclass(frozen=True)
class SamplingParams:
    """How logits become a token: greedy argmax, or sampling from the warped distribution."""

    do_sample: bool = False
    """False: argmax of the raw logits (the warpers below are ignored, as in ``generate``)."""
    temperature: float = 1.0
    """Divides the logits before top-k / top-p; > 0."""
    top_k: int | None = None
    """Keep the k most likely ids (ties with the k-th kept); None or 0 keeps all (note: ``generate``'s default is 50)."""
    top_p: float = 1.0
    """Keep the smallest most-likely set whose probability exceeds ``top_p``; 1.0 keeps all."""

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise InputError(f"temperature must be a number > 0, got {self.temperature!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0):
            raise InputError(f"top_k must be None or an int >= 0, got {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")


GREEDY = SamplingParams()


def warp_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, top-k and top-p applied to ``logits [..., V]`` (removed ids get -inf); a new tensor.

    >>> warp_logits(torch.tensor([[1.0, 3.0, 2.0]]), SamplingParams(do_sample=True, top_k=2))
    tensor([[-inf, 3., 2.]])
    """
    scores = logits.float() / float(params.temperature)  # [..., V]; float() also copies fp16/bf16 logits
    if params.top_k:
        kth = torch.topk(scores, min(params.top_k, scores.shape[-1]), dim=-1).values[..., -1:]  # [..., 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)  # [..., V] ascending
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - params.top_p)
        remove_sorted[..., -1] = False  # the most likely id always survives
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution ``[..., V]`` (float32) a token is drawn from: warped when sampling, plain softmax when greedy.

    >>> probabilities(torch.tensor([0.0, 0.0]), GREEDY)
    tensor([0.5000, 0.5000])
    """
    if not params.do_sample:
        return logits.float().softmax(dim=-1)
    return warp_logits(logits, params).softmax(dim=-1)


def choose_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.LongTensor:
    """One token per row of ``logits [B, V]``: argmax when greedy, else a draw from ``probabilities``; ``[B]``.

    >>> choose_token(torch.tensor([[0.1, 2.0, 0.3]]), GREEDY)
    tensor([1])
    """
    if not params.do_sample:
        return logits.argmax(dim=-1)
    return sample(probabilities(logits, params), generator)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.LongTensor:
    """One draw per row of ``probs [B, V]`` (rows need not be normalised); ``[B]``."""
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
