"""Control token mixers: what a model does with no self-attention, and with attention that sees no positions.

An ablation that swaps self-attention for a local mixer (neighborhood attention, ΔConv) says something
about *locality* only next to two controls on the same model, prompts and evaluator (issue 20):

* :class:`NoAttention` (kind ``"none"``): self-attention removed. Each ``attn1`` contributes exactly
  nothing: its output is zeros, so the block's residual path carries its input on unchanged::

      y = 0                                            [B, N, out_dim]

  If a model keeps its quality with no self-attention at all, "a local mixer keeps the quality" says
  nothing about locality.
* :class:`UniformAttention` (kind ``"uniform"``): every query attends to every key with the *same*
  weight 1/N (all scores equal, e.g. q = 0), i.e. the global-average-pooling branch alone::

      v = to_v(x)                                      [B, N, inner]
      m = mean_j v_j                                   [B, 1, inner]   (per head the same: heads split channels)
      y_i = to_out(m)     for every query i            [B, N, out_dim]

  It uses the ``attn1``'s own ``to_v`` and ``to_out`` (shared, as window attention shares its modules),
  so it is what attention gives when its maps carry no spatial information.

Both are training-free: nothing is copied, trained or saved but the adapter's config; they mount at every
``attn1`` through :func:`aconvlib.mixers.convert.to_mixer` (``to_mixer(pipe, "none")``,
``to_mixer(pipe, "uniform")``) and :func:`~aconvlib.mixers.convert.restore_attention` gives the stock model
back. Like the other mixers they are called as ``block(x, grid=...)`` and ignore the grid.
"""
from __future__ import annotations

import operator

import torch
from torch import nn

from .linear_attention import _check_call, _check_self_attention

__all__ = ["NoAttention", "UniformAttention"]


class NoAttention(nn.Module):
    """Self-attention removed: ``[B, N, C]`` in, zeros ``[B, N, out_dim]`` out (input's dtype and device).

    Args:
        out_dim: the replaced ``attn1``'s output width (``to_out[0].out_features``).
    """

    def __init__(self, out_dim: int):
        super().__init__()
        if isinstance(out_dim, bool) or operator.index(out_dim) < 1:
            raise ValueError(f"out_dim must be a positive integer, got {out_dim!r}")
        self.out_dim = operator.index(out_dim)

    @classmethod
    def from_attention(cls, attn: nn.Module) -> "NoAttention":
        """The removed ``attn1`` of a diffusers self-attention ``Attention`` (only its output width is kept)."""
        _check_self_attention(attn, "NoAttention.from_attention")
        return cls(attn.to_out[0].out_features)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, *, grid: tuple[int, int] | None = None,
                **kwargs) -> torch.Tensor:
        """``[B, N, C]`` -> zeros ``[B, N, out_dim]``; called like diffusers' ``attn1`` (no context, no mask)."""
        _check_call(hidden_states, encoder_hidden_states, attention_mask, type(self).__name__)
        b, n, _ = hidden_states.shape
        return hidden_states.new_zeros(b, n, self.out_dim)                    # [B, N, out_dim]

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}"


class UniformAttention(nn.Module):
    """Uniform attention: every query gets ``to_out(mean over tokens of to_v(x))`` (see the module docstring).

    ``[B, N, C]`` in, ``[B, N, out_dim]`` out. The projections are the given modules, used as they are
    (``from_attention`` passes the teacher's own ``to_v`` and ``to_out``: shared, nothing copied).

    Args:
        to_v: the value Linear (C -> inner).
        to_out: ``nn.ModuleList([Linear, Dropout])`` as in diffusers (or a single module).
    """

    def __init__(self, to_v: nn.Module, to_out: nn.Module):
        super().__init__()
        self.to_v, self.to_out = to_v, to_out

    @classmethod
    def from_attention(cls, attn: nn.Module) -> "UniformAttention":
        """Uniform attention on a diffusers self-attention ``Attention``'s own ``to_v``/``to_out`` (shared)."""
        _check_self_attention(attn, "UniformAttention.from_attention")
        return cls(attn.to_v, attn.to_out)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, *, grid: tuple[int, int] | None = None,
                **kwargs) -> torch.Tensor:
        """``[B, N, C]`` -> ``[B, N, out_dim]``, the same vector at every query; called like diffusers' ``attn1``."""
        _check_call(hidden_states, encoder_hidden_states, attention_mask, type(self).__name__)
        b, n, _ = hidden_states.shape
        v = self.to_v(hidden_states)                                          # [B, N, inner]
        out = v.mean(dim=1, keepdim=True)                                     # [B, 1, inner]  weights 1/N
        if isinstance(self.to_out, (nn.ModuleList, nn.Sequential)):
            for layer in self.to_out:
                out = layer(out)                                              # [B, 1, out_dim]
        else:
            out = self.to_out(out)
        return out.expand(b, n, out.shape[-1]).contiguous()                  # [B, N, out_dim]
