"""Provisional answers: the best drafting level's own greedy answer first, then the verified one judged against it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from evcascade import Events, InputError, load_clip
from evcascade.decoding.drafters import DraftContext
from evcascade.decoding.model_drafter import ModelDrafter
from evcascade.decoding.ngram import NGramDrafter
from evcascade.decoding.provisional import (ProvisionalAnswer, draft_answer, first_difference, mixed_answer,
                                              provisional_level)
from evcascade.decoding.stopping import StopChecker
from evcascade.live import LiveSession
from evcascade.models.tiny import tiny_llama

SAMPLE = Path(__file__).resolve().parents[1] / "evcascade" / "assets" / "sample"


@pytest.fixture(scope="module")
def cascade():
    from test_cascade import build_tiny_cascade

    return build_tiny_cascade(seed=4)


@pytest.fixture(scope="module")
def clip(cascade):
    return load_clip(SAMPLE / "events.h5", SAMPLE / "video.mp4", num_frames=cascade.num_frames)


def greedy_one_by_one(model, prompt: list[int], steps: int) -> list[int]:
    """The reference: the drafter LM's greedy tokens one full forward at a time (no cache)."""
    ids = list(prompt)
    for _ in range(steps):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("block", [1, 3, 8])
def test_draft_answer_is_the_levels_own_greedy_answer_cut_at_the_stop(block):
    model = tiny_llama(vocab_size=40, seed=2)
    prompt = [1, 7, 9, 3]
    reference = greedy_one_by_one(model, prompt, 10)
    level = ModelDrafter(model)
    context = DraftContext(torch.tensor([prompt]))
    assert draft_answer(level, context, StopChecker(eos_token_ids=(), max_new_tokens=10), block=block) == reference
    eos = reference[4]  # a token of the answer made EOS: the answer ends at its first occurrence, kept
    cut = reference[: reference.index(eos) + 1]
    assert draft_answer(level, context, StopChecker(eos_token_ids=(eos,), max_new_tokens=10), block=block) == cut


def test_mixed_answer_is_the_greedy_answer_of_the_weighted_sum_of_the_levels_log_probabilities():
    model_a, model_b = tiny_llama(vocab_size=40, seed=2), tiny_llama(vocab_size=40, seed=3)
    prompt = [1, 7, 9, 3]
    ids = list(prompt)
    for _ in range(9):  # the reference: full forwards, no cache
        with torch.no_grad():
            scores = (torch.log_softmax(model_a(torch.tensor([ids])).logits[0, -1], -1)
                      + 0.5 * torch.log_softmax(model_b(torch.tensor([ids])).logits[0, -1], -1))
        ids.append(int(scores.argmax()))
    reference = ids[len(prompt):]
    context = DraftContext(torch.tensor([prompt]))
    stopper = StopChecker(eos_token_ids=(), max_new_tokens=9)
    levels = [ModelDrafter(model_a, name="a"), ModelDrafter(model_b, name="b")]
    assert mixed_answer(levels, [1.0, 0.5], context, stopper) == reference
    alone = draft_answer(ModelDrafter(model_a), context, stopper)
    assert alone != reference  # the second level changes the answer: the check above is not the first level's
    assert mixed_answer(levels, [1.0, 0.0], context, stopper) == alone  # weight 0: the first level alone
    eos = reference[3]
    assert mixed_answer(levels, [1.0, 0.5], context, StopChecker(eos_token_ids=(eos,), max_new_tokens=9)) == \
        reference[: reference.index(eos) + 1]
    with pytest.raises(InputError, match="one weight per model level"):
        mixed_answer(levels, [1.0], context, stopper)


def test_the_provisional_level_is_the_top_model_level_or_the_one_named_and_an_ngram_alone_is_refused(cascade):
    assert provisional_level(cascade.levels).name == "events+frame"
    assert provisional_level(cascade.levels, "events").name == "events"
    with pytest.raises(InputError, match=r"'ngram' is not a model level of this cascade; choose one of \['events'"):
        provisional_level(cascade.levels, "ngram")
    with pytest.raises(InputError, match="needs a model drafting level"):
        provisional_level([NGramDrafter(name="ngram")])


def test_first_difference_in_tokens_and_characters():
    assert first_difference([1, 2, 3], [1, 2, 3], "a b c", "a b c") == (None, None)
    assert first_difference([1, 2], [1, 2, 3], "a b", "a b c") == (2, 3)
    assert first_difference([1, 5, 3], [1, 2, 3], "a x c", "a b c") == (1, 2)
    early = ProvisionalAnswer("a x c", [1, 5, 3], "l2", 0.01, 0.01)
    assert early.judged([1, 2, 3], "a b c").confirmed is False
    assert early.judged([1, 5, 3], "a x c").confirmed is True


