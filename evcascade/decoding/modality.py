"""Modality-aware acceptance: lenient where the events saw what the video shows, strict where they did not.

The event drafter's visual features (``EventDrafterPrefix.visual_features``: AlignmentMLP output in the target's
pre-projector space ``[1, T, 1+P, D_t]``) are trained to imitate the target's video features. Sent through the
target's own ``multi_modal_projector`` they can be compared with the features the verifier caches per clip
(``VideoLlavaVerifier.video_features``: projected, ``[T, 1+P, D]``), frame by frame (time segments) and patch by
patch (regions). ``visual_agreement`` does that once per clip; the result, an ``AgreementMap``, travels to the
engine in ``DraftContext.extras[AGREEMENT_KEY]``.

The rule. For draft position i, with base lenience b (``GenerationOptions.lenience``)::

    lenience_i = b * agreement_weight_i * grounding_weight_i           (then TokenV3 with alpha = lenience_i)
    agreement_weight_i = clip((a_i - floor) / (1 - floor), 0, 1)
    grounding_weight_i = min(1, H(target_i) / h_ref)                    (entropy grounding, the default)
                      or the target's attention mass on visual tokens   (attention grounding)

where a_i is the cosine agreement of the clip (entropy grounding: the mean over regions, since a token has no
location then), or of the regions token i attends to, weighted by that attention (attention grounding).

Why this form. Lenience lets the drafter overrule the target, which is only safe where the drafter's evidence is
as good as the target's. (a) The drafter's evidence about the scene is its event-derived features: where they
agree with the target's video features, the drafter saw what the target saw and its visual claims can be
trusted; where they disagree (static objects are invisible to events, colour is absent), lenience drops to 0,
the lossless rule. Below ``floor`` the features are treated as unrelated. (b) The entropy weight gives lenience
only where the target itself hesitates (a near-certain target is never overruled, an even split between two
tokens, H = ln 2 = h_ref, gets the full base); the attention weight gives it where the token is read off the
video (visual attention mass), which is exactly what the events can vouch for. The product makes each factor a
veto: either no agreement or no grounding means strict. TokenV3 (target(x) >= (1 - alpha) max target) keeps
every accepted token among the target's own near-favourites, so even full lenience never accepts a token the
target finds unlikely.

Cost: the agreement map is one projector pass over T(1+P) draft features plus two cosines, once per clip (the
target's features are already cached). Entropy grounding is one reduction over the verify logits per step.
Attention grounding needs the verify forward to return attentions (eager attention, ``output_attentions=True``:
materialises [layers, heads, k+1, L] for a ~2000-token Video-LLaVA context and disables SDPA / flash kernels,
slower than the whole rest of a step on GPU); the verifier does not expose them yet, so the engine uses entropy
grounding and ``attention_grounding`` is provided for callers that have attentions.

>>> draft = torch.ones(2, 3, 4)  # T=2 frames, 1+P=3 regions, D=4
>>> agreement = visual_agreement(draft, draft.clone())
>>> agreement.per_frame.tolist(), round(agreement.clip, 3)
([1.0, 1.0], 1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from evcascade.decoding.acceptance import AcceptanceRule, AcceptResult
from evcascade.decoding.lossy import check_lenience, token_accept
from evcascade.decoding.sampling import SamplingParams, probabilities
from evcascade.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from evcascade.decoding.drafters import DraftContext
    from evcascade.decoding.verifier import VideoLlavaVerifier

AGREEMENT_KEY = "visual_agreement"
"""``DraftContext.extras`` key of the request's ``AgreementMap`` (computed once per clip by the caller)."""
DEFAULT_FLOOR = 0.5
DEFAULT_ENTROPY_REF = math.log(2.0)


@dataclass(frozen=True)
class AgreementMap:
    """How well the event drafter's visual features match the target's, per frame and per region."""

    per_region: torch.Tensor
    """``[T, R]`` cosine of draft and target features per frame and visual token (R = 1 + P, CLS first)."""
    per_frame: torch.Tensor
    """``[T]`` cosine of the frames' mean-pooled features."""

    @property
    def clip(self) -> float:
        """One number for the clip: the mean regional cosine."""
        return float(self.per_region.mean()) if self.per_region.numel() else 0.0

    def flat(self) -> torch.Tensor:
        """``[T * R]`` per-region cosines in the order of the target's visual tokens."""
        return self.per_region.flatten()


