"""Video-LLaVA prompts: the chat template, placeholder expansion, and the text-only ids drafters see.

The target sees ``USER: <video>\\n{question} ASSISTANT:`` (Video-LLaVA-7B-hf's template) with the single
``<video>`` placeholder expanded to one token per visual feature, ``num_frames * (patches + 1)`` (8 x 257 =
2056 for the 7B model), exactly as ``VideoLlavaProcessor`` does by repeating the placeholder in the text
before tokenising. We tokenise once and expand the id instead, because the stock processor needs torchvision.
Drafters share the tokenizer but not the visual tokens, so they get the same ids with the placeholders removed.

>>> from evcascade.models.tiny import tiny_tokenizer, tiny_video_llava_config
>>> tok = tiny_tokenizer()
>>> prompter = VideoLlavaPrompter(tok, tiny_video_llava_config(tok))
>>> prompt = prompter("what colour is the object ?")
>>> prompt.target_ids.shape[1] - prompt.text_ids.shape[1] == prompt.num_video_tokens == 8 * 5
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evcascade.errors import InputError

VIDEO_LLAVA_TEMPLATE = "USER: <video>\n{question} ASSISTANT:"
"""Video-LLaVA-7B-hf's prompt (its model card and the transformers docs); ``<video>`` stands for the clip."""


@dataclass(frozen=True)
class Prompt:
    """A tokenised request: what the target sees and what drafters see."""

    target_ids: torch.LongTensor
    """``[1, L]`` ids with the ``<video>`` placeholder expanded to ``num_video_tokens`` copies (for the verifier)."""
    text_ids: torch.LongTensor
    """``[1, L - num_video_tokens]`` the same ids without placeholders (for drafters' ``DraftContext``)."""
    num_video_tokens: int
    text: str
    """The templated prompt before tokenisation, with a single ``<video>``."""


def check_prompt_fits(prompt_length: int, max_new_tokens: int, max_positions: int | None) -> None:
    """Raise ``InputError`` unless a prompt of ``prompt_length`` plus ``max_new_tokens`` fits the target's positions.

    >>> check_prompt_fits(2100, 256, 4096)
    >>> check_prompt_fits(4000, 256, 4096)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    evcascade.errors.InputError: the prompt has 4000 tokens, more than max_position_embeddings (4096) - ... = 3840
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if max_positions is not None and prompt_length > max_positions - max_new_tokens:
        raise InputError(
            f"the prompt has {prompt_length} tokens, more than max_position_embeddings ({max_positions}) "
            f"- max_new_tokens ({max_new_tokens}) = {max_positions - max_new_tokens}"
        )


class VideoLlavaPrompter:
    """Builds Video-LLaVA prompts for one tokenizer + model config: template, tokenise, expand ``<video>``."""

    def __init__(self, tokenizer, config, *, template: str = VIDEO_LLAVA_TEMPLATE) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.video_token = getattr(tokenizer, "video_token", None) or "<video>"
        self.video_token_id = int(config.video_token_id)
        self.image_token_id = int(config.image_token_id)
        found = tokenizer.convert_tokens_to_ids(self.video_token)
        if found != self.video_token_id:
            raise InputError(f"the tokenizer maps {self.video_token!r} to id {found}, but the model config expects "
                             f"video_token_id={self.video_token_id}: tokenizer and model do not belong together")
        if template.count(self.video_token) != 1 or "{question}" not in template:
            raise InputError(f"template must hold one {self.video_token!r} and a '{{question}}' field, "
                             f"got {template!r}")
        vision = config.vision_config
        self.tokens_per_frame = (vision.image_size // vision.patch_size) ** 2 + 1  # CLS kept for video
        self.default_num_video_tokens = int(config.video_seq_length)
        self.max_positions = getattr(config.get_text_config(), "max_position_embeddings", None)

    def __call__(self, question: str, *, num_frames: int | None = None) -> Prompt:
        """The prompt for ``question`` about a clip of ``num_frames`` frames (default: the model's own count)."""
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"the question must be a non-empty string, got {question!r}")
        placeholders = {self.video_token, getattr(self.tokenizer, "image_token", None) or "<image>"}
        if any(p in question for p in placeholders):
            raise InputError(f"the question must not contain the placeholders {sorted(placeholders)}: {question!r}")
        if num_frames is None:
            num_video_tokens = self.default_num_video_tokens
        elif isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise InputError(f"num_frames must be an int >= 1, got {num_frames!r}")
        else:
            num_video_tokens = num_frames * self.tokens_per_frame

        text = self.template.format(question=question.strip())
        ids = torch.tensor(self.tokenizer(text, add_special_tokens=True)["input_ids"], dtype=torch.long)  # [L0]
        at = (ids == self.video_token_id).nonzero().flatten()
        assert at.numel() == 1, f"template {self.template!r} tokenised to {at.numel()} video placeholders"
        position = int(at[0])
        expanded = torch.full((num_video_tokens,), self.video_token_id, dtype=torch.long)
        target_ids = torch.cat([ids[:position], expanded, ids[position + 1:]])  # [L0 - 1 + num_video_tokens]
        text_ids = torch.cat([ids[:position], ids[position + 1:]])  # [L0 - 1]
        return Prompt(target_ids=target_ids[None], text_ids=text_ids[None], num_video_tokens=num_video_tokens,
                      text=text)

    def text_ids_of(self, target_ids: torch.LongTensor) -> torch.LongTensor:
        """``target_ids [1, L]`` without its ``<video>``/``<image>`` placeholders: the ids a drafter sees."""
        if target_ids.ndim != 2 or target_ids.shape[0] != 1:
            raise InputError(f"target_ids must be [1, L], got shape {tuple(target_ids.shape)}")
        keep = (target_ids[0] != self.video_token_id) & (target_ids[0] != self.image_token_id)
        return target_ids[:, keep]

    def check_fits(self, prompt: Prompt, max_new_tokens: int) -> None:
        """Raise ``InputError`` if the target prompt plus ``max_new_tokens`` exceeds the target's positions."""
        check_prompt_fits(prompt.target_ids.shape[1], max_new_tokens, self.max_positions)
