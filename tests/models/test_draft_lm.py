"""DraftLM: prefix semantics against a hand-built reference, KV-cache continuation, loss masking, LoRA, round trip."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from evcascade.errors import InputError
from evcascade.models import DraftLM, DraftLMConfig
from evcascade.models.tokens import pool_frames, pool_patch_grid
from evcascade.models.tiny import tiny_llama, tiny_llama_config


def make_lm(**kwargs) -> DraftLM:
    torch.manual_seed(0)
    cfg = dict(text_config=tiny_llama_config(60).to_dict(), visual_hidden_size=12, pool_frames=2, pool_grid=1)
    cfg.update(kwargs)
    return DraftLM(DraftLMConfig(**cfg)).eval()


def test_embed_visual_pools_then_projects():
    lm = make_lm()
    feats = torch.randn(1, 4, 1 + 9, 12)  # [B, T, 1 + 3*3, D_t]
    prefix = lm.embed_visual(feats)
    assert prefix.shape == (1, lm.num_visual_tokens(4, 10), 32) == (1, 2 * 2, 32)
    expected = lm.visual_projector(pool_patch_grid(pool_frames(feats, 2), 1).flatten(1, 2))
    torch.testing.assert_close(prefix, expected)
    torch.testing.assert_close(pool_frames(feats, 2)[:, 0], feats[:, :2].mean(1))  # consecutive frames averaged
    flat = torch.randn(1, 7, 12)  # flat token sequences (EventGPT-style) are projected as they are
    assert lm.embed_visual(flat).shape == (1, 7, 32)


def test_forward_with_prefix_equals_inputs_embeds_reference():
    lm = make_lm()
    feats, ids = torch.randn(1, 4, 10, 12), torch.tensor([[1, 7, 8, 9]])
    out = lm(input_ids=ids, visual_features=feats)
    embeds = torch.cat([lm.embed_visual(feats), lm.get_input_embeddings()(ids)], dim=1)
    ref = lm.language_model(inputs_embeds=embeds)
    assert out.logits.shape == (1, 4 + 4, 60)
    torch.testing.assert_close(out.logits, ref.logits)


def test_kv_cache_continuation_matches_full_forward():
    lm = make_lm()
    feats, ids = torch.randn(1, 4, 10, 12), torch.tensor([[1, 7, 8, 9, 10, 11]])
    full = lm(input_ids=ids, visual_features=feats).logits
    prefix = lm.embed_visual(feats)  # what a ModelDrafter's prefix_fn returns
    first = lm(inputs_embeds=torch.cat([prefix, lm.get_input_embeddings()(ids[:, :3])], 1), use_cache=True)
    step = lm(input_ids=ids[:, 3:], cache=first.cache, use_cache=True)
    torch.testing.assert_close(step.logits, full[:, -3:], rtol=1e-4, atol=1e-5)


def test_labels_ignore_the_prefix():
    lm = make_lm()
    feats, ids = torch.randn(1, 4, 10, 12), torch.tensor([[1, 7, 8, 9]])
    out = lm(input_ids=ids, visual_features=feats, labels=ids, attention_mask=torch.ones_like(ids))
    logits = out.logits[0, 4:]  # text positions only
    expected = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:])
    torch.testing.assert_close(out.loss, expected)


def test_text_only_draft_lm_equals_the_wrapped_lm():
    llama = tiny_llama(60, seed=2)
    lm = DraftLM.from_lm(llama).eval()
    ids = torch.tensor([[1, 4, 5, 6]])
    assert torch.equal(lm(input_ids=ids).logits, llama(input_ids=ids).logits)
    with pytest.raises(InputError, match="text-only"):
        lm.embed_visual(torch.randn(1, 3, 12))


def test_round_trip_through_auto_classes(tmp_path):
    lm = make_lm(projector_type="linear")
    lm.save_pretrained(tmp_path)
    for auto in (AutoModel, AutoModelForCausalLM):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert type(loaded) is DraftLM and loaded.config.pool_grid == 1
        feats, ids = torch.randn(1, 4, 10, 12), torch.tensor([[1, 7, 8]])
        assert torch.equal(lm(input_ids=ids, visual_features=feats).logits, loaded(input_ids=ids, visual_features=feats).logits)


def test_lora_trains_only_adapters_and_projector():
    from peft import LoraConfig, get_peft_model

    lm = make_lm()
    peft_model = get_peft_model(lm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["visual_projector"]))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "visual_projector" in n for n in trainable)
    assert any("lora_" in n for n in trainable) and any("visual_projector" in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=0.05)
    ids = torch.tensor([[1, 7, 8, 9]])
    for _ in range(2):
        opt.zero_grad()
        peft_model(input_ids=ids, visual_features=torch.randn(1, 4, 10, 12), labels=ids).loss.backward()
        opt.step()
    assert all(torch.equal(p, frozen_before[n]) for n, p in peft_model.named_parameters() if n in frozen_before)


def test_bad_inputs():
    lm = make_lm()
    with pytest.raises(InputError, match=r"\[B, T, 1 \+ G\*G, 12\].*got \(1, 4, 10, 11\)"):
        lm.embed_visual(torch.randn(1, 4, 10, 11))
    with pytest.raises(InputError, match="exactly one"):
        lm(visual_features=torch.randn(1, 4, 10, 12))
    with pytest.raises(InputError, match="visual_hidden_size=12 and text_config.hidden_size=32"):
        make_lm(projector_type="identity")
