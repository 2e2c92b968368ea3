"""Acceptance rules on hand-written tensors, and the logits warpers against Hugging Face's.

Distribution checks run the pure rule on many rows at once (the batch dimension) and compare the empirical
distribution of the emitted token with the exact target distribution by a chi-square test at false-alarm rate
1e-4 (fixed seeds, so the outcome is deterministic); each is paired with a broken rule the same test rejects.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from evcascade.decoding.acceptance import accept, greedy_accept, speculative_accept
from evcascade.decoding.sampling import GREEDY, SamplingParams, choose_token, probabilities, warp_logits
from evcascade.errors import InputError

ALPHA = 1e-4


def pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square goodness of fit of ``counts`` to ``probs`` (expected counts in float64 so the sums agree)."""
    expected = probs.double() / probs.double().sum() * float(counts.sum())
    return float(chisquare(counts.double().numpy(), expected.numpy()).pvalue)


def one_hot_logits(ids: list[int], vocab: int = 5) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor([ids]), vocab).float()  # [1, k+1, V]


@pytest.mark.parametrize("draft,target_argmax,expected", [
    ([2, 3, 4], [2, 3, 4, 1], (3, 1)),  # all accepted: the bonus token
    ([2, 3, 4], [0, 3, 4, 1], (0, 0)),  # first rejected: the correction
    ([2, 3, 4], [2, 3, 0, 1], (2, 0)),  # rejected in the middle; later matches do not count
    ([2, 0, 4], [2, 3, 4, 1], (1, 3)),
    ([], [4], (0, 4)),                  # nothing drafted: a plain step
])
def test_greedy_accept_by_hand(draft, target_argmax, expected):
    result = greedy_accept(torch.tensor([draft], dtype=torch.long).reshape(1, -1), one_hot_logits(target_argmax))
    assert (int(result.num_accepted[0]), int(result.next_token[0])) == expected


def test_greedy_accept_keeps_rows_apart():
    draft = torch.tensor([[1, 2], [1, 2]])
    logits = torch.stack([one_hot_logits([1, 2, 3])[0], one_hot_logits([1, 4, 0])[0]])  # [2, 3, V]
    result = greedy_accept(draft, logits)
    assert result.num_accepted.tolist() == [2, 1] and result.next_token.tolist() == [3, 4]


def test_speculative_accept_certain_cases():
    target = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # sure of 1, then 2
    sure = speculative_accept(torch.tensor([[1]]), None, target)
    assert (int(sure.num_accepted[0]), int(sure.next_token[0])) == (1, 2)
    never = speculative_accept(torch.tensor([[0]]), None, target)  # target gives the draft 0: always rejected
    assert (int(never.num_accepted[0]), int(never.next_token[0])) == (0, 1)
    # the draft thought 1 likelier than the target does but the target is sure: still accepted
    draft_probs = torch.tensor([[[0.0, 1.0, 0.0]]])
    assert int(speculative_accept(torch.tensor([[1]]), draft_probs, target).num_accepted[0]) == 1


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[B, k\+1, V\]"):
        greedy_accept(torch.tensor([[1, 2]]), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="draft_probs"):
        speculative_accept(torch.tensor([[1]]), torch.ones(1, 1, 3), torch.ones(1, 2, 4) / 4)


def first_token_counts(rule, target_probs: torch.Tensor, draft_probs: torch.Tensor | None, rows: int,
                       seed: int) -> torch.Tensor:
    """Run ``rule`` on ``rows`` independent drafts of length 2; count the first emitted token per id."""
    generator = torch.Generator().manual_seed(seed)
    vocab = target_probs.shape[-1]
    if draft_probs is None:  # an n-gram-like drafter: a fixed token, no distribution
        draft_ids = torch.full((rows, 2), 1, dtype=torch.long)
        batch_draft = None
    else:
        draft_ids = torch.multinomial(draft_probs.expand(rows, -1, -1).reshape(-1, vocab), 1,
                                      generator=generator).reshape(rows, 2)
        batch_draft = draft_probs.expand(rows, -1, -1)
    result = rule(draft_ids, batch_draft, target_probs.expand(rows, -1, -1), generator)
    first = torch.where(result.num_accepted > 0, draft_ids[:, 0], result.next_token)  # [rows]
    second_when_bonus = result.next_token[result.num_accepted == 2]
    return torch.bincount(first, minlength=vocab), second_when_bonus


