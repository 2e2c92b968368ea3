"""Both Lightning stages on the tests' DSEC folder: they learn, resume exactly, stop on NaN, export, decode losslessly."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch

from evcascade.train.align import AlignModule
from evcascade.train.datamodules import ClipDataModule
from evcascade.train.distill import DistillModule
from evcascade.train.losses import NonFiniteLossError
from evcascade.train.target_cache import TargetCache, TargetCacheWriter

ENCODER = dict(vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=16, patch_size=8), num_images=3)
DRAFT = dict(text_config=dict(model_type="llama", vocab_size=125, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=4, bos_token_id=1, eos_token_id=2, pad_token_id=3),
             pool_grid=1)


def trainer(max_steps: int, **kwargs) -> L.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     accelerator="cpu", num_sanity_val_steps=0, **kwargs)


def datamodule(cache, root, task="align", **kwargs) -> ClipDataModule:
    return ClipDataModule(str(cache), task=task, dsec_root=str(root), batch_size=4, val_sequences=["seq_b"], **kwargs)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def align_module(cache, **kwargs) -> AlignModule:
    L.seed_everything(0)
    return AlignModule(str(cache), ENCODER, lr=kwargs.pop("lr", 1e-2), **kwargs)


# ---------------------------------------------------------------------------------------------- align
def test_align_learns_and_counts_empty_windows(dsec_root, dsec_cache):
    dm, module = datamodule(dsec_cache, dsec_root), align_module(dsec_cache)
    run = trainer(8)
    before = run.validate(module, dm, verbose=False)[0]
    run.fit(module, dm)
    after = run.validate(module, dm, verbose=False)[0]
    assert after["val/loss"] < before["val/loss"] - 0.1
    assert after["val/cosine"] > before["val/cosine"]
    assert "val/cosine_refined" in after
    # train = seq_a + seq_c (8 windows, 2 batches an epoch), 4 epochs; seq_c has one window with no events
    assert module.skipped_empty == 4


class _Killed(Exception):
    pass


class _KillAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise _Killed(f"killed at step {self.step}")


class _StartStep(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step


def test_align_killed_run_resumes_to_the_same_step_and_weights(tmp_path, dsec_root, dsec_cache):
    from lightning.pytorch.callbacks import ModelCheckpoint

    straight = align_module(dsec_cache)
    trainer(6).fit(straight, datamodule(dsec_cache, dsec_root))

    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=1, every_n_epochs=1)
    killed = align_module(dsec_cache)
    run = trainer(6, enable_checkpointing=True, callbacks=[ckpt, _KillAt(5)])
    with pytest.raises(_Killed):
        run.fit(killed, datamodule(dsec_cache, dsec_root))
    assert run.global_step == 5 and (tmp_path / "last.ckpt").is_file()

    resumed, start = align_module(dsec_cache), _StartStep()
    run = trainer(6, callbacks=[start])
    run.fit(resumed, datamodule(dsec_cache, dsec_root), ckpt_path=str(tmp_path / "last.ckpt"))
    assert start.step == 4 and run.global_step == 6  # from the last epoch-end checkpoint to the end
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resuming", rtol=1e-5, atol=1e-6)

    # a checkpoint exports the same weights it holds
    from evcascade.models import AlignmentMLP
    from evcascade.train.export import export_checkpoint

    export_checkpoint("align", str(tmp_path / "last.ckpt"), str(tmp_path / "export"))
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    exported = AlignmentMLP.from_pretrained(tmp_path / "export/alignment")
    assert torch.equal(exported.out_proj.weight, saved["alignment.out_proj.weight"])


def test_align_export_loads_back(tmp_path, dsec_root, dsec_cache):
    from transformers import AutoModel

    import evcascade.models  # noqa: F401  (Auto registration)
    from evcascade.models import AlignmentMLP, EventEncoder, FrameRefiner

    module = align_module(dsec_cache, export_dir=str(tmp_path / "export"))
    dm = datamodule(dsec_cache, dsec_root)
    trainer(2).fit(module, dm)
    batch = next(iter(dm.val_dataloader()))
    module.eval()
    encoder = EventEncoder.from_pretrained(tmp_path / "export/event_encoder")
    alignment = AutoModel.from_pretrained(tmp_path / "export/alignment")
    refiner = FrameRefiner.from_pretrained(tmp_path / "export/frame_refiner")
    assert isinstance(alignment, AlignmentMLP)
    with torch.no_grad():
        expected = module(batch["events"])
        got = alignment(encoder(encoder.pixel_values_from_events(list(batch["events"]))))
        key = batch["video_features"][:, -1]
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(refiner(got, key), module.refiner(expected, key))


def test_nan_loss_stops_with_step_and_batch(tmp_path, dsec_root, dsec_cache):
    source = TargetCache(dsec_cache)
    poisoned = tmp_path / "cache"
    with TargetCacheWriter(poisoned, source.meta, target_config=source.target_config) as writer:
        for key in source.keys():
            tensors, info = source.get(key), source.index[key]
            if info["kind"] == "features":
                tensors = {"video_features": torch.full_like(tensors["video_features"], float("nan"))}
            writer.put(key, tensors, kind=info["kind"], clip=info["clip"], prompt=info["prompt"])
    with pytest.raises(NonFiniteLossError, match=r"global step 0, batch 0 \(samples \['seq_"):
        trainer(2).fit(align_module(poisoned), datamodule(poisoned, dsec_root))


def test_align_over_the_synthetic_world_manifest(tmp_path, world_manifest, target, tokenizer):
    from evcascade.train.datasets import ClipDataset, manifest_windows
    from evcascade.train.target_cache import build_target_cache

    cache = tmp_path / "cache"
    build_target_cache(target, tokenizer, ClipDataset(manifest_windows(world_manifest), load_events=False), cache,
                       answers=False)
    dm = ClipDataModule(str(cache), manifest=str(world_manifest), val_sequences=["scene_00001"], batch_size=2)
    module = align_module(cache)
    run = trainer(3)
    before = run.validate(module, dm, verbose=False)[0]
    run.fit(module, dm)
    assert run.validate(module, dm, verbose=False)[0]["val/loss"] < before["val/loss"]


# ---------------------------------------------------------------------------------------------- distill
def distill_module(cache, **kwargs) -> DistillModule:
    L.seed_everything(0)
    return DistillModule(str(cache), kwargs.pop("draft_lm", DRAFT), lr=kwargs.pop("lr", 1e-2), **kwargs)


@pytest.mark.parametrize("kd", ["forward_kl", "tv"])
def test_distill_learns_the_targets_answers(dsec_root, dsec_cache, kd):
    dm, module = datamodule(dsec_cache, dsec_root, "distill", pad_id=3), distill_module(dsec_cache, kd=kd)
    run = trainer(10)
    before = run.validate(module, dm, verbose=False)[0]
    run.fit(module, dm)
    after = run.validate(module, dm, verbose=False)[0]
    assert after["val/loss"] < before["val/loss"]
    assert after["val/acceptance"] > before["val/acceptance"]
    assert 0.0 <= after["val/top1"] <= 1.0


def test_distill_lora_trains_adapters_and_exports_a_merged_draft_that_decodes_losslessly(
        tmp_path, dsec_root, dsec_cache, target, tokenizer):
    from transformers import AutoModelForCausalLM

    import evcascade.models  # noqa: F401
    from evcascade.decoding.drafters import DraftContext
    from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
    from evcascade.decoding.model_drafter import ModelDrafter
    from evcascade.decoding.prompting import VideoLlavaPrompter
    from evcascade.decoding.verifier import VerifyRequest, VideoLlavaVerifier
    from evcascade.models import DraftLM

    module = distill_module(dsec_cache, lora={"r": 4, "lora_alpha": 8}, export_dir=str(tmp_path / "export"))
    base = {n: p.detach().clone() for n, p in module.draft_lm.named_parameters() if "lora_" not in n}
    dm = datamodule(dsec_cache, dsec_root, "distill", pad_id=3)
    trainer(3).fit(module, dm)
    changed = {n for n, p in module.draft_lm.named_parameters() if n in base and not torch.equal(p, base[n])}
    assert changed and all(n.startswith("visual_projector") for n in changed)  # the LM itself stays frozen

    draft = AutoModelForCausalLM.from_pretrained(tmp_path / "export/draft_lm").eval()
    assert isinstance(draft, DraftLM) and not hasattr(draft.language_model, "peft_config")
    batch = next(iter(dm.val_dataloader()))
    module.eval()
    with torch.no_grad():
        merged = draft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       visual_features=batch["video_features"]).logits
        torch.testing.assert_close(merged[:, -batch["input_ids"].shape[1]:], module.text_logits(batch), rtol=1e-4, atol=1e-4)

    # the exported drafter, conditioned on the clip's target features, inside a cascade: output = target.generate
    features = TargetCache(dsec_cache).get(batch["keys"][0].split("\t")[0])["video_features"][None]
    prompt = VideoLlavaPrompter(tokenizer, target.config)("what is moving ?")
    pixels = torch.randn(1, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = target.generate(input_ids=prompt.target_ids, pixel_values_videos=pixels, do_sample=False,
                               attention_mask=torch.ones_like(prompt.target_ids), max_new_tokens=8, pad_token_id=3)
    drafter = ModelDrafter(draft, prefix_fn=lambda context: draft.embed_visual(features), name="distilled")
    decoder = CascadeDecoder(VideoLlavaVerifier(target), [drafter])
    result = decoder.generate(VerifyRequest(prompt.target_ids, pixels), DraftContext(prompt.text_ids),
                              GenerationOptions(max_new_tokens=8, draft_k=3))
    assert result.token_ids[0].tolist() == expected[0, prompt.target_ids.shape[1]:].tolist()


def test_distill_wraps_a_saved_causal_lm(tmp_path, dsec_cache):
    from evcascade.models.tiny import tiny_llama

    lm = tiny_llama(125, seed=4)
    lm.save_pretrained(tmp_path / "lm")
    module = distill_module(dsec_cache, draft_lm=str(tmp_path / "lm"))
    assert module.draft_lm.config.visual_hidden_size == 32  # the cached target features' width
    torch.testing.assert_close(module.draft_lm.language_model.lm_head.weight, lm.lm_head.weight)


def test_distill_from_event_features_of_an_align_export(tmp_path, dsec_root, dsec_cache):
    align = align_module(dsec_cache, export_dir=str(tmp_path / "export"))
    trainer(1).fit(align, datamodule(dsec_cache, dsec_root))
    module = distill_module(dsec_cache, visual_source="events", align_dir=str(tmp_path / "export"))
    dm = datamodule(dsec_cache, dsec_root, "distill", pad_id=3, with_events=True)
    frozen = {n: p.detach().clone() for n, p in module.event_features.named_parameters()}
    trainer(2).fit(module, dm)
    assert all(torch.equal(p, frozen[n]) for n, p in module.event_features.named_parameters())
    assert module.skipped_empty == 1  # seq_c's empty window, once per epoch (one epoch of 2 batches)
    assert "refiner" in module.event_features  # the export has a frame refiner: an L2 drafter by default
    l1 = distill_module(dsec_cache, visual_source="events", align_dir=str(tmp_path / "export"), use_refiner=False)
    assert set(l1.event_features) == {"encoder", "alignment"}  # the same export, events only: an L1 drafter


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_links_the_cache_and_reads_yaml(tmp_path, dsec_root, dsec_cache):
    import yaml

    from evcascade.train.cli import run_stage

    config = tmp_path / "align.yaml"
    config.write_text(yaml.safe_dump({
        "trainer": {"max_steps": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False},
        "model": {"encoder": ENCODER, "refiner": False},
        "data": {"target_cache": str(dsec_cache), "dsec_root": str(dsec_root), "val_sequences": ["seq_b"]},
    }))
    cli = run_stage("align", ["--config", str(config), "--trainer.default_root_dir", str(tmp_path)])
    assert cli.model.hparams.target_cache == str(dsec_cache) and cli.model.refiner is None
    assert cli.datamodule.hparams.task == "align" and cli.trainer.global_step == 1


def test_distill_export_records_the_last_validation_acceptance(tmp_path, dsec_root, dsec_cache):
    """export.json carries val/acceptance (a cascade level's prior_acceptance comes from it)."""
    import json

    module = distill_module(dsec_cache, export_dir=str(tmp_path / "export"))
    dm = datamodule(dsec_cache, dsec_root, "distill", pad_id=3)
    trainer(2, limit_train_batches=2).fit(module, dm)  # one epoch of 2 batches, then its validation
    record = json.loads((tmp_path / "export" / "export.json").read_text())["pieces"]["draft_lm"]
    assert record["val_acceptance"] == pytest.approx(float(module.trainer.callback_metrics["val/acceptance"]))
    assert 0.0 < record["val_acceptance"] < 1.0 and 0.0 <= record["val_top1"] <= 1.0
