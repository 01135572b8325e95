"""Gradient effective receptive field (ERF) of a token mixer, measured the same way for any mixer (paper Fig. 9).

Chapter 5 measures the ERF of self-attention from its *maps* (the ASM curve of the averaged attention,
:func:`aconvlib.analysis.locality.erf`). A ΔConvBlock has no attention map, so to compare a teacher's
self-attention with the student that replaced it (the paper's Fig. 9) both are measured here by the
one definition that applies to any token mixer ``f: [B, N, C] -> [B, N, C']`` on an H'×W' grid:

    G_p[n]  = mean_b Σ_c | ∂ (Σ_c' f(x)[b, p, c']) / ∂ x[b, n, c] |     (one output position p; raster order)
    mass_p  = G_p / Σ_n G_p[n]                                          (a distribution over input tokens)
    ASM_p(K) = Σ of mass_p over the clipped K×K window centred at p     (locality.asm_curve, query p)
    ERF     = min{K odd : mean_p ASM_p(K) ≥ 0.8}                         (locality.erf, the paper's 80%)

The scalar differentiated is the sum over output channels of the output at ``p`` (the convention of
:func:`aconvlib.mixers.deltaconv.stage_gradient_maps`, chapter 6); samples of a batch are independent in a token
mixer, so one backward gives every sample's map. ``x`` is a *real* input: the tokens the layer received in
a denoiser call on held-out data (:func:`layer_inputs`), so for self-attention the gradient goes through
the softmax weights and the values of real content. The window mass and the 80% ERF are the locality
module's (one place per fact): the map ``mass_p`` is handled as one row of a "map" whose query is ``p``.

Receptive fields in aconvlib, one definition at three levels: :func:`aconvlib.analysis.locality.erf` reads the ERF
(smallest K with 80% of the mass) off any ASM curve; this module makes the curve from gradient maps G_p of a token
mixer (:func:`gradient_maps`, :func:`mixer_receptive_field`, :func:`receptive_fields` for every ``attn1`` of a
denoiser); :func:`aconvlib.mixers.deltaconv.stage_gradient_maps` applies the same G_p to each stage of one
ΔConvBlock (chapter 6's figure). Attention maps' ERF (chapter 5) uses ``locality.erf`` on the maps' ASM curve.

Positions: ``"center"`` (the grid's centre token), an int ``n`` (an n×n lattice of positions at
(i + 1)/(n + 1) of each side, i = 0 … n−1; ``1`` is the centre) or a list of (row, col). The ASM curve
is averaged over positions before the ERF is read, as chapter 5 averages over queries.

Known fields (tested): a depthwise K×K convolution with positive weights has its gradient exactly on the
K×K window, so ``ASM(K) = 1`` and, for uniform weights and K ≤ 17, ERF = K (the (K−2)² inner window
holds (K−2)²/K² < 80%); the identity has ERF 1; a global average has a uniform map, so on an odd G×G
grid its ERF from the centre is G, the whole grid.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch

from ..models import family_of, get_denoiser
from .locality import asm_curve, erf, odd_kernel_sizes

__all__ = ["ReceptiveField", "erf_positions", "gradient_map", "gradient_maps", "layer_inputs", "mixer_layers_by_name",
           "mixer_receptive_field", "receptive_fields"]

Positions = Union[str, int, Sequence[tuple[int, int]]]


def erf_positions(grid: tuple[int, int], positions: Positions = "center") -> list[tuple[int, int]]:
    """The (row, col) output positions for ``positions`` on ``grid`` (see the module docstring)."""
    h, w = grid
    if isinstance(positions, str):
        if positions != "center":
            raise ValueError(f"positions must be 'center', a lattice size n ≥ 1 or a list of (row, col), got {positions!r}")
        return [(h // 2, w // 2)]
    if isinstance(positions, int) and not isinstance(positions, bool):
        if positions < 1:
            raise ValueError(f"a lattice of positions needs n ≥ 1, got {positions}")
        rows = sorted({min(h - 1, (i + 1) * h // (positions + 1)) for i in range(positions)})
        cols = sorted({min(w - 1, (i + 1) * w // (positions + 1)) for i in range(positions)})
        return [(r, c) for r in rows for c in cols]
    out = [(int(r), int(c)) for r, c in positions]
    if not out:
        raise ValueError("positions is an empty list")
    bad = [(r, c) for r, c in out if not (0 <= r < h and 0 <= c < w)]
    if bad:
        raise ValueError(f"positions {bad} lie outside the {h}×{w} grid")
    return out


def gradient_maps(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grid: tuple[int, int],
                  positions: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``G_p`` [P, H', W'] (float64, CPU) for every position p: mean over the batch of
    Σ_c |∂ Σ_c' fn(x)[b, p, c'] / ∂ x[b, :, c]| (one forward, one backward per position).

    ``fn`` maps tokens [B, N, C] to [B, N, C'] (a token mixer called on ``grid``); ``x`` is its input.
    """
    h, w = grid
    if x.ndim != 3 or x.shape[1] != h * w:
        raise ValueError(f"x must be tokens [B, {h * w}, C] on the {h}×{w} grid, got {tuple(x.shape)}")
    xg = x.detach().clone().requires_grad_(True)
    out = []
    with torch.enable_grad():
        y = fn(xg)
        if y.ndim != 3 or y.shape[:2] != x.shape[:2]:
            raise ValueError(f"the mixer must return [B, N, C'] with the input's B and N, got {tuple(y.shape)}")
        for i, (r, c) in enumerate(positions):
            (g,) = torch.autograd.grad(y[:, r * w + c].sum(), xg, retain_graph=i < len(positions) - 1)
            out.append(g.detach().abs().double().sum(-1).mean(0).reshape(h, w).cpu())
    return torch.stack(out)