def always_accept(draft_ids, draft_probs, target_probs, generator):
    """A broken rule: keeps every draft (so its output follows the drafter, not the target)."""
    return speculative_accept(draft_ids, draft_probs, target_probs.new_ones(target_probs.shape), generator)


TARGET = torch.tensor([[[0.5, 0.1, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]]])  # [1, 3, 4]
DRAFT = torch.tensor([[[0.1, 0.6, 0.1, 0.2], [0.4, 0.3, 0.2, 0.1]]])  # [1, 2, 4]


@pytest.mark.parametrize("draft_probs", [DRAFT, None], ids=["model", "point-mass"])
def test_speculative_sampling_emits_the_target_distribution(draft_probs):
    rows = 20000
    counts, bonus = first_token_counts(speculative_accept, TARGET, draft_probs, rows, seed=0)
    assert pvalue(counts, TARGET[0, 0]) > ALPHA
    # after two acceptances the bonus token follows the target's third row
    bonus_counts = torch.bincount(bonus, minlength=4)
    assert bonus.numel() > 300  # 20000 x P(both kept) >= 500 expected
    assert pvalue(bonus_counts, TARGET[0, 2]) > ALPHA

    broken, _ = first_token_counts(always_accept, TARGET, draft_probs, rows, seed=0)
    assert pvalue(broken, TARGET[0, 0]) < ALPHA  # the test can fail


def test_identical_distributions_accept_everything():
    probs = torch.tensor([[[0.2, 0.8], [0.6, 0.4]]])
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        draft = torch.multinomial(probs[0, :1], 1, generator=generator)  # [1, 1]
        assert int(speculative_accept(draft, probs[:, :1], probs, generator).num_accepted[0]) == 1


def test_accept_dispatches_on_do_sample():
    logits = torch.log(TARGET)  # [1, 3, 4]
    draft = torch.tensor([[0, 0]])
    greedy = accept(draft, None, logits, GREEDY)
    assert (int(greedy.num_accepted[0]), int(greedy.next_token[0])) == (2, 0)  # argmax rows: 0, tie -> first id, 0
    sampled = accept(draft, None, logits, SamplingParams(do_sample=True, top_k=1), torch.Generator().manual_seed(0))
    assert int(sampled.num_accepted[0]) >= 1  # top-1 keeps only id 0 in row 0 (row 1's tie keeps all four ids)


# ---------------------------------------------------------------- logits processing

@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, 1.0), (0.7, 5, 1.0), (1.3, None, 0.8),
                                                     (0.5, 10, 0.6), (2.0, 1, 0.99), (1.0, 100, 0.05)])
def test_warpers_match_hugging_face(temperature, top_k, top_p):
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(int(temperature * 10)))
    logits[0, :4] = 2.0  # ties at the top-k boundary
    before = logits.clone()
    expected = TemperatureLogitsWarper(temperature)(None, logits)
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    params = SamplingParams(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    ours = warp_logits(logits, params)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    assert torch.allclose(ours[~torch.isinf(ours)], expected[~torch.isinf(expected)])
    assert torch.allclose(probabilities(logits, params), expected.softmax(-1))
    assert torch.equal(logits, before)  # the caller's logits are untouched


def test_choose_token_and_params_checks():
    logits = torch.tensor([[0.0, 5.0, 1.0]])
    assert choose_token(logits, GREEDY).tolist() == [1]
    draws = [int(choose_token(logits, SamplingParams(do_sample=True, top_k=2), torch.Generator().manual_seed(s)))
             for s in range(40)]
    assert set(draws) <= {1, 2} and 1 in draws
    for bad in (dict(temperature=0), dict(top_k=-1), dict(top_p=0.0), dict(top_k=True)):
        with pytest.raises(InputError, match=next(iter(bad))):
            SamplingParams(do_sample=True, **bad)
