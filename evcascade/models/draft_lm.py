"""`DraftLM`: a small causal LM sharing the target's tokenizer, optionally conditioned on visual features.

The LM is any ``AutoModelForCausalLM`` (a Llama-68M/160M draft, TinyLlama-1.1B, or EventGPT's Vicuna);
visual features (the target's video-feature space ``[B, T, 1 + G*G, D_t]``, or a flat token sequence
``[B, N, D_t]``) are pooled to the token budget, projected to the LM's width and fed *before* the text as
``inputs_embeds``. The same object serves the engine's ``ModelDrafter`` (it calls ``forward`` with
``inputs_embeds``/``input_ids`` and ``cache``) and training (``labels``, LoRA via peft).

>>> import torch
>>> from evcascade.models.tiny import tiny_llama_config
>>> cfg = DraftLMConfig(text_config=tiny_llama_config(50).to_dict(), visual_hidden_size=8, pool_frames=2, pool_grid=1)
>>> lm = DraftLM(cfg).eval()
>>> lm.embed_visual(torch.zeros(1, 4, 1 + 3 * 3, 8)).shape       # 2 frames x (CLS + 1x1) tokens, LM width 32
torch.Size([1, 4, 32])
>>> lm(input_ids=torch.tensor([[1, 5, 6]]), visual_features=torch.zeros(1, 4, 10, 8)).logits.shape
torch.Size([1, 7, 50])
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from evcascade.errors import InputError
from evcascade.models.configuration import DraftLMConfig
from evcascade.models.event_encoder import build_mlp
from evcascade.models.tokens import pool_frames, pool_patch_grid

IGNORE_INDEX = -100  # label of positions that carry no loss (the visual prefix)


class DraftLM(PreTrainedModel):
    """A causal LM plus a visual projector; ``forward(visual_features=...)`` prepends the visual prefix."""

    config_class = DraftLMConfig
    base_model_prefix = "draft_lm"
    main_input_name = "input_ids"
    _supports_cache_class = True

    def __init__(self, config: DraftLMConfig):
        super().__init__(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.visual_projector = self._build_projector(config)
        self.post_init()

    @staticmethod
    def _build_projector(config: DraftLMConfig) -> nn.Module | None:
        if config.visual_hidden_size is None:
            return None
        if config.projector_type == "identity":
            return nn.Identity()
        if config.projector_type == "linear":
            return nn.Linear(config.visual_hidden_size, config.hidden_size)
        return build_mlp(config.visual_hidden_size, config.hidden_size, depth=2)  # mlp2x_gelu

    @classmethod
    def from_lm(cls, lm: "PreTrainedModel | str", **config_kwargs) -> "DraftLM":
        """Wrap a pretrained causal LM (a model or a hub id / path, e.g. ``JackFram/llama-68m``); the visual
        projector (if ``visual_hidden_size`` is given) starts freshly initialised."""
        if isinstance(lm, str):
            lm = AutoModelForCausalLM.from_pretrained(lm)
        model = cls(DraftLMConfig(text_config=lm.config.to_dict(), **config_kwargs))
        model.language_model.load_state_dict(lm.state_dict())
        model.language_model.set_attn_implementation(lm.config._attn_implementation)  # to_dict() drops it
        return model.to(lm.dtype)

    # ------------------------------------------------------------------ embeddings
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def num_visual_tokens(self, num_frames: int, tokens_per_frame: int) -> int:
        """Prefix length for visual features ``[B, num_frames, tokens_per_frame, D_t]`` under the token budget."""
        frames = min(self.config.pool_frames or num_frames, num_frames)
        per_frame = tokens_per_frame if self.config.pool_grid is None else 1 + self.config.pool_grid**2
        return frames * per_frame

    def embed_visual(self, visual_features: torch.Tensor) -> torch.Tensor:
        """Visual features ``[B, T, 1 + G*G, D_t]`` (pooled to the token budget) or ``[B, N, D_t]`` (taken as
        they are) -> prefix embeddings ``[B, Nv, D_lm]`` in the LM's dtype."""
        cfg = self.config
        if self.visual_projector is None:
            raise InputError("this DraftLM is text-only (visual_hidden_size=None); it takes no visual features")
        if visual_features.ndim not in (3, 4) or visual_features.shape[-1] != cfg.visual_hidden_size:
            raise InputError(
                f"visual features must be [B, T, 1 + G*G, {cfg.visual_hidden_size}] or [B, N, {cfg.visual_hidden_size}], "
                f"got {tuple(visual_features.shape)}"
            )
        features = visual_features
        if features.ndim == 4:
            if cfg.pool_frames is not None and cfg.pool_frames < features.shape[1]:
                features = pool_frames(features, cfg.pool_frames)  # [B, t, 1 + G*G, D_t]
            if cfg.pool_grid is not None:
                features = pool_patch_grid(features, cfg.pool_grid)  # [B, t, 1 + g*g, D_t]
            features = features.flatten(1, 2)  # [B, Nv, D_t]
        dtype = self.get_input_embeddings().weight.dtype
        return self.visual_projector(features.to(dtype))  # [B, Nv, D_lm]

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        cache=None,
        use_cache: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Causal LM forward; ``visual_features`` (prefill only) become a prefix before the text.

        With a prefix, ``logits``/``attention_mask``/``labels`` cover prefix + text, so ``logits[:, -1]`` is still
        the next-token distribution; ``labels`` are aligned with the text as usual and the loss covers the same
        targets as without a prefix (text tokens 1..L-1).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("pass exactly one of input_ids and inputs_embeds")
        if visual_features is None:
            return self.language_model(
                input_ids=input_ids, inputs_embeds=inputs_embeds, cache=cache, use_cache=use_cache,
                attention_mask=attention_mask, labels=labels, position_ids=position_ids, **kwargs,
            )
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # [B, L, D_lm]
        prefix = self.embed_visual(visual_features)  # [B, Nv, D_lm]
        if prefix.shape[0] != inputs_embeds.shape[0]:
            raise InputError(f"visual features have batch {prefix.shape[0]}, text has batch {inputs_embeds.shape[0]}")
        batch, num_prefix = prefix.shape[:2]
        embeds = torch.cat([prefix, inputs_embeds.to(prefix.dtype)], dim=1)  # [B, Nv + L, D_lm]
        if attention_mask is not None:
            ones = attention_mask.new_ones(batch, num_prefix)
            attention_mask = torch.cat([ones, attention_mask], dim=1)  # [B, Nv + L]
        if labels is not None:
            # the prefix carries no targets, and the first text token stays unpredicted as without a prefix,
            # so a loss compares like for like with the text-only model's
            ignore = labels.new_full((batch, num_prefix + 1), IGNORE_INDEX)
            labels = torch.cat([ignore, labels[:, 1:]], dim=1)  # [B, Nv + L]
        if position_ids is not None:
            raise InputError("position_ids cannot be combined with visual_features (the prefix shifts positions)")
        return self.language_model(
            inputs_embeds=embeds, cache=cache, use_cache=use_cache,
            attention_mask=attention_mask, labels=labels, **kwargs,
        )
