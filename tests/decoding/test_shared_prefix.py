"""Prefix sharing in batched verification: rows on one clip reference its visual prefix, and nothing changes."""

from __future__ import annotations

import pytest
import torch

from evcascade.decoding import shared_prefix
from evcascade.decoding.batch import BatchDecoder, BatchRequest
from evcascade.decoding.drafters import Draft, DraftContext, Drafter
from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
from evcascade.decoding.prompting import VideoLlavaPrompter
from evcascade.decoding.shared_prefix import PrefixGroup, shared_prefix_attention
from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest, VideoLlavaVerifier
from evcascade.models.tiny import tiny_llama, tiny_tokenizer, tiny_video_llava_config

TOK = tiny_tokenizer()
V = len(TOK)
NO_EOS = V - 1
QUESTIONS = ["what is moving ?", "describe the video .", "which is faster ?", "what colour is it ?"]


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "causal"])
def test_attention_equals_attention_over_copied_prefixes(mask_kind):
    gen = torch.Generator().manual_seed(len(mask_kind))
    batch, heads, kv_heads, num_new, suffix, dim = 5, 4, 2, 3, 6, 8  # grouped-query: 2 query heads per kv head
    query = torch.randn(batch, heads, num_new, dim, generator=gen)
    keys, values = torch.randn(2, batch, kv_heads, suffix, dim, generator=gen)
    prefixes = [torch.randn(2, 1, kv_heads, length, dim, generator=gen) for length in (7, 4)]
    members = [[0, 3], [1, 4]]  # row 2 continues no prefix
    allowed = torch.ones(batch, 1, num_new, suffix, dtype=torch.bool).tril(suffix - num_new)
    allowed[1, ..., :2] = False  # left padding
    allowed[3, ..., :1] = False
    if mask_kind == "causal":
        allowed[:] = allowed[0]
    mask = {"bool": allowed, "causal": None,
            "additive": torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)}[mask_kind]
    groups = [PrefixGroup(((p[0], p[1]),), torch.tensor(rows)) for p, rows in zip(prefixes, members)]
    out = shared_prefix_attention(query, keys, values, mask, groups, 0, scaling=dim ** -0.5)  # [B, N, H, D]
    for b in range(batch):
        group = next((g for g, rows in enumerate(members) if b in rows), None)
        row_keys, row_values, row_allowed = keys[b], values[b], allowed[b, 0]
        if group is not None:  # the copy path: the prefix in front of the row's own keys
            prefix = prefixes[group]
            row_keys, row_values = torch.cat([prefix[0, 0], row_keys], 1), torch.cat([prefix[1, 0], row_values], 1)
            row_allowed = torch.cat([torch.ones(num_new, prefix.shape[-2], dtype=torch.bool), row_allowed], 1)
        expected = torch.nn.functional.scaled_dot_product_attention(  # [H, N, D]
            query[b], row_keys.repeat_interleave(2, 0), row_values.repeat_interleave(2, 0), attn_mask=row_allowed)
        torch.testing.assert_close(out[b].transpose(0, 1), expected, atol=1e-6, rtol=1e-5)


class AnswerDrafter(Drafter):
    """Drafts a row's known answer (``extras["answer"]``), wrong at every third position: tails are cut."""

    name, can_review = "answer", True

    def begin(self, context, **kwargs):
        self.answer = context.extras["answer"]

    def propose(self, generated, k):
        start = generated.shape[1]
        ids = [(t + 1) % V if (start + i) % 3 == 2 else t for i, t in enumerate(self.answer[start: start + k])]
        return Draft(torch.tensor([ids + [3] * (k - len(ids))], dtype=torch.long))


def video_verifier(attn: str, seed: int = 5) -> VideoLlavaVerifier:
    from transformers import VideoLlavaForConditionalGeneration

    config = tiny_video_llava_config(TOK)
    config.text_config.num_key_value_heads = 2  # grouped-query attention, as the shared path folds heads
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return VideoLlavaVerifier(VideoLlavaForConditionalGeneration(config).eval())


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def verifier(request):
    return video_verifier(request.param)


