"""Loss and metric functions against hand computations and full-vocabulary references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evcascade.errors import InputError
from evcascade.train.losses import (
    NonFiniteLossError,
    check_finite_loss,
    feature_regression_loss,
    kd_loss,
    offline_acceptance,
    top1_agreement,
    topk_kl,
    topk_tv,
)


def _full_topk(target_logits: torch.Tensor):
    """Top-k with K = V: the cached top-k then holds the whole distribution."""
    values, ids = target_logits.topk(target_logits.shape[-1], dim=-1)
    return ids, values


def test_full_vocabulary_metrics_match_direct_formulas():
    gen = torch.Generator().manual_seed(0)
    target_logits, draft_logits = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 5, 7, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    ids, values = _full_topk(target_logits)
    target_probs, draft_probs = target_logits.softmax(-1), draft_logits.softmax(-1)
    keep = mask.bool()
    expected_acceptance = torch.minimum(target_probs, draft_probs).sum(-1)[keep].mean()
    expected_kl = (target_probs * (target_probs.log() - draft_probs.log())).sum(-1)[keep].mean()
    expected_tv = 0.5 * (target_probs - draft_probs).abs().sum(-1)[keep].mean()
    assert torch.allclose(offline_acceptance(draft_logits, ids, values, mask), expected_acceptance, atol=1e-6)
    assert torch.allclose(topk_kl(draft_logits, ids, values, mask), expected_kl, atol=1e-6)
    assert torch.allclose(kd_loss("tv", draft_logits, ids, values, mask), expected_tv, atol=1e-6)
    reference = F.kl_div(draft_probs.log(), target_probs, reduction="none").sum(-1)[keep].mean()
    assert torch.allclose(kd_loss("forward_kl", draft_logits, ids, values, mask), reference, atol=1e-6)


def test_topk_tv_counts_draft_mass_outside_the_targets_topk():
    # target top-2 = ids 0, 1 with equal logits -> 0.5 each; draft = 0.25, 0.25, 0.5 (id 2 outside the top-k)
    draft_logits = torch.log(torch.tensor([[[0.25, 0.25, 0.5]]]))
    ids, values, mask = torch.tensor([[[0, 1]]]), torch.zeros(1, 1, 2), torch.ones(1, 1)
    assert topk_tv(draft_logits, ids, values, mask).item() == pytest.approx(0.5)  # 0.5 * (0.25 + 0.25 + 0.5)
    assert offline_acceptance(draft_logits, ids, values, mask).item() == pytest.approx(0.5)  # min: 0.25 + 0.25
    assert topk_kl(draft_logits, ids, values, mask).item() == pytest.approx(2 * 0.5 * torch.log(torch.tensor(2.0)).item())


def test_positions_without_target_mass_do_not_poison_the_mean():
    draft_logits = torch.zeros(1, 2, 3)
    ids = torch.tensor([[[0, 1], [0, 1]]])
    values = torch.tensor([[[0.0, 0.0], [float("-inf"), float("-inf")]]])  # position 1: no mass at all (masked)
    mask = torch.tensor([[1.0, 0.0]])
    assert torch.isfinite(topk_kl(draft_logits, ids, values, mask))
    assert offline_acceptance(draft_logits, ids, values, mask).item() == pytest.approx(2 / 3)


def test_top1_agreement_and_shape_errors():
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    assert top1_agreement(logits, torch.tensor([[1, 1, 1]]), torch.tensor([[1.0, 1.0, 0.0]])).item() == 0.5
    with pytest.raises(InputError, match="mask"):
        topk_kl(logits, torch.zeros(1, 3, 2, dtype=torch.long), torch.zeros(1, 3, 2), torch.ones(1, 2))
    with pytest.raises(InputError, match="must be one of"):
        kd_loss("reverse_kl", logits, torch.zeros(1, 3, 2, dtype=torch.long), torch.zeros(1, 3, 2), torch.ones(1, 3))


def test_feature_regression_loss_by_hand():
    pred = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # [1, 2, 1, 2]
    target = torch.tensor([[[[-1.0, 0.0]], [[0.0, 1.0]]]])
    out = feature_regression_loss(pred, target, cosine_weight=2.0)
    assert out["mse"].item() == pytest.approx((4 + 0 + 0 + 1) / 4)
    assert out["cosine"].item() == pytest.approx(0.0)  # -1 and +1
    assert out["loss"].item() == pytest.approx(1.25 + 2.0)
    with pytest.raises(InputError, match="differ in shape"):
        feature_regression_loss(pred, target[:, :1])


def test_non_finite_loss_names_step_batch_and_samples():
    check_finite_loss(torch.tensor(1.0), step=3, batch_idx=1, keys=["a"])
    with pytest.raises(NonFiniteLossError, match=r"global step 7, batch 2 \(samples \['seq/1'\]\)"):
        check_finite_loss(torch.tensor(float("nan")), step=7, batch_idx=2, keys=["seq/1"])
