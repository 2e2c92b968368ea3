"""``NGramDrafter`` and its matcher: longest suffix first, most recent occurrence, periodic copy, memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evcascade.decoding.drafters import DraftContext
from evcascade.decoding.ngram import NGramDrafter, find_continuation
from evcascade.errors import InputError


def cont(sequence, k, max_ngram=3, min_ngram=1, memory=()):
    return find_continuation(np.array(sequence, dtype=np.int64), k, max_ngram, min_ngram,
                             [np.array(m, dtype=np.int64) for m in memory]).tolist()


def test_longest_suffix_wins_over_a_more_recent_shorter_one():
    # suffix [1, 2] occurred once (followed by 7); [2] alone occurred later (followed by 9)
    assert cont([1, 2, 7, 5, 2, 9, 4, 1, 2], k=2) == [7, 5]


def test_most_recent_occurrence_of_the_same_length():
    assert cont([3, 4, 8, 3, 4, 6, 0, 3, 4], k=1, max_ngram=2) == [6]


def test_periodic_pattern_continues_past_the_end():
    # the only earlier [5, 6] is followed by "5 6", which the copy extends as the pattern repeats
    assert cont([5, 6, 5, 6], k=5, max_ngram=2) == [5, 6, 5, 6, 5]
    assert cont([7, 7], k=3) == [7, 7, 7]


def test_no_match_and_min_ngram():
    assert cont([1, 2, 3, 4], k=3) == []
    assert cont([1, 9, 2, 9], k=2, min_ngram=2) == []  # only a 1-gram recurs
    assert cont([1, 9, 2, 9], k=2, min_ngram=1) == [2, 9]
    assert cont([], k=2) == [] and cont([4], k=2) == []


def test_memory_is_searched_after_the_sequence_in_the_given_order():
    assert cont([1, 2], k=3, memory=[[2, 5, 6, 7], [2, 8]]) == [5, 6, 7]
    assert cont([1, 2], k=3, memory=[[2, 8], [2, 5, 6, 7]]) == [8]  # the memory is not extended past its end
    assert cont([2, 3, 2], k=1, memory=[[2, 9]]) == [3]  # the current sequence first
    assert cont([1, 2], k=2, max_ngram=2, memory=[[0, 2, 4], [1, 2, 6]]) == [6]  # longer suffix in older memory


def test_drafter_uses_prompt_and_answer_and_keeps_batch_dims():
    drafter = NGramDrafter(max_ngram=3)
    drafter.begin(DraftContext(prompt_ids=torch.tensor([[10, 11, 12, 13, 14]])))
    draft = drafter.propose(torch.tensor([[11, 12]]), k=3)
    assert draft.token_ids.tolist() == [[13, 14, 11]] and draft.probs is None
    assert drafter.propose(torch.tensor([[99]]), k=3).token_ids.shape == (1, 0)
    assert drafter.propose(torch.tensor([[11, 12]]), k=0).token_ids.shape == (1, 0)


def test_drafter_remembers_earlier_answers():
    drafter = NGramDrafter(max_ngram=2, memory_size=2)
    drafter.begin(DraftContext(prompt_ids=torch.tensor([[1, 2]])))
    drafter.end(torch.tensor([[30, 31, 32, 33]]))
    drafter.begin(DraftContext(prompt_ids=torch.tensor([[1, 2]])))
    assert drafter.propose(torch.tensor([[30, 31]]), k=2).token_ids.tolist() == [[32, 33]]
    drafter.remember([40, 41])
    drafter.end(torch.tensor([[50, 51]]))
    assert len(drafter.memory) == 2  # bounded: the oldest answer is gone
    assert drafter.propose(torch.tensor([[30, 31]]), k=2).token_ids.shape == (1, 0)
    forgetful = NGramDrafter(remember_answers=False)
    forgetful.end(torch.tensor([[1, 2]]))
    assert len(forgetful.memory) == 0


def test_drafter_does_not_touch_its_inputs():
    prompt, generated = torch.tensor([[5, 6, 5]]), torch.tensor([[6]])
    drafter = NGramDrafter()
    drafter.begin(DraftContext(prompt_ids=prompt))
    drafter.propose(generated, k=4)
    assert prompt.tolist() == [[5, 6, 5]] and generated.tolist() == [[6]]


@pytest.mark.parametrize("bad,match", [(dict(min_ngram=0), "min_ngram"), (dict(max_ngram=1, min_ngram=2), "max_ngram"),
                                       (dict(memory_size=-1), "memory_size")])
def test_bad_settings(bad, match):
    with pytest.raises(InputError, match=match):
        NGramDrafter(**bad)


def test_propose_before_begin():
    with pytest.raises(InputError, match="begin"):
        NGramDrafter().propose(torch.tensor([[1]]), 2)
