"""Batched drafting: every row's draft is token for token what its own drafter's ``propose`` gives."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from evcascade.bench.replay import ReplayDrafter
from evcascade.decoding.batch import BatchDecoder, BatchRequest
from evcascade.decoding.batch_draft import propose_together
from evcascade.decoding.coupling import PositionNoise
from evcascade.decoding.drafters import DraftContext
from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
from evcascade.decoding.model_drafter import ModelDrafter
from evcascade.decoding.ngram import NGramDrafter
from evcascade.decoding.sampling import GREEDY, SamplingParams
from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest
from evcascade.models.tiny import tiny_llama

VOCAB, HIDDEN = 48, 32
COUPLED = SamplingParams(do_sample=True, temperature=0.7)


def prefix_of(context: DraftContext) -> torch.Tensor | None:
    """A request's own visual prefix (``extras["prefix"]``: embeddings ``[1, Np, D]``), or none."""
    return context.extras.get("prefix")


@pytest.fixture(scope="module")
def draft_model():
    return tiny_llama(vocab_size=VOCAB, seed=5)


class Request:
    """One row: a drafter drafting batched and its twin drafting alone, the same context, its own answer."""

    def __init__(self, model, rng: np.random.Generator, sampling: SamplingParams) -> None:
        prompt = torch.tensor([rng.integers(4, VOCAB, int(rng.integers(0, 9))).tolist()])
        extras = {}
        if rng.random() < 0.6:  # a visual prefix of its own length, or none
            extras["prefix"] = torch.randn(1, int(rng.integers(1, 6)), HIDDEN, generator=torch.Generator().manual_seed(
                int(rng.integers(0, 10**6))))
        if prompt.shape[1] == 0 and "prefix" not in extras:
            prompt = torch.tensor([[5]])
        noise = PositionNoise(int(rng.integers(0, 10**6)), VOCAB) if sampling.do_sample else None
        context = DraftContext(prompt, extras=extras, noise=noise)
        self.batched, self.alone = (ModelDrafter(model, prefix_fn=prefix_of, name="lm") for _ in range(2))
        for drafter in (self.batched, self.alone):
            drafter.begin(context, sampling=sampling)
        self.answer = torch.tensor([rng.integers(4, VOCAB, int(rng.integers(0, 4))).tolist()])  # [1, n]

    def advance(self, rng: np.random.Generator, proposal: torch.LongTensor) -> None:
        """The target keeps a random number of the drafts and appends its own token, as a verify step would."""
        kept = int(rng.integers(0, proposal.shape[1] + 1))
        next_token = torch.tensor([int(rng.integers(4, VOCAB))])
        for drafter in (self.batched, self.alone):
            drafter.accepted(kept, next_token)
        self.answer = torch.cat([self.answer, proposal[:, :kept], next_token[None]], dim=1)