def gradient_map(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grid: tuple[int, int],
                 position: tuple[int, int]) -> torch.Tensor:
    """``G_p`` [H', W'] for one output position (see :func:`gradient_maps`)."""
    return gradient_maps(fn, x, grid, [position])[0]


@dataclass
class ReceptiveField:
    """The gradient ERF of one token mixer (see the module docstring).

    Attributes:
        name: layer (module path) or label; grid: (H', W'); positions: the output positions used.
        erf: smallest odd K whose centred window holds ``threshold`` of the mass (mean over positions);
            NaN if none does (cannot happen with the default kernel sizes, whose largest covers the grid).
        curve: mean ASM(K) over positions [nK]; kernel_sizes: its K.
        maps: normalized mass map per position [P, H', W'] (each sums to one).
        threshold: the mass fraction (0.8, the paper's).
    """

    name: str
    grid: tuple[int, int]
    positions: list[tuple[int, int]]
    erf: float
    curve: torch.Tensor
    kernel_sizes: list[int]
    maps: torch.Tensor
    threshold: float = 0.8
    info: dict = field(default_factory=dict)

    @property
    def relative(self) -> float:
        """ERF / grid side (the larger side), as chapter 5 reports it."""
        return self.erf / max(self.grid)

    def mass_within(self, k: int) -> float:
        """Mean mass inside the centred k×k window (k one of ``kernel_sizes``)."""
        return float(self.curve[self.kernel_sizes.index(k)])

    @property
    def center_map(self) -> torch.Tensor:
        """The mass map of the position closest to the grid's centre [H', W']."""
        h, w = self.grid
        i = min(range(len(self.positions)),
                key=lambda j: (self.positions[j][0] - h // 2) ** 2 + (self.positions[j][1] - w // 2) ** 2)
        return self.maps[i]


def mixer_receptive_field(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grid: tuple[int, int],
                          positions: Positions = "center", threshold: float = 0.8,
                          kernel_sizes: Optional[Sequence[int]] = None, name: str = "") -> ReceptiveField:
    """The gradient ERF of the token mixer ``fn`` on input tokens ``x`` [B, H'·W', C] (module docstring).

    ``kernel_sizes``: odd window sides to evaluate (default 1, 3, … up to ``2·max(H', W') − 1``).
    """
    grid = (int(grid[0]), int(grid[1]))
    pos = erf_positions(grid, positions)
    ks = list(kernel_sizes or odd_kernel_sizes(grid))
    maps, curves = [], []
    for p, g in zip(pos, gradient_maps(fn, x, grid, pos)):
        total = g.sum()
        if not total > 0:
            raise ValueError(f"{name or 'mixer'}: the output at {p} does not depend on the input (zero gradient)")
        m = g / total
        maps.append(m)
        curves.append(asm_curve(m.reshape(1, -1), grid, ks, query_index=torch.tensor([p[0] * grid[1] + p[1]])))
    curve = torch.stack(curves).mean(0)
    return ReceptiveField(name=name, grid=grid, positions=pos, erf=float(erf(curve, ks, threshold)), curve=curve,
                          kernel_sizes=ks, maps=torch.stack(maps).float(), threshold=threshold)


def mixer_layers_by_name(denoiser: torch.nn.Module, suffix: str = "attn1") -> dict[str, torch.nn.Module]:
    """Every module whose path ends with ``suffix`` (``attn1``: the token mixer of each transformer block, be it
    the teacher's self-attention or a converted student's mixer wrapper), in module order."""
    return {n: m for n, m in denoiser.named_modules() if n.endswith(suffix) and n != ""}


def layer_inputs(pipe_or_denoiser, sample: torch.Tensor, timestep, text_states: torch.Tensor,
                 names: Optional[Sequence[str]] = None, **cond) -> dict[str, torch.Tensor]:
    """The tokens each named module (default: every ``attn1``) receives in one denoiser call.

    Runs ``denoise(denoiser, sample, timestep, text_states, **cond)`` once without gradients, with forward
    pre-hooks that keep each module's ``hidden_states`` [B, N, C] (detached). Returns ``{name: tokens}`` in
    module order (the order of :func:`aconvlib.models.self_attention_layers`).
    """
    from ..models import denoise

    den = get_denoiser(pipe_or_denoiser)
    mods = mixer_layers_by_name(den)
    names = list(mods) if names is None else list(names)
    missing = [n for n in names if n not in mods]
    if missing:
        raise KeyError(f"no token mixer named {missing[:3]}; layers: {', '.join(mods)}")
    got: dict[str, torch.Tensor] = {}

    def hook(name):
        def pre(module, args, kwargs):
            hs = args[0] if args else kwargs.get("hidden_states")
            got[name] = hs.detach()
        return pre

    handles = [mods[n].register_forward_pre_hook(hook(n), with_kwargs=True) for n in names]
    try:
        with torch.no_grad():
            denoise(den, sample, timestep, text_states, **cond)
    finally:
        for h in handles:
            h.remove()
    silent = [n for n in names if n not in got]
    if silent:
        raise RuntimeError(f"the denoiser call never reached {silent[:3]}")
    return {n: got[n] for n in names}     # module order, not call order


def receptive_fields(pipe_or_denoiser, sample: torch.Tensor, timestep, text_states: torch.Tensor, *,
                     names: Optional[Sequence[str]] = None, positions: Positions = "center", threshold: float = 0.8,
                     **cond) -> list[ReceptiveField]:
    """The gradient ERF of every token mixer (``attn1``) of a denoiser, on the inputs of one real call.

    The denoiser runs once on ``sample`` at ``timestep`` with ``text_states`` (:func:`layer_inputs`); then
    each layer's module is called alone on the tokens it received and differentiated
    (:func:`mixer_receptive_field`). The module is called as the denoiser calls it (``module(tokens)``), so a
    converted student's wrapper reads its grid from its latent tracker, still set by that call, and
    neighborhood-attention processors likewise. Grids come from the denoiser's family and the latent size.
    """
    den = get_denoiser(pipe_or_denoiser)
    fam = family_of(den)
    grids = fam.level_grids(den, (int(sample.shape[-2]), int(sample.shape[-1])))
    inputs = layer_inputs(den, sample, timestep, text_states, names, **cond)
    mods = mixer_layers_by_name(den)
    out = []
    for name, x in inputs.items():
        level = fam.layer_level(den, name)
        grid = grids[level]
        module = mods[name]
        rf = mixer_receptive_field(lambda t, m=module: m(t), x, grid, positions, threshold, name=name)
        rf.info.update(level=level, kind=getattr(module, "kind", "self-attention"))
        out.append(rf)
    return out
