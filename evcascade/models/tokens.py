"""Pure token-layout functions shared by the drafter models: aggregation, pooling and resizing of patch grids.

A "grid sequence" is ``[..., 1 + G*G, D]``: a CLS token then G x G patch tokens in row-major order, the
layout every CLIP tower emits. Every function here keeps the CLS token and works on any leading dims.

>>> import torch
>>> x = torch.arange(2 * 5 * 4, dtype=torch.float32).reshape(1, 2, 5, 4)   # [B=1, N=2, 1 + 2*2, D=4]
>>> spatio_temporal_tokens(x).shape                                          # 2 temporal + 5 spatial
torch.Size([1, 7, 4])
>>> pool_patch_grid(x, 1).shape                                              # CLS + 1x1 pooled patch
torch.Size([1, 2, 2, 4])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from evcascade.errors import InputError


def grid_side(num_tokens: int) -> int:
    """Side G of a grid sequence of ``1 + G*G`` tokens; InputError if the count is not of that form."""
    side = math.isqrt(max(num_tokens - 1, 0))
    if num_tokens < 2 or side * side != num_tokens - 1:
        raise InputError(f"expected 1 + G*G tokens (CLS + square patch grid), got {num_tokens}")
    return side


def spatio_temporal_tokens(features: torch.Tensor) -> torch.Tensor:
    """EventGPT's aggregation of per-image tokens: N temporal tokens (mean over each image's tokens, CLS
    included) followed by S spatial tokens (mean over images of each position).

    features: ``[B, N, S, D]`` -> ``[B, N + S, D]``.
    """
    temporal = features.mean(dim=2)  # [B, N, D]
    spatial = features.mean(dim=1)  # [B, S, D]
    return torch.cat([temporal, spatial], dim=1)  # [B, N + S, D]


def _split_grid(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    side = grid_side(tokens.shape[-2])
    cls, patches = tokens[..., :1, :], tokens[..., 1:, :]
    grid = patches.reshape(-1, side, side, patches.shape[-1]).permute(0, 3, 1, 2)  # [M, D, G, G]
    return cls, grid, side


def _join_grid(cls: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    dim, side_out = grid.shape[1], grid.shape[-1]
    patches = grid.permute(0, 2, 3, 1).reshape(*cls.shape[:-2], side_out * side_out, dim)  # [..., g*g, D]
    return torch.cat([cls, patches], dim=-2)  # [..., 1 + g*g, D]


def pool_patch_grid(tokens: torch.Tensor, grid_out: int) -> torch.Tensor:
    """Token budget over space: adaptive average pooling of the patch grid to ``grid_out`` x ``grid_out``.

    tokens: ``[..., 1 + G*G, D]`` -> ``[..., 1 + g*g, D]``; identity when g == G.
    """
    cls, grid, side = _split_grid(tokens)
    if grid_out == side:
        return tokens
    if grid_out > side:
        raise InputError(f"cannot pool a {side}x{side} patch grid up to {grid_out}x{grid_out}")
    return _join_grid(cls, F.adaptive_avg_pool2d(grid, grid_out))


def resize_patch_grid(tokens: torch.Tensor, grid_out: int) -> torch.Tensor:
    """Bilinear resampling of the patch grid to ``grid_out`` x ``grid_out`` (up or down), CLS kept.

    Both grids cover the same field of view, so patch (i, j) of the output reads the input where the same
    scene point lies (align_corners=False keeps cell centres aligned).
    """
    cls, grid, side = _split_grid(tokens)
    if grid_out == side:
        return tokens
    resized = F.interpolate(grid.float(), size=(grid_out, grid_out), mode="bilinear", align_corners=False)
    return _join_grid(cls, resized.to(grid.dtype))


def interpolate_time(tokens: torch.Tensor, num_out: int) -> torch.Tensor:
    """Linear interpolation along dim 1 from N steps to ``num_out`` steps (ends aligned to ends).

    tokens: ``[B, N, D]`` -> ``[B, num_out, D]``; with N == 1 every output step is that token.
    """
    num_in = tokens.shape[1]
    if num_in == num_out:
        return tokens
    if num_in == 1:
        return tokens.expand(-1, num_out, -1)
    resampled = F.interpolate(tokens.transpose(1, 2).float(), size=num_out, mode="linear", align_corners=True)
    return resampled.transpose(1, 2).to(tokens.dtype)  # [B, num_out, D]


def pool_frames(tokens: torch.Tensor, num_out: int) -> torch.Tensor:
    """Token budget over time: average consecutive frames. tokens ``[B, T, S, D]`` -> ``[B, num_out, S, D]``."""
    num_in = tokens.shape[1]
    if num_out == num_in:
        return tokens
    if num_out > num_in:
        raise InputError(f"cannot pool {num_in} frames up to {num_out}")
    batch, _, seq, dim = tokens.shape
    flat = tokens.permute(0, 2, 3, 1).reshape(batch, seq * dim, num_in)  # [B, S*D, T]
    pooled = F.adaptive_avg_pool1d(flat, num_out)  # [B, S*D, t]
    return pooled.reshape(batch, seq, dim, num_out).permute(0, 3, 1, 2)  # [B, t, S, D]
