"""Training-free window attention: a self-attention restricted to keys near each query, as
DiTFastAttn (Yuan et al. 2024, "DiTFastAttn: Attention Compression for Diffusion Transformer
Models", arXiv 2406.08552) uses it, on the original layer's weights.

Window definitions (``window`` = w, odd, ≥ 1; r = (w − 1)/2):

``mode="1d"`` (default, DiTFastAttn's form). A band over the token *sequence*: query i attends key
j iff ``|i − j| ≤ r`` in the flattened raster order (row-major over the grid, as diffusers flattens
it). DiTFastAttn calls FlashAttention's sliding-window attention on the flattened sequence, whose
``window_size=(left, right)`` lets query i see keys ``i − left … i + right``; ours is
``left = right = r``. The band is clipped at the ends of the sequence, wraps from the end of one grid
row to the start of the next (that is what a 1-D band over a raster sequence does) and needs no
grid. Full attention is recovered iff ``r ≥ N − 1`` (``w ≥ 2N − 1``).

``mode="2d"``. The natural spatial variant: a square (2r+1)×(2r+1) window on the token grid,
query (y, x) attends key (y', x') iff ``|y − y'| ≤ r`` and ``|x − x'| ≤ r``, **clipped** at the
borders (border queries see fewer keys). This differs from NATTEN's neighborhood attention, which
*shifts* border windows inwards so every query sees exactly w² keys. Needs the grid (H, W); full
attention is recovered iff ``r ≥ max(H, W) − 1``.

Implementation: ``F.scaled_dot_product_attention`` with a boolean [N, N] mask (True = attend) built
once per (mode, window, N or grid, device) and cached (not part of the state dict). When the window
covers everything the mask is skipped. This computes the **dense** N×N scores and then discards the
masked ones, so it measures *quality*, not speed, and its memory is O(N²) (a 16384-token PixArt-Σ
1024² layer needs a 256 MiB boolean mask). The window-restricted cost is given by
:func:`window_attention_flops`.

``WindowAttention.from_attention(attn, window, mode)`` *shares* the original ``Attention``'s
modules (``to_q``, ``to_k``, ``to_v``, ``to_out``, ``norm_q``, ``norm_k`` are the same objects, so
the state-dict keys are the teacher's and nothing is copied or trained); scores are scaled by
``attn.scale``.
"""
from __future__ import annotations

import operator
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import check_grid, positive_int
from .linear_attention import FLOP_CONVENTIONS, _check_call, _check_self_attention

__all__ = ["WindowAttention", "WINDOW_MODES", "window_mask", "window_pairs", "window_attention_flops",
           "FLOP_CONVENTIONS"]

WINDOW_MODES = ("1d", "2d")
_MASK_CACHE_SIZE = 4


def _check_window(window) -> int:
    if isinstance(window, bool):
        raise ValueError(f"window must be a positive odd integer, got {window!r}")
    try:
        w = operator.index(window)
    except TypeError:
        raise ValueError(f"window must be a positive odd integer, got {window!r}") from None
    if w < 1 or w % 2 == 0:
        raise ValueError(f"window must be a positive odd integer (keys i-w//2 … i+w//2 around query i), "
                         f"got {window!r}")
    return w


def _check_mode(mode) -> str:
    if mode not in WINDOW_MODES:
        raise ValueError(f"mode must be one of {WINDOW_MODES}, got {mode!r}")
    return mode


def _tokens_and_grid(size, mode: str, who: str) -> tuple[int, tuple[int, int] | None]:
    """``size`` is N (1d only) or (H, W); returns N and the grid (or None)."""
    if isinstance(size, (tuple, list)):
        h, w = check_grid(size, None, who)
        return h * w, (h, w)
    if mode == "2d":
        raise ValueError(f"{who}: mode='2d' needs the token grid (H, W), got {size!r}")
    return positive_int(size, f"{who}: tokens (or a grid (H, W))"), None


def _covers_all(n: int, grid, window: int, mode: str) -> bool:
    r = window // 2
    return r >= n - 1 if mode == "1d" else r >= max(grid) - 1


