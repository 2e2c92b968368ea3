"""Events (+ key frame) -> prefix embeddings through the whole chain, size checks, and a DraftLM drafter in the
engine keeping greedy output identical to VideoLlavaForConditionalGeneration.generate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import make_encoder, make_events

from evcascade.decoding.drafters import DraftContext
from evcascade.errors import InputError
from evcascade.models import AlignmentConfig, AlignmentMLP, FrameRefiner, FrameRefinerConfig
from evcascade.models.pipeline import KEY_FRAME_FEATURES, KeyFrameEncoder, build_event_drafter_prefix
from evcascade.preprocess import preprocess_frames
from evcascade.models.tiny import tiny_video_llava
from evcascade.video import Video


@pytest.fixture(scope="module")
def video_llava(tokenizer):
    return tiny_video_llava(tokenizer, seed=0)


def make_video(seed: int = 0) -> Video:
    frames = np.random.default_rng(seed).integers(0, 256, (8, 36, 48, 3), dtype=np.uint8)
    return Video(frames=frames, timestamps_us=np.arange(8) * 50_000)


def test_l1_prefix_equals_the_chain_by_hand(chain, target_config):
    encoder, alignment, _, draft_lm = chain
    prefix_fn = build_event_drafter_prefix(encoder, draft_lm, alignment=alignment, target_config=target_config)
    events = make_events(sensor_size=(32, 32))
    prefix = prefix_fn(DraftContext(prompt_ids=torch.tensor([[1, 5]]), events=events))
    assert prefix.shape == (1, 4 * (1 + 1), 32) and prefix.dtype == torch.float32  # 4 frames x (CLS + 1x1)
    with torch.no_grad():
        expected = draft_lm.embed_visual(alignment(encoder.encode_events(events)))
    torch.testing.assert_close(prefix, expected)
    assert prefix_fn(DraftContext(prompt_ids=torch.tensor([[1]]))) is None  # no events: text-only drafting


def test_l2_prefix_uses_the_key_frame(chain, target_config, video_llava):
    encoder, alignment, refiner, draft_lm = chain
    key_frames = KeyFrameEncoder.from_video_llava(video_llava)
    l1 = build_event_drafter_prefix(encoder, draft_lm, alignment=alignment)
    l2 = build_event_drafter_prefix(encoder, draft_lm, alignment=alignment, refiner=refiner,
                                    key_frame_encoder=key_frames, target_config=target_config)
    events, video = make_events(sensor_size=(32, 32)), make_video()
    context = DraftContext(prompt_ids=torch.tensor([[1, 5]]), events=events, video=video)
    torch.testing.assert_close(l2(context), l1(context))  # the refiner is the identity at init
    assert l2(DraftContext(torch.tensor([[1, 7]]), events=events, video=video)) is l2(context)  # one clip: encoded once
    with torch.no_grad():
        refiner.gate.fill_(0.5)
    events, video = make_events(sensor_size=(32, 32)), make_video()  # new objects: the memo keys on identity
    context = DraftContext(prompt_ids=torch.tensor([[1, 5]]), events=events, video=video)
    refined = l2(context)
    assert refined.shape == l1(context).shape and not torch.allclose(refined, l1(context))
    features = key_frames(video.key_frame)
    assert features.shape == (1, 5, 32)
    assert torch.equal(l2(DraftContext(torch.tensor([[1]]), events=events, extras={KEY_FRAME_FEATURES: features})), refined)
    with pytest.raises(InputError, match="key frame"):
        l2(DraftContext(torch.tensor([[1]]), events=events))


def test_key_frame_features_are_the_target_video_features_before_its_projector(video_llava):
    frame = make_video().key_frame
    features = KeyFrameEncoder.from_video_llava(video_llava)(frame)  # [1, 5, 32]
    pixels = preprocess_frames(np.repeat(frame[None], 8, axis=0), size=32, crop_size=32)[None]  # [1, 8, 3, 32, 32]
    with torch.no_grad():
        target = video_llava.model.get_video_features(pixel_values_videos=pixels,
                                                      vision_feature_layer=video_llava.config.vision_feature_layer)
        projected = video_llava.model.multi_modal_projector(features)
    torch.testing.assert_close(projected[0], target.pooler_output[0], rtol=1e-4, atol=1e-5)


def test_events_are_encoded_once_per_window(chain):
    encoder, alignment, _, draft_lm = chain
    calls = []
    encoder.register_forward_hook(lambda *args: calls.append(1))
    prefix_fn = build_event_drafter_prefix(encoder, draft_lm, alignment=alignment)
    events = make_events(sensor_size=(32, 32))
    prefix_fn(DraftContext(torch.tensor([[1]]), events=events))
    prefix_fn(DraftContext(torch.tensor([[1, 6]]), events=events))
    assert len(calls) == 1
    prefix_fn(DraftContext(torch.tensor([[1]]), events=make_events(sensor_size=(32, 32), seed=1)))
    assert len(calls) == 2


def test_the_memos_hold_the_last_clips_of_several_streams(chain):
    encoder, alignment, _, draft_lm = chain
    calls = []
    encoder.register_forward_hook(lambda *args: calls.append(1))
    prefix_fn = build_event_drafter_prefix(encoder, draft_lm, alignment=alignment)
    prefix_fn.memo_size = 2
    clips = [make_events(sensor_size=(32, 32), seed=seed) for seed in range(3)]
    for events in (clips[0], clips[1], clips[0], clips[1]):  # two cameras asked in turn: each clip encoded once
        prefix_fn(DraftContext(torch.tensor([[1]]), events=events))
    assert len(calls) == 2
    prefix_fn(DraftContext(torch.tensor([[1]]), events=clips[2]))  # a third clip evicts the least recent (0)
    prefix_fn(DraftContext(torch.tensor([[1]]), events=clips[1]))
    assert len(calls) == 3
    prefix_fn(DraftContext(torch.tensor([[1]]), events=clips[0]))
    assert len(calls) == 4


def test_mismatched_sizes_name_both_sides(chain, target_config):
    encoder, alignment, refiner, draft_lm = chain
    other = AlignmentMLP(AlignmentConfig(input_size=16, event_grid=2, target_hidden_size=24, target_grid=2))
    with pytest.raises(InputError, match=r"AlignmentMLP target_hidden_size=24 but DraftLM input \(visual_hidden_size\)=32"):
        build_event_drafter_prefix(encoder, draft_lm, alignment=other)
    with pytest.raises(InputError, match=r"EventEncoder output_size=16 but AlignmentMLP input_size=8"):
        build_event_drafter_prefix(encoder, draft_lm, alignment=AlignmentMLP(AlignmentConfig(input_size=8)))
    with pytest.raises(InputError, match=r"EventEncoder output_grid=4 but AlignmentMLP event_grid=2"):
        build_event_drafter_prefix(make_encoder(), draft_lm, alignment=alignment)
    small = FrameRefiner(FrameRefinerConfig(hidden_size=16, num_frames=8))
    with pytest.raises(InputError, match=r"target_hidden_size=32 but FrameRefiner hidden_size=16"):
        build_event_drafter_prefix(encoder, draft_lm, alignment=alignment, refiner=small)
    grid3 = AlignmentMLP(AlignmentConfig(input_size=16, event_grid=2, target_hidden_size=32, target_grid=3))
    with pytest.raises(InputError, match=r"AlignmentMLP target_grid=3 but target patch grid=2"):
        build_event_drafter_prefix(encoder, draft_lm, alignment=grid3, target_config=target_config)
    with pytest.raises(InputError, match=r"EventEncoder output_size=16 but DraftLM input \(visual_hidden_size\)=32"):
        build_event_drafter_prefix(encoder, draft_lm)


@pytest.mark.parametrize("seed", [0, 1])
def test_draft_lm_drafter_in_the_engine_is_lossless(chain, tokenizer, target_config, video_llava, seed):
    from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
    from evcascade.decoding.model_drafter import ModelDrafter
    from evcascade.decoding.prompting import VideoLlavaPrompter
    from evcascade.decoding.verifier import VideoLlavaVerifier, VerifyRequest

    encoder, alignment, refiner, draft_lm = chain
    with torch.no_grad():
        refiner.gate.fill_(0.5)
    key_frames = KeyFrameEncoder.from_video_llava(video_llava)
    levels = [
        ModelDrafter(draft_lm, prefix_fn=build_event_drafter_prefix(encoder, draft_lm, alignment=alignment), name="l1"),
        ModelDrafter(draft_lm, prefix_fn=build_event_drafter_prefix(
            encoder, draft_lm, alignment=alignment, refiner=refiner, key_frame_encoder=key_frames), name="l2"),
    ]
    prompt = VideoLlavaPrompter(tokenizer, target_config)("what colour is the moving object ?")
    video = make_video(seed)
    pixels = preprocess_frames(video.frames, size=32, crop_size=32)[None]  # [1, 8, 3, 32, 32]
    context = DraftContext(prompt_ids=prompt.text_ids, events=make_events(sensor_size=(32, 32), seed=seed), video=video)
    decoder = CascadeDecoder(VideoLlavaVerifier(video_llava), levels)
    result = decoder.generate(VerifyRequest(prompt.target_ids, pixels), context,
                              GenerationOptions(max_new_tokens=12, draft_k=3, adaptive=False, eos_token_ids=()))
    with torch.no_grad():
        reference = video_llava.generate(input_ids=prompt.target_ids, attention_mask=torch.ones_like(prompt.target_ids),
                                         pixel_values_videos=pixels, max_new_tokens=12, do_sample=False,
                                         eos_token_id=None)
    assert result.token_ids[0].tolist() == reference[0, prompt.target_ids.shape[1]:].tolist()
    assert result.token_ids.shape[1] == 12
    drafted = {level.name: level.drafted + sum(level.inner_drafted_by_position) for level in result.stats.levels}
    assert all(count > 0 for count in drafted.values()), drafted  # both visual levels really drafted


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_chain_runs_on_cuda_in_bfloat16(chain):
    encoder, alignment, refiner, draft_lm = (m.to("cuda", torch.bfloat16) for m in chain)
    prefix_fn = build_event_drafter_prefix(encoder, draft_lm, alignment=alignment)
    prefix = prefix_fn(DraftContext(torch.tensor([[1]]), events=make_events(sensor_size=(32, 32))))
    assert prefix.device.type == "cuda" and prefix.dtype == torch.bfloat16 and prefix.shape == (1, 8, 32)
    assert torch.isfinite(prefix.float()).all()
