"""Opt-in lossy acceptance rules on hand-written tensors, and their engine hook against Hugging Face ``generate``.

Boundaries are checked on either side of the hand-computed threshold; sampling rules are checked in
distribution over many independent rows of one batch (each row is one review).
"""

from __future__ import annotations

import math

import pytest
import torch

from evcascade.decoding.acceptance import accept, greedy_accept
from evcascade.decoding.drafters import Draft, DraftContext, Drafter
from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
from evcascade.decoding.lossy import (RULES, check_lenience, divergence, fuzzy_accept, fuzzy_rule, lossy_sps_accept,
                                      make_rule, token_accept, token_set, typical_accept)
from evcascade.decoding.model_drafter import ModelDrafter
from evcascade.decoding.ngram import NGramDrafter
from evcascade.decoding.sampling import GREEDY, SamplingParams
from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest
from evcascade.errors import InputError
from evcascade.models.tiny import tiny_llama

SAMPLE = SamplingParams(do_sample=True)
TARGET = [0.5, 0.4, 0.1]  # the target's distribution in most hand cases: argmax 0, runner-up 1


def logits_of(*rows: list[float]) -> torch.Tensor:
    """``[1, len(rows), V]`` logits whose softmax is each row (log of the probabilities)."""
    return torch.tensor([rows]).clamp(min=1e-12).log()


def one(draft: int) -> torch.Tensor:
    return torch.tensor([[draft]])


LOSSY = [r for r in RULES if r not in ("lossless", "modality")]


# ---------------------------------------------------------------------------------------- lenience 0 == lossless
@pytest.mark.parametrize("do_sample", [False, True])
@pytest.mark.parametrize("rule", LOSSY)
def test_lenience_zero_is_the_lossless_rule(rule, do_sample):
    params = SamplingParams(do_sample=do_sample, temperature=0.8)
    generator = torch.Generator().manual_seed(0)
    for case in range(20):
        batch, k, vocab = 3, 1 + case % 4, 7
        logits = torch.randn(batch, k + 1, vocab, generator=generator) * 2
        draft_probs = torch.randn(batch, k, vocab, generator=generator).softmax(-1) if case % 2 else None
        draft_ids = torch.randint(0, vocab, (batch, k), generator=generator)
        draft_ids[0] = logits[0, :k].argmax(-1)  # one row the target agrees with
        expected = accept(draft_ids, draft_probs, logits, params, torch.Generator().manual_seed(case))
        got = make_rule(rule, 0.0)(draft_ids, draft_probs, logits, params, torch.Generator().manual_seed(case))
        assert torch.equal(got.num_accepted, expected.num_accepted) and torch.equal(got.next_token, expected.next_token)


