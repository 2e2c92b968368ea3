"""The target side of speculative decoding: a model that scores drafted tokens and rolls its KV cache back.

A ``Verifier`` serves one request at a time. ``prefill`` starts it and returns the distribution of the first
answer token; ``verify`` appends n drafted tokens in ONE forward and returns n distributions; ``rollback``
drops the rejected tail from the KV cache. Every greedy decoding loop built on these three calls reproduces
``model.generate(do_sample=False)`` token for token (tests/decoding/test_verifier.py holds both classes to it).

Two implementations:
- ``CausalLMVerifier``: any Hugging Face causal LM (text-only targets, engine benchmarks).
- ``VideoLlavaVerifier``: ``VideoLlavaForConditionalGeneration``. Its prompt is
  ``[text][<video> x T*(P+1)][text]``; the part up to the last visual token is the same for every question
  about one clip, so it keeps (a) the clip's projected video features and (b) the KV cache of that shared
  prefix, both in bounded LRU caches. A second question on a clip pays neither the vision tower nor the
  ~2000-token visual prefill, only its own question tokens.

Token trees (``decoding/tree.py``): ``verify_tree`` and ``prefill_with_tree`` score a trie of drafts in one
forward with a float additive 4-D mask (``[1, 1, n, past + n]``: every cached position, the visual prefix
included, and the node's ancestors) and depth-based ``position_ids``; ``keep_tree_path`` then gathers the
accepted path's keys/values into place, so the cache reads as if that chain alone had been verified.

Logits are returned as float32 (as ``generate`` does), whatever the model's dtype.
"""

from __future__ import annotations

import abc
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evcascade.decoding.feature_cache import LRUCache, content_key
from evcascade.errors import InputError
from evcascade.preprocess import PreprocessConfig, preprocessor_config_from

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


@dataclass
class VerifyRequest:
    """One request for a verifier: the target prompt and, for a video target, the clip's frames."""

    prompt_ids: torch.LongTensor
    """``[B, L]`` target ids, video placeholders already expanded (see ``decoding.prompting``); B == 1."""
    pixel_values_videos: torch.Tensor | None = None
    """``[B, T, 3, S, S]`` preprocessed frames (``evcascade.preprocess``), or None for a text-only prompt."""
    clip_key: str | None = None
    """Content key of the clip for the feature / prefix caches; None hashes ``pixel_values_videos``. A caller
    that sets it promises that equal keys mean equal pixels (e.g. a hash of the raw frames)."""


