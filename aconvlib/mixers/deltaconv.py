"""The ΔConvBlock: a pyramid of gated depthwise convolutions plus a global-average branch that stands
in for self-attention (Dong et al., ΔConvFusion, Sec. 4).

Tokens ``[B, N, C]`` on a grid (H, W) with N = H·W (row-major, as diffusers flattens them) in,
``[B, N, C]`` out::

    z   = in_proj(x)                                   [B, H, W, C·r]   1×1, C -> C·r
    for each scale s (default 1, 1/2):                 a pyramid stage
        u = avg_pool_down(z, (⌊H·s⌋, ⌊W·s⌋))           (skipped at s = 1)
        u = dwconv_K×K(u)
        a, g = split(u)                                two halves of C·r/2 channels
        u = a·g·γ   (scaled simple gate)  or  a·sigmoid(g)
        u = bilinear_up(u, (H, W))                     (skipped at s = 1)
    y   = out_proj(concat(stages))                     [B, N, C]        1×1, S·C·r/2 -> C
    y  += pool_proj(mean_N(x))                         global average of the block INPUT, 1×1, C -> C

No norm, activation or residual inside: the host transformer block's norm1 precedes the block and
its residual (and PixArt's gate) follow it.

The gate scale γ. The paper motivates the scaled simple gate by fp16 overflow of the product a·g
and writes the scale as a division by √C' (C' = channels per half, C·r/2); the authors' released
code multiplies g by √(C·r/2) instead (it divides by (C·r/2)^(-1/2)). We default to
``gate_scale="divide"`` (γ = 1/√(C·r/2)): it is the variant that actually shrinks the product, as
the stated purpose requires, like attention's 1/√d; the code's variant inflates it by √(C·r/2)
(≈ 9 for SD1.5's top layer, 17 for PixArt), which makes fp16 overflow more likely, not less.
``gate_scale="multiply"`` reproduces the released code (needed to load its checkpoints); a float
sets γ directly.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from . import kernels

GATES = ("scaled", "sigmoid")
GATE_SCALES = ("divide", "multiply")


def stage_grid(grid: tuple[int, int], scale: float) -> tuple[int, int]:
    """Grid of a pyramid stage: ``(max(1, ⌊H·s⌋), max(1, ⌊W·s⌋))`` (the authors' ⌊·⌋, clamped at 1)."""
    return tuple(max(1, int(math.floor(n * scale + 1e-9))) for n in grid)


def _check_odd(k, what="kernel_size") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise ValueError(f"{what} must be a positive odd integer (the conv pads K//2 to keep the grid), got {k!r}")
    return k


class PyramidStage(nn.Module):
    """One pyramid stage on channels-last features: pool down, depthwise K×K, gate, bilinear up.

    ``[B, H, W, C_in]`` -> ``[B, H, W, C_in/2]``.

    Args:
        channels: C_in (even: the gate splits it in two halves).
        kernel_size: odd K.
        scale: s in (0, 1]; the stage runs at ``stage_grid((H, W), s)``.
        gate: ``"scaled"`` (a·g·γ) or ``"sigmoid"`` (a·sigmoid(g)).
        gate_scale: ``"divide"`` (γ = 1/√(C_in/2), paper), ``"multiply"`` (γ = √(C_in/2), released code)
            or a float γ.
    """

    def __init__(self, channels: int, kernel_size: int, scale: float, gate: str = "scaled",
                 gate_scale: str | float = "divide"):
        super().__init__()
        self.channels, self.kernel_size, self.scale, self.gate = channels, kernel_size, float(scale), gate
        half = channels // 2
        if isinstance(gate_scale, str):
            self.gate_factor = 1.0 / math.sqrt(half) if gate_scale == "divide" else math.sqrt(half)
        else:
            self.gate_factor = float(gate_scale)
        self.gate_scale = gate_scale
        # depthwise filter stored channels-last [K, K, C]; PyTorch's Conv2d init (bound 1/√fan_in, fan_in = K²)
        self.weight = nn.Parameter(torch.empty(kernel_size, kernel_size, channels))
        nn.init.uniform_(self.weight, -1.0 / kernel_size, 1.0 / kernel_size)

    def forward(self, z: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """``[B, H, W, C_in]`` -> ``[B, H, W, C_in/2]``."""
        grid = tuple(z.shape[1:3])
        small = stage_grid(grid, self.scale)
        u = z if small == grid else kernels.avg_pool_down(z, small, backend)
        u = kernels.dwconv2d(u, self.weight, backend)
        a, g = u.chunk(2, dim=-1)
        u = a * g * self.gate_factor if self.gate == "scaled" else a * torch.sigmoid(g)
        return u if small == grid else kernels.bilinear_up(u, grid, backend)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, scale={self.scale}, gate={self.gate!r}, "
                f"gate_factor={self.gate_factor:.4g}")


class DeltaConvBlock(nn.Module):
    """ΔConvBlock: the self-attention stand-in of ΔConvFusion (see the module docstring).

    Args:
        dim: token channels C.
        kernel_size: odd K of every stage's depthwise conv, or one odd K per stage.
        scales: stage scales in (0, 1] (default ``(1, 1/2)`` as in the paper and code).
        ratio: r; the stages work on C·r channels (must be an even integer; default 0.5).
        gate: ``"scaled"`` (paper's scaled simple gate, default) or ``"sigmoid"`` (the code's PixArt gate).
        gate_scale: ``"divide"`` (default, γ = 1/√(C·r/2)), ``"multiply"`` (γ = √(C·r/2), released code),
            or a float.
        bias: biases of the three 1×1 projections.
        backend: kernel backend for this block (None: the global one, see :mod:`aconvlib.kernels`).

    Shapes:
        ``forward(x [B, N, C], grid=(H, W)) -> [B, N, C]`` with N = H·W.
    """

    def __init__(self, dim: int, kernel_size: int | Sequence[int] = 9, scales: Sequence[float] = (1.0, 0.5),
                 ratio: float = 0.5, gate: str = "scaled", gate_scale: str | float = "divide", bias: bool = True,
                 backend: str | None = None):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        scales = [scales] if isinstance(scales, (int, float)) else list(scales)
        if not scales:
            raise ValueError("scales must name at least one pyramid stage")
        for s in scales:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 1:
                raise ValueError(f"every scale must lie in (0, 1] (stages only pool down), got {s!r} in {scales}")
        ks = list(kernel_size) if isinstance(kernel_size, (list, tuple)) else [kernel_size] * len(scales)
        if len(ks) != len(scales):
            raise ValueError(f"got {len(ks)} kernel sizes for {len(scales)} scales")
        ks = [_check_odd(k) for k in ks]
        inner = dim * ratio
        if not ratio > 0 or inner != int(inner) or int(inner) % 2 or int(inner) < 2:
            raise ValueError(f"dim·ratio must be an even integer ≥ 2 (the gate halves it), got {dim}·{ratio} = {inner}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if isinstance(gate_scale, str) and gate_scale not in GATE_SCALES:
            raise ValueError(f"gate_scale must be one of {GATE_SCALES} or a float, got {gate_scale!r}")
        if backend is not None:
            kernels._check(backend)
        self.dim, self.inner_dim, self.ratio = dim, int(inner), ratio
        self.scales, self.kernel_sizes = [float(s) for s in scales], ks
        self.gate, self.gate_scale, self.backend = gate, gate_scale, backend
        self.in_proj = nn.Linear(dim, self.inner_dim, bias=bias)
        self.stages = nn.ModuleList(PyramidStage(self.inner_dim, k, s, gate, gate_scale) for k, s in zip(ks, scales))
        self.out_proj = nn.Linear(len(scales) * self.inner_dim // 2, dim, bias=bias)
        self.pool_proj = nn.Linear(dim, dim, bias=bias)

    @property
    def kernel_size(self) -> int:
        """K of the first stage (all stages share it unless built with a list)."""
        return self.kernel_sizes[0]

    def check_input(self, x: torch.Tensor, grid) -> tuple[int, int]:
        """Validate ``x [B, N, C]`` against ``grid`` and return (H, W)."""
        if x.ndim != 3:
            raise ValueError(f"DeltaConvBlock expects tokens [B, N, C], got shape {tuple(x.shape)}")
        if x.shape[-1] != self.dim:
            raise ValueError(f"DeltaConvBlock(dim={self.dim}) got {x.shape[-1]} channels")
        try:
            h, w = (int(grid[0]), int(grid[1]))
        except (TypeError, IndexError, ValueError):
            raise ValueError(f"grid must be a pair (H, W), got {grid!r}") from None
        if h < 1 or w < 1 or h * w != x.shape[1]:
            raise ValueError(f"grid {h}×{w} = {h * w} tokens does not match the input's N = {x.shape[1]}")
        return h, w

    def forward_stages(self, x: torch.Tensor, grid: tuple[int, int]) -> list[torch.Tensor]:
        """The pyramid stages' outputs, each ``[B, H, W, C·r/2]`` (before the output projection)."""
        h, w = self.check_input(x, grid)
        z = self.in_proj(x).view(x.shape[0], h, w, self.inner_dim)
        return [stage(z, self.backend) for stage in self.stages]

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``x [B, N, C]`` on ``grid = (H, W)`` -> ``[B, N, C]``."""
        self.check_input(x, grid)
        b, n, _ = x.shape
        stages = self.forward_stages(x, grid)
        y = self.out_proj(torch.cat(stages, dim=-1).view(b, n, -1))
        return y + self.pool_proj(x.mean(dim=1, keepdim=True))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, inner_dim={self.inner_dim}, kernel_sizes={self.kernel_sizes}, scales={self.scales}, "
                f"gate={self.gate!r}, gate_scale={self.gate_scale!r}")


def stage_gradient_maps(block: DeltaConvBlock, grid: tuple[int, int], position: tuple[int, int] | None = None,
                        x: torch.Tensor | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """The gradient map G_p of one output position, stage by stage (chapter 6's receptive-field figure).

    G_p is the one definition of :mod:`aconvlib.analysis.receptive_field` (|∂ Σ_c' y[p, c'] / ∂ x| summed over
    input channels, :func:`~aconvlib.analysis.receptive_field.gradient_map`), applied to each part of the block.
    The ERF of a whole mixer in a denoiser (a number, from G_p's window mass) is
    :func:`~aconvlib.analysis.receptive_field.mixer_receptive_field`; the ERF read off an attention map's ASM curve
    is :func:`~aconvlib.analysis.locality.erf`.

    Args:
        block: a ΔConvBlock (its own weights; untrained is fine).
        grid: (H, W) of the input.
        position: (row, col) of the output position p; default the centre.
        x: input tokens ``[1, H·W, C]``; default standard normal with ``seed``.

    Returns:
        ``{"stage_0": [H, W], "stage_1": [H, W], ..., "local": [H, W], "total": [H, W]}`` (float32, CPU):
        ``stage_i`` the map of pyramid stage i's output (its scale and K are ``block.stages[i]``'s), ``local``
        that of the block output without the pool branch, ``total`` that of the block (the pool branch adds
        the same value at every position). Keys are stable; labels are the book's.
    """
    from ..analysis.receptive_field import gradient_map

    h, w = grid
    position = position if position is not None else (h // 2, w // 2)
    if x is None:
        x = torch.randn(1, h * w, block.dim, generator=torch.Generator().manual_seed(seed))
    p0 = next(block.parameters())
    x = x.to(device=p0.device, dtype=p0.dtype)

    def stage(i):  # tokens [B, N, C] -> stage i's output as tokens [B, N, C_i]
        return lambda t: block.forward_stages(t, grid)[i].reshape(t.shape[0], h * w, -1)

    def local(t):  # the block without its pool branch
        return block.out_proj(torch.cat(block.forward_stages(t, grid), dim=-1).reshape(t.shape[0], h * w, -1))

    parts = {**{f"stage_{i}": stage(i) for i in range(len(block.stages))}, "local": local,
             "total": lambda t: block(t, grid)}
    return {k: gradient_map(fn, x, grid, position).float() for k, fn in parts.items()}


def __getattr__(name: str):
    if name == "receptive_field":   # the earlier name (it returns maps, not a receptive field)
        import warnings

        warnings.warn("aconvlib.mixers.deltaconv.receptive_field is now stage_gradient_maps", DeprecationWarning,
                      stacklevel=2)
        return stage_gradient_maps
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DeltaConvBlock", "PyramidStage", "stage_gradient_maps", "stage_grid"]
