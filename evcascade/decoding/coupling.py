"""Coupled sampling: every answer position draws its token with its own Gumbel noise, keyed by (seed, position).

Gumbel-max: for ``g`` with i.i.d. standard Gumbel entries, ``argmax(log p + g)`` is an exact draw from ``p``.
Applied to the warped logits (temperature, top-k, top-p; ``sampling.warp_logits``), whose softmax is the
distribution ``generate`` samples, ``argmax(warp(logits) + g_pos)`` is a draw from the same distribution as
``generate(do_sample=True)``'s token at that position. Greedy is the same rule with ``g = 0``.

The noise of a position depends only on (seed, position), never on how many random numbers a plan used before
it, so whoever evaluates the target's logits at a position (a one-token step of target-only decoding, row i of a
k-token verify, a node of a token tree) picks the same token. A cascade's answer therefore equals the
target-alone answer for the same seed token for token, whatever the drafters and the policy do (the accepted
prefix is always the target's own choices). A drafter that draws with the same ``g_pos`` proposes the target's
token whenever the two perturbed argmaxes agree, which recovers most of the acceptance that speculative
sampling's ``min(1, p/q)`` gets (coupled acceptance can be lower than 1 - TV, never higher).

The noise is drawn on CPU (a per-position seeded ``torch.Generator``: torch's CPU Philox/MT streams are the
same on every machine), then moved to the logits' device, so every device sees the same numbers.
"""

from __future__ import annotations

import torch

from evcascade.decoding.sampling import SamplingParams, warp_logits

_MASK64 = (1 << 64) - 1


def position_key(seed: int, position: int) -> int:
    """A 63-bit generator seed for ``(seed, position)`` (SplitMix64 finaliser: nearby pairs give unrelated keys).

    >>> position_key(5, 0) != position_key(5, 1) != position_key(6, 0)
    True
    """
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(position) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def gumbel_noise(seed: int, position: int, vocab_size: int) -> torch.Tensor:
    """Standard Gumbel noise ``[vocab_size]`` (float32, CPU) for one answer position of a seeded request.

    >>> torch.equal(gumbel_noise(5, 3, 8), gumbel_noise(5, 3, 8)), torch.equal(gumbel_noise(5, 3, 8), gumbel_noise(5, 4, 8))
    (True, False)
    """
    generator = torch.Generator(device="cpu").manual_seed(position_key(seed, position))
    uniform = torch.rand(vocab_size, generator=generator, dtype=torch.float64)  # [V] in [0, 1)
    tiny = torch.finfo(torch.float64).tiny
    return (-torch.log(-torch.log(uniform.clamp(min=tiny, max=1 - 1e-16)))).float()  # [V]


class PositionNoise:
    """The Gumbel noise of one request's answer positions (position 0 = the first answer token), memoised.

    Shared by the target and every drafter that couples: a drafter with a smaller vocabulary reads the first
    ``V'`` entries (ids above it are never its tokens).

    >>> noise = PositionNoise(seed=5, vocab_size=8)
    >>> noise.rows(2, 3).shape, torch.equal(noise.rows(2, 3)[0], noise(2))
    (torch.Size([3, 8]), True)
    """

    def __init__(self, seed: int, vocab_size: int) -> None:
        self.seed, self.vocab_size = int(seed), int(vocab_size)
        self._rows: dict[int, torch.Tensor] = {}

    def __call__(self, position: int) -> torch.Tensor:
        """Noise ``[V]`` of answer position ``position`` (>= 0)."""
        if position < 0:
            raise ValueError(f"answer positions start at 0, got {position}")
        row = self._rows.get(position)
        if row is None:
            row = self._rows[position] = gumbel_noise(self.seed, position, self.vocab_size)
        return row

    def rows(self, start: int, count: int) -> torch.Tensor:
        """Noise ``[count, V]`` of positions ``start .. start + count - 1``."""
        if count == 0:
            return torch.zeros(0, self.vocab_size)
        return torch.stack([self(start + i) for i in range(count)])

    def at(self, positions: torch.Tensor | list[int]) -> torch.Tensor:
        """Noise ``[n, V]`` of arbitrary positions (e.g. the depths of a token tree's nodes)."""
        positions = positions.tolist() if isinstance(positions, torch.Tensor) else list(positions)
        if not positions:
            return torch.zeros(0, self.vocab_size)
        return torch.stack([self(p) for p in positions])


def perturbed_scores(logits: torch.Tensor, params: SamplingParams, noise: torch.Tensor | None) -> torch.Tensor:
    """The scores whose argmax is the coupled choice: ``warp(logits) + noise`` when sampling, the raw logits when
    greedy (or without noise); ``noise`` ``[..., V']`` covers the first ``V'`` ids (``V' >= V`` is cut)."""
    if not params.do_sample or noise is None:
        return logits.float()
    vocab = logits.shape[-1]
    return warp_logits(logits, params) + noise[..., :vocab].to(logits.device)  # [..., V]


def coupled_choice(logits: torch.Tensor, params: SamplingParams, noise: torch.Tensor | None) -> torch.LongTensor:
    """The token at each row of ``logits [..., V]``: ``argmax(warp(logits) + noise)`` (greedy: ``argmax(logits)``).

    >>> logits = torch.tensor([[0.0, 1.0, 0.5]])
    >>> coupled_choice(logits, SamplingParams(), None).tolist()
    [1]
    >>> coupled_choice(logits, SamplingParams(do_sample=True), torch.tensor([[0.0, 0.0, 3.0]])).tolist()
    [2]
    """
    return perturbed_scores(logits, params, noise).argmax(dim=-1)