class Verifier(abc.ABC):
    """The target model, one request at a time; owns the target's KV cache."""

    vocab_size: int
    """Last dim of the logits returned."""
    text_vocab_size: int
    """Ids a drafter may produce or see: ids >= this (e.g. Video-LLaVA's ``<image>``/``<video>`` placeholders and
    the padding rows up to 32064) are never text. Drafters are checked against it."""
    eos_token_ids: tuple[int, ...]
    device: torch.device
    dtype: torch.dtype
    max_positions: int | None
    """The target's ``max_position_embeddings`` (None if unknown): prompt + answer must fit in it."""
    timings: dict[str, float]
    """Seconds spent in "vision", "prefill" and "verify" for the current request (reset by ``prefill``)."""

    drafts_in_prefill: bool = False
    """True when ``prefill_with_draft`` judges a draft in the prefill's own forward (else it costs a verify more)."""

    @abc.abstractmethod
    def prefill(self, request: VerifyRequest) -> torch.Tensor:
        """Start a request; return next-token logits ``[B, V]`` for the position after the prompt."""

    def prefill_with_draft(self, request: VerifyRequest, draft_ids: torch.LongTensor) -> torch.Tensor:
        """Start a request with a first draft ``[B, k]`` appended to the prompt; return logits ``[B, k+1, V]``:
        ``[:, 0]`` after the prompt, ``[:, i]`` after draft token i. The draft stays in the KV cache (as after
        ``verify``: ``rollback`` drops what is rejected). This default runs ``prefill`` then ``verify``."""
        first = self.prefill(request)  # [B, V]
        return torch.cat([first[:, None], self.verify(draft_ids)], dim=1)  # [B, k+1, V]

    @abc.abstractmethod
    def verify(self, token_ids: torch.LongTensor) -> torch.Tensor:
        """Append ``token_ids [B, n]`` (n >= 1) in one forward; return logits ``[B, n, V]``, where
        ``logits[:, i]`` is the distribution of the token following ``token_ids[:, i]``."""

    @abc.abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Drop the last ``num_tokens`` positions (appended by ``verify``) from the KV cache."""

    @property
    @abc.abstractmethod
    def cache_length(self) -> int:
        """Positions in the KV cache: the prompt plus every verified token not rolled back."""

    supports_trees: bool = False
    """True when ``verify_tree``, ``prefill_with_tree`` and ``keep_tree_path`` work (else the engine verifies
    chains only)."""

    def verify_tree(self, token_ids: torch.LongTensor, parents: tuple[int, ...]) -> torch.Tensor:
        """Append a token tree (``decoding/tree.py``) ``token_ids [B, n]`` whose node i has parent ``parents[i]``
        (``parents[0] == -1``) in one forward with a tree attention mask and depth-based positions; logits
        ``[B, n, V]``, row i the distribution after the path root -> i. Follow with ``keep_tree_path``."""
        raise NotImplementedError(f"{type(self).__name__} cannot verify token trees")

    def prefill_with_tree(self, request: VerifyRequest, token_ids: torch.LongTensor,
                          parents: tuple[int, ...]) -> torch.Tensor:
        """Start a request with a draft tree after the prompt in the prefill's own forward: ``token_ids [B, n]``
        with node 0 the prompt's last token (not fed again), ``parents`` as in ``verify_tree``. Logits
        ``[B, n, V]``: row 0 after the prompt, row i after node i's path. Follow with ``keep_tree_path``."""
        raise NotImplementedError(f"{type(self).__name__} cannot verify token trees")

    def keep_tree_path(self, path: list[int]) -> None:
        """After ``verify_tree`` or ``prefill_with_tree``: keep the root's and the nodes ``path``'s cache entries (in that order), drop the
        rest, so the cache holds ``... root, path`` as if that chain alone had been verified."""
        raise NotImplementedError(f"{type(self).__name__} cannot verify token trees")


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings mean something (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_token_ids(token_ids: Any, name: str, vocab_size: int, device: torch.device) -> torch.LongTensor:
    """``token_ids`` as a ``[1, n]`` (n >= 1) long tensor on ``device``, or an ``InputError`` naming what is wrong."""
    if not isinstance(token_ids, torch.Tensor):
        raise InputError(f"{name} must be a torch.LongTensor [B, n], got {type(token_ids).__name__}")
    if token_ids.dtype.is_floating_point or token_ids.dtype.is_complex or token_ids.dtype == torch.bool:
        raise InputError(f"{name} must hold integer token ids, got dtype {token_ids.dtype}")
    if token_ids.ndim != 2:
        raise InputError(f"{name} must be [B, n], got shape {tuple(token_ids.shape)}")
    if token_ids.shape[0] != 1:
        raise InputError(f"only batch size 1 is supported, {name} has B={token_ids.shape[0]}")
    if token_ids.shape[1] == 0:
        raise InputError(f"{name} is empty: at least one token is needed")
    low, high = int(token_ids.min()), int(token_ids.max())
    if low < 0 or high >= vocab_size:
        raise InputError(f"{name} must lie in [0, {vocab_size}), got values in [{low}, {high}]")
    return token_ids.to(device=device, dtype=torch.long)


def _eos_ids_of(model) -> tuple[int, ...]:
    """End-of-sequence ids from the model's generation config (falling back to its text config)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config.get_text_config(), "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    """A torch dtype from a name (float32/fp32, bfloat16/bf16, float16/fp16), or "auto" (the checkpoint's own)."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":  # "auto": the checkpoint's own dtype
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise InputError(f"dtype must be one of {sorted(_DTYPES)}, 'auto' or a torch.dtype, got {dtype!r}")


def _load(model_class, id_or_path: str | Path, device: torch.device | str, dtype: torch.dtype | str, **kwargs):
    """``model_class.from_pretrained`` on ``device`` in ``dtype``, with a missing checkpoint as an InputError."""
    resolved_dtype = resolve_dtype(dtype)
    try:
        model = model_class.from_pretrained(str(id_or_path), dtype=resolved_dtype, **kwargs)
    except OSError as error:  # transformers reports a missing folder / unknown hub id / offline miss as OSError
        raise InputError(f"cannot load a {model_class.__name__} from {str(id_or_path)!r}: {error}") from error
    if "device_map" in kwargs:  # accelerate placed the layers already (possibly over several GPUs)
        return model.eval()
    return model.to(torch.device(device)).eval()


class _KVCacheVerifier(Verifier):
    """verify / rollback / timings over a Hugging Face model with a ``DynamicCache`` (shared by both verifiers)."""

    def __init__(self, model, *, text_vocab_size: int, eos_token_ids: tuple[int, ...] | None) -> None:
        self.model = model.eval()
        first_param = next(model.parameters())
        self.device, self.dtype = first_param.device, first_param.dtype
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        if not 0 < text_vocab_size <= self.vocab_size:
            raise InputError(f"text_vocab_size must be in [1, {self.vocab_size}], got {text_vocab_size}")
        self.text_vocab_size = int(text_vocab_size)
        self.eos_token_ids = tuple(eos_token_ids) if eos_token_ids is not None else _eos_ids_of(model)
        self.max_positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        # computing the 32k-wide output layer over a 2000-token prompt only to keep its last row is wasteful
        self._has_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._cache = None  # the current request's DynamicCache
        self._length = 0  # positions in self._cache
        self._prompt_length = 0  # rollback never reaches into the prompt
        self.timings = {"vision": 0.0, "prefill": 0.0, "verify": 0.0}

    def _begin(self) -> None:
        self._cache, self._length, self._prompt_length = None, 0, 0
        self.timings = {"vision": 0.0, "prefill": 0.0, "verify": 0.0}

    drafts_in_prefill = True

    def prefill(self, request: VerifyRequest) -> torch.Tensor:
        return self._prefill(request, None)[:, 0]  # [B, V]

    def prefill_with_draft(self, request: VerifyRequest, draft_ids: torch.LongTensor) -> torch.Tensor:
        return self._prefill(request, draft_ids)  # [B, k+1, V]

    def prefill_with_tree(self, request: VerifyRequest, token_ids: torch.LongTensor,
                          parents: tuple[int, ...]) -> torch.Tensor:
        from evcascade.decoding.tree import TokenTree

        token_ids = _check_token_ids(token_ids, "token_ids", self.vocab_size, self.device)
        TokenTree(token_ids[0], tuple(parents))  # checks the parents
        logits = self._prefill(request, token_ids[:, 1:], tuple(parents))  # [B, n, V]
        self._tree = (self._prompt_length - 1, tuple(parents))  # node 0 is the prompt's last position
        return logits

    @abc.abstractmethod
    def _prefill(self, request: VerifyRequest, draft_ids: torch.LongTensor | None,
                 parents: tuple[int, ...] | None = None) -> torch.Tensor:
        """Start the request with ``draft_ids [B, k]`` (None: k = 0) after the prompt, a chain or, with ``parents``,
        the nodes 1..k of a tree rooted at the prompt's last token; logits ``[B, k+1, V]``."""

    def _tree_inputs(self, num_chain: int, parents: tuple[int, ...] | None, past: int) -> dict[str, torch.Tensor]:
        """The mask and positions of a prefill's tail (``num_chain`` prompt tokens, then the tree's nodes) after
        ``past`` cached positions; none for a chain (the model's causal mask is that already)."""
        from evcascade.decoding.tree import attention_mask, position_ids, tail_parents

        if parents is None:
            return {}
        tail = tail_parents(num_chain, parents)
        return {"attention_mask": attention_mask(tail, past, dtype=self.dtype, device=self.device),
                "position_ids": position_ids(tail, past, self.device)}

    def _forward(self, cache, *, keep: int | None = None, **inputs) -> tuple[torch.Tensor, Any]:
        """One forward appending to ``cache`` (None starts one); float32 logits of the last ``keep`` positions
        (all when None) ``[B, n or keep, V]`` and the cache."""
        if keep is not None and self._has_logits_to_keep:
            inputs["logits_to_keep"] = keep
        with torch.no_grad():
            out = self.model(cache=cache, use_cache=True, **inputs)
        logits = out.logits[:, -keep:] if keep is not None else out.logits
        return logits.float(), out.cache

    def _check_draft(self, draft_ids: torch.LongTensor | None) -> torch.LongTensor:
        """The prefill's draft ``[B, k]`` (k = 0 for none), checked."""
        if draft_ids is None:
            return torch.zeros(1, 0, dtype=torch.long, device=self.device)
        return _check_token_ids(draft_ids, "draft_ids", self.vocab_size, self.device)

    def _prefill_plain(self, prompt_ids: torch.LongTensor, draft_ids: torch.LongTensor,
                       parents: tuple[int, ...] | None = None) -> torch.Tensor:
        """Prefill a text prompt (and a draft ``[B, k]``, chain or tree) with one forward, nothing reused across
        requests; logits ``[B, k+1, V]``."""
        start = time.perf_counter()
        k = draft_ids.shape[1]
        logits, self._cache = self._forward(None, keep=k + 1, input_ids=torch.cat([prompt_ids, draft_ids], dim=1),
                                            **self._tree_inputs(prompt_ids.shape[1], parents, 0))
        _sync(self.device)
        self.timings["prefill"] += time.perf_counter() - start
        self._prompt_length = prompt_ids.shape[1]
        self._length = self._prompt_length + k
        return logits  # [B, k+1, V]

    def _check_fits(self, num_new: int) -> None:
        if self.max_positions is not None and self._length + num_new > self.max_positions:
            raise InputError(
                f"{self._length} cached + {num_new} new positions exceed the target's "
                f"max_position_embeddings={self.max_positions}"
            )

    def verify(self, token_ids: torch.LongTensor) -> torch.Tensor:
        if self._cache is None:
            raise InputError("verify() called before prefill(): start a request first")
        token_ids = _check_token_ids(token_ids, "token_ids", self.vocab_size, self.device)
        self._check_fits(token_ids.shape[1])
        start = time.perf_counter()
        logits, self._cache = self._forward(self._cache, input_ids=token_ids)  # [B, n, V]
        _sync(self.device)
        self.timings["verify"] += time.perf_counter() - start
        self._length += token_ids.shape[1]
        return logits

    supports_trees = True

    def verify_tree(self, token_ids: torch.LongTensor, parents: tuple[int, ...]) -> torch.Tensor:
        from evcascade.decoding.tree import TokenTree, attention_mask, position_ids

        if self._cache is None:
            raise InputError("verify_tree() called before prefill(): start a request first")
        token_ids = _check_token_ids(token_ids, "token_ids", self.vocab_size, self.device)
        TokenTree(token_ids[0], tuple(parents))  # checks the parents
        num_nodes = token_ids.shape[1]
        # the deepest node sits at past + depth: that, not past + n, is what must fit the context
        depth = int(position_ids(parents, 0)[0].max()) + 1
        self._check_fits(depth)
        start = time.perf_counter()
        past = self._length
        # the dtype's own -inf keeps bf16/fp16 models' additive masks finite where allowed and -inf elsewhere
        mask = attention_mask(parents, past, dtype=self.dtype, device=self.device)  # [1, 1, n, past+n]
        logits, self._cache = self._forward(self._cache, input_ids=token_ids, attention_mask=mask,
                                            position_ids=position_ids(parents, past, self.device))  # [B, n, V]
        _sync(self.device)
        self.timings["verify"] += time.perf_counter() - start
        self._length += num_nodes
        self._tree = (past, tuple(parents))
        return logits

    def keep_tree_path(self, path: list[int]) -> None:
        from evcascade.decoding.tree import compact_kv

        tree = getattr(self, "_tree", None)
        if tree is None:
            raise InputError("keep_tree_path() needs a verify_tree() before it")
        past, parents = tree
        keep = [0, *path]
        if any(not 0 < node < len(parents) or parents[node] != parent for parent, node in zip(keep, path)):
            raise InputError(f"path must be a chain of nodes from the root (parents {list(parents)}), got {path}")
        self._tree = None
        for layer in self._cache.layers:  # DynamicCache: one DynamicLayer per decoder layer, [B, H, S, D] each
            layer.keys = compact_kv(layer.keys, past, keep)
            layer.values = compact_kv(layer.values, past, keep)
        self._length = past + len(keep)

    def rollback(self, num_tokens: int) -> None:
        verified = self._length - self._prompt_length
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or not 0 <= num_tokens <= verified:
            raise InputError(f"rollback takes an int in [0, {verified}] (tokens verified so far), got {num_tokens!r}")
        if num_tokens:  # DynamicCache.crop takes the count to drop as a negative number in transformers 5.x
            self._cache.crop(-num_tokens)
            self._length -= num_tokens

    @property
    def cache_length(self) -> int:
        return self._length

    def cache_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The current request's keys and values per layer, ``[B, H, cache_length, D]`` each (for the batched
        decoder, ``decoding/batch.py``, which copies a prefilled request into its batch). Read-only views."""
        if self._cache is None:
            raise InputError("cache_tensors() needs a request: call prefill() first")
        return [(layer.keys, layer.values) for layer in self._cache.layers]


class CausalLMVerifier(_KVCacheVerifier):
    """Any Hugging Face causal LM as the target (text prompts only).

    >>> from evcascade.models.tiny import tiny_llama
    >>> verifier = CausalLMVerifier(tiny_llama(vocab_size=50))
    >>> verifier.prefill(VerifyRequest(torch.tensor([[1, 5, 7]]))).shape
    torch.Size([1, 50])
    >>> verifier.verify(torch.tensor([[9, 4]])).shape, verifier.cache_length
    (torch.Size([1, 2, 50]), 5)
    """

    def __init__(self, model, *, text_vocab_size: int | None = None, eos_token_ids: tuple[int, ...] | None = None):
        vocab_size = int(model.get_output_embeddings().weight.shape[0])
        super().__init__(model, text_vocab_size=text_vocab_size or vocab_size, eos_token_ids=eos_token_ids)

    @classmethod
    def from_pretrained(cls, id_or_path: str | Path, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype | str = torch.float32, **kwargs) -> "CausalLMVerifier":
        """Load an ``AutoModelForCausalLM`` checkpoint (folder or hub id) onto ``device`` in ``dtype``."""
        from transformers import AutoModelForCausalLM

        return cls(_load(AutoModelForCausalLM, id_or_path, device, dtype, **kwargs))

    def _prefill(self, request: VerifyRequest, draft_ids: torch.LongTensor | None,
                 parents: tuple[int, ...] | None = None) -> torch.Tensor:
        self._begin()
        if request.pixel_values_videos is not None:
            raise InputError("CausalLMVerifier is text-only: pixel_values_videos must be None")
        prompt_ids = _check_token_ids(request.prompt_ids, "prompt_ids", self.vocab_size, self.device)
        draft_ids = self._check_draft(draft_ids)
        self._check_fits(prompt_ids.shape[1] + draft_ids.shape[1])
        return self._prefill_plain(prompt_ids, draft_ids, parents)  # [B, k+1, V]


@dataclass
class _PrefixEntry:
    """A clip's shared-prefix KV cache; requests append to ``cache`` and it is cropped back before reuse."""

    cache: Any  # DynamicCache
    length: int  # prefix positions
    last_logits: torch.Tensor  # [B, V] next-token logits after the prefix (for prompts that end at the video)


class VideoLlavaVerifier(_KVCacheVerifier):
    """``VideoLlavaForConditionalGeneration`` as the target, with content-keyed video-feature and prefix-KV caches.

    ``text_vocab_size`` is the lowest multimodal placeholder id: for Video-LLaVA-7B-hf 32000 of its 32064
    logits (``<image>`` = 32000, ``<video>`` = 32001, the rest padding), so drafters only ever see text ids.
    Video features come from the model's own ``get_video_features`` (projected, CLS kept: T*(P+1) tokens).
    """

    def __init__(self, model, *, feature_cache_size: int = 4, prefix_cache_size: int = 2,
                 preprocess_config: PreprocessConfig | None = None,
                 eos_token_ids: tuple[int, ...] | None = None) -> None:
        config = model.config
        self.video_token_id = int(config.video_token_id)
        self.image_token_id = int(config.image_token_id)
        vocab_size = int(model.get_output_embeddings().weight.shape[0])
        text_vocab_size = min(self.video_token_id, self.image_token_id, vocab_size)
        super().__init__(model, text_vocab_size=text_vocab_size, eos_token_ids=eos_token_ids)
        self.tokens_per_frame = (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1
        # features [T, P+1, D] on the model's device: ~64 MiB in fp32 for 8 frames of Video-LLaVA-7B
        self.feature_cache: LRUCache[torch.Tensor] = LRUCache(feature_cache_size)
        # a 7B prefix of ~2060 positions holds ~1 GiB of keys/values in bf16: keep this bound small
        self.prefix_cache: LRUCache[_PrefixEntry] = LRUCache(prefix_cache_size)
        self.preprocess_config = preprocess_config

    @classmethod
    def from_pretrained(cls, id_or_path: str | Path = "LanguageBind/Video-LLaVA-7B-hf", *,
                        device: torch.device | str = "cpu", dtype: torch.dtype | str = torch.float32,
                        feature_cache_size: int = 4, prefix_cache_size: int = 2, **kwargs) -> "VideoLlavaVerifier":
        """Load a Video-LLaVA checkpoint (folder or hub id; fp32 / bf16 / fp16; CPU / CUDA) and its frame
        preprocessing settings (``preprocessor_config.json`` when the checkpoint has one, CLIP defaults otherwise)."""
        from transformers import VideoLlavaForConditionalGeneration

        model = _load(VideoLlavaForConditionalGeneration, id_or_path, device, dtype, **kwargs)
        return cls(model, feature_cache_size=feature_cache_size, prefix_cache_size=prefix_cache_size,
                   preprocess_config=preprocessor_config_from(id_or_path, model.config))

    def pixel_values(self, frames) -> torch.Tensor:
        """Frames ``uint8 [T, H, W, 3]`` (numpy or tensor) -> ``pixel_values_videos [1, T, 3, S, S]`` for a request,
        preprocessed with this checkpoint's settings, on the model's device and in its dtype."""
        config = self.preprocess_config or PreprocessConfig.for_model(self.model.config)
        pixels = config(frames, device=self.device)  # [T, 3, S, S] float32
        return pixels.to(self.dtype).unsqueeze(0)

    def video_features(self, pixel_values_videos: torch.Tensor, clip_key: str | None = None) -> torch.Tensor:
        """Projected video features ``[B*T, P+1, D]`` of a clip, from the feature cache or the vision tower."""
        key = clip_key if clip_key is not None else content_key(pixel_values_videos)
        features = self.feature_cache.get(key)
        if features is None:
            start = time.perf_counter()
            with torch.no_grad():
                out = self.model.model.get_video_features(pixel_values_videos=pixel_values_videos, return_dict=True)
            features = out.pooler_output  # [B*T, P+1, D], already through the multimodal projector
            _sync(self.device)
            self.timings["vision"] += time.perf_counter() - start
            self.feature_cache.put(key, features)
        return features

    def _check_pixels(self, pixels: Any) -> torch.Tensor:
        size = self.model.config.vision_config.image_size
        if not isinstance(pixels, torch.Tensor) or not pixels.dtype.is_floating_point:
            raise InputError(f"pixel_values_videos must be a float tensor [B, T, 3, {size}, {size}], "
                             f"got {type(pixels).__name__} {getattr(pixels, 'dtype', '')}")
        if pixels.ndim != 5 or tuple(pixels.shape[2:]) != (3, size, size) or pixels.shape[1] == 0:
            raise InputError(f"pixel_values_videos must be [B, T>=1, 3, {size}, {size}], got {tuple(pixels.shape)}")
        if pixels.shape[0] != 1:
            raise InputError(f"only batch size 1 is supported, pixel_values_videos has B={pixels.shape[0]}")
        return pixels.to(device=self.device, dtype=self.dtype)

    def _prefill(self, request: VerifyRequest, draft_ids: torch.LongTensor | None,
                 parents: tuple[int, ...] | None = None) -> torch.Tensor:
        """Every prefill: the clip's prefix from the caches, then prompt suffix + draft (chain or tree) in one
        forward."""
        self._begin()
        prompt_ids = _check_token_ids(request.prompt_ids, "prompt_ids", self.vocab_size, self.device)
        draft_ids = self._check_draft(draft_ids)
        self._check_fits(prompt_ids.shape[1] + draft_ids.shape[1])
        if bool((prompt_ids == self.image_token_id).any()):
            raise InputError(f"prompt_ids hold <image> placeholders (id {self.image_token_id}); "
                             "only video is supported")
        is_video = (prompt_ids[0] == self.video_token_id).nonzero().flatten()  # [n_video] positions
        if request.pixel_values_videos is None:
            if is_video.numel():
                raise InputError(f"prompt_ids hold {is_video.numel()} <video> placeholders "
                                 "but pixel_values_videos is None")
            return self._prefill_plain(prompt_ids, draft_ids, parents)  # a text-only prompt: nothing to share

        pixels = self._check_pixels(request.pixel_values_videos)
        expected = pixels.shape[1] * self.tokens_per_frame
        if is_video.numel() != expected:
            raise InputError(
                f"prompt_ids hold {is_video.numel()} <video> placeholders, but {pixels.shape[1]} frames need "
                f"{expected} (frames x {self.tokens_per_frame}); expand the prompt with VideoLlavaPrompter"
            )
        clip_key = request.clip_key if request.clip_key is not None else content_key(pixels)
        prefix_length = int(is_video[-1]) + 1  # the shared prefix ends at the last visual token
        prefix_ids, suffix_ids = prompt_ids[:, :prefix_length], prompt_ids[:, prefix_length:]
        tail = torch.cat([suffix_ids, draft_ids], dim=1)  # [B, s + k]
        k = draft_ids.shape[1]

        prefix_key = (clip_key, content_key(prefix_ids))
        entry = self.prefix_cache.get(prefix_key)
        features = self.video_features(pixels, clip_key) if entry is None else None
        start = time.perf_counter()  # prefill time excludes the vision tower
        # a draft holding a placeholder id (drafters propose text ids; a replayed or adversarial one may not) would
        # be taken for video features in a forward that carries them: such a draft goes after the prefix
        placeholders = (tail == self.video_token_id) | (tail == self.image_token_id)  # [B, s + k]
        in_one_forward = entry is None and not bool(placeholders.any())
        if entry is None:
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            video = BaseModelOutputWithPooling(pooler_output=features)  # 5.23's way to pass precomputed features
            # a new clip: as HF's own prefill, one forward over the whole prompt (and draft); the cache becomes the
            # clip's prefix entry (the next request on the clip crops it back to the prefix)
            ids = torch.cat([prefix_ids, tail], dim=1) if in_one_forward else prefix_ids
            keep = tail.shape[1] + 1 if in_one_forward else 1
            tree = self._tree_inputs(prompt_ids.shape[1], parents, 0) if in_one_forward else {}
            all_logits, self._cache = self._forward(  # [B, keep, V]: the prefix's last position, then the tail's
                None, keep=keep, input_ids=ids, mm_encoder_outputs={"video": video}, **tree)
            entry = _PrefixEntry(cache=self._cache, length=prefix_length, last_logits=all_logits[:, 0].clone())
            self.prefix_cache.put(prefix_key, entry)
            logits = all_logits[:, -(k + 1):]  # [B, k+1, V] (in one forward)
        else:
            # the previous request on this clip appended its question and answer: crop back to the prefix
            # (cropping slices views: measured 0.7 ms for a 7B-shaped 2060-position bf16 prefix on this CPU, where
            # deep-copying a pristine copy per request took ~760 ms)
            surplus = entry.cache.get_seq_length() - entry.length
            if surplus:
                entry.cache.crop(-surplus)
            self._cache = entry.cache
        if not in_one_forward:
            logits = entry.last_logits.clone()[:, None]  # [B, 1, V]; a copy: the entry must not change
            if tail.shape[1]:
                # with a suffix its last row judges the draft's first token; without, the prefix's last logits do
                keep = k + 1 if suffix_ids.shape[1] else k
                tail_logits, self._cache = self._forward(  # [B, keep, V]
                    self._cache, keep=keep, input_ids=tail,
                    **self._tree_inputs(suffix_ids.shape[1], parents, prefix_length))
                logits = tail_logits if suffix_ids.shape[1] else torch.cat([logits, tail_logits], dim=1)
        _sync(self.device)
        self.timings["prefill"] += time.perf_counter() - start
        self._prompt_length = prompt_ids.shape[1]
        self._length = self._prompt_length + k
        return logits  # [B, k+1, V]

    def cache_stats(self) -> dict[str, dict[str, int]]:
        """Hit/miss counters of the feature and prefix caches (for reports and tests)."""
        return {"features": self.feature_cache.stats(), "prefix": self.prefix_cache.stats()}

    def clear_caches(self) -> None:
        """Forget every clip's video features and prefix KV cache (the counters keep running): the next request
        pays the vision tower and the visual prefill again, e.g. a benchmark's cold regime."""
        self.feature_cache.clear()
        self.prefix_cache.clear()