def test_generate_delivers_the_provisional_first_and_the_verified_answer_is_unchanged(cascade, clip):
    events: list = []

    def on_provisional(early):
        events.append(("provisional", early))

    answer = cascade.generate(prompt="what is moving ?", clip=clip, max_new_tokens=10, provisional=on_provisional,
                              on_text=lambda piece: events.append(("text", piece)))
    plain = cascade.generate(prompt="what is moving ?", clip=clip, max_new_tokens=10)
    target = cascade.generate(prompt="what is moving ?", clip=clip, max_new_tokens=10, mode="target")
    # drafted beside the verified decode: delivered once, before generate returns (not necessarily before the text)
    assert sum(kind == "provisional" for kind, _ in events) == 1
    early = next(value for kind, value in events if kind == "provisional")
    assert early.provisional and early.level == "events+frame" and 0 < early.latency_s <= answer.latency_s
    assert early.confirmed is None  # delivered before the verdict exists
    assert answer.token_ids == plain.token_ids == target.token_ids  # lossless, provisional or not
    judged = answer.provisional
    assert judged.token_ids == early.token_ids
    assert judged.confirmed == (early.token_ids == answer.token_ids)
    if not judged.confirmed:
        index = judged.first_difference_token
        assert early.token_ids[:index] == answer.token_ids[:index]
    # the provisional answer is the level's own greedy answer on the same context
    level = provisional_level(cascade.levels)
    built = cascade.prompter("what is moving ?")
    context = DraftContext(built.text_ids, events=clip.events, video=clip.video)
    stopper = StopChecker(eos_token_ids=cascade.verifier.eos_token_ids, max_new_tokens=10)
    assert draft_answer(level, context, stopper) == early.token_ids
    assert answer.to_dict()["provisional"]["confirmed"] == judged.confirmed
    with pytest.raises(InputError, match="provisional must be a callable"):
        cascade.generate(prompt="what is moving ?", clip=clip, max_new_tokens=4, provisional="yes")


def test_live_session_ask_with_provisional_yields_it_before_the_verified_answer(cascade):
    session = LiveSession(cascade, (32, 24), event_window_us=100_000, video_window_us=400_000)
    rng = np.random.default_rng(0)
    for i in range(8):
        session.push_frame(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), timestamp_us=i * 50_000)
    t = np.sort(rng.integers(0, 400_000, 500))
    session.push_events(Events.from_arrays(rng.integers(0, 32, 500), rng.integers(0, 24, 500), t,
                                           rng.integers(0, 2, 500), (32, 24)))
    first, second = list(session.ask("what is moving ?", provisional=True, max_new_tokens=6))
    assert isinstance(first, ProvisionalAnswer) and first.confirmed is None
    assert second.provisional is not None and second.provisional.token_ids == first.token_ids
    plain = session.ask("what is moving ?", max_new_tokens=6)
    assert plain.token_ids == second.token_ids and plain.provisional is None
    with pytest.raises(InputError, match="max_new_tokens"):  # an error on the worker reaches the asking thread
        list(session.ask("what is moving ?", provisional=True, max_new_tokens=0))


