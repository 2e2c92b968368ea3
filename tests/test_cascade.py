"""The user-facing Cascade: build, save, load, answer (cascade == target in greedy mode), stream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evcascade import Events, InputError, load_clip
from evcascade.cascade import Cascade, resolve_model
from evcascade.decoding.model_drafter import ModelDrafter
from evcascade.decoding.ngram import NGramDrafter
from evcascade.models.pipeline import KeyFrameEncoder, build_event_drafter_prefix
from evcascade.models.tiny import tiny_event_drafter_parts, tiny_tokenizer, tiny_video_llava

SAMPLE = Path(__file__).resolve().parents[1] / "evcascade" / "assets" / "sample"
EVENTS, VIDEO = SAMPLE / "events.h5", SAMPLE / "video.mp4"


def build_tiny_cascade(seed: int = 0) -> Cascade:
    """n-gram -> L1 (events) -> L2 (events + key frame) -> tiny Video-LLaVA, random weights."""
    tok = tiny_tokenizer()
    target = tiny_video_llava(tok, seed=seed)
    encoder, alignment, refiner, draft_lm = tiny_event_drafter_parts(target.config, tok, seed=seed)
    l1 = ModelDrafter(draft_lm, prefix_fn=build_event_drafter_prefix(
        encoder, draft_lm, alignment=alignment, target_config=target.config), name="events")
    l2 = ModelDrafter(draft_lm, prefix_fn=build_event_drafter_prefix(
        encoder, draft_lm, alignment=alignment, refiner=refiner,
        key_frame_encoder=KeyFrameEncoder.from_video_llava(target), target_config=target.config),
        name="events+frame")
    return Cascade.from_models(target, tok, [NGramDrafter(name="ngram"), l1, l2], name="tiny",
                               generation={"max_new_tokens": 12})


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cascade")
    build_tiny_cascade().save_pretrained(folder)
    return folder


def test_cascade_equals_target_in_greedy_mode_on_the_sample_clip():
    cascade = build_tiny_cascade()
    for prompt in ("what is moving in the scene ?", "what colour is the circle ?", "how many objects are there ?"):
        ours = cascade.generate(EVENTS, VIDEO, prompt, mode="cascade", max_new_tokens=16)
        reference = cascade.generate(EVENTS, VIDEO, prompt, mode="target", max_new_tokens=16)
        assert ours.token_ids == reference.token_ids and len(ours.token_ids) >= 1
        assert ours.text == reference.text
        assert ours.stats.num_tokens == len(ours.token_ids)
    assert {level.name for level in ours.stats.levels} == {"ngram", "events", "events+frame"}


def test_save_and_load_round_trip_gives_the_same_answer(tiny_folder):
    spec = json.loads((tiny_folder / "cascade.json").read_text())
    assert [level["type"] for level in spec["levels"]] == ["ngram", "event_drafter", "event_drafter"]
    assert (tiny_folder / "levels" / "events+frame" / "frame_refiner" / "config.json").is_file()
    loaded = Cascade.from_pretrained(tiny_folder)
    original = build_tiny_cascade()
    a = loaded.generate(EVENTS, VIDEO, "what is moving ?", max_new_tokens=10)
    b = original.generate(EVENTS, VIDEO, "what is moving ?", max_new_tokens=10, mode="target")
    assert a.token_ids == b.token_ids
    assert [level.name for level in loaded.levels] == ["ngram", "events", "events+frame"]


def test_objects_and_arrays_are_accepted_like_paths():
    cascade = build_tiny_cascade()
    by_path = cascade.generate(EVENTS, VIDEO, "what is moving ?", max_new_tokens=8)
    clip = load_clip(EVENTS, VIDEO, num_frames=8)  # the same window and frames the paths resolve to
    events, video = clip.events, clip.video
    by_object = cascade.generate(events, video, "what is moving ?", max_new_tokens=8)
    assert by_object.token_ids == by_path.token_ids
    by_array = cascade.generate(events.to_structured(), video.frames, "what is moving ?", max_new_tokens=8)
    assert len(by_array.token_ids) >= 1


def test_stream_yields_the_answer_text_in_pieces():
    cascade = build_tiny_cascade()
    items = list(cascade.stream(EVENTS, VIDEO, "what is moving ?", max_new_tokens=12))
    answer = items[-1]
    pieces = items[:-1]
    assert all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == answer.text


def test_second_question_on_the_same_clip_reuses_the_vision_features():
    cascade = build_tiny_cascade()
    calls = []
    # count the 8-frame video encodings (the L2 level's key-frame encoding runs the tower on 1 frame)
    def count(module, args, kwargs, output):
        pixels = args[0] if args else kwargs["pixel_values"]
        if pixels.shape[0] == cascade.num_frames:
            calls.append(1)

    handle = cascade.verifier.model.model.video_tower.register_forward_hook(count, with_kwargs=True)
    try:
        cascade.generate(EVENTS, VIDEO, "what is moving ?", max_new_tokens=4)
        first = len(calls)
        cascade.generate(EVENTS, VIDEO, "how many objects are there ?", max_new_tokens=4)
    finally:
        handle.remove()
    assert first == 1 and len(calls) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt=""), "prompt"),
    (dict(mode="fast"), "mode"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(bogus_option=1), "bogus_option"),
    (dict(start_us=10**12, end_us=10**12 + 5), "window|range"),
])
def test_bad_requests_name_the_bad_value(kwargs, match):
    cascade = build_tiny_cascade()
    prompt = kwargs.pop("prompt", "what is moving ?")
    with pytest.raises(InputError, match=match):
        cascade.generate(EVENTS, VIDEO, prompt, **kwargs)


def test_model_resolution_errors(tmp_path):
    assert resolve_model("bundled") is None or resolve_model("bundled").name == "cascade.json"
    windows = resolve_model("bundled-windows")
    assert windows is None or windows.parent.name == "demo_cascade_windows"
    with pytest.raises(InputError, match="not 'bundled', 'bundled-windows', a preset"):
        resolve_model(str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="has no cascade.json"):
        resolve_model(str(tmp_path))


def test_a_preset_whose_weights_are_absent_says_which_and_where(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # whatever this machine holds
    with pytest.raises(InputError, match="LanguageBind/Video-LLaVA-7B-hf.*JackFram/llama-68m.*bundled default"):
        Cascade.from_pretrained("video-llava-7b")


def test_events_alone_are_not_enough():
    cascade = build_tiny_cascade()
    with pytest.raises(InputError, match="video is required"):
        cascade.generate(EVENTS, None, "what is moving ?")
    # a window without events is valid: the event levels draft text-only and the answer is still the target's
    empty = Events.empty((64, 64))
    quiet = cascade.generate(empty, VIDEO, "what is moving ?", max_new_tokens=6, start_us=0, end_us=1_000_000)
    assert quiet.inputs["num_events"] == 0
    assert quiet.token_ids == cascade.generate(empty, VIDEO, "what is moving ?", max_new_tokens=6, start_us=0,
                                               end_us=1_000_000, mode="target").token_ids
    frames = np.zeros((8, 16, 16), np.uint8)
    with pytest.raises(InputError, match="uint8 \\[T, H, W, 3\\]"):
        cascade.generate(EVENTS, frames, "what is moving ?")


def test_modality_acceptance_is_opt_in_and_lossless_at_zero_lenience():
    cascade = build_tiny_cascade()
    reference = cascade.generate(EVENTS, VIDEO, "what is moving ?", max_new_tokens=8, mode="target")
    strict = cascade.generate(EVENTS, VIDEO, "what is moving ?", max_new_tokens=8, acceptance="modality",
                              lenience=0.0)
    assert strict.token_ids == reference.token_ids and strict.stats.acceptance.startswith("modality")
    assert cascade.generate(EVENTS, VIDEO, "what is moving ?", max_new_tokens=8).stats.acceptance == "lossless"
    text_only = Cascade.from_models(cascade.verifier.model, cascade.tokenizer)
    with pytest.raises(InputError, match="needs an event drafter level"):
        text_only.generate(EVENTS, VIDEO, "what is moving ?", acceptance="modality", lenience=0.2)
    with pytest.raises(InputError, match="lenience"):
        cascade.generate(EVENTS, VIDEO, "what is moving ?", acceptance="token_v3", lenience=1.5)


def byte_fallback_tokenizer():
    """A Llama-style tokenizer whose vocabulary lacks 'é' and '日本': they stream as UTF-8 byte tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["▁", "▁caf", "▁the", "▁is", "c", "a", "f", "e"]:
        vocab[piece] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("block", [1, 3])
