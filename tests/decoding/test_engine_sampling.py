"""Sampling through the cascade draws answers from the target's own distribution.

The target is a bigram table (token trees too) behind the ``Verifier`` interface (microseconds per forward, so thousands of runs
fit the test budget) with a 4-token vocabulary: the joint distribution of the first 3 answer tokens (64 cells)
is exact. Many cascade runs (one seed each) are compared with it by a chi-square test (cells with expected
count < 5 pooled) at false-alarm rate 1e-4; seeds are fixed, so the outcome is deterministic. The same samples
are also tested against a slightly different distribution, which the test must reject. Drafters: the n-gram
(point masses), a bigram drafter with probabilities that can review (vertical cascade), and a real tiny LM.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from evcascade.decoding.drafters import Draft, DraftContext, Drafter
from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
from evcascade.decoding.model_drafter import ModelDrafter
from evcascade.decoding.ngram import NGramDrafter
from evcascade.decoding.sampling import GREEDY, SamplingParams, probabilities, sample
from evcascade.decoding.verifier import Verifier, VerifyRequest
from evcascade.models.tiny import tiny_llama

V, NUM_TOKENS, RUNS, ALPHA = 4, 3, 1500, 1e-4
PROMPT = torch.tensor([[1, 3, 0, 3, 0, 3]])  # repeats, so the n-gram drafter proposes


def bigram_table(seed: int, scale: float) -> torch.Tensor:
    return torch.randn(V, V, generator=torch.Generator().manual_seed(seed)) * scale  # [V, V] logits by last token


class BigramVerifier(Verifier):
    """A target whose next-token logits depend on the last token only (same interface as the real verifiers)."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table, self.vocab_size, self.text_vocab_size = table, V, V
        self.eos_token_ids, self.device, self.dtype, self.max_positions = (), torch.device("cpu"), torch.float32, None
        self.timings, self._ids = {"vision": 0.0, "prefill": 0.0, "verify": 0.0}, []

    def prefill(self, request: VerifyRequest) -> torch.Tensor:
        self._ids = request.prompt_ids[0].tolist()
        return self.table[self._ids[-1]][None]  # [1, V]

    def verify(self, token_ids: torch.LongTensor) -> torch.Tensor:
        self._ids += token_ids[0].tolist()
        return self.table[token_ids]  # [1, n, V]

    def rollback(self, num_tokens: int) -> None:
        del self._ids[len(self._ids) - num_tokens:]

    supports_trees = True

    def verify_tree(self, token_ids, parents):  # a bigram's row depends on the node's own token only
        self._tree = (len(self._ids), token_ids[0].tolist(), parents)
        return self.table[token_ids]  # [1, n, V]

    def prefill_with_tree(self, request, token_ids, parents):
        self._ids = request.prompt_ids[0].tolist()[:-1]  # node 0 is the prompt's last token
        return self.verify_tree(token_ids, parents)

    def keep_tree_path(self, path):
        past, tokens, _ = self._tree
        self._ids += [tokens[0]] + [tokens[node] for node in path]

    @property
    def cache_length(self) -> int:
        return len(self._ids)


class BigramDrafter(Drafter):
    """A drafter with probabilities that can also review a lower level's drafts."""

    can_review, vocab_size = True, V

    def __init__(self, table: torch.Tensor, name: str = "bigram") -> None:
        self.table, self.name = table, name

    def begin(self, context, *, sampling=GREEDY, generator=None):
        self.prompt, self.sampling, self.generator = context.prompt_ids, sampling, generator

    def propose(self, generated, k):
        last, ids, dists = int(generated[0, -1]), [], []
        for _ in range(k):
            dist = probabilities(self.table[last][None], self.sampling)  # [1, V]
            last = int(sample(dist, self.generator))
            ids.append(last)
            dists.append(dist)
        return Draft(torch.tensor([ids]), torch.stack(dists, dim=1) if ids else None)

    def review(self, generated, candidate_ids):
        sequence = torch.cat([generated, candidate_ids], dim=1)
        return self.table[sequence[:, -(candidate_ids.shape[1] + 1):]]  # [1, m+1, V]


TARGET = bigram_table(0, 1.5)
DRAFT = bigram_table(1, 1.5) * 0.5 + TARGET * 0.5  # related to the target, not equal


def exact_joint(params: SamplingParams) -> torch.Tensor:
    """P(first NUM_TOKENS answer tokens), ``[V ** NUM_TOKENS]`` in lexicographic order, under ``params``."""
    step = probabilities(TARGET, params).double()  # [V, V]: row = last token
    out = []
    for answer in itertools.product(range(V), repeat=NUM_TOKENS):
        previous, prob = [int(PROMPT[0, -1]), *answer[:-1]], 1.0
        for last, token in zip(previous, answer):
            prob *= float(step[last, token])
        out.append(prob)
    return torch.tensor(out, dtype=torch.float64)


