"""Greedy cascade decoding equals the target's own ``generate(do_sample=False)``, token for token, whatever drafts.

References are Hugging Face ``generate`` on the same tiny random models; the drafters range from perfect
(replaying the target's answer) to always wrong, random, n-gram, small LMs and nested cascades of these.
"""

from __future__ import annotations

import functools

import pytest
import torch

from evcascade.decoding.drafters import Draft, DraftContext, Drafter
from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
from evcascade.decoding.model_drafter import ModelDrafter
from evcascade.decoding.ngram import NGramDrafter
from evcascade.decoding.prompting import VideoLlavaPrompter
from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest, VideoLlavaVerifier
from evcascade.errors import InputError
from evcascade.models.tiny import tiny_llama, tiny_tokenizer, tiny_video_llava

# Hugging Face's StopStringCriteria tokenises the probe word "abcdef"; the word-level tiny vocabulary needs it
TOK = tiny_tokenizer(extra_words=("abcdef",))
V = len(TOK)
NO_EOS = V - 1  # <video>: a text-only target never emits it... and if it did, both sides would stop alike


class ReplayDrafter(Drafter):
    """Proposes the target's own greedy answer (``wrong``: always a different token); past its end, junk."""

    def __init__(self, answer: list[int], *, wrong: bool = False, name: str = "replay") -> None:
        self.answer, self.wrong, self.name = answer, wrong, name

    def begin(self, context, **kwargs):
        pass

    def propose(self, generated, k):
        n = generated.shape[1]
        ids = [(self.answer[i] if i < len(self.answer) else 7) for i in range(n, n + k)]
        if self.wrong:
            ids = [(t + 1) % V for t in ids]
        return Draft(torch.tensor([ids], dtype=torch.long))


class RandomDrafter(Drafter):
    """Uniformly random proposals of random length (0..k)."""

    def __init__(self, seed: int, name: str = "random") -> None:
        self.generator, self.name = torch.Generator().manual_seed(seed), name

    def begin(self, context, **kwargs):
        pass

    def propose(self, generated, k):
        length = int(torch.randint(0, k + 1, (1,), generator=self.generator))
        return Draft(torch.randint(0, V, (1, length), generator=self.generator))


@functools.lru_cache(maxsize=None)
def target(seed: int):
    return tiny_llama(V, seed=100 + seed)


@functools.lru_cache(maxsize=None)
def small_lm(seed: int, hidden: int = 16):
    return tiny_llama(V, seed=200 + seed, hidden_size=hidden, num_layers=1)


def prompt_of(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    body = torch.randint(4, V - 2, (1, 6 + seed % 5), generator=generator)
    return torch.cat([torch.tensor([[1]]), body, body[:, :3]], dim=1)  # a repeat, so the n-gram finds something


def hf_answer(model, prompt: torch.Tensor, max_new_tokens: int, **kwargs) -> list[int]:
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=3, **kwargs)
    return out[0, prompt.shape[1]:].tolist()


def levels_for(name: str, answer: list[int], seed: int) -> list[Drafter]:
    build = {
        "none": lambda: [],
        "perfect": lambda: [ReplayDrafter(answer)],
        "wrong": lambda: [ReplayDrafter(answer, wrong=True)],
        "random": lambda: [RandomDrafter(seed)],
        "ngram": lambda: [NGramDrafter(max_ngram=3)],
        "lm": lambda: [ModelDrafter(small_lm(seed), name="lm")],
        "ngram+lm": lambda: [NGramDrafter(), ModelDrafter(small_lm(seed), name="lm")],
        "random+lm+lm": lambda: [RandomDrafter(seed), ModelDrafter(small_lm(seed), name="lm1"),
                                 ModelDrafter(small_lm(seed + 1, 24), name="lm2")],
        "ngram+perfect": lambda: [NGramDrafter(), ReplayDrafter(answer)],
        "wrong+self": lambda: [ReplayDrafter(answer, wrong=True), ModelDrafter(target(seed), name="self")],
    }
    return build[name]()


