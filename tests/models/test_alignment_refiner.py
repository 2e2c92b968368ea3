"""AlignmentMLP (hand reference, grid/time resampling, sizing from a target) and FrameRefiner (identity at init)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import make_encoder
from transformers import AutoModel

from evcascade.errors import InputError
from evcascade.models import AlignmentConfig, AlignmentMLP, FrameRefiner, FrameRefinerConfig
from evcascade.models.tokens import interpolate_time, resize_patch_grid


def test_alignment_matches_a_hand_reference():
    cfg = AlignmentConfig(input_size=6, num_event_images=5, event_grid=2, target_hidden_size=4, target_num_frames=3,
                          target_grid=2, hidden_size=7)
    model = AlignmentMLP(cfg).eval()
    tokens = torch.randn(1, 5 + 1 + 4, 6)
    out = model(tokens)
    assert out.shape == (1, 3, 5, 4)
    temporal, spatial = tokens[0, :5], tokens[0, 5:]
    for t in range(3):
        pos = t * (5 - 1) / (3 - 1)  # frame t's time on the event-image axis (ends aligned)
        lo, frac = int(pos), pos - int(pos)
        when = temporal[lo] if frac == 0 else (1 - frac) * temporal[lo] + frac * temporal[lo + 1]
        for j in range(5):
            hidden = model.spatial_proj(spatial[j]) + model.temporal_proj(when) + model.frame_embed[t]
            torch.testing.assert_close(out[0, t, j], model.out_proj(F.gelu(hidden)))


def test_grid_and_time_resampling():
    cls_and_const = torch.cat([torch.zeros(1, 1, 3), torch.ones(1, 9, 3) * 2.5], dim=1)  # CLS 0, 3x3 grid of 2.5
    resized = resize_patch_grid(cls_and_const, 5)
    assert resized.shape == (1, 26, 3) and torch.equal(resized[:, 0], torch.zeros(1, 3))
    torch.testing.assert_close(resized[:, 1:], torch.full((1, 25, 3), 2.5))
    ramp = torch.arange(5, dtype=torch.float32).view(1, 5, 1)
    torch.testing.assert_close(interpolate_time(ramp, 9).flatten(), torch.arange(9) / 2)


def test_alignment_for_models_reads_the_target(target_config):
    enc = make_encoder(spatial_grid=2)
    model = AlignmentMLP.for_models(enc.config, target_config)
    c = model.config
    assert (c.input_size, c.event_grid, c.target_hidden_size, c.target_num_frames, c.target_grid) == (16, 2, 32, 8, 2)
    out = model(enc(torch.randn(1, 5, 3, 32, 32)))
    assert out.shape == (1, 8, 5, 32)  # the tiny target's video features: [B, 8, 1 + 2*2, 32]
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_alignment_rejects_wrong_tokens_and_layouts(target_config):
    model = AlignmentMLP(AlignmentConfig(input_size=6, event_grid=2, target_hidden_size=4, target_grid=2))
    with pytest.raises(InputError, match=r"\[B, 10, 6\].*got \(1, 10, 5\)"):
        model(torch.randn(1, 10, 5))
    with pytest.raises(InputError, match="spatio_temporal"):
        AlignmentMLP.for_models(make_encoder(aggregation="concat").config, target_config)


def test_refiner_is_identity_at_init_and_learns():
    refiner = FrameRefiner(FrameRefinerConfig(hidden_size=8, fusion_size=4, num_frames=3))
    draft, key = torch.randn(2, 3, 5, 8), torch.randn(2, 5, 8)
    assert torch.equal(refiner(draft, key), draft)
    target = draft + 1.0
    opt = torch.optim.Adam(refiner.parameters(), lr=0.1)
    loss0 = (refiner(draft, key) - target).pow(2).mean()
    loss0.backward()
    assert refiner.gate.grad.abs().sum() > 0  # only the gate can move first; it does
    for _ in range(8):
        opt.zero_grad()
        loss = (refiner(draft, key) - target).pow(2).mean()
        loss.backward()
        opt.step()
    assert loss.item() < 0.9 * loss0.item()
    assert refiner.key_proj.weight.grad.abs().sum() > 0  # the key-frame branch gets gradient once the gate is open
    assert not torch.equal(refiner(draft, key), draft)


def test_refiner_identity_survives_save_load(tmp_path):
    refiner = FrameRefiner(FrameRefinerConfig(hidden_size=8, fusion_size=4, num_frames=3))
    with torch.no_grad():
        refiner.gate.fill_(0.3)
    refiner.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    draft, key = torch.randn(1, 3, 5, 8), torch.randn(1, 5, 8)
    assert type(loaded) is FrameRefiner and torch.equal(refiner(draft, key), loaded(draft, key))


def test_refiner_rejects_mismatched_grids():
    refiner = FrameRefiner(FrameRefinerConfig(hidden_size=8, fusion_size=4, num_frames=3))
    with pytest.raises(InputError, match=r"key-frame features \[1, 5, 8\].*got \(1, 4, 8\)"):
        refiner(torch.randn(1, 3, 5, 8), torch.randn(1, 4, 8))
    with pytest.raises(InputError, match=r"\[B, 3, 1 \+ P, 8\]"):
        refiner(torch.randn(1, 2, 5, 8), torch.randn(1, 5, 8))
