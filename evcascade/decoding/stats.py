"""``DecodeStats``: what every answer carries about how it was made (acceptance, tau, where the time went).

Draft positions count from 0 inside the block the target verifies; a level drafting positions 3..5 of a
horizontal plan records them at 3..5. "inner" counts are a level's drafts reviewed by the level above it in a
vertical cascade (accepted = kept by that reviewer, not yet by the target).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def _bump(counts: list[int], position: int, amount: int = 1) -> None:
    if len(counts) <= position:
        counts.extend([0] * (position + 1 - len(counts)))
    counts[position] += amount


@dataclass
class LevelStats:
    """One drafter's record for one request."""

    name: str
    drafted_by_position: list[int] = field(default_factory=list)
    accepted_by_position: list[int] = field(default_factory=list)
    inner_drafted_by_position: list[int] = field(default_factory=list)
    inner_accepted_by_position: list[int] = field(default_factory=list)
    calls: int = 0
    """``propose`` / ``review`` calls."""
    draft_s: float = 0.0
    """Seconds inside this level's own calls (``begin``, ``propose``, ``review``), helpers excluded."""

    def record(self, first_position: int, num_drafted: int, num_accepted: int, *, inner: bool = False) -> None:
        """Drafts at positions ``first_position ..`` of which the first ``num_accepted`` were kept."""
        drafted = self.inner_drafted_by_position if inner else self.drafted_by_position
        accepted = self.inner_accepted_by_position if inner else self.accepted_by_position
        for i in range(num_drafted):
            _bump(drafted, first_position + i)
            _bump(accepted, first_position + i, int(i < num_accepted))

    @property
    def drafted(self) -> int:
        return sum(self.drafted_by_position)

    @property
    def accepted(self) -> int:
        return sum(self.accepted_by_position)

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted by the target (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0


@dataclass
class DecodeStats:
    """Counts and times of one ``CascadeDecoder.generate`` call (seconds, wall clock)."""

    levels: list[LevelStats]
    num_tokens: int = 0
    target_forwards: int = 0
    """Prefill plus one per verify call."""
    steps: int = 0
    """Draft-verify steps after the prefill."""
    vision_s: float = 0.0
    prefill_s: float = 0.0
    verify_s: float = 0.0
    total_s: float = 0.0
    time_to_first_token_s: float = 0.0
    stop_reason: str = ""
    """"eos", "stop_string", "max_new_tokens" or "context_full"."""
    acceptance: str = "lossless"
    """The final verification's rule, e.g. "lossless" or "token_v3(0.3)"."""
    sampling: str = "greedy"
    """How tokens were chosen: "greedy", "coupled" (Gumbel noise keyed by seed and position) or "speculative"."""
    seed: int | None = None
    """The request's seed (drawn when none was given) when sampling: passing it back replays the answer."""
    tree_steps: int = 0
    """Target forwards (the prefill's included) whose block was a branching token tree (the rest verified a chain)."""
    branch_nodes: int = 0
    """Draft nodes off the main chain verified in those steps (second choices, a lower level's rejected drafts);
    each is also counted in its level's drafted/accepted by position."""
    branch_accepted: int = 0
    """Answer tokens that came from such branches (tokens the chain alone would have lost)."""

    @classmethod
    def for_levels(cls, names: list[str]) -> "DecodeStats":
        return cls(levels=[LevelStats(name) for name in names])

    @property
    def draft_s(self) -> float:
        return sum(level.draft_s for level in self.levels)

    @property
    def overhead_s(self) -> float:
        """Everything but the vision tower, the target's forwards and the drafters' calls."""
        return max(0.0, self.total_s - self.vision_s - self.prefill_s - self.verify_s - self.draft_s)

    @property
    def tau(self) -> float:
        """Answer tokens per target forward (1.0 for plain decoding)."""
        return self.num_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.num_tokens / self.total_s if self.total_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, derived figures included."""
        out = asdict(self)
        for level, record in zip(self.levels, out["levels"]):
            record.update(drafted=level.drafted, accepted=level.accepted, acceptance_rate=level.acceptance_rate)
        out.update(draft_s=self.draft_s, overhead_s=self.overhead_s, tau=self.tau, tokens_per_s=self.tokens_per_s)
        return out

    def summary(self) -> str:
        """A few lines for a terminal."""
        lines = [
            f"{self.num_tokens} tokens in {self.total_s * 1e3:.1f} ms ({self.tokens_per_s:.1f} tok/s), "
            f"tau {self.tau:.2f} over {self.target_forwards} target forwards, first token {self.time_to_first_token_s * 1e3:.1f} ms, "
            f"stop: {self.stop_reason or '-'}",
            f"time ms: vision {self.vision_s * 1e3:.1f} | prefill {self.prefill_s * 1e3:.1f} | draft {self.draft_s * 1e3:.1f} | "
            f"verify {self.verify_s * 1e3:.1f} | overhead {self.overhead_s * 1e3:.1f}",
        ]
        if self.tree_steps:
            # tree_steps counts the prefill's forward too when its first block was a tree; steps does not
            lines.append(f"token trees: {self.tree_steps} of {self.target_forwards} target forwards, "
                         f"{self.branch_accepted} of {self.branch_nodes} branch nodes accepted")
        if self.acceptance != "lossless":
            lines.append(f"acceptance: {self.acceptance} (opt-in lossy: the answer may differ from the target's own)")
        for level in self.levels:
            by_position = " ".join(f"{a}/{d}" for a, d in zip(level.accepted_by_position, level.drafted_by_position))
            lines.append(f"  {level.name}: accepted {level.accepted}/{level.drafted} ({level.acceptance_rate:.0%}), "
                         f"{level.calls} calls, {level.draft_s * 1e3:.1f} ms; by position {by_position or '-'}")
        return "\n".join(lines)
