"""Opt-in lossy acceptance rules: accept more drafted tokens than the target would have produced, for speed.

Every rule here has the signature of ``acceptance.AcceptanceRule`` once its lenience is bound (``make_rule``):
it sees ``draft_ids [B, k]``, the drafter's ``draft_probs [B, k, V]`` (None: point masses) and the reviewer's
``target_logits [B, k+1, V]``, and returns the lossless rules' ``AcceptResult`` (``num_accepted [B]``,
``next_token [B]``). Distributions are ``sampling.probabilities(logits, params)`` (plain softmax when greedy),
the same function the lossless rules use. Lenience is a number in [0, 1] (or a ``[B, k]`` tensor of them for
per-token lenience); **lenience 0 is the lossless rule exactly, for every rule** (for the rules whose
formula is not lossless at 0 this is a convention: no lenient acceptance is made where lenience is 0).

- ``lossy_sps`` (Leviathan et al. 2023, appendix "lenience"): speculative sampling against a drafter scaled
  by ``l = 1 - lenience``: accept with probability min(1, target(x) / (l draft(x))), correct from
  norm(max(0, target - l draft)). Under greedy decoding the target is a point mass and a scale on the
  drafter changes nothing: ``lossy_sps`` is then the lossless greedy rule (use a token rule or ``typical``).
- ``token_v1/v2/v3`` (Narasimhan et al. 2024, "Faster Cascades via Speculative Decoding", token-specific
  speculative cascades; the paper's q is our drafter, p our target): an accept set A with lenience a
  (the paper's alpha),
  TokenV1: draft(v) >= max target - a;  TokenV2: target(v) >= max target - a;  TokenV3: target(v) >= (1-a) max target,
  a target distribution pi(v) = draft(v) 1[v in A] + (1 - sum_{u in A} draft(u)) target(v), then lossless
  speculative sampling of the draft against pi (the bonus token is drawn from the target). Greedy variant:
  accept the draft token if it is the target's argmax or in A; append the target's argmax after the kept prefix.
- ``typical`` (Cai et al. 2024, Medusa, typical acceptance): accept x if target(x) > min(eps, delta exp(-H(target)))
  with eps = 1 - lenience and delta = sqrt(eps) (lenience 0.91 is Medusa's default eps = 0.09, delta = 0.3);
  the target's argmax (greedy) or a speculative-sampling accept is always kept too.
- ``fuzzy`` (PyramidSD-style fuzzy acceptance between adjacent levels): accept when the divergence between the
  drafter's and the reviewer's distributions at that position is <= lenience (total variation, or Jensen-Shannon
  divergence in units of ln 2, both in [0, 1]); made for ``CascadeDecoder(inner_rule=fuzzy_rule(...))``.

Drafters without probabilities (n-gram) propose point masses, one-hot rows. What each rule then means:
``lossy_sps`` accepts with probability min(1, target(x) / l); ``token_v2/v3``, ``typical`` use only the target;
``token_v1`` would accept every point-mass draft (its draft(v) = 1 beats any threshold), so on a point-mass row
(draft(x) == 1) it falls back to the TokenV2 set; ``fuzzy``'s total variation becomes 1 - target(x).

>>> logits = torch.log(torch.tensor([[[0.5, 0.4, 0.1], [0.2, 0.3, 0.5]]]))  # target: 0.5/0.4/0.1, then token 2
>>> token_accept(torch.tensor([[1]]), None, logits, 0.0, variant=3)  # lossless: 1 is not the argmax
AcceptResult(num_accepted=tensor([0]), next_token=tensor([0]))
>>> token_accept(torch.tensor([[1]]), None, logits, 0.25, variant=3)  # 0.4 >= 0.75 * 0.5
AcceptResult(num_accepted=tensor([1]), next_token=tensor([2]))
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from evcascade.decoding.acceptance import AcceptanceRule, AcceptResult, _check_shapes, accept, greedy_accept, speculative_accept
from evcascade.decoding.sampling import GREEDY, SamplingParams, probabilities, sample
from evcascade.errors import InputError

RULES: tuple[str, ...] = ("lossless", "lossy_sps", "token_v1", "token_v2", "token_v3", "typical", "fuzzy", "modality")
"""Names accepted by ``GenerationOptions.acceptance`` and ``make_rule``."""
NEEDS_DRAFT_PROBS: frozenset[str] = frozenset({"token_v1", "fuzzy"})
"""Rules that read the drafter's distribution even under greedy decoding (the engine keeps it for them)."""
DIVERGENCES: tuple[str, ...] = ("tv", "js")