CASCADES = ["none", "perfect", "wrong", "random", "ngram", "lm", "ngram+lm", "random+lm+lm", "ngram+perfect",
            "wrong+self"]


@pytest.mark.parametrize("in_prefill", [True, False], ids=["prefill-draft", "prefill-plain"])
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("cascade", CASCADES)
def test_greedy_equals_generate(cascade, seed, adaptive, in_prefill):
    model = target(seed)
    prompt = prompt_of(seed)
    max_new_tokens = 9 + 13 * seed + 3 * adaptive
    expected = hf_answer(model, prompt, max_new_tokens, eos_token_id=NO_EOS)
    decoder = CascadeDecoder(CausalLMVerifier(model), levels_for(cascade, expected, seed))
    options = GenerationOptions(max_new_tokens=max_new_tokens, eos_token_ids=(NO_EOS,), adaptive=adaptive,
                                draft_k=1 + (seed * 3 + adaptive) % 6, draft_in_prefill=in_prefill)
    streamed = []
    result = decoder.generate(VerifyRequest(prompt), DraftContext(prompt[:, 1:]), options,
                              on_tokens=lambda ids: streamed.extend(ids[0].tolist()))
    assert result.token_ids[0].tolist() == expected
    assert streamed == expected
    stats = result.stats
    assert stats.num_tokens == len(expected) and stats.target_forwards == stats.steps + 1
    if cascade == "perfect" and not adaptive:
        assert stats.tau > 1.5  # a perfect drafter must actually be accepted
    if cascade in ("wrong", "none"):
        assert stats.tau == 1.0


def test_many_requests_on_one_decoder_keep_equal():
    """The adaptive policy and the n-gram memory carry across requests; answers stay the target's."""
    model = target(2)
    decoder = CascadeDecoder(CausalLMVerifier(model), [NGramDrafter(), ModelDrafter(small_lm(2), name="lm")])
    for seed in range(6):
        prompt = prompt_of(10 + seed)
        expected = hf_answer(model, prompt, 20, eos_token_id=NO_EOS)
        result = decoder.generate(VerifyRequest(prompt), DraftContext(prompt),
                                  GenerationOptions(max_new_tokens=20, eos_token_ids=(NO_EOS,), draft_k=6))
        assert result.token_ids[0].tolist() == expected
    assert len(decoder.levels[0].memory) == 6


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("cascade", ["perfect", "ngram+perfect", "ngram+lm"])
def test_eos_inside_a_draft_block(cascade, seed):
    model = target(seed)
    prompt = prompt_of(seed)
    free_run = hf_answer(model, prompt, 24, eos_token_id=NO_EOS)
    eos = free_run[4 + seed]  # a token the target emits mid-answer becomes the EOS
    expected = hf_answer(model, prompt, 24, eos_token_id=eos)
    assert expected == free_run[: free_run.index(eos) + 1]
    decoder = CascadeDecoder(CausalLMVerifier(model), levels_for(cascade, free_run, seed))  # drafts run past EOS
    result = decoder.generate(VerifyRequest(prompt), DraftContext(prompt),
                              GenerationOptions(max_new_tokens=24, eos_token_ids=(eos,), draft_k=8, adaptive=False))
    assert result.token_ids[0].tolist() == expected
    assert result.stats.stop_reason == "eos"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_stop_string_inside_a_draft_block(seed):
    model = target(seed)
    prompt = prompt_of(seed)
    free_run = hf_answer(model, prompt, 24, eos_token_id=NO_EOS)
    stop = TOK.convert_ids_to_tokens(free_run[5])
    expected = hf_answer(model, prompt, 24, eos_token_id=NO_EOS, stop_strings=[stop], tokenizer=TOK)
    assert len(expected) < 24 or stop in TOK.convert_ids_to_tokens(expected)  # the reference did stop there
    decoder = CascadeDecoder(CausalLMVerifier(model), [ReplayDrafter(free_run)])
    result = decoder.generate(VerifyRequest(prompt), DraftContext(prompt), GenerationOptions(
        max_new_tokens=24, eos_token_ids=(NO_EOS,), draft_k=8, adaptive=False, stop_strings=(stop,), tokenizer=TOK))
    assert result.token_ids[0].tolist() == expected
    assert result.stats.stop_reason == "stop_string"
    assert result.text == TOK.decode(expected, skip_special_tokens=True)


