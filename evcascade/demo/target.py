"""The demo target: a small real ``VideoLlavaForConditionalGeneration`` trained on the synthetic world.

Why this recipe. A naive one (per-frame CLIP + tiny Llama, answer loss only) plateaus at ~38% exact
match: shape at chance, every motion "to the right". The answer loss is too weak and too indirect a
signal for a few-million-parameter model to discover, in CPU minutes, that it must (a) encode each
object's shape, colour, size and position in every frame and (b) compare positions across frames. The
world hands us its scene graph for free, so the scene graph supervises both steps directly
(``SceneGraphHeads``, linear heads used only in training):

- **vision heads** on the video tower's features (the very ``hidden_states[vision_feature_layer]`` the
  projector reads), per frame. Per patch: a coarse segmentation (which shape covers each 4x4-px cell)
  and the colour, size and centre (x, y) of the object covering the patch, so every token of an object
  carries the whole object and its position. Per frame, from CLS: for each of the 4 shapes (unique in a
  scene, so a shape is a slot) present? colour, size, (x, y). Measured: CLS-only slot heads left the
  positions unlearned (12 px mean error, no better than guessing the middle) after 1000 steps; the
  per-patch targets are what make the tower localise and tell shapes apart.
- **LM heads** at each frame's last visual token, halfway up the language model: where each shape is in
  that frame; and at the last visual token, which (causal attention) sees every frame: per slot
  present? colour, size, motion (static / 4 directions), speed, shift first->last frame; the count.
  The first frame's summary sees only frame 1, so it is a clean per-frame summary; the last one reads
  it at a fixed distance and compares. This is the cross-frame comparison, taught directly. The answers
  then only have to read summary tokens at fixed positions (the prompt prefix before the video is
  constant, so the visual tokens always sit at the same positions).
- few, informative visual tokens: 2 frames (the first and the last, as ``Video.sample(2)`` picks them;
  direction and speed need only the displacement between them) at the world's native 64x64 (no resize,
  so ``preprocess_frames`` is only a normalisation), 16-px patches (an object spans about a patch):
  2 x 17 = 34 visual tokens, which makes a step ~4x cheaper than 8 frames and 2x cheaper than 4.
- a vision-only warmup (no LM forward: ~4x cheaper steps, 4x larger batches) so the LM starts from
  features that already hold the scene; then a short one-object curriculum; then everything.
- a prerendered pool reused across epochs (``evcascade.demo.scenes``), JPEG round trips so decoded mp4
  clips are read as well (``evcascade.demo.augment``), questions drawn per kind (the long caption more
  often), teacher forcing on the short fixed answers, no label smoothing, AdamW with warmup and a cosine
  decay over the wall-clock budget.

Measured (one busy CPU core, exact match on 60 held-out scenes unless said): answer loss + CLS-only heads,
4 frames, 8 min: mean over kinds 0.41, direction 0.19; per-patch heads + frame/scene LM heads + vision
warmup, 2 frames, 7 min: 0.59 (the LM's motion head already at 0.86); the shipped run, 55 min, 15 404
steps: >= 0.997 for every kind on 300 held-out scenes (``evcascade/assets/demo_cascade/target_eval.json``).

The shipped folder holds only the VideoLlava model, its tokenizer and its preprocessor config, and
inference is plain ``generate`` on prompts from ``VideoLlavaPrompter``, exactly as in training.

>>> from evcascade.demo.tokenizer import world_tokenizer
>>> config = demo_target_config(world_tokenizer(), DemoTargetConfig())
>>> config.video_seq_length, config.vision_config.image_size
(34, 64)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from evcascade.data.world import Scene
from evcascade.demo.augment import jpeg_roundtrip
from evcascade.demo.supervision import (
    IGNORE,
    SceneGraphHeads,
    SceneLabels,
    scene_labels,
)
from evcascade.errors import InputError


# ----------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class DemoTargetConfig:
    """Sizes of the demo VideoLlava: a small CLIP video tower and a small Llama."""

    num_frames: int = 2
    """Frames per clip (T); ``video_seq_length = T * ((image_size / patch_size)^2 + 1)``."""
    image_size: int = 64
    """Vision tower input side; the world's native frame size, so preprocessing does not resize."""
    patch_size: int = 16
    """ViT patch side in pixels (a 4 x 4 grid at 64)."""
    vision_hidden_size: int = 128
    vision_layers: int = 3
    text_hidden_size: int = 128
    text_layers: int = 4
    num_heads: int = 8

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"DemoTargetConfig.{name} must be an int >= 1, got {value!r}")
        if self.image_size % self.patch_size:
            raise InputError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        for name in ("vision_hidden_size", "text_hidden_size"):
            if getattr(self, name) % self.num_heads:
                raise InputError(f"DemoTargetConfig.{name} must be a multiple of num_heads={self.num_heads}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return self.grid**2 + 1  # CLS kept for video


def demo_target_config(tokenizer, config: DemoTargetConfig):
    """The ``VideoLlavaConfig`` of the demo target, ids matching ``tokenizer`` (``world_tokenizer()``)."""
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden_size, intermediate_size=4 * config.vision_hidden_size,
        num_hidden_layers=config.vision_layers, num_attention_heads=config.num_heads,
        image_size=config.image_size, patch_size=config.patch_size, projection_dim=config.vision_hidden_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_hidden_size, intermediate_size=4 * config.text_hidden_size,
        num_hidden_layers=config.text_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return VideoLlavaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
        video_token_index=tokenizer.convert_tokens_to_ids(tokenizer.video_token),
        # the last layer: with the usual -2 the top CLIP layer would be computed and never read
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        image_seq_length=config.grid**2, video_seq_length=config.num_frames * config.tokens_per_frame,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )


def build_demo_target(tokenizer, config: DemoTargetConfig, seed: int = 0):
    """A fresh (random-weight) demo ``VideoLlavaForConditionalGeneration``; generation stops at ``</s>``."""
    from transformers import VideoLlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration(demo_target_config(tokenizer, config))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def save_demo_target(model, tokenizer, out_dir) -> None:
    """Write the Hugging Face folder: model (safetensors), tokenizer, and the frame preprocessing it was trained on.

    ``preprocessor_config.json`` is the CLIP recipe at the tower's size (``VideoLlavaImageProcessor``'s keys), so
    ``evcascade.preprocess.preprocessor_config_from(out_dir)`` gives exactly the training preprocessing.
    """
    from transformers import VideoLlavaImageProcessor

    from evcascade.preprocess import PreprocessConfig

    pre = PreprocessConfig.for_model(model.config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    VideoLlavaImageProcessor(
        size={"shortest_edge": pre.size}, crop_size={"height": pre.crop_size[0], "width": pre.crop_size[1]},
        image_mean=list(pre.mean), image_std=list(pre.std), rescale_factor=pre.rescale_factor,
    ).save_pretrained(out_dir)


def load_demo_target(folder):
    """A saved demo target (``save_demo_target``'s folder) as a ``VideoLlavaForConditionalGeneration``, fp32."""
    from transformers import VideoLlavaForConditionalGeneration

    return VideoLlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)


def demo_config_of(config) -> dict:
    """The ``DemoTargetConfig`` fields of a demo target's ``VideoLlavaConfig`` (inverse of ``demo_target_config``)."""
    vision, text = config.vision_config, config.text_config
    return {"num_frames": config.video_seq_length // ((vision.image_size // vision.patch_size) ** 2 + 1),
            "image_size": vision.image_size, "patch_size": vision.patch_size,
            "vision_hidden_size": vision.hidden_size, "vision_layers": vision.num_hidden_layers,
            "text_hidden_size": text.hidden_size, "text_layers": text.num_hidden_layers,
            "num_heads": text.num_attention_heads}


# ------------------------------------------------------------------------------ scene-graph supervision


