"""Shared-prefix attention: the rows of a batch that continue one cached prefix attend over ONE copy of it.

Several questions about one clip share its visual prefix (system prompt + video tokens, ~2060 positions for
Video-LLaVA-7B): a batch that copied it into every row would hold and read B copies. Here, as in cascade /
shared-prefix attention (Hydragen, Juravsky et al. 2024; "cascade inference" in FlashInfer), each row's attention
splits in two and is merged exactly:

    prefix  per group g: the queries of its rows, folded into one long query block, against its prefix
            [1, H_kv, P_g, D], referenced, never expanded: ONE matmul per group, whatever the number of rows
    suffix  per row: its own keys (question + answer so far, left-padded, masked) and the new block (causal)
    merge   softmax over [prefix, suffix] = the two partial softmaxes reweighted by their log-sum-exps

The target's own attention modules run it: ``install`` registers a transformers attention function (and its mask
function) under a name that wraps the model's own implementation (``eager`` or ``sdpa``) and points the text
model's config at it. A forward without ``shared_prefixes=`` among its keyword arguments (every batch-1 forward,
whatever thread runs it) goes to the wrapped implementation unchanged; a batched forward passes
``shared_prefixes=SharedPrefixes(...)`` and a plain ``DynamicCache`` over the suffixes, whose ``update`` returns the
suffix keys the mask was built for.

The same function serves *packed* batched forwards (``pack_layout=PackedLayout``): the rows' new tokens come as
one ``[1, T]`` sequence (no padding in the projections and MLPs); it unpacks the queries into the padded block
``[B, N]``, ``packed_cache`` unpacks the new keys/values the same way, the 4-D block mask the decoder passes (which
transformers keeps as it is) gives each row its own keys, and the output is packed back.

>>> query = torch.randn(2, 4, 3, 8)                       # [B, H, N, D]
>>> prefix_k, prefix_v = torch.randn(2, 1, 4, 5, 8)       # one group's prefix [1, H_kv, P, D]
>>> suffix_k, suffix_v = torch.randn(2, 2, 4, 3, 8)       # [B, H_kv, S, D]
>>> group = PrefixGroup(((prefix_k, prefix_v),), torch.tensor([0, 1]))
>>> out = shared_prefix_attention(query, suffix_k, suffix_v, None, [group], 0, scaling=8 ** -0.5)  # [B, N, H, D]
>>> full_k = torch.cat([prefix_k.expand(2, -1, -1, -1), suffix_k], dim=2)
>>> full_v = torch.cat([prefix_v.expand(2, -1, -1, -1), suffix_v], dim=2)
>>> causal = torch.ones(3, 8, dtype=torch.bool).tril(5)
>>> reference = torch.nn.functional.scaled_dot_product_attention(query, full_k, full_v, attn_mask=causal)
>>> bool(torch.allclose(out.transpose(1, 2), reference, atol=1e-6))
True
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

NAME = "evcascade_shared_prefix"
"""Registered attention names are ``f"{NAME}|{base}"``: the shared-prefix function wrapping ``base``."""
BASES = ("eager", "sdpa")
"""The implementations it wraps (and whose masks it reads); others (flash, flex) keep copying the prefix."""


@dataclass(frozen=True)
class PrefixGroup:
    """One shared prefix: per layer its keys and values ``[1, H_kv, P, D]`` and the batch rows continuing it."""

    layers: Sequence[tuple[torch.Tensor, torch.Tensor]]
    rows: torch.Tensor  # [b_g] long, indices into the batch


@dataclass(frozen=True)
class SharedPrefixes:
    """What a batched forward passes as ``shared_prefixes=``: the groups (rows in no group have no prefix)."""

    groups: Sequence[PrefixGroup]


def shared_prefix_attention(query: torch.Tensor, suffix_keys: torch.Tensor, suffix_values: torch.Tensor,
                            suffix_mask: torch.Tensor | None, groups: Sequence[PrefixGroup], layer_idx: int, *,
                            scaling: float) -> torch.Tensor:
    """Attention of ``query [B, H, N, D]`` over each row's group prefix (none for rows in no group) followed by its
    suffix ``[B, H_kv, S, D]``; ``suffix_mask`` over the suffix: bool (True attends) or additive float
    ``[B or 1, 1, N, S]``, or None for a causal block ending at the suffix's end. Output ``[B, N, H, D]``."""
    batch, heads, num_new, head_dim = query.shape
    kv_heads, suffix_length = suffix_keys.shape[1], suffix_keys.shape[2]
    rep = heads // kv_heads  # grouped-query attention: query head h reads kv head h // rep
    # suffix part, per row; the rep query heads of a kv head fold into its query length (no repeat_kv copy)
    folded = query.reshape(batch, kv_heads, rep * num_new, head_dim)  # [B, H_kv, rep*N, D]
    scores = torch.matmul(folded, suffix_keys.transpose(-1, -2)).float() * scaling  # [B, H_kv, rep*N, S]
    scores = scores.view(batch, heads, num_new, suffix_length)  # [B, H, N, S]
    if suffix_mask is None:
        causal = torch.ones(num_new, suffix_length, dtype=torch.bool, device=query.device)
        scores = scores.masked_fill(~causal.tril(suffix_length - num_new), float("-inf"))
    elif suffix_mask.dtype == torch.bool:
        scores = scores.masked_fill(~suffix_mask, float("-inf"))
    else:
        scores = scores + suffix_mask
    suffix_max, suffix_sum, suffix_out = _partial_softmax(scores.view(batch, kv_heads, rep * num_new, -1),
                                                          suffix_values)  # [B, H_kv, rep*N, 1 | D]
    out = suffix_out / suffix_sum  # rows in no group: their suffix is all they attend to
    for group in groups:
        prefix_keys, prefix_values = group.layers[layer_idx]  # [1, H_kv, P, D], the shared tensors themselves
        rows = group.rows
        size = rows.numel()
        # the group's queries as one block per kv head: [H_kv, b*rep*N, D] against [H_kv, P, D]
        group_query = folded[rows].transpose(0, 1).reshape(kv_heads, size * rep * num_new, head_dim)
        prefix_scores = torch.matmul(group_query, prefix_keys[0].transpose(-1, -2)).float() * scaling
        prefix_max, prefix_sum, prefix_out = (  # back to [b, H_kv, rep*N, 1 | D]
            t.view(kv_heads, size, rep * num_new, -1).transpose(0, 1)
            for t in _partial_softmax(prefix_scores, prefix_values[0]))
        row_max = torch.maximum(prefix_max, suffix_max[rows])
        prefix_weight, suffix_weight = torch.exp(prefix_max - row_max), torch.exp(suffix_max[rows] - row_max)
        out[rows] = ((prefix_out * prefix_weight + suffix_out[rows] * suffix_weight)
                     / (prefix_sum * prefix_weight + suffix_sum[rows] * suffix_weight))
    out = out.view(batch, heads, num_new, head_dim).to(query.dtype)
    return out.transpose(1, 2).contiguous()  # [B, N, H, D], as transformers' attention functions return