def test_max_new_tokens_inside_a_draft_block():
    model = target(0)
    prompt = prompt_of(0)
    expected = hf_answer(model, prompt, 3, eos_token_id=NO_EOS)
    free_run = hf_answer(model, prompt, 12, eos_token_id=NO_EOS)
    decoder = CascadeDecoder(CausalLMVerifier(model), [ReplayDrafter(free_run)])
    # 2 drafts + the bonus judged by the prefill, or the prefill's token then 1 draft + the bonus
    for in_prefill, forwards, drafted in ((True, 1, [1, 1]), (False, 2, [1])):
        options = GenerationOptions(max_new_tokens=3, eos_token_ids=(NO_EOS,), draft_k=8, adaptive=False,
                                    draft_in_prefill=in_prefill)
        result = decoder.generate(VerifyRequest(prompt), DraftContext(prompt), options)
        assert result.token_ids[0].tolist() == expected and result.stats.target_forwards == forwards
        assert result.stats.levels[0].drafted_by_position == drafted


# ---------------------------------------------------------------- Video-LLaVA target

@pytest.fixture(scope="module")
def video_llava():
    return tiny_video_llava(TOK, seed=5)


@pytest.mark.parametrize("cascade,adaptive", [("none", False), ("ngram", True), ("ngram+lm", False),
                                              ("ngram+lm", True), ("perfect", False)])
def test_video_llava_greedy_equals_generate(video_llava, cascade, adaptive):
    prompter = VideoLlavaPrompter(TOK, video_llava.config)
    prompt = prompter("what colour is the object moving to the left ?")
    pixels = torch.randn(1, 8, 3, 32, 32, generator=torch.Generator().manual_seed(len(cascade)))
    out = video_llava.generate(input_ids=prompt.target_ids, pixel_values_videos=pixels, do_sample=False,
                               attention_mask=torch.ones_like(prompt.target_ids), max_new_tokens=16,
                               eos_token_id=NO_EOS, pad_token_id=3)
    expected = out[0, prompt.target_ids.shape[1]:].tolist()
    verifier = VideoLlavaVerifier(video_llava)
    levels = levels_for(cascade, expected, 0)
    for level in levels:
        if isinstance(level, ModelDrafter):  # a drafter with the tokenizer's full vocabulary: within the rule
            assert verifier.text_vocab_size <= level.vocab_size <= verifier.vocab_size
    decoder = CascadeDecoder(verifier, levels)
    options = GenerationOptions(max_new_tokens=16, eos_token_ids=(NO_EOS,), adaptive=adaptive, draft_k=4)
    for _ in range(2):  # the second question on the clip comes from the prefix cache: same answer
        result = decoder.generate(VerifyRequest(prompt.target_ids, pixels), DraftContext(prompt.text_ids), options)
        assert result.token_ids[0].tolist() == expected


# ---------------------------------------------------------------- bad input and documented behaviour

@pytest.fixture(scope="module")
def short_context_model():
    return tiny_llama(V, seed=7, max_position_embeddings=16)


def test_prompt_longer_than_the_context(short_context_model):
    decoder = CascadeDecoder(CausalLMVerifier(short_context_model), [NGramDrafter()])
    prompt = torch.randint(4, 40, (1, 16))
    with pytest.raises(InputError, match="16 tokens.*16"):
        decoder.generate(VerifyRequest(prompt), DraftContext(prompt), GenerationOptions(max_new_tokens=4))


