"""Fixtures for the drafter-model tests: a tiny tokenizer, a tiny Video-LLaVA config, a tiny model chain."""

from __future__ import annotations

import pytest
from model_helpers import make_encoder

from evcascade.models import AlignmentMLP, DraftLM, DraftLMConfig, FrameRefiner, FrameRefinerConfig
from evcascade.models.tiny import tiny_llama_config, tiny_tokenizer, tiny_video_llava_config


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def target_config(tokenizer):
    """Tiny Video-LLaVA: 8 frames, 32x32 at patch 16 -> 2x2 grid + CLS = 5 tokens per frame, D_t = 32."""
    return tiny_video_llava_config(tokenizer)


@pytest.fixture()
def chain(tokenizer, target_config):
    """Encoder (4x4 grid pooled to 2x2) -> alignment -> refiner -> draft LM, all sized for the tiny target."""
    encoder = make_encoder(spatial_grid=2)
    alignment = AlignmentMLP.for_models(encoder.config, target_config, hidden_size=24).eval()
    refiner = FrameRefiner(FrameRefinerConfig(hidden_size=32, fusion_size=8, num_frames=8)).eval()
    draft_lm = DraftLM(DraftLMConfig(text_config=tiny_llama_config(len(tokenizer)).to_dict(), visual_hidden_size=32,
                                     pool_frames=4, pool_grid=1)).eval()
    return encoder, alignment, refiner, draft_lm
