"""``DecodeStats``: counts by position, derived figures, JSON and summary; and what a real run records."""

from __future__ import annotations

import json

import pytest
import torch

from evcascade.decoding.drafters import DraftContext
from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
from evcascade.decoding.model_drafter import ModelDrafter
from evcascade.decoding.ngram import NGramDrafter
from evcascade.decoding.stats import DecodeStats, LevelStats
from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest
from evcascade.models.tiny import tiny_llama


def test_level_record_by_position():
    level = LevelStats("lm")
    level.record(0, 3, 2)
    level.record(2, 2, 0)  # a horizontal segment at block positions 2..3
    level.record(1, 2, 2, inner=True)
    assert level.drafted_by_position == [1, 1, 2, 1] and level.accepted_by_position == [1, 1, 0, 0]
    assert level.inner_drafted_by_position == [0, 1, 1] and level.inner_accepted_by_position == [0, 1, 1]
    assert (level.drafted, level.accepted, level.acceptance_rate) == (5, 2, 0.4)
    assert LevelStats("idle").acceptance_rate == 0.0


def test_derived_figures_json_and_summary():
    stats = DecodeStats.for_levels(["ngram", "lm"])
    stats.levels[1].record(0, 4, 3)
    stats.levels[1].draft_s = 0.2
    stats.levels[0].draft_s = 0.05
    stats.num_tokens, stats.target_forwards, stats.steps = 12, 4, 3
    stats.vision_s, stats.prefill_s, stats.verify_s, stats.total_s = 0.1, 0.3, 0.25, 1.0
    stats.time_to_first_token_s, stats.stop_reason = 0.45, "eos"
    assert stats.tau == 3.0 and stats.tokens_per_s == 12.0
    assert stats.draft_s == pytest.approx(0.25) and stats.overhead_s == pytest.approx(0.1)
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["tau"] == 3.0 and data["levels"][1]["accepted_by_position"] == [1, 1, 1, 0]
    assert data["levels"][1]["acceptance_rate"] == 0.75 and data["overhead_s"] == pytest.approx(0.1)
    text = stats.summary()
    assert "12 tokens" in text and "tau 3.00" in text and "lm: accepted 3/4 (75%)" in text and "1/1 1/1 1/1 0/1" in text
    empty = DecodeStats.for_levels([])
    assert empty.tau == 0.0 and empty.tokens_per_s == 0.0 and "0 tokens" in empty.summary()


def test_stats_of_a_real_run_add_up():
    vocab = 60
    target = tiny_llama(vocab, seed=11)
    decoder = CascadeDecoder(CausalLMVerifier(target), [NGramDrafter(), ModelDrafter(tiny_llama(vocab, seed=12), name="lm")])
    prompt = torch.tensor([[1, 8, 9, 10, 8, 9]])
    result = decoder.generate(VerifyRequest(prompt), DraftContext(prompt),
                              GenerationOptions(max_new_tokens=20, eos_token_ids=(), adaptive=False, draft_k=3))
    stats = result.stats
    assert stats.num_tokens == result.token_ids.shape[1] == 20 and stats.stop_reason == "max_new_tokens"
    assert stats.target_forwards == stats.steps + 1
    # every target forward adds one token of its own; the rest are accepted drafts (none cut: no stop inside)
    accepted = sum(level.accepted for level in stats.levels)
    assert accepted + stats.target_forwards >= stats.num_tokens
    # the static plan: lm drafts for the target, the n-gram only drafts for lm (inner)
    assert stats.levels[1].drafted > 0 and stats.levels[0].drafted == 0
    assert sum(stats.levels[0].inner_drafted_by_position) > 0
    assert stats.levels[1].calls > 0 and stats.levels[1].draft_s > 0
    assert stats.prefill_s > 0 and stats.verify_s > 0 and stats.vision_s == 0
    assert 0 < stats.time_to_first_token_s <= stats.total_s
    parts = stats.vision_s + stats.prefill_s + stats.verify_s + stats.draft_s + stats.overhead_s
    assert parts == pytest.approx(stats.total_s, rel=1e-6)
    assert 1.0 <= stats.tau <= 4.0


def test_token_sources_name_the_level_of_each_accepted_draft_and_the_target_otherwise():
    target = tiny_llama(vocab_size=30, seed=1)
    prompt = torch.tensor([[1, 5, 7, 9, 5, 7, 9, 5, 7]])
    reference = target.generate(prompt, do_sample=False, max_new_tokens=12, min_new_tokens=12)[:, prompt.shape[1]:]
    decoder = CascadeDecoder(CausalLMVerifier(target), [NGramDrafter(memory_size=0)])
    options = GenerationOptions(max_new_tokens=12, adaptive=False, draft_k=3, eos_token_ids=())
    result = decoder.generate(VerifyRequest(prompt), DraftContext(prompt), options)
    assert torch.equal(result.token_ids, reference)
    sources = result.token_sources
    assert len(sources) == result.token_ids.shape[1] and sources[0] == "target"
    assert set(sources) <= {"target", "ngram"}
    # each target forward contributes exactly one target token, the rest were accepted n-gram drafts
    assert sources.count("target") == result.stats.target_forwards
    assert sources.count("ngram") == result.stats.levels[0].accepted