def clip_pixels(seed: int) -> torch.Tensor:
    return torch.randn(1, 8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def batch_one(verifier, item: BatchRequest) -> list[int]:
    options = GenerationOptions(**{**item.options.__dict__, "draft_k": 0})
    return CascadeDecoder(verifier, []).generate(item.request, item.context, options).token_ids[0].tolist()


def make_items(verifier, *, clips=(0, 1), per_clip=3, text_only=True) -> list[BatchRequest]:
    """``per_clip`` questions on each clip (answers of several lengths, drafted partly right, one sampled) and a
    text-only one."""
    prompter = VideoLlavaPrompter(TOK, verifier.model.config)
    items = []
    for c in clips:
        for q in range(per_clip):
            prompt = prompter(QUESTIONS[(q + c) % len(QUESTIONS)])
            options = GenerationOptions(max_new_tokens=4 + 5 * q, eos_token_ids=(NO_EOS,), draft_k=3 * (q % 2),
                                        do_sample=q == 1, temperature=0.8, seed=c)  # one coupled-sampling row
            items.append(BatchRequest(VerifyRequest(prompt.target_ids, clip_pixels(c), f"clip-{c}"),
                                      DraftContext(prompt.text_ids), options))
    if text_only:
        ids = torch.tensor([TOK.encode("describe the video .")])
        items.append(BatchRequest(VerifyRequest(ids), DraftContext(ids),
                                  GenerationOptions(max_new_tokens=7, eos_token_ids=(NO_EOS,), draft_k=2)))
    for item in items:
        item.context.extras["answer"] = batch_one(verifier, item) + [5] * 20
    return items


def recording(decoder: BatchDecoder) -> list[torch.Tensor]:
    """The logits of every batched forward of ``decoder``, recorded."""
    logits, forward = [], decoder._forward

    def wrapped(*args):
        out = forward(*args)
        logits.append(out[0])
        return out

    decoder._forward = wrapped
    return logits


def test_shared_rows_equal_copied_rows_and_batch_one_as_rows_join_and_leave(verifier):
    items = make_items(verifier)
    decoders = {share: BatchDecoder(verifier, [AnswerDrafter()], share_prefix=share) for share in (True, False)}
    assert decoders[True].share_prefix and not decoders[False].share_prefix
    logits = {share: recording(decoder) for share, decoder in decoders.items()}
    results = {True: {}, False: {}}
    schedule = [[0, 3, 6], [1], [], [4, 2], [5]]  # clip 0, clip 1, text-only first; the rest join later
    for step in range(40):
        for share, decoder in decoders.items():
            for index in schedule[step] if step < len(schedule) else []:
                item = items[index]
                done = decoder.add(BatchRequest(item.request, item.context, item.options, index))
                if done is not None:
                    results[share][index] = done.token_ids
            for result in decoder.step():
                results[share][result.tag] = result.token_ids
            if decoder.rows:  # each row's real positions: prompt + answer so far (pending excluded)
                assert decoder.kv.lengths() == [row.cached for row in decoder.rows] == [
                    row.prompt_ids.shape[1] + row.generated.shape[1] - 1 for row in decoder.rows]
        shared = decoders[True].kv
        if shared.batch_size:  # the rows hold their own positions only, the clips' prefixes once
            assert shared.width < min(row.cached for row in decoders[True].rows
                                      if row.item.request.pixel_values_videos is not None) or not shared.prefixes
            assert len(shared.prefixes) == len({row.item.request.clip_key for row in decoders[True].rows
                                                if row.item.request.pixel_values_videos is not None})
    expected = {i: batch_one(verifier, item) for i, item in enumerate(items)}
    assert results[True] == results[False] == expected
    assert len(logits[True]) == len(logits[False]) > 5
    for shared_logits, copied_logits in zip(logits[True], logits[False]):
        torch.testing.assert_close(shared_logits, copied_logits, atol=1e-5, rtol=1e-5)


def test_rows_on_one_clip_reference_one_prefix_and_hold_it_once(verifier):
    items = make_items(verifier, clips=(2,), per_clip=8, text_only=False)
    held, prefix_bytes = {}, 0
    for share in (True, False):
        decoder = BatchDecoder(verifier, [], share_prefix=share)
        for item in items:
            decoder.add(item)
        decoder.step()  # every row's question is now in its own positions
        held[share] = decoder.kv.nbytes()
        if share:
            (prefix,) = decoder.kv.prefixes.values()
            groups = decoder.kv.shared_prefixes().groups
            assert len(groups) == 1 and groups[0].rows.tolist() == list(range(8))
            # the clip's prefix-cache entry (the verifier's cache after the last join) is the tensor every row reads
            assert [k.data_ptr() for k, _ in prefix.layers] == [k.data_ptr() for k, _ in verifier.cache_tensors()]
            prefix_bytes = sum(t.numel() * t.element_size() for layer in prefix.layers for t in layer)
            own_bytes = sum(t.numel() * t.element_size() for layer in decoder.kv.layers for t in layer)
            assert decoder.kv.width < prefix.length  # no row holds the prefix in its own positions
    # 8 rows on one clip: one prefix + 8 questions, against 8 prefixes + 8 questions
    assert held[True] == prefix_bytes + own_bytes
    assert held[False] == held[True] + 7 * prefix_bytes  # each row of the copy path: the prefix, then the same


def test_a_batch_one_question_on_the_clip_while_rows_are_in_flight_changes_no_row(verifier):
    items = make_items(verifier, clips=(3,), per_clip=3, text_only=False)
    decoder = BatchDecoder(verifier, [AnswerDrafter()])
    for index, item in enumerate(items):
        decoder.add(BatchRequest(item.request, item.context, item.options, index))
    decoder.step()
    (prefix,) = decoder.kv.prefixes.values()
    before = [(k.clone(), v.clone()) for k, v in prefix.layers]
    # batch-1 use of the same clip entry: crops it back, appends its question and answer, rolls rejections back
    for draft_k in (0, 4):
        options = GenerationOptions(max_new_tokens=9, eos_token_ids=(NO_EOS,), draft_k=draft_k)
        CascadeDecoder(verifier, [AnswerDrafter()]).generate(items[1].request, items[1].context, options)
    # a question joining after that (the entry now holds a copy of the prefix) still joins the clip's one prefix
    decoder.add(BatchRequest(items[2].request, items[2].context, items[2].options, len(items)))
    assert len(decoder.kv.prefixes) == 1 and decoder.kv.shared_prefixes().groups[0].rows.numel() == len(items) + 1
    results = {}
    while decoder.rows:
        for result in decoder.step():
            results[result.tag] = result.token_ids
    for (k, v), (k0, v0) in zip(prefix.layers, before):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    expected = [batch_one(verifier, item) for item in items]
    assert results == dict(enumerate(expected + [expected[2]]))
    assert not decoder.kv.prefixes  # the last row gone, the prefix is let go

    decoder.add(items[0])
    (prefix,) = decoder.kv.prefixes.values()
    prefix.layers[0][0].add_(0)  # an in-place write into a shared prefix is caught, not served
    with pytest.raises(RuntimeError, match="modified in place"):
        decoder.step()


def test_batch_one_forwards_of_an_installed_model_are_unchanged():
    verifier = video_verifier("sdpa", seed=9)
    model = verifier.model
    prompt = VideoLlavaPrompter(TOK, model.config)("what is moving ?").target_ids
    inputs = dict(input_ids=prompt, pixel_values_videos=clip_pixels(7))
    generate = dict(inputs, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False,
                    eos_token_id=NO_EOS, pad_token_id=3)
    with torch.no_grad():
        before, generated = model(**inputs).logits, model.generate(**generate)
        assert shared_prefix.install(model) and shared_prefix.install(model)  # idempotent
        after = model(**inputs).logits
        assert torch.equal(model.generate(**generate), generated)
    assert shared_prefix.text_decoder(model).config._attn_implementation == "evcascade_shared_prefix|sdpa"
    assert torch.equal(before, after)  # a forward without shared_prefixes runs the wrapped sdpa itself


def test_a_text_only_verifier_shares_no_prefix_and_is_left_as_it_is_unless_packing():
    model = tiny_llama(vocab_size=V, seed=2)
    decoder = BatchDecoder(CausalLMVerifier(model), [], pack=False)
    assert not decoder.share_prefix and not decoder.pack and model.config._attn_implementation == "eager"
    decoder = BatchDecoder(CausalLMVerifier(model), [])  # packing wraps the attention too
    assert not decoder.share_prefix and decoder.pack
    assert model.config._attn_implementation == "evcascade_shared_prefix|eager"
    model.config._attn_implementation = "eager"
    model.config._attn_implementation = "flash_attention_2"  # not one it wraps: such a target copies prefixes
    assert not shared_prefix.install(model) and model.config._attn_implementation == "flash_attention_2"
