"""Provisional answers: the best drafting level's own greedy answer, delivered before the target has spoken.

An event drafter can say "the circle is moving right" a few milliseconds after the question, long before the
target verifies anything. A robot may act on that provisional answer where being wrong is cheap, and wait for
the verified answer (the target's own, lossless) otherwise. This module holds the pure pieces:

- ``provisional_level(levels)``: which level drafts it (the most informed model level: the last one that can
  review, i.e. the top of the cascade; an n-gram only copies and cannot answer from nothing);
- ``draft_answer(level, context, stopper)``: that level's greedy answer, in blocks, cut at the first stop
  (EOS / max_new_tokens / stop strings) exactly as the target's answer is cut (``StopChecker``);
- ``mixed_answer(levels, weights, context, stopper)``: opt-in, several model levels' greedy answer together
  (their log-probabilities weighted and summed: an events-only level reads motion, an events + frame level colour);
- ``first_difference(provisional, verified)``: where the two answers first differ, in tokens and characters.

``ProvisionalDrafting`` drafts it on a thread of its own with its own copy of the level (``drafter_copy``: the same
weights, its own KV cache and per-clip memos), so the verified decode starts at once instead of after it. The
provisional answer never enters the verified one: the cascade decodes it losslessly, as always.
"""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch

from evcascade.decoding.drafters import DraftContext, Drafter
from evcascade.decoding.stopping import StopChecker
from evcascade.errors import InputError


@dataclass(frozen=True)
class ProvisionalAnswer:
    """A drafting level's own answer, unverified. ``latency_s``: from the request's start to this answer.
    After verification (``confirmed`` is then True or False) ``first_difference_token`` /
    ``first_difference_char`` say where the verified answer first differs (None when equal)."""

    text: str
    token_ids: list[int]
    level: str
    latency_s: float
    draft_s: float
    """The level's own drafting time (its prefix, prefill and token steps)."""
    provisional: bool = True
    confirmed: bool | None = None
    """None until the verified answer exists; then whether it is token for token this answer."""
    first_difference_token: int | None = None
    first_difference_char: int | None = None

    def judged(self, verified_ids: Sequence[int], verified_text: str) -> "ProvisionalAnswer":
        """This answer with the verdict against the verified answer filled in."""
        token, char = first_difference(self.token_ids, verified_ids, self.text, verified_text)
        return replace(self, confirmed=token is None, first_difference_token=token, first_difference_char=char)

    def to_dict(self) -> dict:
        return {"text": self.text, "token_ids": list(self.token_ids), "level": self.level,
                "latency_s": self.latency_s, "draft_s": self.draft_s, "provisional": True,
                "confirmed": self.confirmed, "first_difference_token": self.first_difference_token,
                "first_difference_char": self.first_difference_char}


def provisional_level(levels: Sequence[Drafter], name: str | None = None) -> Drafter:
    """The level whose greedy answer is the provisional one: the level called ``name``, or by default the last (most
    informed) level that can review, i.e. a model level. Raises ``InputError`` for a cascade with none (an n-gram
    cannot answer alone) and for a ``name`` that is no model level of the cascade.

    >>> from evcascade.decoding.ngram import NGramDrafter
    >>> provisional_level([NGramDrafter()])
    Traceback (most recent call last):
    ...
    evcascade.errors.InputError: a provisional answer needs a model drafting level; this cascade has ['ngram']
    """
    models = [level for level in levels if level.can_review]
    if not models:
        raise InputError(f"a provisional answer needs a model drafting level; this cascade has "
                         f"{[level.name for level in levels]}")
    if name is None:
        return models[-1]
    named = [level for level in models if level.name == name]
    if not named:
        raise InputError(f"provisional level {name!r} is not a model level of this cascade; choose one of "
                         f"{[level.name for level in models]}")
    return named[0]


def draft_answer(level: Drafter, context: DraftContext, stopper: StopChecker, *, block: int = 4) -> list[int]:
    """``level``'s greedy answer to ``context``: proposals of ``block`` tokens until ``stopper`` ends it.

    Blocks of a few tokens keep the Python overhead per token small without drafting far past an EOS. A level
    that proposes nothing ends the answer there (a model level always proposes)."""
    if block < 1:
        raise InputError(f"block must be >= 1, got {block}")
    level.begin(context)
    prompt_ids = context.prompt_ids
    generated = prompt_ids.new_zeros(1, 0)  # [1, n]
    while True:
        room = stopper.max_new_tokens - generated.shape[1]
        proposal = level.propose(generated, min(block, room)).token_ids.to(generated.device)  # [1, <= block]
        if proposal.shape[1] == 0:
            return generated[0].tolist()
        stop = stopper.first_stop(torch.cat([prompt_ids, generated], dim=1), generated.shape[1], proposal)
        if stop is not None:
            return torch.cat([generated, proposal[:, : stop[0]]], dim=1)[0].tolist()
        generated = torch.cat([generated, proposal], dim=1)


