"""``ReplayDrafter``: a recorded accept/reject pattern replayed against another target, at a real level's cost.

Why a replay is exact under greedy verification. The target accepts a block of drafts up to the first draft that
differs from its own greedy token. A level drafting from position s proposes, at each position p >= s, its
greedy token given everything before p; while its drafts match the target's answer ``y``, "everything before
p" *is* ``y[:p]``. So whether the block keeps position p is decided by one bit per position, the teacher-forced
hit ``hit[p] = (level's token after y[:p]) == y[p]``: a block from s keeps exactly the drafts before its first
miss. (A level that reviews another's drafts in a vertical cascade keeps only tokens equal to its own greedy
ones, so the same bit decides it too.) ``teacher_forced_hits`` computes these bits for a level and an answer.

The bits are exact for a model level. A level whose block is more than its one-token proposals is not: the
n-gram continues the match it found at s (it does not search again at s+1) and may propose fewer than k tokens,
or none. So ``ReplayDrafter`` has two modes:

- bits (``hits``): proposes ``z[p]`` where ``hit[p]`` and a wrong id where not, ``k`` tokens; the real level
  drafts ``k`` tokens after the twin's sequence alongside, to pay its cost;
- live (``level_answer`` = the real answer ``y``): the real level proposes after ``y[:s]`` exactly as it would
  have in the real run (same memory, same context), which pays its cost *and* gives the block's outcome:
  the replay proposes as many tokens as it did, ``z`` over the prefix that matched ``y`` and wrong ids after.
  Exact for every level under greedy verification; the benchmark uses this mode.

Either way the twin (whose own answer ``z`` is unrelated) accepts exactly what the real target accepted from
the real level. In batched verification the real levels of all rows draft together (``level_call``, run by
``decoding/batch_draft.py``): each level's block is its own ``propose``'s, so the replay stays exact and the
twin's rows pay batched drafting as the real cascade's do. It is the deterministic sibling of ``OracleDrafter``
(``bench/oracle.py``), which draws the bits at random with a set probability.
"""

from __future__ import annotations

from typing import Sequence

import torch

from evcascade.bench.oracle import OracleDrafter
from evcascade.decoding.batch_draft import LevelCall
from evcascade.decoding.drafters import Draft, DraftContext, Drafter
from evcascade.errors import InputError


def teacher_forced_hits(level: Drafter, context: DraftContext, answer_ids: Sequence[int]) -> list[bool]:
    """Per answer position p, whether ``level``'s greedy proposal after ``prompt + answer[:p]`` is ``answer[p]``.

    A level that can review (a ``ModelDrafter``) scores the whole answer in one forward (row p of its logits
    follows ``answer[:p]``); any other level (the n-gram) proposes one token per position. ``level.begin`` is
    called with ``context``, so an n-gram level searches the memory it holds now.

    >>> from evcascade.decoding.ngram import NGramDrafter
    >>> teacher_forced_hits(NGramDrafter(), DraftContext(torch.tensor([[7, 8, 9]])), [7, 8, 9, 4])
    [False, True, True, False]
    """
    answer = torch.tensor([list(answer_ids)], dtype=torch.long)  # [1, n]
    num_tokens = answer.shape[1]
    if num_tokens == 0:
        return []
    level.begin(context)
    if level.can_review:
        empty = answer[:, :0]  # [1, 0]
        logits = level.review(empty, answer.to(level.device))  # [1, n+1, V]: row p follows answer[:p]
        greedy = logits[0, :num_tokens].argmax(dim=-1).cpu()  # [n]
        return (greedy == answer[0]).tolist()
    hits = []
    for position in range(num_tokens):
        proposal = level.propose(answer[:, :position], 1).token_ids  # [1, <= 1]
        hits.append(proposal.shape[1] == 1 and int(proposal[0, 0]) == int(answer[0, position]))
    return hits


class ReplayDrafter(OracleDrafter):
    """Proposes ``reference[p]`` where ``hits[p]`` and ``(reference[p] + 1) % vocab_size`` where not; ``level``
    (the real drafter whose pattern this is) drafts alongside to pay its real cost, with ``level_context``.

    >>> replay = ReplayDrafter([True, True, False, True], torch.tensor([[5, 6, 7, 8]]), vocab_size=10)
    >>> replay.begin(DraftContext(torch.tensor([[1, 2]])))
    >>> replay.propose(torch.tensor([[5]]), k=3).token_ids  # positions 1, 2, 3: hit, miss, hit
    tensor([[6, 8, 8]])
    """

    def __init__(self, hits: Sequence[bool] | None, reference_ids: torch.LongTensor, *, vocab_size: int,
                 level: Drafter | None = None, level_context: DraftContext | None = None,
                 level_answer: Sequence[int] | None = None, name: str | None = None) -> None:
        super().__init__(reference_ids, 1.0, vocab_size=vocab_size, cost_model=level,
                         name=name or (level.name if level is not None else "replay"))
        if level_answer is not None:
            if level is None or len(level_answer) > len(self.reference):
                raise InputError(f"live replay needs the level and its real answer of at most {len(self.reference)} "
                                 f"tokens (the twin's length), got {len(level_answer)} tokens")
        elif hits is None or len(hits) != len(self.reference):
            raise InputError(f"hits must give one bit per reference token ({len(self.reference)}), "
                             f"got {None if hits is None else len(hits)}")
        self.hits = None if hits is None else [bool(hit) for hit in hits]
        self.level_context = level_context
        self.prior_acceptance = getattr(level, "prior_acceptance", None)  # the policy starts where the real one did
        self.level_answer = None if level_answer is None else torch.tensor([list(level_answer)], dtype=torch.long)

    def begin(self, context: DraftContext, **kwargs) -> None:
        # the real level drafts from its own request (its events, its video), not the twin's
        super().begin(self.level_context if self.level_context is not None else context, **kwargs)

    def propose(self, generated: torch.LongTensor, k: int) -> Draft:
        call = self.level_call(generated, k)
        if call is None:
            return self._block(generated, self._hit_bits(generated.shape[1], k))
        return call.finish(call.level.propose(call.generated, call.k))

    def level_call(self, generated: torch.LongTensor, k: int) -> LevelCall | None:
        """The real level's part of a proposal (``batch_draft.LevelCall``: batched verification runs it with the
        other rows' levels, one forward per position) and how its draft becomes the replay's; None without one."""
        if self.cost_model is None:
            return None
        start = generated.shape[1]
        if self.level_answer is not None:
            real = self.level_answer[:, :start].to(generated.device)  # [1, s] what the real level saw here

            def live(level_draft: Draft) -> Draft:  # its real block, at its real cost, gives the bits
                proposal = level_draft.token_ids[0].tolist()
                truth = self.level_answer[0, start: start + len(proposal)].tolist()
                bits = [p == t for p, t in zip(proposal, truth)] + [False] * (len(proposal) - len(truth))
                return self._block(generated, bits)  # [1, k']

            return LevelCall(self.cost_model, real, k, live)
        # the real cost of drafting k tokens; its tokens are discarded
        return LevelCall(self.cost_model, generated, k, lambda _: self._block(generated, self._hit_bits(start, k)))

    def _hit_bits(self, start: int, k: int) -> list[bool]:
        return [position < len(self.hits) and self.hits[position] for position in range(start, start + k)]