def pooled_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square p-value of ``counts`` against ``probs``; a count in an impossible cell is a certain misfit."""
    possible = probs > 0
    if int(counts[~possible].sum()):
        return 0.0
    counts, probs = counts[possible], probs[possible]
    expected = probs / probs.sum() * float(counts.sum())
    small = expected < 5
    observed, expected = counts[~small].double(), expected[~small]
    if bool(small.any()):
        observed = torch.cat([observed, counts[small].sum()[None].double()])
        expected = torch.cat([expected, (probs[small].sum() / probs.sum() * float(counts.sum()))[None]])
    return float(chisquare(observed.numpy(), expected.numpy()).pvalue)


CONFIGS = {
    "ngram-points": (lambda: [NGramDrafter(max_ngram=2)], dict(temperature=1.0, adaptive=False, draft_k=3), RUNS),
    # longer answers (only the first NUM_TOKENS are counted) so that blocks are long enough for inner reviews
    "ngram-bigram-vertical": (lambda: [NGramDrafter(max_ngram=2), BigramDrafter(DRAFT)],
                              dict(temperature=0.8, top_k=3, adaptive=False, draft_k=4, max_new_tokens=6), RUNS),
    "horizontal-adaptive-top-p": (lambda: [NGramDrafter(max_ngram=2), BigramDrafter(DRAFT)],
                                  dict(temperature=1.2, top_p=0.9, draft_k=3, max_new_tokens=6), RUNS),
    # standard speculative sampling, kept as an option: same distribution
    "speculative-vertical": (lambda: [NGramDrafter(max_ngram=2), BigramDrafter(DRAFT)],
                             dict(temperature=0.8, top_k=3, adaptive=False, draft_k=4, max_new_tokens=6,
                                  sampling="speculative"), RUNS // 2),
    "tiny-lm": (lambda: [ModelDrafter(tiny_llama(V, seed=3, hidden_size=16, num_layers=1), name="lm")],
                dict(temperature=1.0, adaptive=False, draft_k=2), RUNS // 3),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_sampled_answers_follow_the_target(config):
    make_levels, settings, runs = CONFIGS[config]
    decoder = CascadeDecoder(BigramVerifier(TARGET), make_levels())
    counts = torch.zeros(V ** NUM_TOKENS, dtype=torch.long)
    accepted = inner = 0
    for seed in range(runs):
        options = GenerationOptions(**{"max_new_tokens": NUM_TOKENS, **settings}, do_sample=True, seed=seed,
                                    eos_token_ids=())
        result = decoder.generate(VerifyRequest(PROMPT), DraftContext(PROMPT), options)
        tokens = result.token_ids[0, :NUM_TOKENS].tolist()
        counts[sum(t * V ** (NUM_TOKENS - 1 - i) for i, t in enumerate(tokens))] += 1
        accepted += sum(level.accepted for level in result.stats.levels)
        inner += sum(sum(level.inner_drafted_by_position) for level in result.stats.levels)
    # the drafts really went through acceptance (coupled by default); an adaptive policy drafts as its measured
    # timings say it pays, which on a loaded machine can be rarely: there its periodic exploration must still draft
    assert accepted > (runs // 10 if settings.get("adaptive") is False else 0)
    if config == "ngram-bigram-vertical":
        assert inner > 0  # and through the inner review of the vertical cascade
    params = GenerationOptions(do_sample=True, **{k: v for k, v in settings.items()
                                                  if k in ("temperature", "top_k", "top_p")}).sampling_params()
    assert pooled_pvalue(counts, exact_joint(params)) > ALPHA
    # the test can fail: the same samples against a colder distribution
    colder = SamplingParams(do_sample=True, temperature=params.temperature * 0.6, top_k=params.top_k, top_p=params.top_p)
    assert pooled_pvalue(counts, exact_joint(colder)) < ALPHA


def test_same_seed_same_answer_speculative_static():
    # no answer memory, so both requests see the same drafts
    decoder = CascadeDecoder(BigramVerifier(TARGET), [NGramDrafter(memory_size=0), BigramDrafter(DRAFT)])
    # adaptive plans follow measured times and so consume random draws differently: a seed replays an answer
    # exactly with the static plan
    options = GenerationOptions(max_new_tokens=12, do_sample=True, seed=7, eos_token_ids=(), adaptive=False,
                                sampling="speculative")
    first = decoder.generate(VerifyRequest(PROMPT), DraftContext(PROMPT), options).token_ids
    second = decoder.generate(VerifyRequest(PROMPT), DraftContext(PROMPT), options).token_ids
    assert torch.equal(first, second) and first.shape == (1, 12)