def test_answer_stops_when_the_context_is_full(short_context_model):
    """Documented: generation ends at the target's context length with stop_reason 'context_full'."""
    prompt = prompt_of(0)[:, :10]
    expected = hf_answer(short_context_model, prompt, 7, eos_token_id=NO_EOS)
    decoder = CascadeDecoder(CausalLMVerifier(short_context_model), [ReplayDrafter(expected + [5] * 10)])
    result = decoder.generate(VerifyRequest(prompt), DraftContext(prompt),
                              GenerationOptions(max_new_tokens=30, eos_token_ids=(NO_EOS,), draft_k=4, adaptive=False))
    assert result.token_ids[0].tolist() == expected  # 16 positions - 10 prompt + the last, unverified token
    assert result.stats.stop_reason == "context_full"


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(max_new_tokens=-3), dict(draft_k=-1),
                                 dict(temperature=0.0), dict(top_p=1.5), dict(top_k=-2),
                                 dict(stop_strings=("x",)), dict(seed=1.5)])
def test_bad_options_name_the_value(bad):
    key, value = next(iter(bad.items()))
    with pytest.raises(InputError, match=key):
        GenerationOptions(**bad)


def test_drafter_vocabulary_mismatch_names_both_sizes():
    verifier = CausalLMVerifier(target(0))
    with pytest.raises(InputError, match=rf"{V + 50}.*{V}"):
        CascadeDecoder(verifier, [ModelDrafter(tiny_llama(V + 50, seed=1), name="big")])
    with pytest.raises(InputError, match=rf"{V - 10}.*{V}"):
        CascadeDecoder(verifier, [ModelDrafter(tiny_llama(V, seed=1), vocab_size=V - 10)])


def test_drafter_on_another_device_is_refused():
    class Elsewhere(ReplayDrafter):
        device = torch.device("meta")

    with pytest.raises(InputError, match="meta.*cpu"):
        CascadeDecoder(CausalLMVerifier(target(0)), [Elsewhere([])])


def test_drafter_in_another_dtype_is_fine():
    """Documented: dtypes may differ (probabilities are float32 on both sides); the answer is the target's."""
    model = target(1)
    prompt = prompt_of(1)
    expected = hf_answer(model, prompt, 12, eos_token_id=NO_EOS)
    drafter = ModelDrafter(tiny_llama(V, seed=3).to(torch.bfloat16), name="bf16")
    result = CascadeDecoder(CausalLMVerifier(model), [drafter]).generate(
        VerifyRequest(prompt), DraftContext(prompt), GenerationOptions(max_new_tokens=12, eos_token_ids=(NO_EOS,)))
    assert result.token_ids[0].tolist() == expected


def test_empty_prompt_batch_and_type_errors():
    decoder = CascadeDecoder(CausalLMVerifier(target(0)), [NGramDrafter()])
    empty = torch.zeros(1, 0, dtype=torch.long)
    with pytest.raises(InputError, match="empty"):
        decoder.generate(VerifyRequest(empty), DraftContext(empty))
    two = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(InputError, match="B=2"):
        decoder.generate(VerifyRequest(two), DraftContext(two))
    with pytest.raises(InputError, match="GenerationOptions"):
        decoder.generate(VerifyRequest(two[:1]), DraftContext(two[:1]), {"max_new_tokens": 3})
    with pytest.raises(InputError, match="distinct"):
        CascadeDecoder(decoder.verifier, [NGramDrafter(), NGramDrafter()])


def test_inputs_are_not_mutated():
    prompt = prompt_of(3)
    before = prompt.clone()
    context = DraftContext(prompt[:, 1:])
    CascadeDecoder(CausalLMVerifier(target(0)), [NGramDrafter(), ModelDrafter(small_lm(0), name="lm")]).generate(
        VerifyRequest(prompt), context, GenerationOptions(max_new_tokens=10))
    assert torch.equal(prompt, before) and torch.equal(context.prompt_ids, before[:, 1:]) and context.extras == {}
