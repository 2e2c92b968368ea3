"""Coupled sampling's pure parts on hand-written tensors: the noise, the choice, the coupled acceptance."""

import math

import pytest
import torch
from scipy.stats import chisquare

from evcascade.decoding.acceptance import coupled_accept, greedy_accept
from evcascade.decoding.coupling import PositionNoise, coupled_choice, gumbel_noise, perturbed_scores, position_key
from evcascade.decoding.sampling import GREEDY, SamplingParams, probabilities, warp_logits

SAMPLE = SamplingParams(do_sample=True)


def test_noise_is_a_function_of_seed_and_position_only():
    assert torch.equal(gumbel_noise(5, 3, 16), gumbel_noise(5, 3, 16))
    rows = {(seed, position): gumbel_noise(seed, position, 16) for seed in range(3) for position in range(4)}
    assert len({tuple(row.tolist()) for row in rows.values()}) == len(rows)  # every key its own noise
    assert len({position_key(seed, position) for seed in range(50) for position in range(50)}) == 2500
    # drawing noise for other positions first (as a different plan would) changes nothing
    noise = PositionNoise(5, 16)
    noise(7), noise.rows(0, 3)
    assert torch.equal(noise(3), gumbel_noise(5, 3, 16)) and noise.at([3, 0]).shape == (2, 16)
    # the noise is CPU float32 whatever device torch defaults to
    assert noise(0).device.type == "cpu" and noise(0).dtype == torch.float32
    with pytest.raises(ValueError, match="start at 0"):
        noise(-1)


def test_noise_is_standard_gumbel():
    values = gumbel_noise(1, 0, 200_000).double()
    euler_gamma = 0.5772156649
    assert abs(float(values.mean()) - euler_gamma) < 0.01
    assert abs(float(values.var()) - math.pi ** 2 / 6) < 0.03
    assert bool(torch.isfinite(values).all())


def test_coupled_choice_on_hand_written_tensors():
    logits = torch.tensor([[0.0, 1.0, 0.5], [2.0, 0.0, 0.0]])
    noise = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 0.0]])
    assert coupled_choice(logits, GREEDY, noise).tolist() == [1, 0]  # greedy ignores the noise
    assert coupled_choice(logits, SAMPLE, noise).tolist() == [2, 0]
    assert coupled_choice(logits, SAMPLE, None).tolist() == [1, 0]  # no noise: the argmax
    # top-k removes an id whatever its noise; temperature rescales before the noise is added
    top1 = SamplingParams(do_sample=True, top_k=1)
    assert coupled_choice(logits, top1, torch.tensor([[9.0, 0.0, 9.0], [0.0, 9.0, 0.0]])).tolist() == [1, 0]
    hot = SamplingParams(do_sample=True, temperature=10.0)
    assert coupled_choice(torch.tensor([[0.0, 1.0]]), hot, torch.tensor([[0.2, 0.0]])).tolist() == [0]  # 0.2 > 0.1
    # a wider noise row (the target's V) serves a drafter with fewer ids
    assert perturbed_scores(logits, SAMPLE, torch.zeros(2, 5)).shape == (2, 3)
    torch.testing.assert_close(perturbed_scores(logits, SAMPLE, torch.ones(3)), warp_logits(logits, SAMPLE) + 1)


def test_gumbel_max_draws_the_warped_distribution():
    """The choice over many seeds follows softmax(warp(logits)); a different temperature is rejected."""
    logits = torch.tensor([1.0, 0.2, -0.5, 0.7, -2.0])
    params = SamplingParams(do_sample=True, temperature=1.3, top_p=0.95)
    runs = 4000
    counts = torch.zeros(5)
    for seed in range(runs):
        counts[int(coupled_choice(logits, params, gumbel_noise(seed, 0, 5)))] += 1
    expected = probabilities(logits, params).double()
    keep = expected > 0
    assert int(counts[~keep].sum()) == 0  # top-p removed ids never come out
    assert chisquare(counts[keep].numpy(), (expected[keep] / expected[keep].sum() * runs).numpy()).pvalue > 1e-4
    colder = probabilities(logits, SamplingParams(do_sample=True, temperature=0.9, top_p=0.95)).double()
    assert chisquare(counts[keep].numpy(), (colder[keep] / colder[keep].sum() * runs).numpy()).pvalue < 1e-4


def test_coupled_accept_matches_the_perturbed_choices():
    logits = torch.zeros(1, 3, 4)
    noise = torch.tensor([[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [5.0, 0.0, 0.0, 0.0]])  # choices 1, 2, 0
    result = coupled_accept(torch.tensor([[1, 2]]), logits, SAMPLE, noise)
    assert result.num_accepted.tolist() == [2] and result.next_token.tolist() == [0]
    result = coupled_accept(torch.tensor([[1, 3]]), logits, SAMPLE, noise)
    assert result.num_accepted.tolist() == [1] and result.next_token.tolist() == [2]
    # greedy: the plain greedy rule
    greedy_logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert coupled_accept(torch.tensor([[1]]), greedy_logits, GREEDY, noise[:2, :2]) == greedy_accept(
        torch.tensor([[1]]), greedy_logits)
