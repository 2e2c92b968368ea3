"""Batched verification: every request's answer equals its own batch-1 answer, whatever the mix of requests."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from evcascade import InputError, load_clip
from evcascade.decoding.batch import BatchDecoder, BatchRequest, KVBatch
from evcascade.decoding.scheduler import BatchScheduler
from evcascade.decoding.drafters import Draft, DraftContext, Drafter
from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
from evcascade.decoding.model_drafter import ModelDrafter
from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest
from evcascade.models.tiny import tiny_llama

VOCAB = 48
SAMPLE = Path(__file__).resolve().parents[2] / "evcascade" / "assets" / "sample"


class ScriptedDrafter(Drafter):
    """Proposes the row's known answer (``extras["answer"]``) but a wrong id wherever ``extras["wrong"]`` says,
    so rows of one batch are drafted right, half right or all wrong."""

    name, can_review = "scripted", True

    def begin(self, context, **kwargs):
        self.answer, self.wrong = context.extras["answer"], context.extras["wrong"]

    def propose(self, generated, k):
        start = generated.shape[1]
        ids = [(t + 1) % VOCAB if self.wrong(start + i) else t
               for i, t in enumerate(self.answer[start: start + k])]
        ids += [3] * (k - len(ids))
        return Draft(torch.tensor([ids], dtype=torch.long))


@pytest.fixture(scope="module")
def verifier():
    return CausalLMVerifier(tiny_llama(vocab_size=VOCAB, seed=11))


def batch_one(verifier, item) -> list[int]:
    options = GenerationOptions(**{**item.options.__dict__, "draft_k": 0})
    return CascadeDecoder(verifier, []).generate(item.request, DraftContext(item.request.prompt_ids),
                                                 options).token_ids[0].tolist()


def random_items(verifier, seed: int, count: int, *, scripted: bool) -> list[BatchRequest]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
        prompt = torch.tensor([rng.integers(1, VOCAB, rng.integers(1, 12)).tolist()])
        sample = bool(rng.integers(0, 2))
        options = GenerationOptions(max_new_tokens=int(rng.integers(1, 24)), draft_k=int(rng.integers(0, 7)),
                                    do_sample=sample, temperature=0.8, seed=int(rng.integers(0, 1000)),
                                    eos_token_ids=(int(rng.integers(0, VOCAB)),) if rng.random() < 0.5 else ())
        item = BatchRequest(VerifyRequest(prompt), DraftContext(prompt), options)
        if scripted:
            answer = batch_one(verifier, item)
            mode = i % 4  # right, all wrong, wrong every third, wrong from position 2 on
            wrong = [lambda p: False, lambda p: True, lambda p: p % 3 == 2, lambda p: p >= 2][mode]
            item.context.extras.update(answer=answer + [5] * 30, wrong=wrong)
        items.append(item)
    return items


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("seed", range(6))
def test_every_row_equals_its_batch_one_answer_with_disagreeing_drafters(verifier, seed, pack):
    items = random_items(verifier, seed, 5, scripted=True)
    decoder = BatchDecoder(verifier, [ScriptedDrafter()], pack=pack)
    assert decoder.pack == pack
    results = decoder.run(items)
    assert [r.token_ids for r in results] == [batch_one(verifier, item) for item in items]
    rows_right = [r for item, r in zip(items, results) if item.context.extras["wrong"](10**6) is False
                  and item.options.draft_k and len(r.token_ids) > 3]
    for r in rows_right:  # a row drafted right needs fewer forwards than tokens
        assert r.stats.target_forwards < len(r.token_ids)


@pytest.mark.parametrize("seed", range(2))
def test_a_model_drafter_per_row_and_target_only_batches_are_lossless(verifier, seed):
    items = random_items(verifier, 100 + seed, 6, scripted=False)
    reference = [batch_one(verifier, item) for item in items]
    drafter = ModelDrafter(tiny_llama(vocab_size=VOCAB, seed=3), name="lm")
    assert [r.token_ids for r in BatchDecoder(verifier, [drafter]).run(items)] == reference
    assert [r.token_ids for r in BatchDecoder(verifier, []).run(items)] == reference


def test_requests_join_between_steps_and_the_cache_holds_no_rejected_tokens(verifier):
    items = random_items(verifier, 7, 8, scripted=True)
    reference = {i: batch_one(verifier, item) for i, item in enumerate(items)}
    decoder = BatchDecoder(verifier, [ScriptedDrafter()])
    results, pending = {}, list(enumerate(items))
    while pending or decoder.rows:
        if pending:  # one newcomer per step: continuous batching
            index, item = pending.pop(0)
            done = decoder.add(BatchRequest(item.request, item.context, item.options, index))
            if done is not None:
                results[index] = done.token_ids
        for result in decoder.step():
            results[result.tag] = result.token_ids
        if decoder.rows:  # each row's real positions are exactly prompt + answer so far (pending excluded)
            real = decoder.kv.mask.sum(dim=1).tolist()
            assert real == [row.cached for row in decoder.rows]
            assert [row.cached for row in decoder.rows] == [
                row.prompt_ids.shape[1] + row.generated.shape[1] - 1 for row in decoder.rows]
            assert decoder.kv.width == max(real)  # padding columns shared by every row are trimmed
    assert results == reference


def test_a_packed_forward_gives_the_padded_forwards_logits_and_cache():
    """One step over rows of ragged blocks, packed ([1, T]) and padded ([B, N]): the same logits at every real
    position and the same keys/values at every real cache position."""
    verifier_model = CausalLMVerifier(tiny_llama(vocab_size=VOCAB, seed=4))
    items = random_items(verifier_model, 21, 5, scripted=True)
    steps = {}
    for pack in (True, False):
        decoder = BatchDecoder(verifier_model, [ScriptedDrafter()], pack=pack)
        for item in items:
            decoder.add(item)
        captured = {}
        forward = decoder._forward

        def spy(*args, **kwargs):
            captured["out"] = forward(*args, **kwargs)
            return captured["out"]

        decoder._forward = spy
        decoder.step()
        steps[pack] = captured["out"][0], decoder.kv
    packed_logits, packed_kv = steps[True]
    padded_logits, padded_kv = steps[False]
    real = packed_logits.abs().sum(dim=-1) > 0  # [B, N] the packed forward leaves padding at zero
    assert real.sum() < real.numel()  # the blocks were ragged
    assert torch.allclose(packed_logits[real], padded_logits[real], atol=1e-5)
    assert torch.equal(packed_kv.mask, padded_kv.mask)
    for (packed_keys, packed_values), (padded_keys, padded_values) in zip(packed_kv.layers, padded_kv.layers):
        kept = packed_kv.mask  # [B, S] the positions the rows keep (prompt + accepted)
        assert torch.allclose(packed_keys.transpose(1, 2)[kept], padded_keys.transpose(1, 2)[kept], atol=1e-5)
        assert torch.allclose(packed_values.transpose(1, 2)[kept], padded_values.transpose(1, 2)[kept], atol=1e-5)


def test_kv_batch_cuts_ragged_tails_by_shifting_rows():
    kv = KVBatch()
    kv.add_row([(torch.arange(3.0).view(1, 1, 3, 1), torch.arange(3.0).view(1, 1, 3, 1))])
    kv.add_row([(torch.arange(5.0).view(1, 1, 5, 1), torch.arange(5.0).view(1, 1, 5, 1))])
    assert kv.mask.tolist() == [[False, False, True, True, True], [True] * 5]
    kv.cut_tails([2, 1])  # row 0 loses its last 2, row 1 its last 1
    assert kv.mask.tolist() == [[False, False, False, True], [True] * 4]
    assert kv.layers[0][0][0, 0, -1, 0] == 0 and kv.layers[0][0][1, 0, -1, 0] == 3
    kv.keep_rows([0])
    assert kv.width == 1 and kv.layers[0][0].flatten().tolist() == [0.0]


def test_bad_requests_are_refused_clearly(verifier):
    decoder = BatchDecoder(verifier, [])
    prompt = torch.tensor([[1, 2]])
    with pytest.raises(InputError, match="lossless"):
        decoder.add(BatchRequest(VerifyRequest(prompt), DraftContext(prompt),
                                 GenerationOptions(acceptance="token_v1", lenience=0.5)))
    with pytest.raises(InputError, match=r"\[1, L >= 1\]"):
        decoder.add(BatchRequest(VerifyRequest(torch.tensor([[1], [2]])), DraftContext(prompt)))


def test_the_scheduler_serves_many_threads_and_fails_only_the_bad_request(verifier):
    items = random_items(verifier, 21, 6, scripted=True)
    scheduler = BatchScheduler(BatchDecoder(verifier, [ScriptedDrafter()]), max_batch=4)
    bad = BatchRequest(VerifyRequest(torch.tensor([[VOCAB + 5]])),
                       DraftContext(torch.tensor([[1]]), extras={"answer": [1, 2, 3], "wrong": lambda p: False}),
                       GenerationOptions(max_new_tokens=3))
    futures = [None] * len(items)

    def ask(i):
        futures[i] = scheduler.submit(items[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    bad_future = scheduler.submit(bad)
    for t in threads:
        t.join()
    assert [f.result(timeout=60).token_ids for f in futures] == [batch_one(verifier, item) for item in items]
    with pytest.raises(InputError, match="must lie in"):
        bad_future.result(timeout=60)
    assert 1 < max(scheduler.batch_sizes) <= 4 and sum(scheduler.batch_sizes.values()) > 0
    scheduler.close()
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit(items[0])


def test_cascade_generate_batch_and_batched_live_sessions_equal_generate():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_cascade import build_tiny_cascade

    from evcascade import Events
    from evcascade.live import LiveSession

    cascade = build_tiny_cascade(seed=5)
    clip = load_clip(SAMPLE / "events.h5", SAMPLE / "video.mp4", num_frames=cascade.num_frames)
    questions = ["what is moving ?", "describe the video .", "which is faster ?"]
    requests = [dict(prompt=q, clip=clip, max_new_tokens=3 + 4 * i, do_sample=i == 1, seed=i)
                for i, q in enumerate(questions)]
    answers = cascade.generate_batch(requests)
    for request, answer in zip(requests, answers):
        options = {k: v for k, v in request.items() if k not in ("prompt", "clip")}
        assert answer.token_ids == cascade.generate(prompt=request["prompt"], clip=clip, **options).token_ids
    target_only = cascade.generate_batch(requests, mode="target")
    assert [a.token_ids for a in target_only] == [a.token_ids for a in answers]
    with pytest.raises(InputError, match="'prompt'"):
        cascade.generate_batch([{"clip": clip}])

    # two sessions on one cascade, asked from several threads, through the shared scheduler
    sessions = [LiveSession(cascade, (32, 24), event_window_us=100_000, video_window_us=400_000, batched=True)
                for _ in range(2)]
    rng = np.random.default_rng(1)
    for session in sessions:
        for i in range(8):
            session.push_frame(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), timestamp_us=i * 50_000)
        session.push_events(Events.from_arrays(rng.integers(0, 32, 300), rng.integers(0, 24, 300),
                                               np.sort(rng.integers(0, 400_000, 300)), rng.integers(0, 2, 300),
                                               (32, 24)))
    got = {}

    def ask(s, q):
        got[(s, q)] = sessions[s].ask(q, max_new_tokens=6, timeout_s=120).token_ids

    threads = [threading.Thread(target=ask, args=(s, q)) for s in range(2) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (s, q), ids in got.items():
        session = sessions[s]
        session.batched = False
        assert ids == session.ask(q, max_new_tokens=6).token_ids
        session.batched = True
    assert len(got) == 6
    with pytest.raises(InputError, match="timeout_s"):
        sessions[0].ask("what is moving ?", timeout_s=0)
