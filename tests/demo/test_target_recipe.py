"""The demo target's recipe on tiny sizes: tokenizer, scene pool, labels, losses, training steps, saving, scoring."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from evcascade.data.questions import DETAIL_WORDS, qa_pairs
from evcascade.data.render import render_frames
from evcascade.data.world import (
    Background,
    Scene,
    SceneObject,
    WorldConfig,
    scene_seeds,
)
from evcascade.demo.evaluation import evaluate_target, window_table
from evcascade.demo.scenes import load_or_render_pool, render_pool
from evcascade.demo.supervision import IGNORE, SceneGraphHeads, scene_labels
from evcascade.demo.target import (
    DemoTargetConfig,
    ExampleEncoder,
    RecipeConfig,
    build_demo_target,
    draw_examples,
    lr_factor,
    recipe_losses,
    save_demo_target,
)
from evcascade.demo.tokenizer import world_tokenizer
from evcascade.errors import InputError
from evcascade.video import sample_frame_indices

TINY = DemoTargetConfig(num_frames=2, image_size=32, patch_size=16, vision_hidden_size=32, vision_layers=2,
                        text_hidden_size=32, text_layers=2)


@pytest.fixture(scope="module")
def tokenizer():
    return world_tokenizer()


@pytest.fixture(scope="module")
def pool():
    return render_pool(scene_seeds(11, 6), WorldConfig(), num_frames=TINY.num_frames)


def _batch(tokenizer, model, pool, size=6, seed=0):
    encoder = ExampleEncoder(tokenizer, model.config)
    index, scenes, questions, answers = draw_examples(pool, np.random.default_rng(seed), size, RecipeConfig())
    return encoder, encoder.batch(pool.frames[index], scenes, pool.frame_times_us[index], questions, answers)


def test_tokenizer_round_trips_every_world_sentence(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    texts = [t for s in scene_seeds(3, 5) for qa in qa_pairs(_scene(s)) for t in (qa.question, qa.answer)]
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids) == text
        assert loaded(text)["input_ids"] == [tokenizer.bos_token_id, *ids]
    # the detailed captions' words come after <image> <video>: a tokenizer of the first vocabulary is a prefix
    first = len(tokenizer) - len(DETAIL_WORDS)
    assert tokenizer.convert_ids_to_tokens([first - 2, first - 1]) == ["<image>", "<video>"]
    assert tokenizer.convert_ids_to_tokens(list(range(first, len(tokenizer)))) == list(DETAIL_WORDS)
    assert first == 57  # the first bundled target's vocabulary size: its ids stay what it was trained on


def test_a_model_of_the_first_vocabulary_grows_the_hf_way(tokenizer):
    """``resize_token_embeddings`` appends rows for the new words and keeps every trained row."""
    first = len(tokenizer) - len(DETAIL_WORDS)
    model = build_demo_target(tokenizer, TINY)
    model.resize_token_embeddings(first)  # a model trained on the first vocabulary
    before = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    model.resize_token_embeddings(len(tokenizer))
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == model.config.text_config.vocab_size
    torch.testing.assert_close(model.get_input_embeddings().weight[:first], before)
    torch.testing.assert_close(model.get_output_embeddings().weight[:first], before_out)


def _scene(seed):
    from evcascade.data.world import sample_scene

    return sample_scene(seed)


def test_pool_frames_are_the_frames_video_sample_picks(pool, tmp_path):
    scene = pool.scenes[0]
    config = WorldConfig()
    full = render_frames(scene, config.frame_times_us(), config.supersample)  # [30, 64, 64, 3]
    picked = sample_frame_indices(len(full), TINY.num_frames)
    np.testing.assert_array_equal(pool.frames[0], full[picked])
    load_or_render_pool(tmp_path / "pool.npz", pool.seeds[:2], config, TINY.num_frames)
    extended = load_or_render_pool(tmp_path / "pool.npz", pool.seeds, config, TINY.num_frames)  # renders 4 more
    again = load_or_render_pool(tmp_path / "pool.npz", pool.seeds, config, TINY.num_frames)  # all from the cache
    for cached in (extended, again):
        np.testing.assert_array_equal(cached.frames, pool.frames)
        assert cached.scenes == pool.scenes
    with pytest.raises(InputError, match="num_frames"):
        render_pool([1], config, num_frames=0)


def test_window_pool_frames_and_labels_follow_each_window(tmp_path):
    """A pool entry's frames are what ``Video.sample`` picks from its window, and its motion labels are what those
    frames show: the square that moves over the clip is static in a one-frame window."""
    config = WorldConfig()
    seeds, windows = scene_seeds(11, 2), [(100_000, 600_000), (100_000, 100_100)]
    pool = render_pool(seeds, config, num_frames=2, windows_us=windows)
    assert pool.frame_times_us.tolist() == [[100_000, 550_000], [100_000, 100_000]]
    full = render_frames(pool.scenes[0], config.frame_times_us(), config.supersample)
    np.testing.assert_array_equal(pool.frames[0], full[[2, 11]])
    cached = load_or_render_pool(tmp_path / "p.npz", seeds, config, 2, windows_us=windows)
    again = load_or_render_pool(tmp_path / "p.npz", seeds, config, 2, windows_us=windows)
    np.testing.assert_array_equal(again.frames, cached.frames)
    other = load_or_render_pool(tmp_path / "p.npz", seeds, config, 2)  # other windows: not served from the cache
    assert other.frame_times_us.tolist() == [[0, 1_450_000]] * 2
    star = SceneObject("star", "blue", "small", 6.4, 40.0, 20.0, direction="left", speed="slow")
    scene = Scene(64, 64, 1_500_000, (star,), Background((40.0, 40.0, 40.0), (0.0, 0.0)))
    labels = scene_labels([scene, scene, scene], np.array([[0, 1_450_000], [0, 300_000], [0, 0]]), grid=4)
    assert labels.motion[:, 3].tolist() == [1, 0, 0]  # left over 1.45 s (11 px); 2.3 px and 0 px: static
    assert labels.speed[:, 3].tolist() == [1, 0, 0]  # a little ("slow") over the clip
    torch.testing.assert_close(labels.xy[1, 1, 3, 0], torch.tensor((40 - 7.68 * 0.3) / 64))


def test_scene_labels_by_hand():
    star = SceneObject("star", "blue", "small", 6.4, 40.0, 20.0, direction="left", speed="fast")
    circle = SceneObject("circle", "red", "big", 10.0, 12.0, 50.0)
    scene = Scene(64, 64, 1_500_000, (star, circle), Background((40.0, 40.0, 40.0), (0.0, 0.0)))
    labels = scene_labels([scene], np.array([0, 1_000_000]), grid=4)
    assert labels.present.tolist() == [[1, 0, 0, 1]]  # SHAPES = circle, square, triangle, star
    assert labels.colour.tolist() == [[0, IGNORE, IGNORE, 2]]  # red, blue
    assert labels.motion.tolist() == [[0, IGNORE, IGNORE, 1]]  # static, left
    assert labels.speed.tolist() == [[0, IGNORE, IGNORE, 2]]  # static, fast
    assert labels.count.tolist() == [1]
    # the star moves left at 0.30 * 64 px/s: x = 40 - 19.2 after 1 s
    torch.testing.assert_close(labels.xy[0, :, 3, 0], torch.tensor([40 / 64, 20.8 / 64]))
    assert torch.isnan(labels.xy[0, :, 1]).all()
    # 4 x 4 cells per 16-px patch, 4 px a cell: the circle's centre (12, 50) is in patch (3, 0), cell (0, 3)
    owner = labels.cell_owner
    assert owner.shape == (1, 2, 16, 16)
    assert owner[0, 0, 12, 3] == 1 and owner[0, 0, 6, 6] == 4  # the star's centre (40, 20): patch (1, 2), cell (1, 2)
    assert 15 <= int((owner[0, 0] == 1).sum()) <= 25  # ~ pi r^2 / 16 = 19.6 cells of the circle
    assert owner[0, 0, 0, 0] == 0 and int((owner[0, 1] == 4).sum()) > 0


def test_batch_uses_the_prompter_and_labels_only_the_answer(tokenizer, pool):
    from evcascade.decoding.prompting import VideoLlavaPrompter

    model = build_demo_target(tokenizer, TINY)
    _, batch = _batch(tokenizer, model, pool, size=3)
    prompter = VideoLlavaPrompter(tokenizer, model.config)
    _, _, questions, answers = draw_examples(pool, np.random.default_rng(0), 3, RecipeConfig())
    for row, (question, answer) in enumerate(zip(questions, answers)):
        prompt = prompter(question).target_ids[0]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n = len(prompt) + len(answer_ids)
        assert batch.input_ids[row, : len(prompt)].tolist() == prompt.tolist()
        assert batch.labels[row, len(prompt):n].tolist() == answer_ids
        assert (batch.labels[row, : len(prompt)] == IGNORE).all() and (batch.labels[row, n:] == IGNORE).all()
        assert batch.attention_mask[row].sum() == n
    assert batch.frame_end_positions == (2 + 5 - 1, 2 + 10 - 1)  # <s> USER: then 2 frames of 1 + 2 x 2 tokens
    assert batch.input_ids[0, batch.summary_position] == model.config.video_token_index
    assert batch.input_ids[0, batch.summary_position + 1] != model.config.video_token_index
    assert batch.pixel_values_videos.shape == (3, TINY.num_frames, 3, TINY.image_size, TINY.image_size)


def test_answer_loss_matches_the_models_own_loss(tokenizer, pool):
    model = build_demo_target(tokenizer, TINY)
    heads = SceneGraphHeads(TINY.vision_hidden_size, TINY.text_hidden_size)
    _, batch = _batch(tokenizer, model, pool)
    with torch.no_grad():
        losses = recipe_losses(model, heads, batch)
        reference = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          pixel_values_videos=batch.pixel_values_videos, labels=batch.labels).loss
    torch.testing.assert_close(losses["answer"], reference)
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())


def test_scene_graph_losses_reach_the_right_layers(tokenizer, pool):
    model = build_demo_target(tokenizer, TINY)
    heads = SceneGraphHeads(TINY.vision_hidden_size, TINY.text_hidden_size)
    _, batch = _batch(tokenizer, model, pool)
    losses = recipe_losses(model, heads, batch, summary_layer=1)
    lm_layers = model.model.language_model.layers
    losses["scene"].backward(retain_graph=True)
    assert lm_layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.model.video_tower.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert lm_layers[1].self_attn.q_proj.weight.grad is None  # above the summary layer: untouched
    model.zero_grad(set_to_none=True)
    losses["vision"].backward()
    assert model.model.video_tower.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert model.model.multi_modal_projector.linear_1.weight.grad is None  # the heads read before the projector
    assert heads.vision_slots.weight.grad.abs().sum() > 0 and heads.vision_patch.weight.grad.abs().sum() > 0


def test_a_few_steps_reduce_the_loss(tokenizer, pool):
    model = build_demo_target(tokenizer, TINY).train()
    heads = SceneGraphHeads(TINY.vision_hidden_size, TINY.text_hidden_size)
    _, batch = _batch(tokenizer, model, pool)
    optimizer = torch.optim.AdamW([*model.parameters(), *heads.parameters()], lr=3e-3)
    totals = []
    for _ in range(6):
        total = sum(recipe_losses(model, heads, batch).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert totals[-1] < 0.8 * totals[0], totals


def test_saved_target_loads_and_generates_the_same(tokenizer, pool, tmp_path):
    from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration

    from evcascade.preprocess import PreprocessConfig, preprocessor_config_from

    model = build_demo_target(tokenizer, TINY)
    save_demo_target(model, tokenizer, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert preprocessor_config_from(tmp_path) == PreprocessConfig.for_model(model.config)
    loaded = VideoLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    encoder = ExampleEncoder(loaded_tokenizer, loaded.config)
    ids = encoder.prompt_ids("what is moving ?")[None]
    pixels = encoder.pixels(pool.frames[:1])
    kwargs = {"input_ids": ids, "pixel_values_videos": pixels, "max_new_tokens": 5, "do_sample": False}
    torch.testing.assert_close(loaded.generate(**kwargs), model.eval().generate(**kwargs))
    assert loaded.generation_config.eos_token_id == tokenizer.eos_token_id


def test_evaluation_scores_exact_match_per_kind(tokenizer, pool, monkeypatch):
    from evcascade.demo import evaluation as evaluate_module

    model = build_demo_target(tokenizer, TINY)
    encoder = ExampleEncoder(tokenizer, model.config)
    small = render_pool(pool.seeds[:2], WorldConfig(), TINY.num_frames)
    answers = {(int(s), qa.question): qa.answer for s, sc in zip(small.seeds, small.scenes) for qa in qa_pairs(sc)}
    frame_owner = {small.frames[i].tobytes(): int(s) for i, s in enumerate(small.seeds)}

    def oracle_generate(input_ids, pixel_values_videos, **kwargs):
        """Answers right except for colour questions, which get 'no' (a stub that always knows the scene)."""
        question = tokenizer.decode(input_ids[0]).split("<video>")[-1].replace("ASSISTANT:", "").strip()
        rows = []
        for pixels in pixel_values_videos:
            seed = next(s for raw, s in frame_owner.items()
                        if torch.equal(encoder.pixels(np.frombuffer(raw, np.uint8).reshape(small.frames[0].shape)[None].copy())[0],
                                       pixels))
            text = "no" if question.startswith("what colour") else answers[(seed, question)]
            rows.append(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        width = max(map(len, rows))
        new = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)

    monkeypatch.setattr(model, "generate", oracle_generate)
    table, records = evaluate_target(model, encoder, small)
    assert len(records) == sum(len(qa_pairs(s)) for s in small.scenes)
    assert table["colour"]["accuracy"] == 0.0 and table["colour"]["total"] == sum(len(s.objects) for s in small.scenes)
    assert all(table[k]["accuracy"] == 1.0 for k in table if k not in ("colour", "mean"))
    assert list(table)[:3] == ["caption", "detail", "moving"]
    assert list(window_table(records)) == ["1000-1500 ms"] and all(r["window_ms"] == 1500 for r in records)
    short = [{**r, "window_ms": 80.0} for r in records[:5]]
    assert list(window_table(records + short)) == ["0-100 ms", "1000-1500 ms"]
    assert window_table(records + short)["0-100 ms"] == evaluate_module.accuracy_table(short)


def test_lr_schedule_and_config_checks():
    recipe = RecipeConfig(warmup_steps=10, min_lr_fraction=0.1)
    assert lr_factor(0.0, 4, recipe) == pytest.approx(0.5)
    assert lr_factor(0.5, 100, recipe) == pytest.approx(0.55)
    assert lr_factor(1.0, 100, recipe) == pytest.approx(0.1)
    with pytest.raises(InputError, match="patch_size"):
        DemoTargetConfig(image_size=64, patch_size=24)
    with pytest.raises(InputError, match="num_frames"):
        DemoTargetConfig(num_frames=0)
    with pytest.raises(InputError, match="phrasing must be one of .* got 'fancy'"):
        RecipeConfig(phrasing="fancy")


def test_skewed_phrasing_prefers_the_canonical_answer(pool):
    recipe = RecipeConfig(phrasing="skewed", canonical_probability=0.6)
    index, scenes, questions, answers = draw_examples(pool, np.random.default_rng(0), 400, recipe)
    qas = {(id(scene), qa.question): qa for scene in pool.scenes for qa in qa_pairs(scene)}
    truth = [qas[(id(scene), q)] for scene, q in zip(scenes, questions)]
    assert all(qa.is_correct(text) for qa, text in zip(truth, answers))
    one_choice = [(qa, text) for qa, text in zip(truth, answers) if len(qa.segments) == 3 and qa.num_phrasings == 2]
    share = np.mean([text == qa.answer for qa, text in one_choice])  # one segment with two phrasings
    assert len(one_choice) > 40 and 0.45 < share < 0.75
    with pytest.raises(InputError, match="canonical_probability"):
        RecipeConfig(canonical_probability=1.5)


def test_uniform_phrasing_draws_paraphrases_that_are_correct(pool):
    canonical = draw_examples(pool, np.random.default_rng(0), 64, RecipeConfig())
    qas = {(id(scene), qa.question): qa for scene in pool.scenes for qa in qa_pairs(scene)}
    assert canonical[3] == [qas[(id(scene), q)].answer for scene, q in zip(canonical[1], canonical[2])]
    uniform = draw_examples(pool, np.random.default_rng(0), 64, RecipeConfig(phrasing="uniform"))
    truth = [qas[(id(scene), q)] for scene, q in zip(uniform[1], uniform[2])]
    assert all(qa.is_correct(text) for qa, text in zip(truth, uniform[3]))
    assert sum(text != qa.answer for qa, text in zip(truth, uniform[3])) >= 10


def test_demo_config_of_inverts_demo_target_config(tokenizer, tmp_path):
    from evcascade.demo.target import demo_config_of, demo_target_config, load_demo_target

    assert demo_config_of(demo_target_config(tokenizer, TINY)) == dataclasses.asdict(TINY)
    save_demo_target(build_demo_target(tokenizer, TINY), tokenizer, tmp_path)
    assert demo_config_of(load_demo_target(tmp_path).config) == dataclasses.asdict(TINY)


def test_jpeg_roundtrip_is_a_copy_with_codec_sized_errors(pool):
    from evcascade.demo.augment import jpeg_roundtrip

    frames = pool.frames[:3]
    before = frames.copy()
    never = jpeg_roundtrip(frames, np.random.default_rng(0), probability=0.0)
    always = jpeg_roundtrip(frames, np.random.default_rng(0), probability=1.0)
    np.testing.assert_array_equal(frames, before)  # input untouched
    np.testing.assert_array_equal(never, frames)
    error = np.abs(always.astype(int) - frames.astype(int))
    assert 0.5 < error.mean() < 10  # lossy, but the scene is still there
    with pytest.raises(InputError, match="uint8"):
        jpeg_roundtrip(frames.astype(np.float32), np.random.default_rng(0))


def test_mp4_pool_matches_what_read_video_returns(pool, tmp_path):
    from evcascade.data.world import render_sample
    from evcascade.demo.scenes import mp4_pool
    from evcascade.video import read_video, write_video

    config = WorldConfig()
    one = render_pool(pool.seeds[:1], config, TINY.num_frames)
    decoded = mp4_pool(one, config)
    sample = render_sample(one.scenes[0], config)
    reference = read_video(write_video(tmp_path / "clip.mp4", sample.video, config.fps), TINY.num_frames).frames
    np.testing.assert_array_equal(decoded.frames[0], reference)
    assert 0 < np.abs(decoded.frames.astype(int) - one.frames.astype(int)).mean() < 10


def test_evaluate_cascade_scores_each_clip_window_as_the_loader_cuts_it(tmp_path):
    """``evaluate_cascade`` asks every question of every manifest entry through ``generate`` with the entry's window
    and scores it against the questions of the window the clip loader cut; a stub that knows the scene answers."""
    from evcascade.clip import load_clip
    from evcascade.data.layout import read_manifest, write_world
    from evcascade.data.world import sample_scene
    from evcascade.demo.evaluation import evaluate_cascade

    config = WorldConfig(duration_us=600_000, fps=20.0, event_fps=150.0)
    manifest = write_world(tmp_path / "w", num_scenes=1, seed=3, config=config, windows_per_scene=1)
    entries = read_manifest(manifest)["scenes"]
    scene = sample_scene(entries[0]["seed"], config)

    class Stats:
        def to_dict(self):
            return {"tau": 2.0}

    class Stub:
        def generate(self, events, video, prompt, *, mode, start_us=None, end_us=None):
            clip = load_clip(events, video, start_us=start_us, end_us=end_us, num_frames=2)
            qa = next(q for q in qa_pairs(scene, (clip.start_us, clip.end_us)) if q.question == prompt)
            text = "no ." if qa.kind == "detail" else qa.answer
            return type("A", (), {"text": text, "token_ids": text.split(), "stats": Stats(),
                                  "inputs": {"window_us": [clip.start_us, clip.end_us]}})()

    summary, records = evaluate_cascade(Stub(), manifest)
    assert len(records) == sum(len(e["prompts"]) for e in entries)
    assert summary["per_kind"]["detail"]["accuracy"] == 0.0
    assert all(v["accuracy"] == 1.0 for k, v in summary["per_kind"].items() if k not in ("detail", "mean"))
    whole = load_clip(entries[0]["events"], entries[0]["video"], num_frames=2)
    assert records[0]["window_us"] == [whole.start_us, whole.end_us]  # the recordings' overlap, not [0, 600 ms)
    assert {r["window_ms"] for r in records[len(entries[0]["prompts"]):]} == {
        (entries[1]["end_us"] - entries[1]["start_us"]) / 1000}
    assert sum(t["detail"]["total"] for t in summary["per_window"].values()) == 2 and summary["tau"]["count"] == 2.0
