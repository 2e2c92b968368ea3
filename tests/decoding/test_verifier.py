"""Verifiers against the model they wrap: full forwards and ``generate(do_sample=False)`` are the references."""

import numpy as np
import pytest
import torch

from evcascade.decoding.feature_cache import LRUCache, content_key
from evcascade.decoding.prompting import VideoLlavaPrompter
from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest, VideoLlavaVerifier
from evcascade.errors import InputError
from evcascade.models.tiny import tiny_llama, tiny_tokenizer, tiny_video_llava

ATOL = 1e-4  # fp32 logits of a prefix-cached forward vs one full forward: same maths, different matmul shapes


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def video_llava_dir(tok, tmp_path_factory):
    """A tiny random Video-LLaVA saved as a checkpoint folder, loaded back the way users load the 7B."""
    path = tmp_path_factory.mktemp("tiny-video-llava")
    tiny_video_llava(tok, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vl_model(video_llava_dir):
    verifier = VideoLlavaVerifier.from_pretrained(video_llava_dir)
    return verifier.model


@pytest.fixture(scope="module")
def prompter(tok, vl_model):
    return VideoLlavaPrompter(tok, vl_model.config)


@pytest.fixture(scope="module")
def llama():
    return tiny_llama(vocab_size=80, seed=3)


def clip(seed: int) -> torch.Tensor:
    return torch.randn(1, 8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def tower_calls(vl_model):
    """A counter bumped by every forward of the shared model's video tower (removed after the test)."""
    calls = [0]
    handle = vl_model.model.video_tower.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    yield calls
    handle.remove()


def full_logits(model, ids: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: one fresh forward over the whole sequence, float32 logits ``[1, L, V]``."""
    with torch.no_grad():
        kwargs = {"pixel_values_videos": pixels} if pixels is not None else {}
        return model(input_ids=ids, **kwargs).logits.float()


def greedy_with_verifier(verifier, request: VerifyRequest, num_tokens: int) -> list[int]:
    """The simplest decoding loop: prefill, then one verified token at a time, stopping after an EOS."""
    logits = verifier.prefill(request)  # [1, V]
    out = []
    for _ in range(num_tokens):
        token = logits.argmax(-1, keepdim=True)  # [1, 1]
        out.append(int(token))
        if out[-1] in verifier.eos_token_ids:
            break
        logits = verifier.verify(token)[:, -1]
    return out


def hf_greedy(model, ids: torch.Tensor, num_tokens: int, **kwargs) -> list[int]:
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=num_tokens,
                         do_sample=False, **kwargs)
    return out[0, ids.shape[1]:].tolist()


# ---------------------------------------------------------------- CausalLMVerifier

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_causal_lm_greedy_loop_reproduces_generate(llama, seed):
    prompt = torch.randint(4, 80, (1, 5 + 3 * seed), generator=torch.Generator().manual_seed(seed))
    verifier = CausalLMVerifier(llama)
    assert greedy_with_verifier(verifier, VerifyRequest(prompt), 24) == hf_greedy(llama, prompt, 24)
    assert verifier.cache_length == prompt.shape[1] + 24
    assert verifier.timings["prefill"] > 0 and verifier.timings["verify"] > 0 and verifier.timings["vision"] == 0


def test_causal_lm_bfloat16_greedy_and_float32_logits():
    model = tiny_llama(vocab_size=80, seed=4).to(torch.bfloat16)
    prompt = torch.randint(4, 80, (1, 9), generator=torch.Generator().manual_seed(4))
    verifier = CausalLMVerifier(model)
    assert verifier.dtype == torch.bfloat16
    assert verifier.prefill(VerifyRequest(prompt)).dtype == torch.float32
    assert greedy_with_verifier(verifier, VerifyRequest(prompt), 12) == hf_greedy(model, prompt, 12)


@pytest.mark.parametrize("seed", range(12))
def test_causal_lm_random_verify_rollback_matches_fresh_forward(llama, seed):
    gen = torch.Generator().manual_seed(100 + seed)
    sequence = torch.randint(4, 80, (1, 6), generator=gen)
    verifier = CausalLMVerifier(llama)
    verifier.prefill(VerifyRequest(sequence))
    for _ in range(6):
        drafted = torch.randint(4, 80, (1, int(torch.randint(1, 6, (1,), generator=gen))), generator=gen)
        logits = verifier.verify(drafted)
        sequence = torch.cat([sequence, drafted], 1)
        torch.testing.assert_close(logits, full_logits(llama, sequence)[:, -drafted.shape[1]:], atol=ATOL, rtol=0)
        keep = int(torch.randint(0, drafted.shape[1] + 1, (1,), generator=gen))
        verifier.rollback(drafted.shape[1] - keep)
        sequence = sequence[:, :sequence.shape[1] - (drafted.shape[1] - keep)]
        assert verifier.cache_length == sequence.shape[1]


def test_multi_token_verify_scores_generates_own_continuation(llama):
    """Verifying k tokens at once gives the distributions generate saw one at a time (the speculative step)."""
    prompt = torch.randint(4, 80, (1, 7), generator=torch.Generator().manual_seed(9))
    continuation = hf_greedy(llama, prompt, 12)
    verifier = CausalLMVerifier(llama)
    first = verifier.prefill(VerifyRequest(prompt))
    assert int(first.argmax()) == continuation[0]
    logits = verifier.verify(torch.tensor([continuation[:11]]))  # [1, 11, V]
    assert logits.argmax(-1)[0].tolist() == continuation[1:12]


def test_causal_lm_attributes(llama):
    verifier = CausalLMVerifier(llama, text_vocab_size=70)
    assert (verifier.vocab_size, verifier.text_vocab_size, verifier.eos_token_ids) == (80, 70, (2,))
    assert verifier.max_positions == 4096 and verifier.cache_length == 0
    with pytest.raises(InputError, match="text_vocab_size"):
        CausalLMVerifier(llama, text_vocab_size=81)


def test_causal_lm_bad_inputs(llama):
    verifier = CausalLMVerifier(llama)
    with pytest.raises(InputError, match="before prefill"):
        verifier.verify(torch.tensor([[5]]))
    with pytest.raises(InputError, match="batch size 1"):
        verifier.prefill(VerifyRequest(torch.tensor([[5, 6], [7, 8]])))
    with pytest.raises(InputError, match="empty"):
        verifier.prefill(VerifyRequest(torch.zeros(1, 0, dtype=torch.long)))
    with pytest.raises(InputError, match=r"\[0, 80\)"):
        verifier.prefill(VerifyRequest(torch.tensor([[5, 80]])))
    with pytest.raises(InputError, match="integer"):
        verifier.prefill(VerifyRequest(torch.tensor([[5.0, 6.0]])))
    with pytest.raises(InputError, match="text-only"):
        verifier.prefill(VerifyRequest(torch.tensor([[5]]), pixel_values_videos=torch.zeros(1, 1, 3, 4, 4)))
    verifier.prefill(VerifyRequest(torch.tensor([[5, 6, 7]])))
    verifier.verify(torch.tensor([[8, 9]]))
    with pytest.raises(InputError, match=r"\[0, 2\]"):
        verifier.rollback(3)  # would reach into the prompt
    with pytest.raises(InputError, match=r"\[0, 2\]"):
        verifier.rollback(-1)
    with pytest.raises(InputError, match="max_position_embeddings=4096"):
        verifier.verify(torch.full((1, 4092), 5))
    verifier.rollback(0)
    assert verifier.cache_length == 5


def test_missing_checkpoint_is_input_error(tmp_path):
    with pytest.raises(InputError, match="nothing-here"):
        CausalLMVerifier.from_pretrained(tmp_path / "nothing-here")
    with pytest.raises(InputError, match="dtype"):
        VideoLlavaVerifier.from_pretrained(tmp_path, dtype="int8")


# ---------------------------------------------------------------- VideoLlavaVerifier

def test_video_llava_attributes(tok, vl_model):
    verifier = VideoLlavaVerifier(vl_model)
    assert verifier.vocab_size == len(tok)
    # placeholders are the last two ids, like 32000/32001 in Video-LLaVA-7B-hf: drafters get everything below
    assert verifier.text_vocab_size == tok.convert_tokens_to_ids("<image>") == len(tok) - 2
    assert verifier.eos_token_ids == (2,) and verifier.tokens_per_frame == 5


def test_prefill_equals_full_forward_and_generate(tok, vl_model, prompter):
    verifier = VideoLlavaVerifier(vl_model)
    prompt, pixels = prompter("what colour is the object ?"), clip(0)
    logits = verifier.prefill(VerifyRequest(prompt.target_ids, pixels))
    reference = full_logits(vl_model, prompt.target_ids, pixels)[:, -1]
    torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)
    assert int(logits.argmax()) == int(reference.argmax())
    answer = greedy_with_verifier(VideoLlavaVerifier(vl_model), VerifyRequest(prompt.target_ids, pixels), 20)
    assert answer == hf_greedy(vl_model, prompt.target_ids, 20, pixel_values_videos=pixels)
    assert len(answer) == 16 and answer[-1] == 2  # this seed's answer ends in EOS: the stop is checked too


def test_bfloat16_checkpoint_greedy_loop_reproduces_generate(video_llava_dir, prompter):
    verifier = VideoLlavaVerifier.from_pretrained(video_llava_dir, dtype="bf16")
    assert verifier.dtype == torch.bfloat16 and verifier.preprocess_config.crop_size == (32, 32)
    prompt, pixels = prompter("what shape is it ?").target_ids, clip(1)  # fp32 pixels are cast to bf16
    answer = greedy_with_verifier(verifier, VerifyRequest(prompt, pixels), 12)
    assert answer == hf_greedy(verifier.model, prompt, 12, pixel_values_videos=pixels.bfloat16())


@pytest.mark.parametrize("seed", range(8))
def test_video_llava_random_verify_rollback_matches_fresh_forward(vl_model, prompter, seed):
    gen = torch.Generator().manual_seed(200 + seed)
    text_vocab = len(prompter.tokenizer) - 2
    pixels = clip(seed)
    sequence = prompter("how many objects are there ?").target_ids
    verifier = VideoLlavaVerifier(vl_model)
    verifier.prefill(VerifyRequest(sequence, pixels))
    for _ in range(5):
        drafted = torch.randint(4, text_vocab, (1, int(torch.randint(1, 6, (1,), generator=gen))), generator=gen)
        logits = verifier.verify(drafted)
        sequence = torch.cat([sequence, drafted], 1)
        reference = full_logits(vl_model, sequence, pixels)[:, -drafted.shape[1]:]
        torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)
        rejected = int(torch.randint(0, drafted.shape[1] + 1, (1,), generator=gen))
        verifier.rollback(rejected)
        sequence = sequence[:, :sequence.shape[1] - rejected]
        assert verifier.cache_length == sequence.shape[1]


def test_second_question_on_a_clip_skips_vision_and_visual_prefill(vl_model, prompter, tower_calls):
    verifier = VideoLlavaVerifier(vl_model)
    calls = tower_calls
    pixels = clip(7)
    first, second = prompter("what colour is the object ?"), prompter("where does it move ?")
    greedy_with_verifier(verifier, VerifyRequest(first.target_ids, pixels), 6)  # leaves answer tokens in the cache
    assert calls[0] == 1 and verifier.timings["vision"] > 0

    warm = verifier.prefill(VerifyRequest(second.target_ids, pixels.clone()))  # equal content, another tensor
    assert calls[0] == 1 and verifier.timings["vision"] == 0.0
    assert verifier.cache_stats()["features"]["misses"] == 1 and verifier.cache_stats()["prefix"]["hits"] == 1
    warm_answer = greedy_with_verifier(verifier, VerifyRequest(second.target_ids, pixels), 10)
    assert calls[0] == 1
    cold = VideoLlavaVerifier(vl_model).prefill(VerifyRequest(second.target_ids, pixels))
    assert calls[0] == 2
    # cold: the whole prompt in one forward (as HF's prefill); warm: the cached prefix, then the question
    reference = full_logits(vl_model, second.target_ids, pixels)[:, -1]
    torch.testing.assert_close(cold, reference, atol=ATOL, rtol=0)
    torch.testing.assert_close(warm, reference, atol=ATOL, rtol=0)
    # and the whole answer after a warm start is still generate's
    assert warm_answer == hf_greedy(vl_model, second.target_ids, 10, pixel_values_videos=pixels)


def test_feature_cache_alone_when_prefix_differs(vl_model, prompter, tower_calls):
    """Another prompt before the video (e.g. a system line) misses the prefix cache but reuses the features."""
    verifier = VideoLlavaVerifier(vl_model)
    calls = tower_calls
    pixels = clip(8)
    other = VideoLlavaPrompter(prompter.tokenizer, vl_model.config,
                               template="A chat . USER: <video>\n{question} ASSISTANT:")
    verifier.prefill(VerifyRequest(prompter("what shape ?").target_ids, pixels))
    ids = other("what shape ?").target_ids
    logits = verifier.prefill(VerifyRequest(ids, pixels))
    assert calls[0] == 1 and verifier.cache_stats()["prefix"]["hits"] == 0
    torch.testing.assert_close(logits, full_logits(vl_model, ids, pixels)[:, -1], atol=ATOL, rtol=0)


def test_lru_bounds_and_eviction_recomputes(vl_model, prompter, tower_calls):
    verifier = VideoLlavaVerifier(vl_model, feature_cache_size=2, prefix_cache_size=1)
    calls = tower_calls
    ids = prompter("what ?").target_ids
    for seed in (10, 11, 12):
        verifier.prefill(VerifyRequest(ids, clip(seed)))
    stats = verifier.cache_stats()
    assert (stats["features"]["size"], stats["features"]["evictions"]) == (2, 1)
    assert (stats["prefix"]["size"], stats["prefix"]["evictions"]) == (1, 2)
    verifier.prefill(VerifyRequest(ids, clip(12)))  # most recent: both caches hit
    assert calls[0] == 3
    logits = verifier.prefill(VerifyRequest(ids, clip(10)))  # evicted: the tower runs again
    assert calls[0] == 4
    torch.testing.assert_close(logits, full_logits(vl_model, ids, clip(10))[:, -1], atol=ATOL, rtol=0)


def test_caches_disabled_still_correct(vl_model, prompter, tower_calls):
    verifier = VideoLlavaVerifier(vl_model, feature_cache_size=0, prefix_cache_size=0)
    calls = tower_calls
    ids, pixels = prompter("what ?").target_ids, clip(13)
    first = verifier.prefill(VerifyRequest(ids, pixels))
    second = verifier.prefill(VerifyRequest(ids, pixels))
    assert calls[0] == 2 and torch.equal(first, second)


def test_clip_key_given_by_caller_is_used(vl_model, prompter, tower_calls):
    verifier = VideoLlavaVerifier(vl_model)
    calls = tower_calls
    ids = prompter("what ?").target_ids
    verifier.prefill(VerifyRequest(ids, clip(14), clip_key="clip-a"))
    verifier.prefill(VerifyRequest(ids, clip(14), clip_key="clip-a"))
    assert calls[0] == 1 and "clip-a" in verifier.feature_cache


def test_prompt_ending_at_the_video_and_text_only_prompt(tok, vl_model):
    verifier = VideoLlavaVerifier(vl_model)
    video_id = tok.convert_tokens_to_ids("<video>")
    ids = torch.tensor([[1, 4] + [video_id] * 40])  # nothing after the visual tokens
    pixels = clip(15)
    logits = verifier.prefill(VerifyRequest(ids, pixels))
    torch.testing.assert_close(logits, full_logits(vl_model, ids, pixels)[:, -1], atol=ATOL, rtol=0)
    logits[:] = 0  # the caller owns the returned tensor; the cached prefix logits must not change
    again = verifier.prefill(VerifyRequest(ids, pixels))
    torch.testing.assert_close(again, full_logits(vl_model, ids, pixels)[:, -1], atol=ATOL, rtol=0)
    text = torch.tensor([[1, 4, 17, 35, 5]])
    logits = verifier.prefill(VerifyRequest(text))
    torch.testing.assert_close(logits, full_logits(vl_model, text)[:, -1], atol=ATOL, rtol=0)


def test_video_llava_bad_inputs(tok, vl_model, prompter):
    verifier = VideoLlavaVerifier(vl_model)
    ids, pixels = prompter("what ?").target_ids, clip(16)
    with pytest.raises(InputError, match="pixel_values_videos is None"):
        verifier.prefill(VerifyRequest(ids))
    with pytest.raises(InputError, match="35 <video> placeholders, but 8 frames need 40"):
        verifier.prefill(VerifyRequest(torch.cat([ids[:, :3], ids[:, 8:]], 1), pixels))
    with pytest.raises(InputError, match="batch size 1"):
        verifier.prefill(VerifyRequest(ids, pixels.expand(2, -1, -1, -1, -1)))
    with pytest.raises(InputError, match="batch size 1"):
        verifier.prefill(VerifyRequest(ids.expand(2, -1), pixels))
    with pytest.raises(InputError, match=r"\[B, T>=1, 3, 32, 32\]"):
        verifier.prefill(VerifyRequest(ids, torch.zeros(1, 8, 3, 64, 64)))
    with pytest.raises(InputError, match="float tensor"):
        verifier.prefill(VerifyRequest(ids, torch.zeros(1, 8, 3, 32, 32, dtype=torch.uint8)))
    with pytest.raises(InputError, match="<image>"):
        verifier.prefill(VerifyRequest(torch.tensor([[1, tok.convert_tokens_to_ids("<image>"), 5]])))


def test_pixel_values_from_frames_match_preprocessing(vl_model):
    from evcascade.preprocess import preprocess_frames

    verifier = VideoLlavaVerifier(vl_model)
    frames = np.random.default_rng(0).integers(0, 256, (8, 48, 64, 3), dtype=np.uint8)
    pixels = verifier.pixel_values(frames)
    assert pixels.shape == (1, 8, 3, 32, 32)
    assert torch.equal(pixels[0], preprocess_frames(frames, size=32, crop_size=32))


# ---------------------------------------------------------------- the LRU cache

def test_lru_cache_order_counts_and_bounds():
    cache = LRUCache(maxsize=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)  # evicts "b"
    assert "b" not in cache and cache.get("b") is None and cache.get("c") == 3
    assert cache.stats() == {"hits": 2, "misses": 1, "evictions": 1, "size": 2, "maxsize": 2}
    cache.put("a", 10)  # overwrite: no eviction
    assert cache.get("a") == 10 and len(cache) == 2
    nothing = LRUCache(maxsize=0)
    nothing.put("a", 1)
    assert len(nothing) == 0 and nothing.get("a") is None
    for bad in (-1, 1.5, True):
        with pytest.raises(InputError, match="cache size"):
            LRUCache(bad)


def test_content_key_tracks_content_shape_and_dtype():
    x = torch.randn(2, 3, 4)
    y = x.clone()
    assert content_key(x) == content_key(y)
    y[1, 2, 3] += 1e-3
    assert content_key(x) != content_key(y)
    assert content_key(x) != content_key(x.reshape(3, 2, 4))
    assert content_key(x.bfloat16()) != content_key(x) and content_key(x.bfloat16()) == content_key(x.bfloat16())
    assert content_key(x.transpose(0, 1)) == content_key(x.transpose(0, 1).contiguous())


# ---------------------------------------------------------------- GPU (skipped without one)

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_greedy_loop_reproduces_generate(video_llava_dir, prompter, dtype):
    verifier = VideoLlavaVerifier.from_pretrained(video_llava_dir, device="cuda", dtype=dtype)
    model = verifier.model
    prompt = prompter("what colour is the object ?").target_ids
    pixels = clip(0).to("cuda", verifier.dtype)
    expected = hf_greedy(model, prompt.cuda(), 12, pixel_values_videos=pixels)
    assert greedy_with_verifier(verifier, VerifyRequest(prompt, pixels), 12) == expected
    assert greedy_with_verifier(verifier, VerifyRequest(prompt, pixels), 12) == expected  # warm caches


@pytest.mark.parametrize("ending", ["question", "video", "text"])
def test_prefill_with_draft_judges_the_draft_in_one_forward(tok, vl_model, prompter, ending):
    """The prefill's draft rows equal a fresh forward over prompt + draft, on a cold and on a warm prefix cache
    (prompt with a question after the video, ending at the video, text only); rollback then drops the rejected."""
    video_id = tok.convert_tokens_to_ids("<video>")
    pixels = clip(21)
    prompt = {"question": prompter("what is moving ?").target_ids, "video": torch.tensor([[1, 4] + [video_id] * 40]),
              "text": torch.tensor([[1, 4, 17, 35, 5]])}[ending]
    request = VerifyRequest(prompt, None if ending == "text" else pixels)
    draft = torch.tensor([[7, 11, 5]])
    verifier = VideoLlavaVerifier(vl_model)
    for _ in range(2):  # cold, then from the clip's cached prefix
        logits = verifier.prefill_with_draft(request, draft)  # [1, 4, V]
        sequence = torch.cat([prompt, draft], dim=1)
        reference = full_logits(vl_model, sequence, request.pixel_values_videos)[:, -4:]
        torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)
        assert verifier.cache_length == sequence.shape[1]
        verifier.rollback(2)
        follow = verifier.verify(torch.tensor([[9]]))
        kept = torch.cat([prompt, draft[:, :1], torch.tensor([[9]])], dim=1)
        torch.testing.assert_close(follow, full_logits(vl_model, kept, request.pixel_values_videos)[:, -1:],
                                   atol=ATOL, rtol=0)
    with pytest.raises(InputError, match="draft_ids"):
        verifier.prefill_with_draft(request, torch.tensor([[10_000]]))
    with pytest.raises(InputError, match="rollback"):
        verifier.prefill_with_draft(request, draft)
        verifier.rollback(4)  # the prompt is never rolled back


def test_a_new_clips_prefill_takes_a_draft_holding_a_placeholder_id(tok, vl_model, prompter):
    """A new clip's prefill is one forward over prompt + draft; a draft holding the <video> id (a replayed or
    adversarial drafter's) must not be taken for video features: it goes after the prefix, as on a warm clip."""
    ids, pixels = prompter("what ?").target_ids, clip(21)
    video_id = tok.convert_tokens_to_ids("<video>")
    draft = torch.tensor([[5, video_id, 7]])
    cold = VideoLlavaVerifier(vl_model).prefill_with_draft(VerifyRequest(ids, pixels), draft)  # [1, 4, V]
    warm_verifier = VideoLlavaVerifier(vl_model)
    warm_verifier.prefill(VerifyRequest(ids, pixels))
    warm = warm_verifier.prefill_with_draft(VerifyRequest(ids, pixels), draft)
    assert cold.shape == warm.shape == (1, 4, cold.shape[-1])
    torch.testing.assert_close(cold, warm, atol=ATOL, rtol=0)
    plain = VideoLlavaVerifier(vl_model).prefill_with_draft(VerifyRequest(ids, pixels), torch.tensor([[5, 6, 7]]))
    torch.testing.assert_close(plain[:, :2], cold[:, :2], atol=ATOL, rtol=0)  # equal up to the placeholder