def window_mask(size, window: int, mode: str = "1d", device=None) -> torch.Tensor:
    """Boolean [N, N] mask, True where query i may attend key j.

    ``size``: N (``mode="1d"`` only) or the grid (H, W) with N = H·W in raster order.
    1d: ``|i − j| ≤ w//2``. 2d: ``|Δrow| ≤ w//2 and |Δcol| ≤ w//2`` on the grid, clipped at borders.
    """
    mode, window = _check_mode(mode), _check_window(window)
    n, grid = _tokens_and_grid(size, mode, "window_mask")
    r = window // 2
    idx = torch.arange(n, device=device)
    if mode == "1d":
        return (idx[:, None] - idx[None, :]).abs() <= r
    rows, cols = idx // grid[1], idx % grid[1]
    return ((rows[:, None] - rows[None, :]).abs() <= r) & ((cols[:, None] - cols[None, :]).abs() <= r)


def _band_pairs(length: int, r: int) -> int:
    """Σ_i |{j : |i − j| ≤ r, 0 ≤ j < length}| = L(2r'+1) − r'(r'+1), r' = min(r, L − 1)."""
    r = min(r, length - 1)
    return length * (2 * r + 1) - r * (r + 1)


def window_pairs(size, window: int, mode: str = "1d") -> int:
    """Number of (query, key) pairs the window allows, i.e. N·w_eff (exact, borders clipped).

    1d over N tokens: N(2r'+1) − r'(r'+1) with r' = min(w//2, N − 1).
    2d on (H, W): the mask factorises into a row band and a column band, so the count is the product
    of the 1-D counts over H and over W.
    """
    mode, window = _check_mode(mode), _check_window(window)
    n, grid = _tokens_and_grid(size, mode, "window_pairs")
    r = window // 2
    if mode == "1d":
        return _band_pairs(n, r)
    return _band_pairs(grid[0], r) * _band_pairs(grid[1], r)


def window_attention_flops(size, channels: int, window: int, mode: str = "1d", convention: str = "paper") -> int:
    """FLOPs of a window-restricted self-attention per sample (what a sparse kernel would do).

    With N tokens of C channels and P = N·w_eff allowed (query, key) pairs (:func:`window_pairs`;
    w_eff is the exact mean number of keys per query, borders clipped):

    ``"paper"`` (the paper's self-attention formula 4NC² + 4N²C + 4N² with N² -> P)::

        4·N·C² + 4·P·C + 4·P

    ``"2mac"`` (two FLOPs per multiply-add also in the projections)::

        8·N·C² + 4·P·C + 4·P

    With a window covering everything P = N² and these are the dense formulas. The module in this
    file computes the dense scores regardless (see the module docstring).
    """
    if convention not in FLOP_CONVENTIONS:
        raise ValueError(f"convention must be one of {FLOP_CONVENTIONS}, got {convention!r}")
    if isinstance(channels, bool) or operator.index(channels) < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    c = operator.index(channels)
    n, _ = _tokens_and_grid(size, _check_mode(mode), "window_attention_flops")
    p = window_pairs(size, window, mode)
    proj = (4 if convention == "paper" else 8) * n * c * c
    return int(proj + 4 * p * c + 4 * p)


