"""Which levels draft, and how many tokens: static plans and an adaptive policy that maximises tokens per second.

Expected walltime improvement factor (EWIF, Leviathan et al. 2023): one level with per-token acceptance a,
drafting k tokens at cost c (a target forward = 1) gains, per target forward,

    EWIF(a, k, c) = E[tokens] / time = (1 - a^(k+1)) / ((1 - a)(k c + 1)),

since the step keeps draft j only if drafts 1..j were all kept (prob. a^j) and always adds the target's token.

Multi-level form used here. A plan fills the k block positions with contiguous segments, the best level first
(horizontal cascade: later positions from cheaper levels); position j drafted by level l_j. Then

    E[tokens] = 1 + sum_{j=1..k} prod_{i=1..j} a_{l_i}
    time      = T_v(k + 1) + sum_segments C_l(k_s)

with T_v(n) the measured time of a target forward over n tokens (a linear fit: on a CPU a k-token verify is
not free) and C_l(k) the time level l needs to draft k tokens: measured for autoregressive drafting, and for a
level L sped up vertically by a lower level H proposing m tokens per review round

    C_L(k) = max(1, k / E_H(m)) * (R_L(m) + C_H(m)),   E_H(m) = (1 - b^(m+1)) / (1 - b),

where b is H's acceptance under L's own check and R_L(m) the time of L's review forward (recursively, H may
have a helper). With T_v = 1 and one segment at C = k c this is the EWIF above. The policy picks the plan with
the highest E[tokens] / time; the empty plan (plain decoding, rate 1 / T_v(1)) competes too, so a level that
does not pay for itself is left out. The first block, judged by the prefill itself (``plan_prefill``), is scored
by the decode time it saves instead: there its length costs drafting time only. Acceptances are exponential moving averages of successes / trials; a
level left out for ``explore_every`` steps is tried once with the longest draft allowed, so its acceptance
estimate can recover and the verify-cost fit sees the whole range of lengths.

Token trees (``decoding/tree.py``). Once a step's chain is drafted, free or cheap branches may join it: top-2
alternatives where a drafter was unsure, a lower level's drafts that the level above it rejected, a cheap
level's own chain. A branch node n is on the accepted path with probability ``P(parent reached) * r_kind``,
where P(parent reached) is the product of the chain's measured per-position acceptances above it and ``r_kind``
the measured rate at which that kind of node is accepted once its parent is reached. ``tree_nodes`` adds branch
nodes in order of that gain while ``E[tokens] / (T_v(1 + k + m) + drafting)`` grows, T_v the measured verify
cost per size: where the curve is steep (a CPU) a chain stays the best tree, where it is flat (a GPU) trees grow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from evcascade.errors import InputError


@dataclass(frozen=True)
class DraftSegment:
    """``num_tokens`` block positions drafted by ``levels[level]``; with a ``helper``, the level reviews the
    helper's drafts (``helper.num_tokens`` per round) instead of drafting token by token (vertical cascade)."""

    level: int
    num_tokens: int
    helper: "DraftSegment | None" = None

    def levels(self) -> set[int]:
        return {self.level} | (self.helper.levels() if self.helper is not None else set())


@dataclass(frozen=True)
class DraftPlan:
    """The segments of one draft block, in block order (empty: no draft, one plain target step)."""

    segments: tuple[DraftSegment, ...] = ()

    @property
    def num_tokens(self) -> int:
        return sum(segment.num_tokens for segment in self.segments)

    def levels(self) -> set[int]:
        return set().union(*(segment.levels() for segment in self.segments)) if self.segments else set()


def ewif(acceptance: float, k: int, cost_ratio: float) -> float:
    """Expected tokens per unit time (a target forward = 1) of one level drafting ``k`` tokens.

    >>> round(ewif(0.8, 4, 0.05), 3)
    2.801
    """
    return expected_tokens([acceptance] * k) / (k * cost_ratio + 1)


def expected_tokens(acceptances: Sequence[float]) -> float:
    """Expected tokens a step yields when draft j is kept with probability ``acceptances[j]`` given the earlier
    ones were: ``1 + sum_j prod_{i<=j} a_i`` (the 1 is the target's own token).

    >>> expected_tokens([0.5, 0.5])
    1.75
    """
    total, survive = 1.0, 1.0
    for acceptance in acceptances:
        survive *= acceptance
        total += survive
    return total