def assert_same(requests, ks) -> list:
    batched = propose_together([r.batched for r in requests], [r.answer for r in requests], ks)
    for request, draft, k in zip(requests, batched, ks):
        alone = request.alone.propose(request.answer, k)
        assert draft.token_ids.tolist() == alone.token_ids.tolist()
        torch.testing.assert_close(draft.probs, alone.probs, atol=1e-5, rtol=1e-4)
        # the cache holds what the drafter alone would hold: the same ids, the same keys/values
        assert request.batched._ids.tolist() == request.alone._ids.tolist()
        for (k_b, v_b), (k_a, v_a) in zip(request.batched.cache_layers(), request.alone.cache_layers()):
            torch.testing.assert_close(k_b, k_a, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(v_b, v_a, atol=1e-5, rtol=1e-4)
    return batched


@pytest.mark.parametrize("sampling", [GREEDY, COUPLED], ids=["greedy", "coupled"])
@pytest.mark.parametrize("seed", range(3))
def test_rows_draft_what_they_would_alone_as_rows_join_and_leave(draft_model, sampling, seed):
    rng = np.random.default_rng(seed)
    requests = [Request(draft_model, rng, sampling) for _ in range(4)]
    for _ in range(6):
        ks = [int(rng.integers(1, 7)) for _ in requests]
        drafts = assert_same(requests, ks)
        for request, draft in zip(requests, drafts):
            request.advance(rng, draft.token_ids)
        if rng.random() < 0.5:  # one leaves, others join (their first proposal prefills inside the batch)
            requests.pop(int(rng.integers(0, len(requests))))
        requests += [Request(draft_model, rng, sampling) for _ in range(int(rng.integers(0, 3)))]


def test_one_forward_per_draft_position_for_all_rows(draft_model):
    rng = np.random.default_rng(7)
    requests = [Request(draft_model, rng, GREEDY) for _ in range(5)]
    assert_same(requests, [1] * 5)  # the first proposal prefills every row (one forward for all of them)
    calls = []
    handle = draft_model.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        propose_together([r.batched for r in requests], [r.answer for r in requests], [4, 2, 4, 3, 1])
    finally:
        handle.remove()
    assert len(calls) == 4  # catch-up + 3 fed drafts, not 4 + 2 + 4 + 3 + 1


def test_other_drafters_propose_alone_in_the_same_call(draft_model):
    rng = np.random.default_rng(3)
    requests = [Request(draft_model, rng, GREEDY) for _ in range(2)]
    other_model = tiny_llama(vocab_size=VOCAB, seed=9)
    other = ModelDrafter(other_model, name="other")
    ngram = NGramDrafter()
    for drafter in (other, ngram):
        drafter.begin(DraftContext(torch.tensor([[7, 8, 9, 7, 8]])))
    other_alone = ModelDrafter(other_model, name="other")
    other_alone.begin(DraftContext(torch.tensor([[7, 8, 9, 7, 8]])))
    answer = torch.tensor([[9, 7]])
    drafts = propose_together([requests[0].batched, other, ngram, requests[1].batched],
                              [requests[0].answer, answer, answer, requests[1].answer], [3, 3, 3, 2])
    assert drafts[1].token_ids.tolist() == other_alone.propose(answer, 3).token_ids.tolist()
    assert drafts[2].token_ids.tolist() == [[8, 9, 7]]  # the n-gram continues its match
    for request, draft, k in zip(requests, (drafts[0], drafts[3]), (3, 2)):
        assert draft.token_ids.tolist() == request.alone.propose(request.answer, k).token_ids.tolist()
    with pytest.raises(ValueError, match="one answer and one k per drafter"):
        propose_together([ngram], [answer, answer], [1])


def test_replay_drafters_draft_their_real_levels_together_and_stay_exact(draft_model):
    rng = np.random.default_rng(11)
    level = ModelDrafter(draft_model, name="lm")
    rows = []
    for _ in range(3):
        context = DraftContext(torch.tensor([rng.integers(4, VOCAB, 4).tolist()]))
        real_answer = rng.integers(4, VOCAB, 12).tolist()
        twin_answer = torch.tensor([rng.integers(4, VOCAB, 12).tolist()])
        pair = [ReplayDrafter(None, twin_answer, vocab_size=VOCAB, level=copy.copy(level), level_context=context,
                              level_answer=real_answer) for _ in range(2)]
        for replay in pair:
            replay.begin(DraftContext(torch.tensor([[1]])))
        rows.append((pair, twin_answer))
    calls = []
    handle = draft_model.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        for start in (0, 3, 5):
            before = len(calls)
            batched = propose_together([pair[0] for pair, _ in rows], [twin[:, :start] for _, twin in rows], [4] * 3)
            assert len(calls) - before == 4  # the three real levels: one forward per draft position
            for (pair, twin), draft in zip(rows, batched):
                assert draft.token_ids.tolist() == pair[1].propose(twin[:, :start], 4).token_ids.tolist()
                for replay in pair:
                    replay.accepted(1, torch.tensor([0]))
    finally:
        handle.remove()


@pytest.mark.parametrize("seed", range(2))
def test_batched_decoding_with_prefix_drafters_is_lossless(draft_model, seed):
    """Rows with visual prefixes, greedy and coupled, through the decoder: each answer is the target's own."""
    verifier = CausalLMVerifier(tiny_llama(vocab_size=VOCAB, seed=11))
    rng = np.random.default_rng(50 + seed)
    items = []
    for _ in range(5):
        prompt = torch.tensor([rng.integers(4, VOCAB, int(rng.integers(1, 8))).tolist()])
        extras = {"prefix": torch.randn(1, int(rng.integers(1, 5)), HIDDEN)} if rng.random() < 0.7 else {}
        options = GenerationOptions(max_new_tokens=int(rng.integers(1, 20)), draft_k=int(rng.integers(1, 6)),
                                    do_sample=bool(rng.integers(0, 2)), temperature=0.8,
                                    seed=int(rng.integers(0, 1000)), eos_token_ids=())
        items.append(BatchRequest(VerifyRequest(prompt), DraftContext(prompt, extras=extras), options))
    level = ModelDrafter(draft_model, prefix_fn=prefix_of, name="lm")
    results = BatchDecoder(verifier, [level]).run(items)
    for item, result in zip(items, results):
        alone = CascadeDecoder(verifier, [level]).generate(item.request, item.context, item.options)
        assert result.token_ids == alone.token_ids[0].tolist()
        target_only = CascadeDecoder(verifier, []).generate(
            item.request, item.context, GenerationOptions(**{**item.options.__dict__, "draft_k": 0}))
        assert result.token_ids == target_only.token_ids[0].tolist()


def test_the_decoder_drafts_its_rows_together(draft_model):
    """Every ``BatchDecoder.step`` costs the rows' shared drafter at most k forwards, however many rows draft."""
    verifier = CausalLMVerifier(tiny_llama(vocab_size=VOCAB, seed=11))
    options = GenerationOptions(max_new_tokens=10, draft_k=4, eos_token_ids=())
    items = [BatchRequest(VerifyRequest(torch.tensor([prompt])), DraftContext(torch.tensor([prompt])), options)
             for prompt in ([5, 6, 7], [9], [11, 12, 13, 14, 15], [20, 21])]
    decoder = BatchDecoder(verifier, [ModelDrafter(draft_model, name="lm")])
    for item in items:
        assert decoder.add(item) is None
    calls = []
    handle = draft_model.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        while decoder.rows:
            before = len(calls)
            decoder.step()
            assert len(calls) - before <= 4  # row by row: up to 4 per drafting row
    finally:
        handle.remove()
    assert calls
