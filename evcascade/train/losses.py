"""Pure loss and metric functions of the two training stages: feature regression, top-k KD, acceptance.

Alignment regresses the target's video features (MSE + cosine). Distillation compares the drafter's next-token
distribution with the target's, known only on the target's cached top-k: the target distribution is the softmax
of its top-k logits (renormalised, so all its mass is on those k ids), the drafter's is its full softmax gathered
at the same ids (its mass outside the top-k counts as disagreement). Then

    forward KL   = sum_k target_probs * (log target_probs - log draft_probs)
    total variation = 1/2 (sum_k |target_probs - draft_probs| + (1 - sum_k draft_probs))
    acceptance   = sum_v min(target_probs, draft_probs) = 1 - total variation

the last being the expected acceptance of one drafted token under speculative sampling (Leviathan et al. 2023,
Chen et al. 2023): what a drafter is for. Positions are masked by ``mask [B, L]`` (1 = an answer token).

>>> import torch
>>> target_logits = torch.tensor([[[2.0, 0.0]]]); ids = torch.tensor([[[0, 1]]])
>>> draft_logits = torch.tensor([[[2.0, 0.0, -1e9]]])          # same two ids, a third with no mass
>>> mask = torch.ones(1, 1)
>>> float(topk_kl(draft_logits, ids, target_logits, mask)) < 1e-6, float(offline_acceptance(draft_logits, ids, target_logits, mask))
(True, 1.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evcascade.errors import InputError

KD_KINDS = ("forward_kl", "tv")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the message names the step, the batch and its samples."""


def check_finite_loss(loss: torch.Tensor, *, step: int, batch_idx: int, keys) -> None:
    """Raise ``NonFiniteLossError`` naming ``step``, ``batch_idx`` and the batch's sample keys unless ``loss`` is finite."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise NonFiniteLossError(
            f"loss is {float(loss.detach().float().mean())} at global step {step}, batch {batch_idx} "
            f"(samples {list(keys)}); check these samples' inputs and cached targets, or lower the learning rate"
        )


# ---------------------------------------------------------------------------------------------- alignment
def token_cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over tokens of two ``[..., D]`` feature tensors (a scalar in [-1, 1]).

    >>> token_cosine(torch.ones(2, 3, 4), 2 * torch.ones(2, 3, 4)).item()
    1.0
    """
    return F.cosine_similarity(pred.float(), target.float(), dim=-1, eps=1e-8).mean()


def feature_regression_loss(pred: torch.Tensor, target: torch.Tensor, *, cosine_weight: float = 1.0,
                            mse_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """``mse_weight * MSE + cosine_weight * (1 - cosine)`` of draft vs target features ``[B, T, 1 + P, D]``.

    Returns ``{"loss", "mse", "cosine"}`` (scalars; ``cosine`` is the mean token cosine similarity).

    >>> out = feature_regression_loss(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    >>> float(out["mse"]), round(float(out["loss"]), 3)          # zero vectors: cosine 0 by convention
    (0.0, 1.0)
    """
    if pred.shape != target.shape:
        raise InputError(f"draft features {tuple(pred.shape)} and target features {tuple(target.shape)} differ in shape")
    mse = F.mse_loss(pred.float(), target.float())
    cosine = token_cosine(pred, target)
    return {"loss": mse_weight * mse + cosine_weight * (1.0 - cosine), "mse": mse, "cosine": cosine}


# ---------------------------------------------------------------------------------------------- distillation
def _check_topk(draft_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logits: torch.Tensor, mask: torch.Tensor) -> None:
    if draft_logits.ndim != 3 or topk_ids.shape != topk_logits.shape or topk_ids.shape[:2] != draft_logits.shape[:2]:
        raise InputError(
            f"expected draft_logits [B, L, V] and top-k ids/logits [B, L, K], got {tuple(draft_logits.shape)}, "
            f"{tuple(topk_ids.shape)}, {tuple(topk_logits.shape)}"
        )
    if mask.shape != draft_logits.shape[:2]:
        raise InputError(f"mask must be [B, L] = {tuple(draft_logits.shape[:2])}, got {tuple(mask.shape)}")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [B, L]`` over positions where ``mask`` is 1 (0 when no position counts)."""
    keep = mask > 0
    # where, not multiply: a padded position may hold NaN (no target mass at all) and NaN * 0 is NaN
    return torch.where(keep, values, torch.zeros_like(values)).sum() / keep.sum().clamp_min(1).to(values.dtype)


def topk_probs(draft_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logits: torch.Tensor,
               temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(target_probs, draft_probs, draft_log_probs), each ``[B, L, K]`` on the target's top-k ids."""
    target_probs = torch.softmax(topk_logits.float() / temperature, dim=-1).nan_to_num(0.0)  # [B, L, K]
    draft_log_probs_all = torch.log_softmax(draft_logits.float() / temperature, dim=-1)  # [B, L, V]
    draft_log_probs = draft_log_probs_all.gather(-1, topk_ids.long())  # [B, L, K]
    return target_probs, draft_log_probs.exp(), draft_log_probs


def topk_kl(draft_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logits: torch.Tensor, mask: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """Forward KL(target || draft) on the target's top-k, averaged over masked positions."""
    _check_topk(draft_logits, topk_ids, topk_logits, mask)
    target_probs, _, draft_log_probs = topk_probs(draft_logits, topk_ids, topk_logits, temperature)
    kl = (target_probs * (torch.log(target_probs.clamp_min(1e-30)) - draft_log_probs)).sum(-1)  # [B, L]
    return _masked_mean(kl, mask)


def topk_tv(draft_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logits: torch.Tensor, mask: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """Total variation distance on the target's top-k (the drafter's mass elsewhere counts), masked mean."""
    _check_topk(draft_logits, topk_ids, topk_logits, mask)
    target_probs, draft_probs, _ = topk_probs(draft_logits, topk_ids, topk_logits, temperature)
    outside = (1.0 - draft_probs.sum(-1)).clamp_min(0.0)  # [B, L]
    tv = 0.5 * ((target_probs - draft_probs).abs().sum(-1) + outside)  # [B, L]
    return _masked_mean(tv, mask)


def kd_loss(kind: str, draft_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logits: torch.Tensor,
            mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The KD loss named by ``kind`` (``forward_kl`` or ``tv``)."""
    if kind == "forward_kl":
        return topk_kl(draft_logits, topk_ids, topk_logits, mask, temperature)
    if kind == "tv":
        return topk_tv(draft_logits, topk_ids, topk_logits, mask, temperature)
    raise InputError(f"kd loss must be one of {KD_KINDS}, got {kind!r}")


def offline_acceptance(draft_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logits: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ``sum_v min(target_probs, draft_probs)`` (= 1 - TV), target restricted to its top-k."""
    return 1.0 - topk_tv(draft_logits, topk_ids, topk_logits, mask)


def top1_agreement(draft_logits: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of masked positions where the drafter's argmax is the target's greedy token ``target_ids [B, L]``.

    >>> top1_agreement(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), torch.tensor([[1, 1]]), torch.ones(1, 2)).item()
    0.5
    """
    if target_ids.shape != draft_logits.shape[:2] or mask.shape != target_ids.shape:
        raise InputError(f"expected draft_logits [B, L, V], target_ids and mask [B, L], got "
                         f"{tuple(draft_logits.shape)}, {tuple(target_ids.shape)}, {tuple(mask.shape)}")
    same = (draft_logits.argmax(-1) == target_ids).float()  # [B, L]
    return _masked_mean(same, mask)