def mixed_answer(levels: Sequence[Drafter], weights: Sequence[float], context: DraftContext,
                 stopper: StopChecker) -> list[int]:
    """The greedy answer of several model levels together: each token maximises ``sum_i weights[i] * log p_i``
    over the levels' next-token distributions (a weighted product of experts; e.g. an events-only level that reads
    motion and an events + frame level that sees colour). One token per step, so it costs each level a forward per
    token; cut at the first stop like ``draft_answer``."""
    if len(levels) != len(weights) or not levels or any(not level.can_review for level in levels):
        raise InputError(f"mixed_answer needs one weight per model level, got {len(weights)} weights for "
                         f"{[level.name for level in levels]}")
    for level in levels:
        level.begin(context)
    prompt_ids = context.prompt_ids
    generated = prompt_ids.new_zeros(1, 0)  # [1, n]
    while generated.shape[1] < stopper.max_new_tokens:
        scores = None
        for level, weight in zip(levels, weights):
            logits = level.review(generated, generated[:, :0])[:, -1].float()  # [1, V_level]
            log_probs = weight * torch.log_softmax(logits, dim=-1)
            width = log_probs.shape[-1] if scores is None else min(scores.shape[-1], log_probs.shape[-1])
            scores = log_probs[:, :width] if scores is None else scores[:, :width] + log_probs[:, :width]
        token = scores.argmax(dim=-1, keepdim=True).to(generated.device)  # [1, 1]
        stop = stopper.first_stop(torch.cat([prompt_ids, generated], dim=1), generated.shape[1], token)
        if stop is not None:
            return torch.cat([generated, token[:, : stop[0]]], dim=1)[0].tolist()
        generated = torch.cat([generated, token], dim=1)
    return generated[0].tolist()


def timed_draft_answer(level: Drafter | Sequence[Drafter], context: DraftContext, stopper: StopChecker, tokenizer, *,
                       started_s: float, block: int = 4, weights: Sequence[float] = ()) -> ProvisionalAnswer:
    """``draft_answer`` (or ``mixed_answer`` of a list of levels and their ``weights``) with its text and timings:
    ``latency_s`` counts from ``started_s`` (a ``perf_counter``)."""
    began = time.perf_counter()
    if isinstance(level, Drafter):
        ids, name = draft_answer(level, context, stopper, block=block), level.name
    else:
        ids = mixed_answer(level, weights, context, stopper)
        name = "+".join(lv.name if w == 1 else f"{w:g}*{lv.name}" for lv, w in zip(level, weights))
    done = time.perf_counter()
    text = tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else ""
    return ProvisionalAnswer(text, ids, name, done - started_s, done - began)


def drafter_copy(level: Drafter) -> Drafter:
    """``level`` for another thread: the same (frozen) weights, its own cache and its own per-clip memos (an
    ``EventDrafterPrefix`` memoises the last clip's features; sharing it across threads would race)."""
    twin = copy.copy(level)
    prefix = getattr(level, "prefix_fn", None)
    if prefix is not None and callable(getattr(prefix, "clear", None)):
        twin.prefix_fn = copy.copy(prefix)
        twin.prefix_fn.clear()
    return twin


class ProvisionalDrafting:
    """Provisional answers drafted off the caller's thread by a copy of ``level`` (``drafter_copy``), so the verified
    decode on the caller's (or the batch scheduler's) thread does not wait for them. Requests share the copy one at
    a time (its cache is one request's state); each runs on a daemon thread of its own. ``mix``: other model levels
    and their weights drafting together with ``level`` (``mixed_answer``); empty: ``level`` alone."""

    def __init__(self, level: Drafter, tokenizer, mix: Sequence[tuple[Drafter, float]] = ()) -> None:
        self.source, self.tokenizer = (level, *(other for other, _ in mix)), tokenizer
        self.level: Drafter | list[Drafter] = drafter_copy(level)
        self.weights = (1.0, *(float(weight) for _, weight in mix))
        if mix:
            self.level = [self.level, *(drafter_copy(other) for other, _ in mix)]
        self._lock = threading.Lock()

    def start(self, context: DraftContext, stopper: StopChecker, *, started_s: float,
              on_answer: Callable[[ProvisionalAnswer], Any] | None = None, block: int = 4) -> "Future[ProvisionalAnswer]":
        """Draft on a new thread; the future resolves to the `ProvisionalAnswer` after ``on_answer(answer)`` (called
        on that thread) returns, or to the error either raised."""
        future: Future = Future()

        def work() -> None:
            try:
                with self._lock:
                    early = timed_draft_answer(self.level, context, stopper, self.tokenizer, started_s=started_s,
                                               block=block, weights=self.weights)
                if on_answer is not None:
                    on_answer(early)
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(early)

        threading.Thread(target=work, daemon=True, name="evcascade-provisional").start()
        return future


def first_difference(provisional_ids: Sequence[int], verified_ids: Sequence[int], provisional_text: str = "",
                     verified_text: str = "") -> tuple[int | None, int | None]:
    """(first token index, first character index) where two answers differ; (None, None) when identical.
    A shorter answer that is a prefix of the other differs at its own length.

    >>> first_difference([5, 6, 7], [5, 6, 8], "a b c", "a b d")
    (2, 4)
    >>> first_difference([5, 6], [5, 6])
    (None, None)
    """
    provisional_ids, verified_ids = list(provisional_ids), list(verified_ids)
    if provisional_ids == verified_ids:
        return None, None
    token = next((i for i, (a, b) in enumerate(zip(provisional_ids, verified_ids)) if a != b),
                 min(len(provisional_ids), len(verified_ids)))
    if provisional_text == verified_text:
        return token, None
    char = next((i for i, (a, b) in enumerate(zip(provisional_text, verified_text)) if a != b),
                min(len(provisional_text), len(verified_text)))
    return token, char