def check_lenience(lenience: Any, name: str = "lenience") -> float | torch.Tensor:
    """``lenience`` as a float (or a float tensor) in [0, 1], or an ``InputError`` naming the bad value.

    >>> check_lenience(0.3)
    0.3
    >>> check_lenience(1.5)
    Traceback (most recent call last):
    ...
    evcascade.errors.InputError: lenience must be a number in [0, 1] (0 = lossless), got 1.5
    """
    if isinstance(lenience, torch.Tensor):
        values = lenience.float()
        if values.numel() and not bool(((values >= 0) & (values <= 1)).all()):
            bad = values[~((values >= 0) & (values <= 1))].flatten()[0].item()
            raise InputError(f"{name} must lie in [0, 1] (0 = lossless) everywhere, got a value {bad!r}")
        return values
    if isinstance(lenience, bool) or not isinstance(lenience, (int, float)) or not 0 <= lenience <= 1:
        raise InputError(f"{name} must be a number in [0, 1] (0 = lossless), got {lenience!r}")
    return float(lenience)


def _per_position(lenience: float | torch.Tensor, draft_ids: torch.Tensor) -> torch.Tensor:
    """Lenience broadcast to ``[B, k]`` (float32, on the drafts' device)."""
    lenience = check_lenience(lenience)
    values = torch.as_tensor(lenience, dtype=torch.float32, device=draft_ids.device)
    try:
        return values.expand(draft_ids.shape).clone()  # [B, k]
    except RuntimeError:
        raise InputError(f"a lenience tensor must broadcast to draft_ids {list(draft_ids.shape)}, got "
                         f"{list(values.shape)}") from None


def _draft_rows(draft_ids: torch.Tensor, draft_probs: torch.Tensor | None, vocab: int) -> torch.Tensor:
    """The drafter's distributions ``[B, k, V]``; point masses (one-hot rows) when it has none."""
    if draft_probs is None:
        return torch.nn.functional.one_hot(draft_ids, vocab).float()
    if draft_probs.shape != (*draft_ids.shape, vocab):
        raise ValueError(f"draft_probs must be [B, k, V] = {[*draft_ids.shape, vocab]}, got {list(draft_probs.shape)}")
    return draft_probs.float()


