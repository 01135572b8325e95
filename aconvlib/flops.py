"""Analytic FLOP counts of token mixers.

Self-attention, by the paper's formula (Sec. 3.1), for N = H'·W' tokens of C' channels:

    FLOPs_attn = 4·N·C'^2  (q, k, v, out projections)
               + 4·N^2·C'  (QKᵀ and A·V)
               + 4·N^2     (scaling and softmax)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .models.layers import self_attention_layers


def attention_flops(tokens: int, channels: int) -> int:
    """FLOPs of one self-attention core over ``tokens`` tokens of ``channels`` channels (paper's formula)."""
    if tokens <= 0 or channels <= 0:
        raise ValueError(f"tokens and channels must be positive, got {tokens}, {channels}")
    n, c = int(tokens), int(channels)
    return 4 * n * c * c + 4 * n * n * c + 4 * n * n


@dataclass(frozen=True)
class LayerFlops:
    """One self-attention layer's attention-core FLOPs at a given image size."""

    name: str
    grid: tuple[int, int]
    heads: int
    head_dim: int
    channels: int
    flops: int


def attention_flops_table(denoiser: torch.nn.Module, latent_hw: tuple[int, int]) -> list[LayerFlops]:
    """Per self-attention layer of ``denoiser``: grid, heads, head dim and attention-core FLOPs."""
    return [LayerFlops(l.name, l.grid, l.heads, l.head_dim, l.channels, attention_flops(l.tokens, l.channels))
            for l in self_attention_layers(denoiser, latent_hw)]
