"""Tiny models and tokenizers built from configs (no weights, no hub): the models of the tests, the docstring examples, the engine benchmark and the demo tokenizer.

Everything here is real transformers classes with small configs and random weights, so the code under
test is the code users run with real checkpoints.

>>> tok = tiny_tokenizer()
>>> model = tiny_video_llava(tok, seed=0)
>>> model.config.video_token_index == tok.convert_tokens_to_ids("<video>")
True
"""

from __future__ import annotations

from typing import Sequence

import torch

# Words of the tiny vocabulary: the prompt template, the synthetic world's language, filler.
_WORDS: tuple[str, ...] = (
    "USER:", "ASSISTANT:", "A", "chat", "between", "a", "curious", "human", "and", "an", "artificial",
    "intelligence", "assistant.", "what", "which", "where", "how", "many", "is", "are", "the", "object",
    "objects", "moving", "moves", "move", "to", "left", "right", "up", "down", "colour", "color", "shape",
    "of", "faster", "slower", "red", "green", "blue", "yellow", "white", "black", "purple", "orange",
    "circle", "square", "triangle", "star", "big", "small", "one", "two", "three", "four", "zero", "none",
    "there", "in", "scene", "video", "?", ".", ",", "it", "they", "both", "static", "not", "does", "do",
    "describe", "camera", "background", "than", "first", "second", "yes", "no",
)
SPECIAL_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>")
IMAGE_TOKEN, VIDEO_TOKEN = "<image>", "<video>"


def tiny_tokenizer(extra_words: Sequence[str] = (), num_filler: int = 40):
    """A word-level ``PreTrainedTokenizerFast`` shaped like Video-LLaVA's: ``<unk> <s> </s> <pad>``, words,
    filler tokens, then ``<image>`` and ``<video>`` as the last two ids (as 32000/32001 in Video-LLaVA)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys([*_WORDS, *extra_words]))
    vocab_list = [*SPECIAL_TOKENS, *words, *(f"w{i}" for i in range(num_filler)), IMAGE_TOKEN, VIDEO_TOKEN]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN},
    )
    tok.add_bos_token = True
    return tok


def tiny_llama_config(vocab_size: int, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4, **kwargs):
    """A ``LlamaConfig`` of the given size (eager attention so CPU tests are deterministic)."""
    from transformers import LlamaConfig

    cfg = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
    )
    cfg.update(kwargs)
    config = LlamaConfig(**cfg)
    config._attn_implementation = "eager"
    return config


def tiny_llama(vocab_size: int, seed: int = 0, **config_kwargs):
    """A random-weight ``LlamaForCausalLM`` (a stand-in for a drafter or a text-only target)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size, **config_kwargs)).eval()


def tiny_video_llava_config(
    tokenizer=None,
    *,
    vocab_size: int | None = None,
    num_frames: int = 8,
    image_size: int = 32,
    patch_size: int = 16,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    text_hidden_size: int = 32,
    text_layers: int = 2,
):
    """A ``VideoLlavaConfig`` with a small CLIP tower and a small Llama, ids matching ``tokenizer``."""
    from transformers import CLIPVisionConfig, VideoLlavaConfig

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    vocab_size = vocab_size or len(tokenizer)
    tokens_per_frame = (image_size // patch_size) ** 2 + 1  # CLS kept for video
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden_size, intermediate_size=vision_hidden_size * 2, num_hidden_layers=vision_layers,
        num_attention_heads=4, image_size=image_size, patch_size=patch_size, projection_dim=vision_hidden_size,
    )
    text = tiny_llama_config(vocab_size, hidden_size=text_hidden_size, num_layers=text_layers)
    config = VideoLlavaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_seq_length=tokens_per_frame - 1, video_seq_length=num_frames * tokens_per_frame,
    )
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    return config


def tiny_video_llava(tokenizer=None, seed: int = 0, **config_kwargs):
    """A random-weight ``VideoLlavaForConditionalGeneration`` small enough for a unit test."""
    from transformers import VideoLlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration(tiny_video_llava_config(tokenizer, **config_kwargs))
    return model.eval()


def tiny_event_drafter_parts(target_config, tokenizer=None, *, seed: int = 0, refiner: bool = True):
    """Event encoder -> alignment -> [frame refiner] -> draft LM, sized for ``target_config`` (a tiny VideoLlava).

    Returns ``(encoder, alignment, refiner_or_None, draft_lm)``, random weights, eval mode.
    """
    from evcascade.models import (AlignmentMLP, DraftLM, DraftLMConfig, EventEncoder, EventEncoderConfig,
                                  FrameRefiner, FrameRefinerConfig)
    from evcascade.models.alignment import target_video_layout

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    num_frames, _, hidden = target_video_layout(target_config)
    torch.manual_seed(seed)
    clip = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                patch_size=8)
    encoder = EventEncoder(EventEncoderConfig(vision_config=clip, num_images=5, spatial_grid=2)).eval()
    alignment = AlignmentMLP.for_models(encoder.config, target_config, hidden_size=24).eval()
    frame_refiner = (FrameRefiner(FrameRefinerConfig(hidden_size=hidden, fusion_size=8, num_frames=num_frames)).eval()
                     if refiner else None)
    draft_lm = DraftLM(DraftLMConfig(text_config=tiny_llama_config(len(tokenizer)).to_dict(),
                                     visual_hidden_size=hidden, pool_frames=4, pool_grid=1)).eval()
    return encoder, alignment, frame_refiner, draft_lm