# ------------------------------------------------------------------------------------------ batches
@dataclass(frozen=True)
class Batch:
    """Teacher-forced training examples: prompt + answer + ``</s>``, right-padded."""

    input_ids: torch.Tensor  # long [B, L]
    attention_mask: torch.Tensor  # long [B, L]
    labels: torch.Tensor  # long [B, L]: the answer's ids and </s>, IGNORE elsewhere (unshifted)
    pixel_values_videos: torch.Tensor  # float [B, T, 3, S, S]
    scene_labels: SceneLabels
    frame_end_positions: tuple[int, ...]  # index of each frame's last visual token (the same in every row)

    @property
    def summary_position(self) -> int:
        """Index of the last visual token, which sees every frame."""
        return self.frame_end_positions[-1]


class ExampleEncoder:
    """Turns (frames, scene, question, answer) into a ``Batch``, with the prompts ``VideoLlavaPrompter`` builds."""

    def __init__(self, tokenizer, model_config) -> None:
        from evcascade.decoding.prompting import VideoLlavaPrompter
        from evcascade.preprocess import PreprocessConfig

        self.tokenizer = tokenizer
        self.prompter = VideoLlavaPrompter(tokenizer, model_config)
        self.preprocess = PreprocessConfig.for_model(model_config)  # what the verifier applies
        self.grid = model_config.vision_config.image_size // model_config.vision_config.patch_size
        self._prompt_ids: dict[str, torch.Tensor] = {}
        self._answer_ids: dict[str, torch.Tensor] = {}

    def prompt_ids(self, question: str) -> torch.Tensor:
        """``[L]`` target prompt ids (``<video>`` expanded), cached per question."""
        if question not in self._prompt_ids:
            self._prompt_ids[question] = self.prompter(question).target_ids[0]
        return self._prompt_ids[question]

    def answer_ids(self, answer: str) -> torch.Tensor:
        """``[A + 1]`` the answer's ids followed by ``</s>``."""
        if answer not in self._answer_ids:
            ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            self._answer_ids[answer] = torch.tensor([*ids, self.tokenizer.eos_token_id], dtype=torch.long)
        return self._answer_ids[answer]

    def pixels(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``[B, T, H, W, 3]`` -> float ``[B, T, 3, S, S]`` through the checkpoint's preprocessing."""
        batch, num_frames = frames.shape[:2]
        out = self.preprocess(frames.reshape(-1, *frames.shape[2:]))  # [B*T, 3, S, S]
        return out.view(batch, num_frames, *out.shape[1:])

    def batch(self, frames: np.ndarray, scenes: Sequence[Scene], frame_times_us: np.ndarray,
              questions: Sequence[str], answers: Sequence[str]) -> Batch:
        """One batch; ``frame_times_us`` ``[T]`` or ``[B, T]`` are the times of ``frames`` (the scene labels')."""
        rows = [(self.prompt_ids(q), self.answer_ids(a)) for q, a in zip(questions, answers)]
        length = max(len(p) + len(a) for p, a in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (prompt, answer) in enumerate(rows):
            n = len(prompt) + len(answer)
            input_ids[i, :n] = torch.cat([prompt, answer])
            labels[i, len(prompt):n] = answer
            attention_mask[i, :n] = 1
        video_at = (input_ids[0] == self.prompter.video_token_id).nonzero().flatten()  # [T * (1 + G*G)]
        frame_ends = video_at.view(frames.shape[1], -1)[:, -1]  # [T]
        return Batch(input_ids, attention_mask, labels, self.pixels(frames),
                     scene_labels(scenes, frame_times_us, self.grid), tuple(int(i) for i in frame_ends))


# ------------------------------------------------------------------------------------------- losses
def recipe_losses(model, heads: SceneGraphHeads, batch: Batch, *, summary_layer: int | None = None,
                  with_language: bool = True) -> dict:
    """Answer cross-entropy (teacher forcing) and the scene-graph losses of one batch, through the model's own forward.

    ``summary_layer``: the LM layer whose outputs at each frame's last visual token feed the LM heads (default: half).
    ``with_language=False`` runs the video tower alone and returns only the vision heads' loss (a cheap warmup).
    """
    layer = model.config.vision_feature_layer
    batch_size, num_frames = batch.pixel_values_videos.shape[:2]
    if not with_language:
        tower = model.model.video_tower(batch.pixel_values_videos.flatten(0, 1), output_hidden_states=True)
        vision_features = tower.hidden_states[layer]  # [B*T, 1 + G*G, Dv]
        vision_features = vision_features.view(batch_size, num_frames, *vision_features.shape[1:])
        return {"vision": heads.vision_loss(vision_features, batch.scene_labels)}
    video = model.model.get_video_features(
        pixel_values_videos=batch.pixel_values_videos, vision_feature_layer=layer, output_hidden_states=True,
        return_dict=True,
    )
    vision_features = video.hidden_states[layer]  # [B*T, 1 + G*G, Dv], what the projector reads
    vision_features = vision_features.view(batch_size, num_frames, *vision_features.shape[1:])
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, mm_encoder_outputs={"video": video},
                output_hidden_states=True, use_cache=False)
    logits = out.logits[:, :-1]  # [B, L-1, V], position i predicts token i+1
    answer_loss = F.cross_entropy(logits.flatten(0, 1), batch.labels[:, 1:].flatten(), ignore_index=IGNORE)
    summary_layer = summary_layer if summary_layer is not None else model.config.text_config.num_hidden_layers // 2
    frame_states = out.hidden_states[summary_layer][:, list(batch.frame_end_positions)]  # [B, T, D]
    return {
        "answer": answer_loss,
        "vision": heads.vision_loss(vision_features, batch.scene_labels),
        "scene": heads.scene_loss(frame_states, batch.scene_labels),
    }


# ------------------------------------------------------------------------------------------ training
PHRASINGS: tuple[str, ...] = ("canonical", "uniform", "skewed")


@dataclass(frozen=True)
class RecipeConfig:
    """The training recipe's knobs."""

    batch_size: int = 16
    lr: float = 2e-3
    min_lr_fraction: float = 0.05
    """The cosine decays to ``lr * min_lr_fraction`` at the end of the budget."""
    warmup_steps: int = 100
    weight_decay: float = 0.01
    vision_weight: float = 1.0
    """Weight of the vision heads' loss against the answer loss."""
    scene_weight: float = 1.0
    """Weight of the scene head's loss."""
    vision_warmup_fraction: float = 0.12
    """Share of the budget that trains the video tower and its heads alone (no LM: ~4x cheaper steps), on
    ``vision_warmup_batch_scale`` times larger batches, so the LM starts from features that already hold the scene."""
    vision_warmup_batch_scale: int = 4
    curriculum_fraction: float = 0.2
    """Share of the budget trained on one-object scenes only (then all scenes)."""
    kind_weights: tuple[tuple[str, float], ...] = (
        ("caption", 3.0), ("detail", 3.0), ("moving", 1.5), ("direction", 1.5), ("colour", 1.0), ("count", 0.7),
        ("faster", 1.0), ("camera", 0.2),
    )
    """How often each question kind is drawn (kinds a scene lacks are skipped)."""
    grad_clip: float = 1.0
    jpeg_probability: float = 0.5
    """Share of training clips round-tripped through JPEG (``evcascade.demo.augment``), for decoded-video inputs."""
    phrasing: str = "canonical"
    """``"canonical"``: every answer in its one canonical phrasing (the first bundled target); ``"uniform"``: each
    answer segment's phrasing drawn uniformly (``QA.phrase``), so the target learns to hesitate between words
    that say the same thing (the paraphrase world, ``evcascade.data.questions``); ``"skewed"``: each segment
    canonical with ``canonical_probability``, another phrasing otherwise (greedy answers canonical, the other
    phrasings still probable: the bundled target since the detailed captions)."""

    canonical_probability: float = 0.6
    """``phrasing="skewed"``: the probability that a segment is said in its canonical phrasing."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.canonical_probability <= 1.0:
            raise InputError(f"RecipeConfig.canonical_probability must be in [0, 1], got {self.canonical_probability!r}")
        if self.phrasing not in PHRASINGS:
            raise InputError(f"RecipeConfig.phrasing must be one of {PHRASINGS}, got {self.phrasing!r}")


def lr_factor(progress: float, step: int, recipe: RecipeConfig) -> float:
    """Multiplier of the peak LR: linear warmup over steps, then cosine over the budget's ``progress`` in [0, 1].

    >>> round(lr_factor(0.0, 0, RecipeConfig()), 3), round(lr_factor(1.0, 10_000, RecipeConfig()), 3)
    (0.01, 0.05)
    """
    warmup = min(1.0, (step + 1) / max(1, recipe.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return warmup * (recipe.min_lr_fraction + (1 - recipe.min_lr_fraction) * cosine)


def draw_examples(pool, rng: np.random.Generator, batch_size: int, recipe: RecipeConfig, *,
                  max_objects: int | None = None) -> tuple[np.ndarray, list, list[str], list[str]]:
    """A batch of (entry index, question, answer), one question per pool entry (a scene and its window, asked about
    that window: ``qa_pairs(scene, window_us)``), kinds drawn by ``recipe.kind_weights``."""
    from evcascade.data.questions import qa_pairs

    candidates = np.arange(len(pool))
    if max_objects is not None:
        candidates = np.array([i for i, s in enumerate(pool.scenes) if len(s.objects) <= max_objects])
    index = rng.choice(candidates, size=batch_size, replace=len(candidates) < batch_size)
    weights = dict(recipe.kind_weights)
    questions, answers = [], []
    for i in index:
        qas = qa_pairs(pool.scenes[i], tuple(int(t) for t in pool.windows_us[i]))
        kinds = sorted({qa.kind for qa in qas if weights.get(qa.kind, 0) > 0})
        w = np.array([weights[k] for k in kinds])
        kind = kinds[rng.choice(len(kinds), p=w / w.sum())]
        options = [qa for qa in qas if qa.kind == kind]
        qa = options[rng.integers(len(options))]
        questions.append(qa.question)
        answers.append(qa.answer if recipe.phrasing == "canonical" else
                       qa.phrase(rng, recipe.canonical_probability if recipe.phrasing == "skewed" else None))
    return index, [pool.scenes[i] for i in index], questions, answers


def train_target(model, heads: SceneGraphHeads, encoder: ExampleEncoder, pool, *, minutes: float, seed: int = 0,
                 recipe: RecipeConfig = RecipeConfig(),
                 on_step: Callable[[int, float, dict], None] | None = None) -> dict:
    """Train ``model`` and ``heads`` in place on ``pool`` for ``minutes`` of wall time; returns a summary."""
    if not minutes > 0:
        raise InputError(f"minutes must be > 0, got {minutes!r}")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    params = [p for p in (*model.parameters(), *heads.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.98))
    model.train()
    heads.train()
    budget_s, start = minutes * 60.0, time.perf_counter()
    step, phase_start_step, losses = 0, 0, {}
    while (elapsed := time.perf_counter() - start) < budget_s:
        progress = elapsed / budget_s
        with_language = progress >= recipe.vision_warmup_fraction
        if with_language and "answer" not in losses:  # the LM's first step: warm the LR up again for it
            phase_start_step = step
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * lr_factor(progress, step - phase_start_step, recipe)
        one_object = progress < recipe.curriculum_fraction
        batch_size = recipe.batch_size * (1 if with_language else recipe.vision_warmup_batch_scale)
        index, scenes, questions, answers = draw_examples(pool, rng, batch_size, recipe,
                                                          max_objects=1 if one_object and with_language else None)
        frames = jpeg_roundtrip(pool.frames[index], rng, probability=recipe.jpeg_probability)  # [B, T, H, W, 3]
        batch = encoder.batch(frames, scenes, pool.frame_times_us[index], questions, answers)
        losses = recipe_losses(model, heads, batch, with_language=with_language)
        total = recipe.vision_weight * losses["vision"]
        if with_language:
            total = total + losses["answer"] + recipe.scene_weight * losses["scene"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        optimizer.step()
        step += 1
        if on_step is not None:
            on_step(step, progress, {k: float(v.detach()) for k, v in losses.items()})
    model.eval()
    heads.eval()
    return {"steps": step, "seconds": time.perf_counter() - start,
            "final_losses": {k: float(v.detach()) for k, v in losses.items()}}