def static_plan(can_review: Sequence[bool], num_tokens: int) -> DraftPlan:
    """The fixed cascade: the last (best) level drafts ``num_tokens``; while a level can review, the level below
    it drafts for it (``num_tokens`` per round). No levels or no tokens: the empty plan.

    >>> static_plan([False, True], 4)
    DraftPlan(segments=(DraftSegment(level=1, num_tokens=4, helper=DraftSegment(level=0, num_tokens=4, helper=None)),))
    """
    if not can_review or num_tokens <= 0:
        return DraftPlan()
    helper = None
    for level in range(len(can_review) - 1):  # build the chain bottom-up, cut where a level cannot review
        helper = DraftSegment(level, num_tokens, helper if can_review[level] else None)
    top = len(can_review) - 1
    return DraftPlan((DraftSegment(top, num_tokens, helper if can_review[top] else None),))


class RunningRate:
    """Successes / trials as exponential moving averages, starting from a prior worth ``weight`` trials."""

    def __init__(self, prior: float, weight: float, decay: float) -> None:
        self.successes, self.trials, self.decay = prior * weight, weight, decay
        self.observed = False

    def update(self, successes: float, trials: float) -> None:
        if trials <= 0:
            return
        self.successes = self.decay * self.successes + successes
        self.trials = self.decay * self.trials + trials
        self.observed = True

    @property
    def value(self) -> float:
        return self.successes / self.trials


