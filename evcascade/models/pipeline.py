"""Glue from a request's events (and key frame) to a draft LM's visual prefix: the ``prefix_fn`` of a drafter.

    events -> event_images -> EventEncoder -> AlignmentMLP -> [FrameRefiner(key frame)] -> DraftLM.embed_visual
    (L1: events only; L2: events + key frame; EventGPT: EventEncoder with its own head, no alignment)

`EventDrafterPrefix` checks at construction that the pieces fit (sizes, grids, frame counts) and names
both sides of any mismatch; called with a `DraftContext` it returns prefix embeddings ``[B, Nv, D_lm]``, or
None when the request has no events (the drafter then runs text-only).

>>> import torch
>>> from evcascade.models import AlignmentConfig, AlignmentMLP, DraftLM, DraftLMConfig
>>> from evcascade.models.tiny import tiny_llama_config
>>> align = AlignmentMLP(AlignmentConfig(input_size=8, event_grid=2, target_hidden_size=6, target_grid=2))
>>> lm = DraftLM(DraftLMConfig(text_config=tiny_llama_config(20).to_dict(), visual_hidden_size=7))
>>> check_sizes("AlignmentMLP output (target_hidden_size)", align.config.target_hidden_size,
...             "DraftLM input (visual_hidden_size)", lm.config.visual_hidden_size)
Traceback (most recent call last):
...
evcascade.errors.InputError: size mismatch: AlignmentMLP output (target_hidden_size)=6 but DraftLM input (visual_hidden_size)=7
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from evcascade.errors import InputError
from evcascade.models.alignment import AlignmentMLP, target_video_layout
from evcascade.models.draft_lm import DraftLM
from evcascade.models.event_encoder import EventEncoder
from evcascade.models.frame_refiner import FrameRefiner

if TYPE_CHECKING:  # pragma: no cover
    from transformers import CLIPVisionModel, PreTrainedConfig

    from evcascade.decoding.drafters import DraftContext
    from evcascade.events.container import Events

KEY_FRAME_FEATURES = "key_frame_features"  # DraftContext.extras key for precomputed [B, 1 + P, D_t] features


def check_sizes(name_a: str, value_a: Any, name_b: str, value_b: Any) -> None:
    """Raise InputError naming both sides when two pieces of the chain disagree."""
    if value_a != value_b:
        raise InputError(f"size mismatch: {name_a}={value_a} but {name_b}={value_b}")


class KeyFrameEncoder:
    """One RGB frame -> CLIP tower features ``[B, 1 + P, D]`` from ``hidden_states[feature_layer]`` (CLS kept),
    i.e. what the target's video tower emits for one frame before its projector."""

    def __init__(self, tower: "CLIPVisionModel", *, feature_layer: int = -2, mean=None, std=None):
        from evcascade.preprocess import CLIP_MEAN, CLIP_STD

        self.tower = tower
        self.feature_layer = int(feature_layer)
        self.image_size = int(tower.config.image_size)
        self.mean, self.std = tuple(mean or CLIP_MEAN), tuple(std or CLIP_STD)

    @classmethod
    def from_video_llava(cls, model) -> "KeyFrameEncoder":
        """Use a ``VideoLlavaForConditionalGeneration``'s own video tower and feature layer."""
        layer = model.config.vision_feature_layer
        if not isinstance(layer, int):
            raise InputError(f"KeyFrameEncoder needs a single vision_feature_layer, the target has {layer!r}")
        return cls(model.model.video_tower, feature_layer=layer)

    @property
    def hidden_size(self) -> int:
        return int(self.tower.config.hidden_size)

    @torch.no_grad()
    def __call__(self, frame: "np.ndarray | torch.Tensor") -> torch.Tensor:
        """frame uint8 ``[H, W, 3]`` (or ``[B, H, W, 3]``) -> features ``[B, 1 + P, D]``."""
        from evcascade.preprocess import preprocess_frames

        frames = frame[None] if frame.ndim == 3 else frame
        pixels = preprocess_frames(frames, size=self.image_size, crop_size=self.image_size, mean=self.mean, std=self.std)
        pixels = pixels.to(device=self.tower.device, dtype=self.tower.dtype)  # [B, 3, S, S]
        return self.tower(pixel_values=pixels, output_hidden_states=True).hidden_states[self.feature_layer]