def test_streamed_pieces_are_whole_characters_with_a_byte_fallback_tokenizer(block):
    import torch

    from evcascade.cascade import _text_streamer

    tok = byte_fallback_tokenizer()
    text = "the café is 日本 and so is the café"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert any(tok.convert_ids_to_tokens(i) == "<0xC3>" for i in ids)  # 'é' really is split over byte tokens
    pieces = []
    streamer = _text_streamer(tok, pieces.append)
    for start in range(0, len(ids), block):  # the engine hands over accepted blocks as [1, n]
        streamer.put(torch.tensor([ids[start:start + block]]))
    before_end = len(pieces)
    streamer.end()
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True) == text
    assert not any("\ufffd" in piece for piece in pieces), pieces
    assert before_end >= 4  # it streams as it goes, not all at the end


def test_generate_takes_every_packet_form_live_session_takes():
    cascade = build_tiny_cascade()
    clip = load_clip(EVENTS, VIDEO, num_frames=8)
    events, video = clip.events, clip.video
    reference = cascade.generate(events, video, "what is moving ?", max_new_tokens=6).token_ids
    as_tuple = (events.x, events.y, events.t_us, events.p)
    as_mapping = {"x": events.x, "y": events.y, "t_us": events.t_us, "p": events.p}
    for packet in (as_tuple, as_mapping, events.to_structured()):
        # without a sensor size the packet's is inferred (max + 1): the tiny encoder resizes either way
        assert len(cascade.generate(packet, video, "what is moving ?", max_new_tokens=6).token_ids) == len(reference)
    with pytest.raises(InputError, match="got int"):
        cascade.generate(42, video, "what is moving ?")


def test_sampling_knobs_without_sampling_are_said_to_be_ignored():
    cascade = build_tiny_cascade()
    with pytest.warns(UserWarning, match=r"temperature=0.5 ignored: decoding is greedy"):
        cascade.generate(EVENTS, VIDEO, "what is moving ?", max_new_tokens=2, temperature=0.5)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cascade.generate(EVENTS, VIDEO, "what is moving ?", max_new_tokens=2, temperature=0.5, do_sample=True, seed=0)