def test_cli_provisional_prints_it_first_and_the_verdict(cascade, tmp_path, capsys):
    from evcascade import infer

    folder = tmp_path / "cascade"
    cascade.save_pretrained(folder)
    base = ["--events", str(SAMPLE / "events.h5"), "--video", str(SAMPLE / "video.mp4"), "--model", str(folder),
            "--max-new-tokens", "6"]
    assert infer.main(base + ["--provisional"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("provisional (events+frame, ") and "unverified" in out[0]
    assert out[1].startswith("answer: ")
    assert any(line.startswith("verified in ") and ("confirmed" in line or "differs" in line) for line in out)
    assert infer.main(base + ["--provisional", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["provisional"]["provisional"] is True and result["provisional"]["level"] == "events+frame"
    assert result["provisional"]["confirmed"] == (result["provisional"]["token_ids"] == result["token_ids"])


def test_ask_times_out_with_a_clear_error_instead_of_hanging(cascade):
    session = LiveSession(cascade, (32, 24), event_window_us=100_000, video_window_us=400_000)
    rng = np.random.default_rng(2)
    for i in range(8):
        session.push_frame(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), timestamp_us=i * 50_000)
    with cascade._lock:  # another request holds the verifier
        with pytest.raises(TimeoutError, match="within timeout_s=0.3"):
            session.ask("what is moving ?", max_new_tokens=3, timeout_s=0.3)
        answers = iter(session.ask("what is moving ?", max_new_tokens=3, provisional=True, timeout_s=5))
        assert isinstance(next(answers), ProvisionalAnswer)  # the provisional answer does not wait for the verifier
        with pytest.raises(TimeoutError, match="within timeout_s=5"):
            next(answers)
    # the verifier free again, the same ask answers
    assert len(session.ask("what is moving ?", max_new_tokens=3, timeout_s=60).token_ids) == 3


def test_the_verified_decode_does_not_wait_for_the_provisional_answer(cascade, clip):
    """The provisional callback holds its thread until the verified decode has streamed text: drafted before the
    decode on the same thread (as it once was), this would wait out the gate and fail."""
    streamed = threading.Event()
    seen = {}

    def on_provisional(early):
        seen["gate_opened"] = streamed.wait(timeout=60)

    answer = cascade.generate(prompt="what is moving ?", clip=clip, max_new_tokens=8, provisional=on_provisional,
                              on_text=lambda piece: streamed.set())
    assert seen["gate_opened"] is True
    assert answer.token_ids == cascade.generate(prompt="what is moving ?", clip=clip, max_new_tokens=8).token_ids
    assert answer.provisional is not None and answer.provisional.confirmed == (answer.provisional.token_ids
                                                                               == answer.token_ids)
    # the drafting copy shares the level's weights, not its state
    drafting = cascade._provisional_drafting
    level = provisional_level(cascade.levels)
    assert drafting.level is not level and drafting.level.model is level.model
    assert drafting.level.prefix_fn is not level.prefix_fn and drafting.level.prefix_fn.encoder is level.prefix_fn.encoder
    # another level named: its own answer, drafted by a copy of it
    cascade.provisional_level = "events"
    try:
        early = cascade.draft_provisional("what is moving ?", clip, max_new_tokens=8).result(timeout=60)
        built = cascade.prompter("what is moving ?")
        context = DraftContext(built.text_ids, events=clip.events, video=clip.video)
        stopper = StopChecker(eos_token_ids=cascade.verifier.eos_token_ids, max_new_tokens=8)
        assert early.level == "events" and early.token_ids == draft_answer(cascade.levels[1], context, stopper)
        cascade.provisional_level, cascade.provisional_mix = None, 0.5  # the other model levels draft with it
        early = cascade.draft_provisional("what is moving ?", clip, max_new_tokens=8).result(timeout=60)
        levels = [provisional_level(cascade.levels), cascade.levels[1]]
        assert early.level == "events+frame+0.5*events"
        assert early.token_ids == mixed_answer(levels, [1.0, 0.5], context, stopper)
        cascade.provisional_mix = -1.0
        with pytest.raises(InputError, match="provisional_mix must be a number >= 0, got -1.0"):
            cascade.draft_provisional("what is moving ?", clip, max_new_tokens=8)
    finally:
        cascade.provisional_level, cascade.provisional_mix = None, 0.0
    # an error in the callback reaches the caller, after the verified decode
    def broken(early):
        raise RuntimeError("the robot's callback failed")

    with pytest.raises(RuntimeError, match="the robot's callback failed"):
        cascade.generate(prompt="what is moving ?", clip=clip, max_new_tokens=4, provisional=broken)
    with pytest.raises(InputError, match="on_answer must be a callable"):
        cascade.draft_provisional("what is moving ?", clip, on_answer="print")


def live_session(cascade, seed: int, **kwargs) -> LiveSession:
    session = LiveSession(cascade, (32, 24), event_window_us=100_000, video_window_us=400_000, **kwargs)
    rng = np.random.default_rng(seed)
    for i in range(8):
        session.push_frame(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), timestamp_us=i * 50_000)
    t = np.sort(rng.integers(0, 400_000, 500))
    session.push_events(Events.from_arrays(rng.integers(0, 32, 500), rng.integers(0, 24, 500), t,
                                           rng.integers(0, 2, 500), (32, 24)))
    return session


def test_batched_session_serves_provisional_answers_beside_the_batch_scheduler(cascade, monkeypatch):
    batched = live_session(cascade, 5, batched=True)
    plain = live_session(cascade, 5)
    reference = plain.ask("what is moving ?", max_new_tokens=6)
    submitted = []
    submit = cascade.submit

    def counting_submit(*args, **kwargs):
        submitted.append(args[0])
        return submit(*args, **kwargs)

    monkeypatch.setattr(cascade, "submit", counting_submit)
    first, second = list(batched.ask("what is moving ?", provisional=True, max_new_tokens=6))
    assert isinstance(first, ProvisionalAnswer) and first.confirmed is None
    assert second.token_ids == reference.token_ids  # lossless through the scheduler
    assert second.provisional.token_ids == first.token_ids
    assert second.provisional.confirmed == (first.token_ids == second.token_ids)
    assert submitted == ["what is moving ?"]  # verified through the batch scheduler
    received = []
    answer = batched.ask("what is moving ?", provisional=received.append, max_new_tokens=6, timeout_s=60)
    assert len(received) == 1 and answer.provisional.token_ids == received[0].token_ids == first.token_ids
    assert answer.token_ids == reference.token_ids
    # several threads asking with provisional answers at once: every one gets both, each lossless
    results: list = []

    def ask() -> None:
        results.append(list(batched.ask("what is moving ?", provisional=True, max_new_tokens=6, timeout_s=60)))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and len(submitted) == 5
    assert all(e.token_ids == first.token_ids and v.token_ids == reference.token_ids for e, v in results)
    with pytest.raises(InputError, match="provisional must be True, False, None or a callable"):
        batched.ask("what is moving ?", provisional="yes")