class IdentityMemo:
    """The results of the last ``maxsize`` calls, keyed by the identity of their input objects (held by the memo, so
    an id is not reused while its entry lives; the objects are taken as unchanged while held). Not
    ``decoding.feature_cache.LRUCache``: that one keys by content hashes and sits a floor above ``models/``.

    >>> memo, a = IdentityMemo(1), object()
    >>> memo.put((a,), 1); memo.get((a,)), memo.get((object(),))
    (1, None)
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = 0
        self._entries: OrderedDict[tuple, tuple[tuple, Any]] = OrderedDict()
        self.resize(maxsize)

    def get(self, inputs: tuple) -> Any:
        key = tuple(map(id, inputs))
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, inputs: tuple, value: Any) -> None:
        key = tuple(map(id, inputs))
        self._entries[key] = (inputs, value)
        self._entries.move_to_end(key)
        self._trim()

    def resize(self, maxsize: int) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise InputError(f"memo size must be an int >= 1, got {maxsize!r}")
        self.maxsize = maxsize
        self._trim()

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _trim(self) -> None:
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)


class EventDrafterPrefix:
    """``prefix_fn`` for the engine's ``ModelDrafter``: a request's events (+ key frame) -> ``[B, Nv, D_lm]``."""

    def __init__(
        self,
        encoder: EventEncoder,
        draft_lm: DraftLM,
        *,
        alignment: AlignmentMLP | None = None,
        refiner: FrameRefiner | None = None,
        key_frame_encoder: KeyFrameEncoder | None = None,
        target_config: "PreTrainedConfig | None" = None,
        memo_size: int = 4,
    ):
        lm_in = ("DraftLM input (visual_hidden_size)", draft_lm.config.visual_hidden_size)
        if draft_lm.config.visual_hidden_size is None:
            raise InputError("the DraftLM is text-only (visual_hidden_size=None); it cannot take a visual prefix")
        if alignment is None:
            if refiner is not None:
                raise InputError("a FrameRefiner needs an AlignmentMLP before it (it refines aligned features)")
            check_sizes("EventEncoder output_size", encoder.config.output_size, *lm_in)
        else:
            acfg, ecfg = alignment.config, encoder.config
            check_sizes("EventEncoder output_size", ecfg.output_size, "AlignmentMLP input_size", acfg.input_size)
            check_sizes("EventEncoder num_images", ecfg.num_images, "AlignmentMLP num_event_images", acfg.num_event_images)
            check_sizes("EventEncoder output_grid", ecfg.output_grid, "AlignmentMLP event_grid", acfg.event_grid)
            if ecfg.aggregation != "spatio_temporal":
                raise InputError(f"AlignmentMLP needs spatio_temporal encoder tokens, got aggregation={ecfg.aggregation!r}")
            check_sizes("AlignmentMLP target_hidden_size", acfg.target_hidden_size, *lm_in)
            if target_config is not None:
                frames, grid, hidden = target_video_layout(target_config)
                check_sizes("AlignmentMLP target_hidden_size", acfg.target_hidden_size, "target video hidden size", hidden)
                check_sizes("AlignmentMLP target_grid", acfg.target_grid, "target patch grid", grid)
                check_sizes("AlignmentMLP target_num_frames", acfg.target_num_frames, "target frames", frames)
            if refiner is not None:
                check_sizes("AlignmentMLP target_hidden_size", acfg.target_hidden_size, "FrameRefiner hidden_size", refiner.config.hidden_size)
                check_sizes("AlignmentMLP target_num_frames", acfg.target_num_frames, "FrameRefiner num_frames", refiner.config.num_frames)
                if key_frame_encoder is not None:
                    check_sizes("KeyFrameEncoder hidden size", key_frame_encoder.hidden_size, "FrameRefiner hidden_size", refiner.config.hidden_size)
        self.encoder, self.alignment, self.refiner = encoder, alignment, refiner
        self.key_frame_encoder, self.draft_lm = key_frame_encoder, draft_lm
        self._memo = IdentityMemo(memo_size)  # events -> encoder tokens
        self._features_memo = IdentityMemo(memo_size)  # (events[, video, key-frame features]) -> features
        self._prefix_memo = IdentityMemo(memo_size)  # features -> prefix embeddings

    @property
    def memo_size(self) -> int:
        """How many clips' tokens, features and prefixes are kept (the most recently used ones)."""
        return self._memo.maxsize

    @memo_size.setter
    def memo_size(self, size: int) -> None:
        for memo in (self._memo, self._features_memo, self._prefix_memo):
            memo.resize(size)

    @property
    def uses_key_frame(self) -> bool:
        return self.refiner is not None

    def clear(self) -> None:
        """Forget the memoised event tokens, features (key-frame encode included) and prefix: the next request pays
        the encoders again, e.g. a benchmark's cold regime."""
        for memo in (self._memo, self._features_memo, self._prefix_memo):
            memo.clear()

    def event_tokens(self, events: "Events") -> torch.Tensor:
        """Encoder tokens ``[1, N_tok, D_enc]`` for one window; the last ``memo_size`` windows' results are reused,
        so L1 and L2 levels built on one encoder (or more questions on the same clips) encode the events once."""
        tokens = self._memo.get((events,))
        if tokens is None:
            tokens = self.encoder.encode_events(events)
            self._memo.put((events,), tokens)
        return tokens

    @torch.no_grad()
    def visual_features(self, events: "Events", key_frame_features: torch.Tensor | None = None) -> torch.Tensor:
        """Draft visual features: ``[1, T, 1 + P, D_t]`` with an alignment, else the encoder's ``[1, N_tok, D]``."""
        tokens = self.event_tokens(events)
        if self.alignment is None:
            return tokens
        features = self.alignment(tokens)  # [1, T, 1 + P, D_t]
        if self.refiner is not None:
            if key_frame_features is None:
                raise InputError("this prefix refines with a key frame: pass key-frame features or a video")
            features = self.refiner(features, key_frame_features.to(features.device))
        return features

    def key_frame_features(self, context: "DraftContext") -> torch.Tensor | None:
        """The request's key-frame features ``[B, 1 + P, D_t]`` (precomputed in extras, else encoded), None for L1."""
        if not self.uses_key_frame:
            return None
        precomputed = context.extras.get(KEY_FRAME_FEATURES)
        if precomputed is not None:
            return precomputed
        if context.video is None:
            raise InputError(f"this drafter level needs a key frame: the request has no video and no "
                             f"extras[{KEY_FRAME_FEATURES!r}]")
        if self.key_frame_encoder is None:
            raise InputError("this drafter level needs a KeyFrameEncoder (or precomputed key-frame features)")
        return self.key_frame_encoder(context.video.key_frame)

    @torch.no_grad()
    def request_features(self, context: "DraftContext") -> torch.Tensor | None:
        """``visual_features`` of the request's events (and key frame), or None when it carries no events. A
        result is reused while a request carries the same events (and video / key-frame features) objects as one
        of the last ``memo_size`` clips: every question about a clip, from one stream or several in a batch, and
        the modality rule's agreement map (``decoding.modality.agreement_for_request``) pay the encoders once
        (the models are taken as frozen)."""
        if context.events is None:
            return None
        inputs = (context.events, context.video, context.extras.get(KEY_FRAME_FEATURES)) if self.uses_key_frame \
            else (context.events,)
        features = self._features_memo.get(inputs)
        if features is None:
            features = self.visual_features(context.events, self.key_frame_features(context))
            self._features_memo.put(inputs, features)
        return features

    @torch.no_grad()
    def __call__(self, context: "DraftContext") -> torch.Tensor | None:
        """The prefix embeddings ``[1, Nv, D_lm]`` for a request (``request_features`` through the draft LM's
        projector, reused like them), or None when it carries no events."""
        features = self.request_features(context)
        if features is None:
            return None
        prefix = self._prefix_memo.get((features,))
        if prefix is None:
            prefix = self.draft_lm.embed_visual(features)
            self._prefix_memo.put((features,), prefix)
        return prefix


def build_event_drafter_prefix(
    encoder: EventEncoder,
    draft_lm: DraftLM,
    *,
    alignment: AlignmentMLP | None = None,
    refiner: FrameRefiner | None = None,
    key_frame_encoder: KeyFrameEncoder | None = None,
    target_config: "PreTrainedConfig | None" = None,
) -> EventDrafterPrefix:
    """The prefix function of an event drafter level: L1 = encoder + alignment; L2 = L1 + refiner and a key-frame
    encoder (e.g. ``KeyFrameEncoder.from_video_llava(target)``); EventGPT = encoder with its head, no alignment."""
    return EventDrafterPrefix(encoder, draft_lm, alignment=alignment, refiner=refiner,
                              key_frame_encoder=key_frame_encoder, target_config=target_config)