def _partial_softmax(scores: torch.Tensor, values: torch.Tensor):
    """Un-normalised softmax attention of float ``scores [..., Q, K]`` over ``values [..., K, D]``: the row max
    ``[..., Q, 1]``, the sum of exponentials ``[..., Q, 1]`` and their weighted values ``[..., Q, D]`` (float32)."""
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))  # an all-masked row: 0 / 0
    weights = torch.exp(scores - row_max)
    out = torch.matmul(weights.to(values.dtype), values).float()
    return row_max, weights.sum(dim=-1, keepdim=True), out


def _attention_function(base: str) -> Callable:
    """The registered function for ``base``: shared-prefix attention when the forward passes ``shared_prefixes``,
    the model's own ``base`` attention otherwise; either over a packed block when it passes ``pack_layout``."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, shared_prefixes=None,
                  pack_layout=None, **kwargs):
        if pack_layout is not None:  # the rows' queries back in their padded block: [1, H, T, D] -> [B, H, N, D]
            query = pack_layout.unpack(query)
        if shared_prefixes is None:
            if base == "eager":  # HF's convention: every modeling file defines its own eager_attention_forward
                wrapped = sys.modules[type(module).__module__].eager_attention_forward
            else:
                wrapped = ALL_ATTENTION_FUNCTIONS[base]
            out, weights = wrapped(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                   **kwargs)
        else:
            if module.training or kwargs.get("sliding_window") or kwargs.get("softcap"):
                raise ValueError("shared-prefix attention is for inference without sliding windows or soft-capping")
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            out, weights = shared_prefix_attention(query, key, value, attention_mask, shared_prefixes.groups,
                                                   module.layer_idx, scaling=scale), None
        return (pack_layout.pack(out), weights) if pack_layout is not None else (out, weights)  # [1 | B, T | N, H, D]

    return attention


@dataclass(frozen=True)
class PackedLayout:
    """Where the tokens of a packed batched forward sit. The forward's input is ``[1, T]``: every row's block of
    new tokens one after another, no padding, so the projections and MLPs compute T tokens, not B x N. Packed
    token t is column ``cols[t]`` of row ``rows[t]`` of the padded block ``[B, N]`` that attention (and the
    cache) work in: each row attends over its own keys only, through the mask built for that block.

    >>> layout = PackedLayout.of([2, 1])
    >>> layout.unpack(torch.tensor([[[[1.], [2.], [3.]]]])).flatten().tolist()  # [1, 1, 3, 1] -> [2, 1, 2, 1]
    [1.0, 2.0, 3.0, 0.0]
    """

    rows: torch.Tensor  # [T] long
    cols: torch.Tensor  # [T] long
    batch_size: int
    width: int

    @classmethod
    def of(cls, lengths: Sequence[int], device: torch.device | str = "cpu") -> "PackedLayout":
        """The layout of rows with ``lengths[b] >= 1`` new tokens each."""
        rows = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(list(lengths)))
        cols = torch.cat([torch.arange(n) for n in lengths])
        return cls(rows.to(device), cols.to(device), len(lengths), max(lengths))

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``[1, H, T, D]`` (heads first, as attention holds them) -> ``[B, H, N, D]``, zeros at padding."""
        heads, dim = packed.shape[1], packed.shape[-1]
        padded = packed.new_zeros(self.batch_size, self.width, heads, dim)
        padded[self.rows, self.cols] = packed[0].transpose(0, 1)
        return padded.transpose(1, 2)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """``[B, N, ...]`` -> ``[1, T, ...]``: the real positions only."""
        return padded[self.rows, self.cols][None]

    def unpack_tokens(self, packed: torch.Tensor) -> torch.Tensor:
        """``[1, T, ...]`` -> ``[B, N, ...]`` (e.g. logits), zeros at padding."""
        padded = packed.new_zeros(self.batch_size, self.width, *packed.shape[2:])
        padded[self.rows, self.cols] = packed[0]
        return padded


