"""EventGPT checkpoints: a fake checkpoint in EventGPT's own key layout (tiny dims) loads into our modules and
computes what EventGPT's forward computes; missing / unexpected keys are named; .bin loads with weights_only."""

from __future__ import annotations

import json

import pytest
import torch
from model_helpers import TINY_CLIP, make_events
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaForCausalLM

from evcascade.errors import InputError, InputFileNotFoundError
from evcascade.models.eventgpt import load_eventgpt, map_eventgpt_key
from evcascade.models.tiny import tiny_llama_config

TOWER = "model.visual_tower.visual_tower."


def build_eventgpt_replica(seed: int = 1) -> LlamaForCausalLM:
    """EventChatModel's module tree (XduSyL/EventGPT model/EventChatModel.py) at tiny size: a Llama whose
    ``model`` also holds visual_tower.visual_tower (CLIPVisionModel), visual_projector, feature_adaptor."""
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(tiny_llama_config(60, hidden_size=32)).eval()
    llama.model.visual_tower = nn.Module()
    llama.model.visual_tower.visual_tower = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).eval()
    llama.model.visual_projector = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32))
    llama.model.feature_adaptor = nn.Linear(32, 32)
    return llama


def eventgpt_state_dict(replica: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """Its parameter names as EventGPT (saved with transformers 4.x, CLIP under ``vision_model.``) has them."""
    state = {}
    for key, value in replica.state_dict().items():
        if key.startswith(TOWER):
            key = TOWER + "vision_model." + key[len(TOWER):]
        state[key] = value.detach().clone().contiguous()
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # old Llama saves carry this buffer
    return state


def write_checkpoint(folder, state: dict, fmt: str = "safetensors", shards: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_llama_config(60, hidden_size=32).to_dict()
    config.update(model_type="EventChat_llama", architectures=["EventChatModel"], event_feature_adaptor=True,
                  mm_visual_tower="openai/clip-vit-large-patch14-336")
    (folder / "config.json").write_text(json.dumps(config))
    keys = sorted(state)
    ext, stem = ("safetensors", "model") if fmt == "safetensors" else ("bin", "pytorch_model")
    weight_map = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}" if shards > 1 else f"{stem}.{ext}"
        part = {k: state[k] for k in keys[i::shards]}
        save_file(part, str(folder / name)) if ext == "safetensors" else torch.save(part, folder / name)
        weight_map.update({k: name for k in part})
    if shards > 1:
        (folder / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@torch.no_grad()
def eventgpt_forward(replica: LlamaForCausalLM, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """EventGPT's own computation: per image tower -> projector -> adaptor; 5 temporal + S spatial tokens; LM."""
    m = replica.model
    per_image = [m.feature_adaptor(m.visual_projector(m.visual_tower.visual_tower(pixel_values=ev[None]).last_hidden_state))[0]
                 for ev in pixels]
    feats = torch.stack(per_image)  # [5, 17, 32]
    tokens = torch.cat([feats.mean(dim=1), feats.mean(dim=0)])  # [5 + 17, 32]
    embeds = torch.cat([tokens, m.embed_tokens(ids[0])])[None]
    return replica(inputs_embeds=embeds).logits


@pytest.mark.parametrize("fmt,shards", [("safetensors", 2), ("bin", 2), ("safetensors", 1)])
def test_fake_checkpoint_loads_and_matches_eventgpt(tmp_path, fmt, shards):
    replica = build_eventgpt_replica()
    write_checkpoint(tmp_path / "ckpt", eventgpt_state_dict(replica), fmt, shards)
    models = load_eventgpt(tmp_path / "ckpt", vision_config=TINY_CLIP)
    assert models.report.missing == [] and models.report.unexpected == []
    assert models.report.ignored == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
    assert models.report.loaded == len(replica.state_dict())
    enc_cfg = models.encoder.config
    assert (enc_cfg.head_hidden_size, enc_cfg.head_depth, enc_cfg.head_adaptor, enc_cfg.feature_layer) == (32, 2, True, -1)
    pixels, ids = torch.randn(5, 3, 32, 32), torch.tensor([[1, 9, 10, 11]])
    with torch.no_grad():
        ours = models.draft_lm(input_ids=ids, visual_features=models.encoder(pixels[None])).logits
    torch.testing.assert_close(ours, eventgpt_forward(replica, pixels, ids), rtol=1e-4, atol=1e-5)
    assert all(not p.requires_grad for p in models.encoder.tower.parameters())


def test_prefix_from_events(tmp_path):
    from evcascade.decoding.drafters import DraftContext

    write_checkpoint(tmp_path, eventgpt_state_dict(build_eventgpt_replica()), shards=1)
    models = load_eventgpt(tmp_path, vision_config=TINY_CLIP)
    context = DraftContext(prompt_ids=torch.tensor([[1, 5]]), events=make_events(sensor_size=(32, 32)))
    prefix = models.prefix()(context)
    assert prefix.shape == (1, 5 + 17, 32)  # EventGPT's 5 temporal + (1 + P) spatial tokens
    assert models.prefix()(DraftContext(prompt_ids=torch.tensor([[1]]))) is None  # no events: text-only


def test_tower_from_a_separate_clip_checkpoint(tmp_path):
    replica = build_eventgpt_replica()
    state = {k: v for k, v in eventgpt_state_dict(replica).items() if not k.startswith(TOWER)}
    write_checkpoint(tmp_path / "ckpt", state, shards=1)
    with pytest.raises(InputError, match=r"no CLIP tower .*clip_tower=.*openai/clip-vit-large-patch14-336"):
        load_eventgpt(tmp_path / "ckpt", vision_config=TINY_CLIP)
    replica.model.visual_tower.visual_tower.save_pretrained(tmp_path / "clip")
    models = load_eventgpt(tmp_path / "ckpt", clip_tower=tmp_path / "clip")
    assert models.report.tower_from == str(tmp_path / "clip") and models.report.missing == []
    pixels, ids = torch.randn(5, 3, 32, 32), torch.tensor([[1, 9]])
    with torch.no_grad():
        ours = models.draft_lm(input_ids=ids, visual_features=models.encoder(pixels[None])).logits
    torch.testing.assert_close(ours, eventgpt_forward(replica, pixels, ids), rtol=1e-4, atol=1e-5)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = eventgpt_state_dict(build_eventgpt_replica())
    del state["model.norm.weight"]
    state["model.mystery_head.weight"] = torch.zeros(2)
    write_checkpoint(tmp_path, state)
    with pytest.raises(InputError, match=r"missing 1 \[draft_lm.language_model.model.norm.weight\].*"
                                         r"unexpected 1 \[model.mystery_head.weight\]"):
        load_eventgpt(tmp_path, vision_config=TINY_CLIP)
    with pytest.warns(UserWarning, match="model.mystery_head.weight"):
        models = load_eventgpt(tmp_path, vision_config=TINY_CLIP, strict=False)
    assert models.report.missing == ["draft_lm.language_model.model.norm.weight"]
    assert torch.isfinite(models.draft_lm.language_model.model.norm.weight).all()  # freshly initialised


def test_shape_mismatch_and_missing_files(tmp_path):
    state = eventgpt_state_dict(build_eventgpt_replica())
    state["model.feature_adaptor.bias"] = torch.zeros(31)
    write_checkpoint(tmp_path / "bad", state, shards=1)
    with pytest.raises(InputError, match=r"model.feature_adaptor.bias.*\(31,\).*\(32,\)"):
        load_eventgpt(tmp_path / "bad", vision_config=TINY_CLIP)
    with pytest.raises(InputFileNotFoundError, match="nowhere"):
        load_eventgpt(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(InputFileNotFoundError, match="no weights"):
        load_eventgpt(tmp_path / "empty")


def test_key_map_examples():
    assert map_eventgpt_key("lm_head.weight") == ("draft_lm", "language_model.lm_head.weight")
    assert map_eventgpt_key("model.feature_adaptor.weight") == ("encoder", "adaptor.weight")
    assert map_eventgpt_key(TOWER + "vision_model.encoder.layers.0.mlp.fc1.weight") == ("encoder", "tower.encoder.layers.0.mlp.fc1.weight")
    assert map_eventgpt_key("model.something_else") is None
