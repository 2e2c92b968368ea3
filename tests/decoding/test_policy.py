"""Plans and the adaptive policy: EWIF by hand, the multi-level form, and which plan wins when."""

from __future__ import annotations

import pytest

from evcascade.decoding.policy import (AdaptivePolicy, DraftPlan, DraftSegment, LinearCost, RunningRate, ewif,
                                       expected_tokens, static_plan)


def test_ewif_by_hand():
    # a = 0.5, k = 2, c = 0.1: (1 + 0.5 + 0.25) / (0.2 + 1)
    assert ewif(0.5, 2, 0.1) == pytest.approx(1.75 / 1.2)
    assert ewif(0.8, 4, 0.05) == pytest.approx((1 - 0.8 ** 5) / (0.2 * 1.2))
    assert ewif(1.0, 3, 0.0) == pytest.approx(4.0)
    assert ewif(0.3, 0, 0.5) == 1.0


def test_expected_tokens_mixed_levels():
    assert expected_tokens([]) == 1.0
    assert expected_tokens([0.9, 0.9, 0.5]) == pytest.approx(1 + 0.9 + 0.81 + 0.405)


def test_static_plan_chains_reviewing_levels():
    assert static_plan([], 4) == DraftPlan()
    assert static_plan([False], 0) == DraftPlan()
    assert static_plan([False], 3) == DraftPlan((DraftSegment(0, 3),))
    # n-gram < lm1 < lm2: lm2 reviews lm1's drafts, lm1 reviews the n-gram's
    plan = static_plan([False, True, True], 4)
    assert plan == DraftPlan((DraftSegment(2, 4, DraftSegment(1, 4, DraftSegment(0, 4))),))
    assert plan.levels() == {0, 1, 2} and plan.num_tokens == 4
    # a level that cannot review breaks the chain below it
    assert static_plan([True, False, True], 2) == DraftPlan((DraftSegment(2, 2, DraftSegment(1, 2)),))


def test_running_rate_and_linear_cost():
    rate = RunningRate(prior=0.5, weight=2.0, decay=0.5)
    assert rate.value == 0.5 and not rate.observed
    rate.update(3, 3)
    assert rate.value == pytest.approx((0.5 + 3) / (1 + 3))
    cost = LinearCost(decay=0.9)
    for n in (1, 3, 5, 1, 5):
        cost.update(n, 0.010 + 0.002 * n)
    assert cost.predict(4) == pytest.approx(0.018)
    only_one_size = LinearCost(decay=0.9)
    only_one_size.update(4, 0.008)
    assert only_one_size.predict(2) == pytest.approx(0.004)


def trained(levels: list[tuple[bool, float, float]], verify_s=(0.1, 0.0), steps: int = 30) -> AdaptivePolicy:
    """A policy fed steady observations: per level (can_review, acceptance, seconds per drafted token)."""
    policy = AdaptivePolicy()
    policy.bind([can for can, _, _ in levels])
    for _ in range(steps):
        for n in (1, 6):
            policy.observe_verify(n, verify_s[0] + verify_s[1] * n)
        for index, (_, acceptance, seconds) in enumerate(levels):
            for n in (1, 4):
                policy.observe_draft(index, n, seconds * n)
            policy.observe_target(index, round(acceptance * 100), 100)
    return policy


def test_rate_of_one_level_is_the_ewif():
    policy = trained([(False, 0.7, 0.005)])
    plan = DraftPlan((DraftSegment(0, 4),))
    assert policy.cost_ratio(0) == pytest.approx(0.05, rel=1e-3)
    assert policy.expected_rate(plan) * policy.verify_seconds(1) == pytest.approx(ewif(0.7, 4, 0.05), rel=1e-3)


def test_good_cheap_level_drafts_long():
    plan = trained([(False, 0.9, 0.002)]).plan(8)
    assert plan.segments[0].level == 0 and plan.num_tokens >= 6


def test_a_level_that_does_not_pay_is_skipped():
    policy = trained([(False, 0.1, 0.06)])  # rarely right and 60% of a target forward per token
    assert policy.plan(5) == DraftPlan()
    assert policy.expected_rate(DraftPlan((DraftSegment(0, 1),))) < policy.expected_rate(DraftPlan())


def test_max_tokens_is_respected():
    policy = trained([(False, 0.95, 0.001)])
    assert policy.plan(0) == DraftPlan() and policy.plan(2).num_tokens <= 2


def test_horizontal_cheaper_level_fills_later_positions():
    # the n-gram is nearly free and decent; the LM is better but costs 10% of a target forward per token
    policy = trained([(False, 0.6, 0.00001), (True, 0.8, 0.01)], verify_s=(0.1, 0.0))
    policy.vertical = False
    plan = policy.plan(8)
    assert len(plan.segments) == 2 and plan.segments[0].level == 1 and plan.segments[1].level == 0


def test_vertical_review_of_a_cheap_helper():
    # an LM whose own drafting is costly, with a nearly free helper it agrees with 90% of the time
    policy = trained([(False, 0.5, 0.00001), (True, 0.85, 0.02)], verify_s=(0.1, 0.0))
    for _ in range(30):
        policy.observe_inner(0, 1, 90, 100)
        policy.observe_review(1, 3, 0.02)
    policy.horizontal = False
    segment = policy.plan(6).segments[0]
    assert segment.level == 1 and segment.helper is not None and segment.helper.level == 0
    alone = DraftSegment(1, segment.num_tokens)
    assert policy.segment_seconds(segment) < policy.segment_seconds(alone)