def _of(rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``rows[b, i, ids[b, i]]``: ``[B, k, V]`` and ``[B, k]`` -> ``[B, k]``."""
    return rows.gather(-1, ids[..., None]).squeeze(-1)


def accept_with(lenient: torch.Tensor, draft_ids: torch.LongTensor, draft_probs: torch.Tensor | None,
                target_logits: torch.Tensor, params: SamplingParams = GREEDY,
                generator: torch.Generator | None = None) -> AcceptResult:
    """The lossless rule with extra accepts: draft i is kept if ``lenient [B, k]`` says so or the lossless test
    (greedy match, or the speculative-sampling draw) accepts it; the prefix ends at the first draft neither keeps.
    With no lenient position this is ``acceptance.accept`` exactly (same random draws, same result)."""
    _check_shapes(draft_ids, target_logits)
    batch, k = draft_ids.shape
    rows = torch.arange(batch, device=draft_ids.device)
    if not params.do_sample:
        target_ids = target_logits.argmax(dim=-1)  # [B, k+1]
        kept = lenient | (draft_ids == target_ids[:, :k])  # [B, k]
        num_accepted = kept.long().cumprod(dim=-1).sum(dim=-1)  # [B]
        return AcceptResult(num_accepted, target_ids[rows, num_accepted])
    target_probs = probabilities(target_logits, params)  # [B, k+1, V]
    vocab = target_probs.shape[-1]
    draft_rows = _draft_rows(draft_ids, draft_probs, vocab).to(target_probs)
    uniform = torch.rand(batch, k, generator=generator, device=target_probs.device)  # [B, k], as speculative_accept
    kept = lenient | (uniform * _of(draft_rows, draft_ids) < _of(target_probs[:, :k], draft_ids))  # [B, k]
    num_accepted = kept.long().cumprod(dim=-1).sum(dim=-1)  # [B]
    padded = torch.cat([draft_rows, draft_rows.new_zeros(batch, 1, vocab)], dim=1)  # [B, k+1, V]
    residual = (target_probs[rows, num_accepted] - padded[rows, num_accepted]).clamp(min=0)  # [B, V]
    empty = residual.sum(dim=-1, keepdim=True) <= 0
    residual = torch.where(empty, target_probs[rows, num_accepted], residual)
    return AcceptResult(num_accepted, sample(residual, generator))


# ------------------------------------------------------------------------------------------------ the rules
def lossy_sps_accept(draft_ids: torch.LongTensor, draft_probs: torch.Tensor | None, target_logits: torch.Tensor,
                     lenience: float | torch.Tensor, params: SamplingParams = GREEDY,
                     generator: torch.Generator | None = None) -> AcceptResult:
    """Speculative sampling with the drafter scaled by ``1 - lenience`` (lenience 1 keeps every draft the target
    finds possible); under greedy decoding the lossless greedy rule (see the module docstring)."""
    _check_shapes(draft_ids, target_logits)
    scale = 1.0 - _per_position(lenience, draft_ids)  # [B, k]
    if not params.do_sample:
        return greedy_accept(draft_ids, target_logits)
    target_probs = probabilities(target_logits, params)  # [B, k+1, V]
    draft_rows = _draft_rows(draft_ids, draft_probs, target_probs.shape[-1]).to(target_probs)
    # u < target / (l draft) and the residual max(0, target - l draft) are speculative sampling with l * draft
    return speculative_accept(draft_ids, draft_rows * scale[..., None], target_probs, generator)


def token_set(variant: int, draft_rows: torch.Tensor, target_rows: torch.Tensor, alpha: torch.Tensor,
              draft_ids: torch.LongTensor) -> torch.Tensor:
    """The accept set A ``[B, k, V]`` of a token-specific speculative cascade (``variant`` 1, 2 or 3) for the
    drafter's ``draft_rows [B, k, V]``, the target's ``target_rows [B, k, V]`` and ``alpha [B, k]``; empty where
    alpha is 0 (lenience 0 is lossless). TokenV1 on a point-mass row uses the TokenV2 set.

    >>> target = torch.tensor([[[0.5, 0.4, 0.1]]])
    >>> token_set(3, torch.zeros(1, 1, 3), target, torch.tensor([[0.25]]), torch.tensor([[0]]))
    tensor([[[ True,  True, False]]])
    """
    if variant not in (1, 2, 3):
        raise InputError(f"token-specific variant must be 1, 2 or 3, got {variant!r}")
    top = target_rows.max(dim=-1, keepdim=True).values  # [B, k, 1]
    a = alpha[..., None]  # [B, k, 1]
    by_target_gap = target_rows >= top - a  # TokenV2
    if variant == 1:
        point_mass = (_of(draft_rows, draft_ids) >= 1.0)[..., None]  # [B, k, 1]: an n-gram draft, no confidence
        in_set = torch.where(point_mass, by_target_gap, draft_rows >= top - a)
    elif variant == 2:
        in_set = by_target_gap
    else:
        in_set = target_rows >= (1.0 - a) * top
    return in_set & (a > 0)


def token_accept(draft_ids: torch.LongTensor, draft_probs: torch.Tensor | None, target_logits: torch.Tensor,
                 lenience: float | torch.Tensor, *, variant: int, params: SamplingParams = GREEDY,
                 generator: torch.Generator | None = None) -> AcceptResult:
    """Token-specific speculative cascade ``variant`` (1, 2, 3) with alpha = ``lenience`` (see the module docstring)."""
    _check_shapes(draft_ids, target_logits)
    alpha = _per_position(lenience, draft_ids)  # [B, k]
    k = draft_ids.shape[1]
    target_probs = probabilities(target_logits, params)  # [B, k+1, V]
    draft_rows = _draft_rows(draft_ids, draft_probs, target_probs.shape[-1]).to(target_probs)
    in_set = token_set(variant, draft_rows, target_probs[:, :k], alpha, draft_ids)  # [B, k, V]
    if not params.do_sample:
        return accept_with(_of(in_set, draft_ids), draft_ids, draft_probs, target_logits, params, generator)
    draft_in_set = (draft_rows * in_set).sum(dim=-1, keepdim=True)  # [B, k, 1]
    pi = draft_rows * in_set + (1.0 - draft_in_set) * target_probs[:, :k]  # [B, k, V]; A empty -> the target
    return speculative_accept(draft_ids, draft_rows, torch.cat([pi, target_probs[:, k:]], dim=1), generator)


def typical_accept(draft_ids: torch.LongTensor, draft_probs: torch.Tensor | None, target_logits: torch.Tensor,
                   lenience: float | torch.Tensor, params: SamplingParams = GREEDY,
                   generator: torch.Generator | None = None) -> AcceptResult:
    """Medusa's typical acceptance: keep x if target(x) > min(eps, sqrt(eps) exp(-H)) with eps = 1 - lenience."""
    _check_shapes(draft_ids, target_logits)
    lenience = _per_position(lenience, draft_ids)  # [B, k]
    k = draft_ids.shape[1]
    target_rows = probabilities(target_logits[:, :k], params)  # [B, k, V]
    entropy = -(target_rows * target_rows.clamp(min=1e-30).log()).sum(dim=-1)  # [B, k] nats
    eps = 1.0 - lenience
    threshold = torch.minimum(eps, eps.sqrt() * torch.exp(-entropy))  # [B, k]
    lenient = (_of(target_rows, draft_ids) > threshold) & (lenience > 0)
    return accept_with(lenient, draft_ids, draft_probs, target_logits, params, generator)


def divergence(draft_rows: torch.Tensor, target_rows: torch.Tensor, kind: str = "tv") -> torch.Tensor:
    """Per-position divergence in [0, 1] of two ``[..., V]`` distributions: total variation, or Jensen-Shannon / ln 2.

    >>> divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]))
    tensor(0.5000)
    """
    if kind == "tv":
        return 0.5 * (draft_rows - target_rows).abs().sum(dim=-1)
    if kind == "js":
        middle = 0.5 * (draft_rows + target_rows)

        def kl(a: torch.Tensor) -> torch.Tensor:
            return (a * (a.clamp(min=1e-30).log() - middle.clamp(min=1e-30).log())).sum(dim=-1)

        return ((0.5 * kl(draft_rows) + 0.5 * kl(target_rows)) / math.log(2)).clamp(0, 1)
    raise InputError(f"divergence must be one of {list(DIVERGENCES)}, got {kind!r}")


def fuzzy_accept(draft_ids: torch.LongTensor, draft_probs: torch.Tensor | None, target_logits: torch.Tensor,
                 lenience: float | torch.Tensor, params: SamplingParams = GREEDY,
                 generator: torch.Generator | None = None, *, kind: str = "tv") -> AcceptResult:
    """PyramidSD-style fuzzy acceptance: keep a draft where divergence(drafter, reviewer) <= ``lenience``."""
    _check_shapes(draft_ids, target_logits)
    threshold = _per_position(lenience, draft_ids)  # [B, k]
    k = draft_ids.shape[1]
    target_rows = probabilities(target_logits[:, :k], params)  # [B, k, V]
    draft_rows = _draft_rows(draft_ids, draft_probs, target_rows.shape[-1]).to(target_rows)
    lenient = (divergence(draft_rows, target_rows, kind) <= threshold) & (threshold > 0)
    return accept_with(lenient, draft_ids, draft_probs, target_logits, params, generator)


# ------------------------------------------------------------------------------------------------ binding
def fuzzy_rule(threshold: float, kind: str = "tv") -> AcceptanceRule:
    """An ``AcceptanceRule`` for lenient inner reviews: ``CascadeDecoder(..., inner_rule=fuzzy_rule(0.3))``."""
    threshold = check_lenience(threshold, "threshold")
    if kind not in DIVERGENCES:
        raise InputError(f"divergence must be one of {list(DIVERGENCES)}, got {kind!r}")

    def rule(draft_ids, draft_probs, reviewer_logits, params, generator=None):
        return fuzzy_accept(draft_ids, draft_probs, reviewer_logits, threshold, params, generator, kind=kind)

    return rule


def check_rule(name: Any, lenience: Any) -> None:
    """Raise ``InputError`` unless ``name`` is one of ``RULES`` and ``lenience`` is in [0, 1]."""
    if name not in RULES:
        raise InputError(f"acceptance must be one of {list(RULES)}, got {name!r}")
    if isinstance(lenience, torch.Tensor):
        raise InputError(f"lenience must be a number in [0, 1] (0 = lossless), got a tensor {tuple(lenience.shape)}")
    check_lenience(lenience)


def make_rule(name: str, lenience: float = 0.0, extras: dict | None = None) -> AcceptanceRule:
    """The ``AcceptanceRule`` called ``name`` with ``lenience`` bound; ``"lossless"`` is ``acceptance.accept``
    itself. ``"modality"`` reads its per-clip agreement map from ``extras`` (``modality.AGREEMENT_KEY``).

    >>> make_rule("lossless") is accept
    True
    """
    check_rule(name, lenience)
    lenience = float(lenience)
    if name == "lossless":
        return accept
    if name == "modality":
        from evcascade.decoding.modality import modality_rule_from_extras

        return modality_rule_from_extras(extras or {}, lenience)
    bound: dict[str, Callable[..., AcceptResult]] = {
        "lossy_sps": lossy_sps_accept, "typical": typical_accept, "fuzzy": fuzzy_accept,
        "token_v1": lambda *a, **kw: token_accept(*a, variant=1, **kw),
        "token_v2": lambda *a, **kw: token_accept(*a, variant=2, **kw),
        "token_v3": lambda *a, **kw: token_accept(*a, variant=3, **kw),
    }
    function = bound[name]

    def rule(draft_ids, draft_probs, reviewer_logits, params, generator=None):
        return function(draft_ids, draft_probs, reviewer_logits, lenience, params=params, generator=generator)

    rule.__name__ = f"{name}({lenience:g})"
    return rule