@pytest.mark.parametrize("variant", [2, 3])
def test_token_v2_v3_greedy_tend_to_lossless_as_lenience_goes_to_zero(variant):
    """Not only the convention: for TokenV2/V3 a tiny alpha is the greedy rule on generic (tie-free) logits."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 5, 11, generator=generator)
    draft_ids = torch.where(torch.rand(50, 4, generator=generator) < 0.6, logits[:, :4].argmax(-1),
                            torch.randint(0, 11, (50, 4), generator=generator))
    got = token_accept(draft_ids, None, logits, 1e-7, variant=variant)
    expected = greedy_accept(draft_ids, logits)
    assert torch.equal(got.num_accepted, expected.num_accepted) and torch.equal(got.next_token, expected.next_token)


# ---------------------------------------------------------------------------------------- token-specific rules
@pytest.mark.parametrize("variant, draft_probs, boundary", [
    (3, None, 0.2),                        # 0.4 >= (1 - a) 0.5  <=>  a >= 0.2
    (2, None, 0.1),                        # 0.4 >= 0.5 - a      <=>  a >= 0.1
    (1, [[[0.2, 0.3, 0.5]]], 0.2),         # draft(1) = 0.3 >= 0.5 - a  <=>  a >= 0.2
    (1, None, 0.1),                        # point mass: TokenV1 falls back to the TokenV2 set
])
def test_token_rules_greedy_boundary(variant, draft_probs, boundary):
    logits = logits_of(TARGET, [0.1, 0.1, 0.8])
    probs = None if draft_probs is None else torch.tensor(draft_probs)
    below = token_accept(one(1), probs, logits, boundary - 0.01, variant=variant)
    above = token_accept(one(1), probs, logits, boundary + 0.01, variant=variant)
    assert (below.num_accepted.item(), below.next_token.item()) == (0, 0)  # rejected: the target's argmax follows
    assert (above.num_accepted.item(), above.next_token.item()) == (1, 2)  # accepted: the bonus is row 1's argmax


def test_token_set_by_hand():
    draft = torch.tensor([[[0.2, 0.7, 0.1]]])
    target = torch.tensor([[TARGET]])
    alpha = torch.tensor([[0.15]])
    ids = torch.tensor([[1]])
    assert token_set(1, draft, target, alpha, ids).tolist() == [[[False, True, False]]]  # q >= 0.35
    assert token_set(2, draft, target, alpha, ids).tolist() == [[[True, True, False]]]   # p >= 0.35
    assert token_set(3, draft, target, alpha, ids).tolist() == [[[True, False, False]]]  # p >= 0.425
    assert not token_set(2, draft, target, torch.zeros(1, 1), ids).any()  # alpha 0: empty, pi = target
    with pytest.raises(InputError, match="variant must be 1, 2 or 3, got 4"):
        token_set(4, draft, target, alpha, ids)


def test_token_v2_sampling_draws_from_pi():
    """First token of the answer ~ pi = q 1[A] + (1 - q(A)) p, with A = {0, 1}: pi = [0.25, 0.74, 0.01]."""
    rows = 40_000
    generator = torch.Generator().manual_seed(3)
    draft = torch.tensor([0.2, 0.7, 0.1])
    draft_ids = torch.multinomial(draft, rows, replacement=True, generator=generator)[:, None]  # [rows, 1]
    logits = logits_of(TARGET, TARGET).expand(rows, -1, -1)
    result = token_accept(draft_ids, draft.expand(rows, 1, 3), logits, 0.15, variant=2, params=SAMPLE,
                          generator=generator)
    first = torch.where(result.num_accepted > 0, draft_ids[:, 0], result.next_token)
    frequency = torch.bincount(first, minlength=3).float() / rows
    assert torch.allclose(frequency, torch.tensor([0.25, 0.74, 0.01]), atol=0.01)


# ---------------------------------------------------------------------------------------- lossy speculative sampling
def test_lossy_sps_acceptance_rate_and_residual():
    """Point-mass draft of token 2 (target 0.1): accepted with min(1, 0.1 / (1 - l)); residual max(0, p - (1 - l) q)."""
    rows = 40_000
    logits = logits_of(TARGET, TARGET).expand(rows, -1, -1)
    draft_ids = torch.full((rows, 1), 2)
    result = lossy_sps_accept(draft_ids, None, logits, 0.5, params=SAMPLE, generator=torch.Generator().manual_seed(4))
    rate = result.num_accepted.float().mean().item()
    assert abs(rate - 0.2) < 0.01
    rejected = result.next_token[result.num_accepted == 0]
    frequency = torch.bincount(rejected, minlength=3).float() / rejected.numel()
    assert torch.allclose(frequency, torch.tensor([5 / 9, 4 / 9, 0.0]), atol=0.015)
    assert lossy_sps_accept(draft_ids[:50], None, logits[:50], 0.95, params=SAMPLE).num_accepted.all()


def test_lossy_sps_greedy_is_the_greedy_rule():
    logits = logits_of(TARGET, TARGET)
    assert lossy_sps_accept(one(1), None, logits, 1.0).num_accepted.item() == 0


# ---------------------------------------------------------------------------------------- typical acceptance
def test_typical_boundary_by_hand():
    """H(0.5, 0.4, 0.1) = 0.943 nats, exp(-H) = 0.389: token 1 (0.4) passes at any lenience > 0; token 2 (0.1)
    needs min(eps, sqrt(eps) 0.389) < 0.1, i.e. eps < 0.1 (lenience > 0.9)."""
    logits = logits_of(TARGET, [0.1, 0.1, 0.8])
    entropy = -sum(p * math.log(p) for p in TARGET)
    assert math.exp(-entropy) == pytest.approx(0.3894, abs=1e-4)
    assert typical_accept(one(1), None, logits, 0.01).num_accepted.item() == 1
    assert typical_accept(one(2), None, logits, 0.89).num_accepted.item() == 0
    assert typical_accept(one(2), None, logits, 0.91).num_accepted.item() == 1
    sampled = typical_accept(one(2), None, logits, 0.91, params=SAMPLE, generator=torch.Generator().manual_seed(0))
    assert sampled.num_accepted.item() == 1  # deterministic once typical


# ---------------------------------------------------------------------------------------- fuzzy (PyramidSD)
def test_fuzzy_total_variation_boundary():
    logits = logits_of(TARGET, TARGET)
    close = torch.tensor([[[0.45, 0.45, 0.1]]])  # TV to the target = 0.05
    assert divergence(close[0, 0], torch.tensor(TARGET)).item() == pytest.approx(0.05, abs=1e-6)
    assert fuzzy_accept(one(1), close, logits, 0.04).num_accepted.item() == 0
    assert fuzzy_accept(one(1), close, logits, 0.06).num_accepted.item() == 1
    # a point mass on token 1: TV = 1 - 0.4 = 0.6
    assert fuzzy_accept(one(1), None, logits, 0.59).num_accepted.item() == 0
    assert fuzzy_accept(one(1), None, logits, 0.61).num_accepted.item() == 1
    js = divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), "js")
    assert js.item() == pytest.approx(1.0, abs=1e-5)  # disjoint supports: ln 2 / ln 2


def test_fuzzy_rule_is_an_inner_rule():
    rule = fuzzy_rule(0.61)
    assert rule(one(1), None, logits_of(TARGET, TARGET), GREEDY).num_accepted.item() == 1
    with pytest.raises(InputError, match="divergence must be one of"):
        fuzzy_rule(0.1, "kl")


# ---------------------------------------------------------------------------------------- prefixes, degenerate cases
def test_greedy_prefix_stops_at_first_rejection_and_appends_the_argmax():
    logits = logits_of(TARGET, [0.6, 0.3, 0.1], [0.3, 0.3, 0.4], [0.1, 0.8, 0.1])
    draft = torch.tensor([[1, 2, 0]])  # 1: lenient at a >= 0.2; 2: p 0.1 vs 0.6 (needs a >= 5/6); 0: would pass
    result = token_accept(draft, None, logits, 0.3, variant=3)
    assert (result.num_accepted.item(), result.next_token.item()) == (1, 0)
    everything = token_accept(draft, None, logits, 1.0, variant=3)
    assert (everything.num_accepted.item(), everything.next_token.item()) == (3, 1)


@pytest.mark.parametrize("rule", LOSSY)
def test_no_drafts_gives_the_targets_token(rule):
    logits = logits_of([0.2, 0.7, 0.1])
    result = make_rule(rule, 0.7)(torch.zeros(1, 0, dtype=torch.long), None, logits, GREEDY)
    assert (result.num_accepted.item(), result.next_token.item()) == (0, 1)


def test_per_position_lenience_and_inputs_untouched():
    logits = logits_of(TARGET, TARGET, TARGET)
    draft = torch.tensor([[1, 1]])
    probs = torch.tensor([[[0.1, 0.8, 0.1], [0.1, 0.8, 0.1]]])
    before = (logits.clone(), draft.clone(), probs.clone())
    result = token_accept(draft, probs, logits, torch.tensor([[0.3, 0.0]]), variant=3)
    assert result.num_accepted.item() == 1  # lenient at position 0, strict (lossless) at position 1
    assert all(torch.equal(a, b) for a, b in zip(before, (logits, draft, probs)))


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.3", True, None])
def test_bad_lenience_names_the_value(bad):
    with pytest.raises(InputError, match="lenience must be a number in \\[0, 1\\]"):
        check_lenience(bad)
    with pytest.raises(InputError, match="lenience"):
        GenerationOptions(acceptance="token_v3", lenience=bad)


def test_bad_rule_names_and_tensors():
    with pytest.raises(InputError, match="acceptance must be one of .*got 'greedy'"):
        GenerationOptions(acceptance="greedy")
    with pytest.raises(InputError, match="everywhere, got a value 2.0"):
        token_accept(one(1), None, logits_of(TARGET, TARGET), torch.tensor([[2.0]]), variant=3)
    with pytest.raises(InputError, match="broadcast"):
        token_accept(one(1), None, logits_of(TARGET, TARGET), torch.zeros(3, 3), variant=3)


# ---------------------------------------------------------------------------------------- the engine hook
V = 48
NO_EOS = V - 1


class WrongDrafter(Drafter):
    """Always proposes token 5 (a model-free drafter, so no probabilities)."""

    name = "wrong"

    def begin(self, context, **kwargs):
        pass

    def propose(self, generated, k):
        return Draft(torch.full((1, k), 5, dtype=torch.long))


@pytest.fixture(scope="module")
def models():
    return tiny_llama(V, seed=11), tiny_llama(V, seed=12, hidden_size=16, num_layers=1)


def decode(target, levels, **options):
    prompt = torch.tensor([[1, 9, 14, 22, 9, 14, 30]])
    decoder = CascadeDecoder(CausalLMVerifier(target), levels)
    opts = GenerationOptions(max_new_tokens=12, eos_token_ids=(NO_EOS,), adaptive=False, draft_k=3, **options)
    return decoder.generate(VerifyRequest(prompt), DraftContext(prompt[:, 1:]), opts), prompt


@pytest.mark.parametrize("rule", ["lossless", *LOSSY])
def test_engine_lossless_default_and_lenience_zero_equal_generate(models, rule):
    target, small = models
    options = {} if rule == "lossless" else {"acceptance": rule, "lenience": 0.0}
    result, prompt = decode(target, [NGramDrafter(), ModelDrafter(small, name="lm")], **options)
    expected = target.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                               max_new_tokens=12, eos_token_id=NO_EOS, pad_token_id=3)[0, prompt.shape[1]:]
    assert result.token_ids[0].tolist() == expected.tolist()
    assert result.stats.acceptance == ("lossless" if rule == "lossless" else f"{rule}(0)")


def test_engine_full_lenience_accepts_every_draft(models):
    """TokenV3 at alpha 1 accepts any token: the answer is the drafter's (5 5 5 + the target's bonus ...)."""
    target, _ = models
    result, _ = decode(target, [WrongDrafter()], acceptance="token_v3", lenience=1.0)
    tokens = result.token_ids[0].tolist()
    assert result.stats.tau == pytest.approx(12 / 3)  # 3 drafts + 1 bonus per target forward, the prefill's too
    assert [tokens[i] for i in (0, 1, 2, 4, 5, 6, 8, 9, 10)] == [5] * 9  # three blocks of 3 drafts + a bonus


def test_engine_token_v1_gets_draft_probabilities_when_greedy(models):
    """TokenV1 reads the drafter's distribution: at alpha 1 (q >= max p - 1 always) it keeps all the LM's drafts,
    so the answer is the drafter's own greedy continuation wherever it drafted."""
    target, small = models
    result, prompt = decode(target, [ModelDrafter(small, name="lm")], acceptance="token_v1", lenience=1.0)
    assert result.stats.levels[0].acceptance_rate == 1.0
    with pytest.raises(InputError, match="visual_agreement"):
        decode(target, [ModelDrafter(small, name="lm")], acceptance="modality", lenience=0.5)