def test_skipped_level_is_explored_again():
    policy = trained([(False, 0.05, 0.05), (False, 0.9, 0.001)])
    policy.explore_every = 5
    plans = [policy.plan(4) for _ in range(12)]
    assert any(0 in plan.levels() for plan in plans)  # the poor level gets a short try
    assert sum(0 in plan.levels() for plan in plans) <= 2


def test_unobserved_inner_acceptance_falls_back_to_target_acceptance():
    policy = trained([(False, 0.4, 0.001), (True, 0.8, 0.01)])
    assert policy.inner_acceptance(0, 1) == pytest.approx(policy.acceptance(0))
    policy.observe_inner(0, 1, 10, 10)
    assert policy.inner_acceptance(0, 1) > policy.acceptance(0)


def test_bind_keeps_estimates_for_the_same_cascade():
    policy = trained([(False, 0.9, 0.001)])
    before = policy.acceptance(0)
    policy.bind([False])
    assert policy.acceptance(0) == before
    policy.bind([False, True])
    assert policy.acceptance(0) == pytest.approx(0.5)


def test_prefill_plan_drafts_longer_than_decoding_where_the_verify_cost_grows():
    """In the prefill a block rides along with the prompt: its length costs drafting time only, so the first
    block is longer than a decode block that pays a steep verify cost; a level that is never right drafts nothing."""
    policy = AdaptivePolicy()
    policy.bind([False, False])
    for _ in range(30):
        for n in range(1, 10):
            policy.observe_verify(n, 0.010 * (1 + n))  # T_v(n) grows fast with n (as on a busy CPU)
        policy.observe_draft(0, 4, 0.004)
        policy.observe_target(0, 0, 1)  # level 0 is never right
        policy.observe_draft(1, 4, 0.002)  # level 1: 0.5 ms a token, right 9 times in 10
        policy.observe_target(1, 9, 10)
    decode, first = policy.plan(8), policy.plan_prefill(8)
    assert {s.level for s in first.segments} == {1} and first.num_tokens == 8
    assert 0 < decode.num_tokens < first.num_tokens
    never = AdaptivePolicy()
    never.bind([False])
    for _ in range(30):
        never.observe_verify(1, 0.010), never.observe_draft(0, 4, 0.004), never.observe_target(0, 0, 1)
    assert never.plan_prefill(8).num_tokens == 0


# ---------------------------------------------------------------- token trees

def test_branch_gains_on_hand_values():
    from evcascade.decoding.policy import Branch, branch_gains

    gains = branch_gains([0.8, 0.5, 0.5], [Branch(1, 1, "alt"), Branch(3, 2, "spare")], {"alt": 0.5, "spare": 0.25})
    assert [(round(g, 4), i, j) for g, i, j in gains] == [(0.5, 0, 0), (0.1, 1, 0), (0.025, 1, 1)]
    assert branch_gains([0.9], [Branch(1, 3, "unknown")], {}) == [(0.0, 0, 0), (0.0, 0, 1), (0.0, 0, 2)]


def tree_policy(verify_cost_by_size):
    from evcascade.decoding.policy import AdaptivePolicy

    policy = AdaptivePolicy(explore_every=1000)
    policy.bind([False, True])
    for _ in range(5):
        for size, seconds in verify_cost_by_size.items():
            policy.observe_verify(size, seconds)
        policy.observe_target(1, 6, 10)
        policy.observe_branch("alt", 4, 10)
    return policy


def test_tree_follows_the_measured_verify_curve():
    from evcascade.decoding.policy import Branch

    branches = [Branch(1, 1, "alt"), Branch(2, 1, "alt"), Branch(3, 2, "spare")]
    # a CPU-like curve: every extra node costs half a forward: the chain stays the best tree
    steep = tree_policy({n: 0.1 * (1 + 0.5 * (n - 1)) for n in range(1, 12)})
    assert steep.tree_nodes([1, 1, 1], branches) == []
    # a GPU-like flat curve: the branches worth anything join, ancestors first
    flat = tree_policy({n: 0.1 for n in range(1, 12)})
    chosen = flat.tree_nodes([1, 1, 1], branches)
    assert (0, 0) in chosen and (1, 0) in chosen and chosen == sorted(chosen)
    assert all((i, j - 1) in chosen for i, j in chosen if j)
    # every explore_every decisions all candidates join once, so the rates keep being measured
    steep.explore_every = 2
    assert steep.tree_nodes([1, 1, 1], branches) == [(0, 0), (1, 0), (2, 0), (2, 1)]


def test_position_and_branch_observations():
    from evcascade.decoding.policy import AdaptivePolicy

    policy = AdaptivePolicy(prior_branch_rate=0.3)
    policy.bind([False, True])
    assert policy.branch_rate("alt") == 0.3 and policy.position_acceptance(1, 0) == policy.acceptance(1)
    for _ in range(30):
        policy.observe_positions(1, 0, 4, 2)  # positions 0, 1 kept, 2 rejected, 3 never judged
        policy.observe_branch("alt", 0, 1)
    assert policy.position_acceptance(1, 0) > 0.9 and policy.position_acceptance(1, 2) < 0.1
    assert policy.position_acceptance(1, 3) == policy.acceptance(1)  # not judged: the level's own estimate
    assert policy.branch_rate("alt") < 0.05
