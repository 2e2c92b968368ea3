"""Acceptance rules: how many drafted tokens a reviewer keeps, and which token it appends after them.

Pure functions over tensors. Every rule sees ``draft_ids [B, k]`` and the reviewer's logits ``[B, k+1, V]``
for the positions after the accepted prefix, ``logits[:, i]`` being the reviewer's distribution of the token
that follows ``draft_ids[:, :i]`` (so row k is the bonus position). It returns, per row, the number of
accepted drafts ``n`` (0..k) and the reviewer's own token at position n: the correction after a rejection,
or the bonus token when all k were accepted. Both rules are lossless (Leviathan et al. 2023, "Fast Inference
from Transformers via Speculative Decoding", Theorem 1; Chen et al. 2023):

- greedy: accept the longest prefix equal to the reviewer's argmax; append the argmax after it;
- speculative sampling: accept draft i with probability min(1, target(x_i) / draft(x_i)); on the first
  rejection draw from the normalised residual max(0, target - draft); after k acceptances draw the bonus from
  the target. A drafter without probabilities (n-gram) is a point mass on its token, which is lossless too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from evcascade.decoding.coupling import perturbed_scores
from evcascade.decoding.sampling import SamplingParams, probabilities, sample


@dataclass(frozen=True)
class AcceptResult:
    """Outcome of one review: ``num_accepted [B]`` drafts kept and the reviewer's ``next_token [B]`` after them."""

    num_accepted: torch.LongTensor
    next_token: torch.LongTensor


class AcceptanceRule(Protocol):
    """Signature shared by every rule (also the hook for lenient inner reviews in a vertical cascade)."""

    def __call__(self, draft_ids: torch.LongTensor, draft_probs: torch.Tensor | None, reviewer_logits: torch.Tensor,
                 params: SamplingParams, generator: torch.Generator | None) -> AcceptResult: ...


def greedy_accept(draft_ids: torch.LongTensor, target_logits: torch.Tensor) -> AcceptResult:
    """Keep the longest prefix of ``draft_ids [B, k]`` equal to the argmax of ``target_logits [B, k+1, V]``.

    >>> logits = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])  # argmax 1, 2, 0
    >>> greedy_accept(torch.tensor([[1, 0]]), logits)
    AcceptResult(num_accepted=tensor([1]), next_token=tensor([2]))
    """
    _check_shapes(draft_ids, target_logits)
    k = draft_ids.shape[1]
    target_ids = target_logits.argmax(dim=-1)  # [B, k+1]
    matches = (draft_ids == target_ids[:, :k]).long()  # [B, k]
    num_accepted = matches.cumprod(dim=-1).sum(dim=-1)  # [B]
    next_token = target_ids.gather(1, num_accepted[:, None]).squeeze(1)  # [B]
    return AcceptResult(num_accepted, next_token)


def speculative_accept(draft_ids: torch.LongTensor, draft_probs: torch.Tensor | None, target_probs: torch.Tensor,
                       generator: torch.Generator | None = None) -> AcceptResult:
    """Speculative sampling of ``draft_ids [B, k]`` drawn from ``draft_probs [B, k, V]`` (None: point masses)
    against the already processed ``target_probs [B, k+1, V]``; the output is distributed as the target.

    >>> target = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # the target is sure of token 1, then 0
    >>> speculative_accept(torch.tensor([[1]]), None, target)
    AcceptResult(num_accepted=tensor([1]), next_token=tensor([0]))
    """
    _check_shapes(draft_ids, target_probs)
    batch, k = draft_ids.shape
    vocab = target_probs.shape[-1]
    target_probs = target_probs.float()
    if draft_probs is None:
        draft_probs = torch.nn.functional.one_hot(draft_ids, vocab).float()  # [B, k, V] point masses
    elif draft_probs.shape != (batch, k, vocab):
        raise ValueError(f"draft_probs must be [B, k, V] = {[batch, k, vocab]}, got {list(draft_probs.shape)}")
    draft_probs = draft_probs.to(target_probs)
    # a zero draft row at position k makes the bonus draw the same expression as a residual draw
    padded_draft = torch.cat([draft_probs, draft_probs.new_zeros(batch, 1, vocab)], dim=1)  # [B, k+1, V]

    target_of_draft = target_probs[:, :k].gather(-1, draft_ids[..., None]).squeeze(-1)  # [B, k]
    draft_of_draft = draft_probs.gather(-1, draft_ids[..., None]).squeeze(-1)  # [B, k]
    uniform = torch.rand(batch, k, generator=generator, device=target_probs.device)  # [B, k]
    # u < target/draft without dividing: a draft token the drafter thought impossible is still judged correctly
    accept = (uniform * draft_of_draft < target_of_draft).long()  # [B, k]
    num_accepted = accept.cumprod(dim=-1).sum(dim=-1)  # [B]

    rows = torch.arange(batch, device=target_probs.device)
    residual = (target_probs[rows, num_accepted] - padded_draft[rows, num_accepted]).clamp(min=0)  # [B, V]
    # rounding can leave an all-zero residual when target == draft: the target itself is then the residual
    empty = residual.sum(dim=-1, keepdim=True) <= 0
    residual = torch.where(empty, target_probs[rows, num_accepted], residual)
    return AcceptResult(num_accepted, sample(residual, generator))


def accept(draft_ids: torch.LongTensor, draft_probs: torch.Tensor | None, reviewer_logits: torch.Tensor,
           params: SamplingParams, generator: torch.Generator | None = None) -> AcceptResult:
    """The lossless rule for ``params``: greedy match, or speculative sampling on the processed distributions."""
    if not params.do_sample:
        return greedy_accept(draft_ids, reviewer_logits)
    return speculative_accept(draft_ids, draft_probs, probabilities(reviewer_logits, params), generator)


def coupled_accept(draft_ids: torch.LongTensor, reviewer_logits: torch.Tensor, params: SamplingParams,
                   noise: torch.Tensor | None) -> AcceptResult:
    """Coupled sampling (``decoding/coupling.py``): keep the longest prefix of ``draft_ids [B, k]`` equal to the
    reviewer's coupled choices ``argmax(warp(logits) + noise)`` (``noise [k+1, V]``, the rows' answer positions);
    append the choice after it. Greedy when ``params`` is greedy or ``noise`` is None.

    >>> logits = torch.zeros(1, 2, 3)
    >>> noise = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])  # the noise decides: 1, then 0
    >>> coupled_accept(torch.tensor([[1]]), logits, SamplingParams(do_sample=True), noise)
    AcceptResult(num_accepted=tensor([1]), next_token=tensor([0]))
    """
    return greedy_accept(draft_ids, perturbed_scores(reviewer_logits, params, noise))


def _check_shapes(draft_ids: torch.Tensor, target: torch.Tensor) -> None:
    if draft_ids.ndim != 2 or target.ndim != 3 or target.shape[:2] != (draft_ids.shape[0], draft_ids.shape[1] + 1):
        raise ValueError(f"expected draft_ids [B, k] and reviewer scores [B, k+1, V], got {list(draft_ids.shape)} "
                         f"and {list(target.shape)}")