class WindowAttention(nn.Module):
    """Self-attention where each query sees only the keys in its window (see the module docstring).

    ``[B, N, C]`` in, ``[B, N, out_dim]`` out. The projections are the given modules, used as they
    are (``from_attention`` passes the teacher's own modules, so weights are shared).

    Args:
        to_q, to_k, to_v: the q/k/v Linear layers (C -> heads·d).
        to_out: ``nn.ModuleList([Linear, Dropout])`` as in diffusers (or a single module).
        heads: number of heads.
        window: odd w ≥ 1 (keys per query along the band, or the square's side in 2d).
        mode: ``"1d"`` (sequence band, DiTFastAttn) or ``"2d"`` (clipped square on the grid).
        scale: score scale (default d^-1/2).
        norm_q, norm_k: optional per-head norms applied to [B, heads, N, d] as ``AttnProcessor2_0`` does.
        grid: default token grid, used when ``forward`` gets none.
    """

    def __init__(self, to_q: nn.Module, to_k: nn.Module, to_v: nn.Module, to_out: nn.Module, heads: int,
                 window: int, mode: str = "1d", scale: float | None = None, norm_q: nn.Module | None = None,
                 norm_k: nn.Module | None = None, grid: tuple[int, int] | None = None):
        super().__init__()
        self.to_q, self.to_k, self.to_v, self.to_out = to_q, to_k, to_v, to_out
        self.norm_q, self.norm_k = norm_q, norm_k
        if isinstance(heads, bool) or operator.index(heads) < 1:
            raise ValueError(f"heads must be a positive integer, got {heads!r}")
        self.heads = operator.index(heads)
        inner = to_q.out_features
        if inner % self.heads:
            raise ValueError(f"inner dim {inner} is not divisible by heads {self.heads}")
        self.head_dim = inner // self.heads
        self.inner_dim = inner
        self.scale = float(self.head_dim ** -0.5 if scale is None else scale)
        self._window = _check_window(window)
        self._mode = _check_mode(mode)
        self.grid = None if grid is None else check_grid(grid, None, type(self).__name__)
        self._masks: OrderedDict = OrderedDict()

    @classmethod
    def from_attention(cls, attn: nn.Module, window: int, mode: str = "1d",
                       grid: tuple[int, int] | None = None) -> "WindowAttention":
        """Window attention on a diffusers self-attention ``Attention``'s own modules (shared, not copied)."""
        _check_self_attention(attn, "WindowAttention.from_attention")
        return cls(attn.to_q, attn.to_k, attn.to_v, attn.to_out, int(attn.heads), window, mode,
                   scale=float(attn.scale), norm_q=getattr(attn, "norm_q", None), norm_k=getattr(attn, "norm_k", None),
                   grid=grid)

    # window and mode can be changed in place (validated; masks are keyed on them)
    @property
    def window(self) -> int:
        return self._window

    @window.setter
    def window(self, value: int) -> None:
        self._window = _check_window(value)

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = _check_mode(value)

    def set_grid(self, grid: tuple[int, int] | None) -> None:
        """Default token grid for calls that pass none (needed by ``mode="2d"``)."""
        self.grid = None if grid is None else check_grid(grid, None, type(self).__name__)

    def mask(self, n: int, grid: tuple[int, int] | None, device) -> torch.Tensor | None:
        """The cached boolean mask for N tokens (``None`` when the window covers all keys)."""
        if _covers_all(n, grid, self._window, self._mode):
            return None
        key = (self._mode, self._window, n if self._mode == "1d" else grid, str(device))
        m = self._masks.get(key)
        if m is None:
            m = window_mask(n if self._mode == "1d" else grid, self._window, self._mode, device=device)
            self._masks[key] = m
            while len(self._masks) > _MASK_CACHE_SIZE:
                self._masks.popitem(last=False)
        else:
            self._masks.move_to_end(key)
        return m

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, *, grid: tuple[int, int] | None = None,
                **kwargs) -> torch.Tensor:
        """``[B, N, C]`` -> ``[B, N, out_dim]``; ``grid=(H, W)`` (or :meth:`set_grid`) is required in 2d mode.

        Called like diffusers' ``attn1``; ``encoder_hidden_states`` and ``attention_mask`` must be
        ``None``; other keyword arguments are ignored (as diffusers' ``Attention`` drops them).
        """
        who = type(self).__name__
        _check_call(hidden_states, encoder_hidden_states, attention_mask, who)
        b, n, _ = hidden_states.shape
        g = grid if grid is not None else self.grid
        if g is not None:
            g = check_grid(g, n, who)
        elif self._mode == "2d":
            raise ValueError(f"{who}(mode='2d') needs the token grid: pass grid=(H, W) to forward or call "
                             f"set_grid((H, W)) (N = {n} tokens)")
        q, k, v = (proj(hidden_states).view(b, n, self.heads, self.head_dim).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))
        if self.norm_q is not None:
            q = self.norm_q(q)
        if self.norm_k is not None:
            k = self.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(n, g, q.device), dropout_p=0.0,
                                             is_causal=False, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, n, self.inner_dim).to(q.dtype)
        if isinstance(self.to_out, (nn.ModuleList, nn.Sequential)):
            for layer in self.to_out:
                out = layer(out)
            return out
        return self.to_out(out)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}, window={self._window}, mode={self._mode!r}"
