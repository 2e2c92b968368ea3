"""Modality-aware acceptance: the agreement map (hand-made features and a tiny Video-LLaVA + event drafter),
the weights, and the rule falling back to strict where events and video disagree."""

from __future__ import annotations

import math

import pytest
import torch

from evcascade.decoding.acceptance import accept
from evcascade.decoding.drafters import DraftContext
from evcascade.decoding.lossy import make_rule, token_accept
from evcascade.decoding.modality import (AGREEMENT_KEY, AgreementMap, agreement_for_request, agreement_weight,
                                         attention_grounding, entropy_grounding, modality_lenience, modality_rule,
                                         visual_agreement)
from evcascade.decoding.sampling import GREEDY
from evcascade.errors import InputError


def agreement_of(value: float, frames: int = 2, regions: int = 3) -> AgreementMap:
    return AgreementMap(torch.full((frames, regions), value), torch.full((frames,), value))


def test_visual_agreement_by_hand():
    draft = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [2.0, 0.0]]])  # [T=2, R=2, D=2]
    target = torch.tensor([[[2.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])
    before = draft.clone()
    agreement = visual_agreement(draft[None], target)
    assert torch.allclose(agreement.per_region, torch.tensor([[1.0, 0.0], [1 / math.sqrt(2), 1.0]]))
    # frame means: [0.5, 0.5] vs [1.5, 0] -> 1/sqrt(2); [1.5, 0.5] vs [1, 0] -> 1.5/sqrt(2.5)
    assert torch.allclose(agreement.per_frame, torch.tensor([1 / math.sqrt(2), 1.5 / math.sqrt(2.5)]))
    assert agreement.clip == pytest.approx(float(agreement.per_region.mean()))
    assert torch.equal(draft, before)


def test_visual_agreement_goes_through_the_projector():
    projector = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        projector.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    draft = torch.tensor([[[1.0, 2.0, 9.0]]])  # the third feature is dropped by the projector
    agreement = visual_agreement(draft, torch.tensor([[[2.0, 4.0]]]), projector)
    assert agreement.per_region.item() == pytest.approx(1.0)
    with pytest.raises(InputError, match=r"draft features \(1, 1, 3\) and target features \(1, 1, 2\) differ"):
        visual_agreement(draft, torch.tensor([[[2.0, 4.0]]]))
    with pytest.raises(InputError, match="draft_features must be"):
        visual_agreement(torch.zeros(4), torch.zeros(1, 1, 2))


def test_weights_by_hand():
    assert agreement_weight(torch.tensor([-1.0, 0.5, 0.75, 1.0])).tolist() == [0.0, 0.0, 0.5, 1.0]
    assert agreement_weight(0.6, floor=0.0).item() == pytest.approx(0.6)
    with pytest.raises(InputError, match="floor must be a number in \\[-1, 1\\), got 1"):
        agreement_weight(0.5, floor=1)
    # entropies: an even split of 2 (ln 2 -> 1), of 4 (ln 4 -> capped 1), a near-certain token (~0)
    logits = torch.log(torch.tensor([[[0.5, 0.5, 1e-9, 1e-9], [0.25] * 4, [1 - 3e-6, 1e-6, 1e-6, 1e-6],
                                      [0.25] * 4]]))
    weights = entropy_grounding(logits, GREEDY)
    assert weights.shape == (1, 3)
    assert weights[0, :2].tolist() == pytest.approx([1.0, 1.0], abs=1e-4) and weights[0, 2].item() < 1e-3
    assert modality_lenience(0.8, torch.tensor([[0.5]]), torch.tensor([[0.5]])).item() == pytest.approx(0.2)


def test_attention_grounding_by_hand():
    agreement = AgreementMap(torch.tensor([[1.0, 0.5], [0.0, 1.0]]), torch.tensor([0.8, 0.5]))  # 4 visual tokens
    attention = torch.tensor([[[0.3, 0.0, 0.0, 0.1], [0.0, 0.2, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    agree_w, ground_w = attention_grounding(attention, agreement)
    # token 0 reads regions 0 and 3 (both 1.0); token 1 regions 1 and 2 (mean 0.25 -> below the floor); token 2: none
    assert agree_w.tolist() == [[1.0, 0.0, 0.0]]
    assert ground_w[0].tolist() == pytest.approx([0.4, 0.4, 0.0])
    with pytest.raises(InputError, match="visual_attention must be \\[B, k, 4\\]"):
        attention_grounding(torch.zeros(1, 1, 3), agreement)


# ------------------------------------------------------------------------------------------------ the rule
HESITANT = torch.log(torch.tensor([[[0.5, 0.45, 0.05], [0.1, 0.1, 0.8]]]))  # H ~ 0.86 nats: grounding weight 1


def test_agreeing_modalities_accept_like_token_v3():
    rule = modality_rule(agreement_of(1.0), 0.3)  # lenience 0.3 * 1 * 1: 0.45 >= 0.7 * 0.5
    result = rule(torch.tensor([[1]]), None, HESITANT, GREEDY)
    assert (result.num_accepted.item(), result.next_token.item()) == (1, 2)
    assert token_accept(torch.tensor([[1]]), None, HESITANT, 0.05, variant=3).num_accepted.item() == 0


@pytest.mark.parametrize("agreement", [0.5, 0.2, -0.4])
def test_disagreeing_modalities_fall_back_to_strict(agreement):
    rule = modality_rule(agreement_of(agreement), 1.0)  # even full base lenience
    for draft in range(3):
        got = rule(torch.tensor([[draft]]), None, HESITANT, GREEDY)
        expected = accept(torch.tensor([[draft]]), None, HESITANT, GREEDY)
        assert torch.equal(got.num_accepted, expected.num_accepted) and torch.equal(got.next_token, expected.next_token)


def test_a_confident_target_is_never_overruled():
    confident = torch.log(torch.tensor([[[0.999, 0.0009, 0.0001], [0.1, 0.1, 0.8]]]))
    rule = modality_rule(agreement_of(1.0), 1.0)
    assert rule(torch.tensor([[1]]), None, confident, GREEDY).num_accepted.item() == 0


def test_the_rule_comes_from_extras_and_checks_its_inputs():
    assert make_rule("modality", 0.3, {AGREEMENT_KEY: agreement_of(1.0)})(
        torch.tensor([[1]]), None, HESITANT, GREEDY).num_accepted.item() == 1
    with pytest.raises(InputError, match=f"extras\\['{AGREEMENT_KEY}'\\]"):
        make_rule("modality", 0.3, {})
    with pytest.raises(InputError, match="base_lenience must be a number in \\[0, 1\\]"):
        modality_rule(agreement_of(1.0), 1.2)
    with pytest.raises(InputError, match="agreement must be an AgreementMap"):
        modality_rule(torch.ones(2, 3), 0.5)


# ------------------------------------------------------------------------------------------------ real models
def test_agreement_for_request_on_tiny_models():
    """Draft features sent through the target's projector, against the verifier's cached projected features."""
    from evcascade.data.world import WorldConfig, make_world_sample
    from evcascade.decoding.verifier import VideoLlavaVerifier
    from evcascade.models.pipeline import build_event_drafter_prefix
    from evcascade.models.tiny import tiny_event_drafter_parts, tiny_tokenizer, tiny_video_llava

    tok = tiny_tokenizer()
    model = tiny_video_llava(tok, num_frames=4)
    encoder, alignment, _, draft_lm = tiny_event_drafter_parts(model.config, tok, refiner=False)
    prefix = build_event_drafter_prefix(encoder, draft_lm, alignment=alignment, target_config=model.config)
    verifier = VideoLlavaVerifier(model)
    sample = make_world_sample(5, WorldConfig(duration_us=400_000, event_fps=100.0, supersample=1))
    pixels = verifier.pixel_values(sample.video.sample(4).frames)
    context = DraftContext(torch.tensor([[1]]), events=sample.events)
    agreement = agreement_for_request(verifier, prefix, context, pixels)
    tokens_per_frame = (32 // 16) ** 2 + 1
    assert agreement.per_region.shape == (4, tokens_per_frame)
    expected = visual_agreement(prefix.visual_features(sample.events), verifier.video_features(pixels),
                                model.model.multi_modal_projector)
    assert torch.allclose(agreement.per_region, expected.per_region)
    assert bool((agreement.per_region.abs() <= 1 + 1e-5).all())
    # the drafting prefix and a second agreement map of the same clip reuse the first one's draft features
    calls = []
    alignment.register_forward_hook(lambda *args: calls.append(1))
    second = DraftContext(torch.tensor([[1, 2]]), events=sample.events)
    assert torch.equal(prefix(second), prefix.draft_lm.embed_visual(prefix.request_features(context)))
    agreement_for_request(verifier, prefix, second, pixels)
    assert calls == []
    agreement_for_request(verifier, prefix, DraftContext(torch.tensor([[1]]), events=sample.events.window(0, 200_000)), pixels)
    assert calls == [1]  # other events: encoded anew
    with pytest.raises(InputError, match="needs the request's events"):
        agreement_for_request(verifier, prefix, DraftContext(torch.tensor([[1]])), pixels)
