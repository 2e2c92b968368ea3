"""EventEncoder: EventGPT's aggregation by hand, token budget, frozen tower, round trips, events input."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, CLIPVisionConfig, CLIPVisionModel

from evcascade.errors import InputError
from evcascade.models import EventEncoder, EventEncoderConfig
from evcascade.models.tokens import pool_patch_grid, spatio_temporal_tokens

from model_helpers import TINY_CLIP, make_encoder, make_events


def test_spatio_temporal_tokens_match_eventgpt_by_hand():
    feats = torch.randn(2, 5, 17, 3)  # [B, N, 1 + 4*4, D]
    out = spatio_temporal_tokens(feats)
    assert out.shape == (2, 5 + 17, 3)
    for b in range(2):
        for i in range(5):  # temporal token i: mean over image i's 17 tokens
            torch.testing.assert_close(out[b, i], feats[b, i].mean(0))
        for j in range(17):  # spatial token j: mean over the 5 images at position j
            torch.testing.assert_close(out[b, 5 + j], feats[b, :, j].mean(0))


def test_pool_patch_grid_keeps_cls_and_averages_blocks():
    tokens = torch.randn(1, 1 + 16, 2)
    pooled = pool_patch_grid(tokens, 2)
    assert pooled.shape == (1, 5, 2)
    assert torch.equal(pooled[:, 0], tokens[:, 0])
    grid = tokens[0, 1:].reshape(4, 4, 2)
    torch.testing.assert_close(pooled[0, 1], grid[:2, :2].reshape(-1, 2).mean(0))  # top-left 2x2 block
    torch.testing.assert_close(pooled[0, 4], grid[2:, 2:].reshape(-1, 2).mean(0))  # bottom-right block


def test_forward_equals_tower_then_aggregation():
    enc = make_encoder(spatial_grid=2)
    pixels = torch.randn(2, 5, 3, 32, 32)
    out = enc(pixels)
    assert out.shape == (2, enc.config.num_tokens, 16) == (2, 5 + 1 + 4, 16) and out.dtype == torch.float32
    hidden = enc.tower(pixel_values=pixels.flatten(0, 1)).last_hidden_state.unflatten(0, (2, 5))  # [B, N, 17, D]
    expected = spatio_temporal_tokens(pool_patch_grid(hidden, 2))
    torch.testing.assert_close(out, expected)


def test_feature_layer_concat_and_head():
    enc = make_encoder(feature_layer=-2, aggregation="concat", head_hidden_size=12, head_adaptor=True)
    pixels = torch.randn(1, 5, 3, 32, 32)
    out = enc(pixels)
    assert out.shape == (1, 5 * 17, 12)
    hidden = enc.tower(pixel_values=pixels[0], output_hidden_states=True).hidden_states[-2]  # [N, 17, 16]
    expected = enc.adaptor(enc.projector[2](F.gelu(enc.projector[0](hidden)))).flatten(0, 1)
    torch.testing.assert_close(out[0], expected)


def test_frozen_tower_gets_no_gradient_and_does_not_move():
    enc = make_encoder(head_hidden_size=8).train()
    before = {k: v.clone() for k, v in enc.tower.state_dict().items()}
    opt = torch.optim.AdamW(enc.parameters(), lr=0.1, weight_decay=0.1)
    enc(torch.randn(1, 5, 3, 32, 32)).pow(2).mean().backward()
    assert all(p.grad is None for p in enc.tower.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.projector.parameters())
    head_before = enc.projector[0].weight.detach().clone()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in enc.tower.state_dict().items())
    assert not torch.equal(head_before, enc.projector[0].weight)


def test_unfrozen_tower_trains():
    enc = make_encoder(freeze_tower=False)
    enc(torch.randn(1, 5, 3, 32, 32)).pow(2).mean().backward()
    assert enc.tower.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_save_load_round_trip_through_automodel(tmp_path):
    enc = make_encoder(spatial_grid=2, head_hidden_size=8, head_adaptor=True)
    enc.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert type(AutoConfig.from_pretrained(tmp_path)) is EventEncoderConfig
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is EventEncoder and loaded.config.spatial_grid == 2
    assert all(not p.requires_grad for p in loaded.tower.parameters())  # freeze survives loading
    pixels = torch.randn(1, 5, 3, 32, 32)
    assert torch.equal(enc(pixels), loaded(pixels))


def test_from_clip_takes_the_tower_weights(tmp_path):
    torch.manual_seed(3)
    clip = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).eval()
    clip.save_pretrained(tmp_path)
    enc = EventEncoder.from_clip(str(tmp_path), num_images=5).eval()
    pixels = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(enc(pixels[None])[0, :5], clip(pixel_values=pixels).last_hidden_state.mean(1))


def test_events_to_tokens_resizes_and_logs_it(caplog):
    enc = make_encoder()
    with caplog.at_level("INFO", logger="evcascade.models.event_encoder"):
        tokens = enc.encode_events(make_events(sensor_size=(40, 30)))
    assert any("40x30" in r.getMessage() and "32x32" in r.getMessage() for r in caplog.records)
    assert tokens.shape == (1, 5 + 17, 16)
    square = make_events(sensor_size=(32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a normal request warns about nothing
        batch = enc.encode_events([square, square])
    assert batch.shape == (2, 22, 16)
    torch.testing.assert_close(batch[0], batch[1])
    torch.testing.assert_close(enc.encode_events(square.to_torch()), batch[:1])  # TorchEvents is one window


def test_empty_window_encodes():
    from evcascade.events import Events

    tokens = make_encoder().encode_events(Events.empty((32, 32)))
    assert tokens.shape == (1, 22, 16) and torch.isfinite(tokens).all()


def test_bad_inputs():
    enc = make_encoder()
    with pytest.raises(InputError, match=r"\[B, 5, 3, 32, 32\].*\(1, 4, 3, 32, 32\)"):
        enc(torch.randn(1, 4, 3, 32, 32))
    with pytest.raises(InputError, match="spatial_grid=5 exceeds"):
        EventEncoderConfig(vision_config=TINY_CLIP, spatial_grid=5)
    with pytest.raises(InputError, match="aggregation"):
        EventEncoderConfig(vision_config=TINY_CLIP, aggregation="max")