def visual_agreement(draft_features: torch.Tensor, target_features: torch.Tensor,
                     projector: Callable[[torch.Tensor], torch.Tensor] | None = None) -> AgreementMap:
    """Cosine agreement of ``draft_features [1, T, R, D_d]`` (or ``[T, R, D_d]``) with the target's
    ``target_features [T, R, D]`` (or ``[1, T, R, D]``), after ``projector`` (D_d -> D) when given.

    >>> a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # T=1, R=2, D=2
    >>> visual_agreement(a, torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])).per_region
    tensor([[1., 0.]])
    """
    def frames(x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[0] != 1):
            raise InputError(f"{name} must be [T, R, D] or [1, T, R, D], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        return x[0] if x.ndim == 4 else x

    draft, target = frames(draft_features, "draft_features"), frames(target_features, "target_features")
    with torch.no_grad():
        if projector is not None:
            weight = next(iter(getattr(projector, "parameters", lambda: iter(()))()), None)
            draft = projector(draft.to(weight) if weight is not None else draft)  # [T, R, D]
    draft, target = draft.float(), target.float().to(draft.device)
    if draft.shape != target.shape:
        raise InputError(f"draft features {tuple(draft.shape)} and target features {tuple(target.shape)} differ; "
                         "pass the target's multi_modal_projector when the draft features are pre-projector")
    per_region = torch.nn.functional.cosine_similarity(draft, target, dim=-1)  # [T, R]
    per_frame = torch.nn.functional.cosine_similarity(draft.mean(dim=1), target.mean(dim=1), dim=-1)  # [T]
    return AgreementMap(per_region.cpu(), per_frame.cpu())


def agreement_for_request(verifier: "VideoLlavaVerifier", prefix_fn, context: "DraftContext",
                          pixel_values_videos: torch.Tensor, clip_key: str | None = None) -> AgreementMap:
    """The request's ``AgreementMap``: ``prefix_fn`` (an ``EventDrafterPrefix`` with an alignment) gives the
    context's draft features (``request_features``: computed once per clip and shared with its drafting prefix),
    the verifier supplies its cached projected video features."""
    if getattr(prefix_fn, "alignment", None) is None:
        raise InputError("modality-aware acceptance needs an event drafter level with an AlignmentMLP (its features "
                         "live in the target's space); this cascade has none")
    if context.events is None:
        raise InputError("modality-aware acceptance needs the request's events")
    target = verifier.video_features(pixel_values_videos, clip_key)  # [T, R, D]
    draft = prefix_fn.request_features(context)  # [1, T, R, D_t]
    return visual_agreement(draft, target, verifier.model.model.multi_modal_projector)


def agreement_weight(agreement: torch.Tensor | float, floor: float = DEFAULT_FLOOR) -> torch.Tensor:
    """Cosine agreement -> weight in [0, 1]: 0 at or below ``floor``, 1 at perfect agreement.

    >>> agreement_weight(torch.tensor([0.2, 0.75, 1.0])).tolist()
    [0.0, 0.5, 1.0]
    """
    if not isinstance(floor, (int, float)) or not -1 <= floor < 1:
        raise InputError(f"floor must be a number in [-1, 1), got {floor!r}")
    return ((torch.as_tensor(agreement, dtype=torch.float32) - floor) / (1 - floor)).clamp(0, 1)


def entropy_grounding(target_logits: torch.Tensor, params: SamplingParams,
                      entropy_ref: float = DEFAULT_ENTROPY_REF) -> torch.Tensor:
    """``[B, k]`` weights min(1, H(target)/entropy_ref) for the first k rows of ``target_logits [B, k+1, V]``.

    >>> from evcascade.decoding.sampling import GREEDY
    >>> entropy_grounding(torch.zeros(1, 2, 2), GREEDY)  # an even split of two tokens: H = ln 2
    tensor([[1.]])
    """
    rows = probabilities(target_logits[:, :-1], params)  # [B, k, V]
    entropy = -(rows * rows.clamp(min=1e-30).log()).sum(dim=-1)  # [B, k] nats
    return (entropy / entropy_ref).clamp(0, 1)


def attention_grounding(visual_attention: torch.Tensor, agreement: AgreementMap,
                        floor: float = DEFAULT_FLOOR) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``(agreement_weight, grounding_weight)``, both ``[B, k]``, from the target's attention of each
    draft position on the clip's visual tokens, ``visual_attention [B, k, T*R]`` (a row of an attention
    distribution restricted to the visual keys, e.g. averaged over layers and heads; each row sums to <= 1).

    >>> agree = AgreementMap(torch.tensor([[1.0, 0.0]]), torch.tensor([0.5]))
    >>> attention_grounding(torch.tensor([[[0.6, 0.0], [0.0, 0.3]]]), agree)
    (tensor([[1., 0.]]), tensor([[0.6000, 0.3000]]))
    """
    regions = agreement.flat().to(visual_attention)  # [T*R]
    if visual_attention.ndim != 3 or visual_attention.shape[-1] != regions.shape[0]:
        raise InputError(f"visual_attention must be [B, k, {regions.shape[0]}] (one column per visual token), "
                         f"got {tuple(visual_attention.shape)}")
    mass = visual_attention.sum(dim=-1)  # [B, k]
    weighted = (visual_attention * regions).sum(dim=-1) / mass.clamp(min=1e-12)  # [B, k] attention-weighted cosine
    return agreement_weight(weighted, floor) * (mass > 0), mass.clamp(0, 1)


def modality_lenience(base_lenience: float, agreement_w: torch.Tensor, grounding_w: torch.Tensor) -> torch.Tensor:
    """lenience = base * agreement_weight * grounding_weight, ``[B, k]`` (see the module docstring)."""
    return (check_lenience(base_lenience, "base_lenience") * agreement_w * grounding_w).clamp(0, 1)


def modality_rule(agreement: AgreementMap, base_lenience: float, *, floor: float = DEFAULT_FLOOR,
                  entropy_ref: float = DEFAULT_ENTROPY_REF) -> AcceptanceRule:
    """The modality-aware ``AcceptanceRule`` for one clip (entropy grounding): TokenV3 at per-token lenience."""
    check_lenience(base_lenience, "base_lenience")
    if not isinstance(agreement, AgreementMap):
        raise InputError(f"agreement must be an AgreementMap, got {type(agreement).__name__}")
    if not (isinstance(entropy_ref, (int, float)) and entropy_ref > 0):
        raise InputError(f"entropy_ref must be > 0 nats, got {entropy_ref!r}")
    clip_weight = float(agreement_weight(agreement.clip, floor))

    def rule(draft_ids: torch.LongTensor, draft_probs: torch.Tensor | None, reviewer_logits: torch.Tensor,
             params: SamplingParams, generator: torch.Generator | None = None) -> AcceptResult:
        grounding = entropy_grounding(reviewer_logits, params, entropy_ref)  # [B, k]
        lenience = modality_lenience(base_lenience, torch.full_like(grounding, clip_weight), grounding)
        return token_accept(draft_ids, draft_probs, reviewer_logits, lenience, variant=3, params=params,
                            generator=generator)

    rule.__name__ = f"modality({base_lenience:g}, agreement {agreement.clip:.2f})"
    return rule


def modality_rule_from_extras(extras: dict, base_lenience: float) -> AcceptanceRule:
    """``modality_rule`` for the ``AgreementMap`` in ``extras[AGREEMENT_KEY]``; an ``InputError`` if there is none."""
    agreement = extras.get(AGREEMENT_KEY)
    if agreement is None:
        raise InputError(f"acceptance='modality' needs DraftContext.extras[{AGREEMENT_KEY!r}] (an AgreementMap from "
                         "evcascade.decoding.modality.agreement_for_request, computed once per clip)")
    return modality_rule(agreement, base_lenience)