def packed_cache(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], layout: PackedLayout):
    """A ``DynamicCache`` over the rows' keys/values ``[B, H, S, D]`` whose ``update`` takes a packed forward's new
    keys/values ``[1, H, T, D]`` and appends them in the padded block ``[B, H, N, D]`` (zeros at padding, which
    the mask hides and the decoder cuts)."""
    return _packed_cache_type()(layers, layout)


@functools.cache
def _packed_cache_type() -> type:
    from transformers import DynamicCache

    class PackedCache(DynamicCache):
        def __init__(self, layers, layout: PackedLayout) -> None:
            super().__init__(ddp_cache_data=list(layers))
            self.layout = layout

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            return super().update(self.layout.unpack(key_states), self.layout.unpack(value_states), layer_idx,
                                  *args, **kwargs)

    return PackedCache


def install(model) -> bool:
    """Point ``model``'s text attention at the shared-prefix function wrapping its current implementation
    (idempotent); False, changing nothing, when that implementation is not one it wraps (``BASES``)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    config = text_decoder(model).config
    current = config._attn_implementation or ""
    if current.startswith(NAME + "|"):
        return True
    if current not in BASES:
        return False
    name = f"{NAME}|{current}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(name, _attention_function(current))
        # the suffix's mask is built as the wrapped implementation builds it (bool for sdpa, additive for eager)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    config._attn_implementation = name
    return True


def text_decoder(model):
    """The text decoder inside a causal LM or a Video-LLaVA (whose attention modules read its config)."""
    inner = getattr(model, "model", model)
    return getattr(inner, "language_model", inner)
