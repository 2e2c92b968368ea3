"""``NGramDrafter``: the bottom level of a cascade, Max-Gram / prompt lookup with a memory of past answers.

No model and no probabilities: it finds the longest suffix of ``prompt + answer`` (``max_ngram`` tokens down
to ``min_ngram``) that occurred before, and proposes what followed it (Saxena 2023, "Prompt Lookup Decoding";
Chen et al. 2023, "Cascade Speculative Drafting", whose statistical bottom level plays this role). Sources
are searched in order: the current sequence (the most recent earlier occurrence, continued LZ77-style, so a
repeating pattern continues past the end of the text), then the remembered answers, newest first.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np
import torch

from evcascade.decoding.drafters import Draft, DraftContext, Drafter
from evcascade.decoding.sampling import GREEDY, SamplingParams
from evcascade.errors import InputError


def find_continuation(sequence: np.ndarray, k: int, max_ngram: int, min_ngram: int,
                      memory: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Up to ``k`` ids continuing ``sequence [L]`` after the longest suffix (``max_ngram``..``min_ngram`` ids)
    seen earlier in ``sequence`` or in ``memory``; an empty array when no suffix recurs.

    >>> find_continuation(np.array([5, 6, 7, 8, 5, 6]), k=3, max_ngram=3, min_ngram=1).tolist()
    [7, 8, 5]
    >>> find_continuation(np.array([1, 2, 3]), k=2, max_ngram=2, min_ngram=1, memory=[np.array([3, 9, 4])]).tolist()
    [9, 4]
    """
    length = len(sequence)
    for n in range(min(max_ngram, length), min_ngram - 1, -1):
        suffix = sequence[length - n:]
        head = sequence[: length - 1]  # an occurrence inside it has at least one token after it
        hits = np.empty(0, dtype=np.int64)
        if len(head) >= n:
            windows = np.lib.stride_tricks.sliding_window_view(head, n)  # [L-n, n]
            hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n  # the most recent occurrence
            out = np.empty(k, dtype=sequence.dtype)
            # copy with overlap: out[i] = (sequence + out)[start + i], continuing a periodic pattern
            extended = np.concatenate([sequence, out])
            for i in range(k):
                extended[length + i] = extended[start + i]
            return extended[length:].copy()
        for remembered in memory:
            if len(remembered) <= n:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(remembered[:-1], n)  # [M-n, n]: a continuation exists
            hits = np.flatnonzero((windows == suffix).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + n
                return remembered[start: start + k].copy()
    return np.empty(0, dtype=sequence.dtype)


class NGramDrafter(Drafter):
    """Prompt lookup over prompt + answer so far + up to ``memory_size`` earlier answers (no probabilities).

    >>> drafter = NGramDrafter(max_ngram=2)
    >>> drafter.begin(DraftContext(prompt_ids=torch.tensor([[4, 5, 6, 7]])))
    >>> drafter.propose(torch.tensor([[4, 5]]), k=2).token_ids
    tensor([[6, 7]])
    """

    vocab_size = None
    can_review = False

    def __init__(self, *, max_ngram: int = 4, min_ngram: int = 1, memory_size: int = 16,
                 remember_answers: bool = True, name: str = "ngram") -> None:
        if isinstance(min_ngram, bool) or not isinstance(min_ngram, int) or min_ngram < 1:
            raise InputError(f"min_ngram must be an int >= 1, got {min_ngram!r}")
        if isinstance(max_ngram, bool) or not isinstance(max_ngram, int) or max_ngram < min_ngram:
            raise InputError(f"max_ngram must be an int >= min_ngram={min_ngram}, got {max_ngram!r}")
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 0:
            raise InputError(f"memory_size must be an int >= 0, got {memory_size!r}")
        self.name, self.max_ngram, self.min_ngram = name, max_ngram, min_ngram
        self.remember_answers = remember_answers
        self.memory: deque[np.ndarray] = deque(maxlen=memory_size)  # newest last
        self._prompt: np.ndarray | None = None  # [B, L]

    def begin(self, context: DraftContext, *, sampling: SamplingParams = GREEDY,
              generator: torch.Generator | None = None) -> None:
        self._prompt = context.prompt_ids.detach().cpu().numpy().astype(np.int64)

    def propose(self, generated: torch.LongTensor, k: int) -> Draft:
        if self._prompt is None:
            raise InputError(f"drafter {self.name!r}: propose() called before begin()")
        answer = generated.detach().cpu().numpy().astype(np.int64)  # [B, n]
        newest_first = list(reversed(self.memory))
        rows = [find_continuation(np.concatenate([prompt, row]), k, self.max_ngram, self.min_ngram, newest_first)
                for prompt, row in zip(self._prompt, answer)]
        width = min(len(row) for row in rows)  # rows of a batch share one length: cut to the shortest
        ids = torch.from_numpy(np.stack([row[:width] for row in rows]).astype(np.int64))  # [B, k']
        return Draft(token_ids=ids.to(generated.device), probs=None)

    def end(self, generated: torch.LongTensor) -> None:
        if self.remember_answers and self.memory.maxlen:
            for row in generated.detach().cpu().numpy().astype(np.int64):
                self.memory.append(row)

    def remember(self, answer_ids: Sequence[int]) -> None:
        """Add an answer (e.g. from an earlier session) to the memory searched after the current sequence."""
        self.memory.append(np.asarray(answer_ids, dtype=np.int64))