class LinearCost:
    """Seconds of a call of size n: the moving average of calls of exactly that size once seen, otherwise
    ``intercept + slope * n`` fitted by exponentially weighted least squares.

    The per-size averages matter on a CPU, where a target forward's cost is step-shaped in n (measured, 467M
    Llama, 1 thread: 124 ms for 1 token, 215-320 ms for 2..9); a line through two sizes misjudges the rest.

    >>> cost = LinearCost(decay=0.9)
    >>> for n, seconds in [(1, 0.1), (3, 0.3), (9, 0.3)]:
    ...     cost.update(n, seconds)
    >>> cost.predict(9), round(cost.predict(5), 3)  # seen: its own average; unseen: the fitted line
    (0.3, 0.247)
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self._by_size: dict[float, float] = {}

    def update(self, n: float, seconds: float) -> None:
        seen = self._by_size.get(n)
        self._by_size[n] = seconds if seen is None else self.decay * seen + (1 - self.decay) * seconds
        d = self.decay
        self._w, self._x, self._y = d * self._w + 1, d * self._x + n, d * self._y + seconds
        self._xx, self._xy = d * self._xx + n * n, d * self._xy + n * seconds

    @property
    def observed(self) -> bool:
        return self._w > 0

    def predict(self, n: float) -> float:
        if n in self._by_size:
            return self._by_size[n]
        mean_x, mean_y = self._x / self._w, self._y / self._w
        var_x = self._xx / self._w - mean_x ** 2
        if var_x <= 1e-9 * max(1.0, mean_x ** 2):  # one call size seen so far: proportional to n
            return mean_y * n / mean_x if mean_x > 0 else mean_y
        slope = max(0.0, (self._xy / self._w - mean_x * mean_y) / var_x)
        intercept = max(0.0, mean_y - slope * mean_x)
        return intercept + slope * n


@dataclass(frozen=True)
class Branch:
    """Candidate tree nodes off a step's chain: ``num_tokens`` tokens whose first is a sibling of chain position
    ``depth`` (1-based: depth 1 branches at the root), proposed by a ``kind`` of source ("alt", "spare", "chain")."""

    depth: int
    num_tokens: int
    kind: str


def branch_gains(chain_acceptances: Sequence[float], branches: Sequence[Branch],
                 rates: dict[str, float]) -> list[tuple[float, int, int]]:
    """Per candidate branch node, ``(expected extra tokens, branch index, node index in the branch)``, best first:
    a node j of a branch at depth d gains ``prod_{i<d} a_i * r^(j+1)`` (its parent reached, it and the nodes
    before it in the branch accepted).

    >>> branch_gains([0.5, 0.5], [Branch(2, 2, "alt")], {"alt": 0.4})
    [(0.2, 0, 0), (0.08000000000000002, 0, 1)]
    """
    gains = []
    for index, branch in enumerate(branches):
        reach = 1.0
        for acceptance in chain_acceptances[: branch.depth - 1]:
            reach *= acceptance
        rate = rates.get(branch.kind, 0.0)
        for j in range(branch.num_tokens):
            gains.append((reach * rate ** (j + 1), index, j))
    return sorted(gains, key=lambda gain: (-gain[0], gain[1], gain[2]))


class AdaptivePolicy:
    """Chooses each step's ``DraftPlan`` from online acceptance and cost estimates (see the module docstring).

    Estimates persist across requests of one decoder, which is what lets a cascade settle on its best plan.
    The search runs every ``replan_every`` steps (per ``max_tokens``); between searches its plan is reused.

    >>> policy = AdaptivePolicy()
    >>> policy.bind([False, True])
    >>> for _ in range(20):
    ...     policy.observe_verify(1, 0.100); policy.observe_verify(5, 0.120)
    ...     policy.observe_draft(1, 4, 0.008); policy.observe_target(1, 9, 10)
    ...     policy.observe_draft(0, 4, 0.0001); policy.observe_target(0, 0, 1)
    >>> policy.plan(4).segments[0].level
    1
    """

    def __init__(self, *, decay: float = 0.9, prior_acceptance: float = 0.5, prior_weight: float = 2.0,
                 prior_cost_ratio: float = 0.1, explore_every: int = 32, replan_every: int = 4,
                 horizontal: bool = True, vertical: bool = True, prior_branch_rate: float = 0.25,
                 max_branch_nodes: int = 8) -> None:
        self.decay, self.prior_acceptance, self.prior_weight = decay, prior_acceptance, prior_weight
        self.prior_cost_ratio, self.explore_every = prior_cost_ratio, explore_every
        # the search costs ~1 ms in Python: reuse its answer for a few steps (estimates move slowly anyway)
        self.replan_every, self._plans, self._plan_calls = replan_every, {}, 0
        self.horizontal, self.vertical = horizontal, vertical
        self.prior_branch_rate, self.max_branch_nodes = prior_branch_rate, max_branch_nodes
        self.bind([])

    def bind(self, can_review: Sequence[bool], priors: Sequence[float | None] | None = None) -> None:
        """Attach to a cascade's levels (cheapest first), with per-level prior acceptances (None: the policy's
        ``prior_acceptance``); estimates restart if the number of levels changes."""
        if getattr(self, "can_review", None) is not None and len(self.can_review) == len(can_review):
            return
        self.can_review = list(can_review)
        count = len(can_review)
        priors = list(priors) if priors is not None else [None] * count
        if len(priors) != count:
            raise InputError(f"priors must give one value (or None) per level ({count}), got {len(priors)}")
        self._acceptance = [self._rate(prior) for prior in priors]
        self._inner = {(h, r): self._rate() for r in range(count) for h in range(r)}
        self._draft_cost = [LinearCost(self.decay) for _ in range(count)]
        self._review_cost = [LinearCost(self.decay) for _ in range(count)]
        self._verify_cost = LinearCost(self.decay)
        # a tree's forward (4-D mask, more nodes) is priced apart, so trees never distort the chains' cost curve
        self._tree_verify_cost = LinearCost(self.decay)
        self._idle_steps = [0] * count
        self._plans = {}
        self._positions: dict[tuple[int, int], RunningRate] = {}  # (level, block position) -> acceptance
        self._branch: dict[str, RunningRate] = {}  # branch kind -> acceptance once its parent is reached
        self._tree_steps = 0

    def _rate(self, prior: float | None = None) -> RunningRate:
        if prior is not None and not 0.0 <= float(prior) <= 1.0:
            raise InputError(f"a prior acceptance must lie in [0, 1], got {prior!r}")
        return RunningRate(self.prior_acceptance if prior is None else float(prior), self.prior_weight, self.decay)

    # -- observations ----------------------------------------------------------------------------------------

    def observe_verify(self, num_tokens: int, seconds: float, *, tree: bool = False) -> None:
        """A target forward over ``num_tokens`` positions (``tree``: a token tree's, with its mask) took ``seconds``."""
        (self._tree_verify_cost if tree else self._verify_cost).update(num_tokens, seconds)

    def observe_draft(self, level: int, num_tokens: int, seconds: float) -> None:
        """A ``propose`` call asked for ``num_tokens`` took ``seconds``."""
        self._draft_cost[level].update(num_tokens, seconds)

    def observe_review(self, level: int, num_candidates: int, seconds: float) -> None:
        self._review_cost[level].update(num_candidates + 1, seconds)

    def observe_target(self, level: int, successes: int, trials: int) -> None:
        """Of ``trials`` of the level's drafts the target judged, ``successes`` were kept (a shortfall in a
        proposal counts as a failed trial: it ends the block just as a rejection does)."""
        self._acceptance[level].update(successes, trials)

    def observe_inner(self, helper: int, reviewer: int, successes: int, trials: int) -> None:
        self._inner[(helper, reviewer)].update(successes, trials)

    def observe_positions(self, level: int, start: int, proposed: int, kept: int) -> None:
        """The level drafted block positions ``start .. start + proposed - 1``; the first ``kept`` were accepted and
        the target judged position ``start + kept`` (a rejection) when ``kept < proposed``."""
        for position in range(start, start + min(proposed, kept + 1)):
            rate = self._positions.setdefault((level, position), self._rate(self.acceptance(level)))
            rate.update(int(position < start + kept), 1)

    def observe_branch(self, kind: str, successes: int, trials: int) -> None:
        """Of ``trials`` branch nodes of ``kind`` whose parent was on the accepted path, ``successes`` were kept."""
        self._branch.setdefault(kind, self._rate(self.prior_branch_rate)).update(successes, trials)

    # -- estimates -------------------------------------------------------------------------------------------

    def acceptance(self, level: int) -> float:
        return self._acceptance[level].value

    def position_acceptance(self, level: int, position: int) -> float:
        """The level's measured acceptance at a block position (its overall one until observed there)."""
        rate = self._positions.get((level, position))
        return rate.value if rate is not None and rate.observed else self.acceptance(level)

    def branch_rate(self, kind: str) -> float:
        rate = self._branch.get(kind)
        return rate.value if rate is not None else self.prior_branch_rate

    def inner_acceptance(self, helper: int, reviewer: int) -> float:
        """The helper's acceptance by the reviewer; its acceptance by the target until it has been observed."""
        rate = self._inner[(helper, reviewer)]
        return rate.value if rate.observed else self.acceptance(helper)

    def verify_seconds(self, num_tokens: int) -> float:
        return self._verify_cost.predict(num_tokens) if self._verify_cost.observed else 1.0

    def tree_verify_seconds(self, num_nodes: int) -> float:
        """A tree forward's time: measured per size once trees ran, the chain's curve until then."""
        if self._tree_verify_cost.observed:
            return self._tree_verify_cost.predict(num_nodes)
        return self.verify_seconds(num_nodes)

    def draft_seconds(self, level: int, num_tokens: int) -> float:
        cost = self._draft_cost[level]
        if cost.observed:
            return cost.predict(num_tokens)
        return self.prior_cost_ratio * self.verify_seconds(1) * num_tokens

    def review_seconds(self, level: int, num_candidates: int) -> float:
        cost = self._review_cost[level]
        return cost.predict(num_candidates + 1) if cost.observed else self.draft_seconds(level, 1)

    def cost_ratio(self, level: int) -> float:
        """Seconds per drafted token of the level over seconds of a one-token target forward."""
        return self.draft_seconds(level, 1) / self.verify_seconds(1)

    def segment_seconds(self, segment: DraftSegment) -> float:
        """Expected time to draft ``segment`` (the C_l(k) of the module docstring)."""
        if segment.helper is None:
            return self.draft_seconds(segment.level, segment.num_tokens)
        helper = segment.helper
        per_round = expected_tokens([self.inner_acceptance(helper.level, segment.level)] * helper.num_tokens)
        rounds = max(1.0, segment.num_tokens / per_round)
        return rounds * (self.review_seconds(segment.level, helper.num_tokens) + self.segment_seconds(helper))

    def expected_rate(self, plan: DraftPlan) -> float:
        """Expected tokens per second of ``plan`` (per unit of ``verify_seconds`` before any measurement)."""
        acceptances = [self.acceptance(s.level) for s in plan.segments for _ in range(s.num_tokens)]
        seconds = self.verify_seconds(plan.num_tokens + 1) + sum(self.segment_seconds(s) for s in plan.segments)
        return expected_tokens(acceptances) / seconds

    # -- the choice ------------------------------------------------------------------------------------------

    def plan(self, max_tokens: int) -> DraftPlan:
        """The best plan drafting at most ``max_tokens`` tokens (see the module docstring)."""
        count = len(self.can_review)
        if max_tokens <= 0 or count == 0:
            return DraftPlan()
        self._idle_steps = [idle + 1 for idle in self._idle_steps]
        stale = max(range(count), key=lambda level: self._idle_steps[level])
        self._plan_calls += 1
        if self._plan_calls % max(1, self.replan_every) == 0:
            self._plans = {}
        if self._idle_steps[stale] > self.explore_every:
            # the longest draft: the verify-cost fit then spans every length it is asked about (on a CPU the cost
            # is step-shaped, T_v(2..9) ~ 2.5 T_v(1), and a 2-token try extrapolated 4x too steep a slope)
            chosen = DraftPlan((DraftSegment(stale, max_tokens),))
        else:
            if max_tokens not in self._plans:
                self._plans[max_tokens] = self._best_plan(max_tokens)
            chosen = self._plans[max_tokens]
        for level in chosen.levels():
            self._idle_steps[level] = 0
        return chosen

    def tree_nodes(self, chain_levels: Sequence[int], branches: Sequence[Branch],
                   drafting_seconds: float = 0.0) -> list[tuple[int, int]]:
        """Which candidate branch nodes join a step's chain (drafted by ``chain_levels``, one level per position):
        ``(branch index, node index)`` pairs, ancestors first; empty when the chain alone is the best tree.

        Every ``explore_every`` tree decisions all candidates (up to ``max_branch_nodes``) join once, so the
        branch rates and the verify cost of larger trees keep being measured.
        """
        if not branches or self.max_branch_nodes <= 0:
            return []
        chain = [self.position_acceptance(level, position) for position, level in enumerate(chain_levels)]
        rates = {branch.kind: self.branch_rate(branch.kind) for branch in branches}
        gains = branch_gains(chain, branches, rates)[: self.max_branch_nodes]
        self._tree_steps += 1
        if self._tree_steps % max(1, self.explore_every) == 0:
            return sorted((index, j) for _, index, j in gains)
        chain_tokens = expected_tokens(chain)
        base = 1 + len(chain)
        best_count, best_rate = 0, chain_tokens / (self.verify_seconds(base) + drafting_seconds)
        extra = 0.0
        for count, (gain, _, _) in enumerate(gains, start=1):
            extra += gain
            rate = (chain_tokens + extra) / (self.tree_verify_seconds(base + count) + drafting_seconds)
            if rate > best_rate:
                best_count, best_rate = count, rate
        return sorted((index, j) for _, index, j in gains[:best_count])

    def plan_prefill(self, max_tokens: int) -> DraftPlan:
        """The best first block, judged by the prefill's own forward (``draft_in_prefill``).

        There the block rides along with the prompt, so its length adds almost nothing to the target's time: a
        plan is worth the decode time it saves, ``(E[tokens] - 1) / R - C(plan)``, where R is the best decode
        plan's expected rate (tokens per second) and C the drafting time; the empty plan (the prefill's own one
        token) is worth 0. Longer blocks than in decoding pay here, most of all for short answers.
        """
        if max_tokens <= 0 or not self.can_review:
            return DraftPlan()
        key = ("prefill", max_tokens)
        if key not in self._plans:
            if max_tokens not in self._plans:
                self._plans[max_tokens] = self._best_plan(max_tokens)
            seconds_per_token = 1.0 / self.expected_rate(self._plans[max_tokens])  # the decode loop's, after it

            def saving(plan: DraftPlan) -> float:
                acceptances = [self.acceptance(s.level) for s in plan.segments for _ in range(s.num_tokens)]
                drafting = sum(self.segment_seconds(s) for s in plan.segments)
                return (expected_tokens(acceptances) - 1.0) * seconds_per_token - drafting

            self._plans[key] = self._best_plan(max_tokens, saving)
        chosen = self._plans[key]
        for level in chosen.levels():
            self._idle_steps[level] = 0
        return chosen

    def _best_plan(self, max_tokens: int, score=None) -> DraftPlan:
        """The plan of at most ``max_tokens`` drafts with the highest ``score`` (default: ``expected_rate``)."""
        score = score or self.expected_rate
        memo: dict[tuple[int, int], DraftSegment] = {}
        best, best_score = DraftPlan(), score(DraftPlan())
        for level in range(len(self.can_review)):
            for k in range(1, max_tokens + 1):
                first = self._best_segment(level, k, memo)
                candidates = [DraftPlan((first,))]
                if self.horizontal:
                    candidates += [DraftPlan((first, self._best_segment(cheaper, k2, memo)))
                                   for cheaper in range(level) for k2 in range(1, max_tokens - k + 1)]
                for plan in candidates:
                    value = score(plan)
                    if value > best_score:
                        best, best_score = plan, value
        return best

    def _best_segment(self, level: int, num_tokens: int, memo: dict[tuple[int, int], DraftSegment]) -> DraftSegment:
        """The cheapest way for ``level`` to draft ``num_tokens``: alone, or reviewing a lower level's drafts."""
        if (level, num_tokens) in memo:
            return memo[(level, num_tokens)]
        best = DraftSegment(level, num_tokens)
        best_seconds = self.segment_seconds(best)
        if self.vertical and self.can_review[level]:
            for helper_level in range(level):
                for helper_tokens in range(1, num_tokens):
                    helper = self._best_segment(helper_level, helper_tokens, memo)
                    candidate = DraftSegment(level, num_tokens, helper)
                    seconds = self.segment_seconds(candidate)
                    if seconds < best_seconds:
                        best, best_seconds = candidate, seconds
        memo[(level, num_tokens)] = best
        return best
