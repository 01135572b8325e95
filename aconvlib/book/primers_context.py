"""Primers of chapters 4 and 5: prior + context on a constructed map, and the ERF of stacked convolutions.

Like :mod:`aconvlib.book.primers` (the constructed maps and chapters 2–3), every number here comes from the
functions the chapters apply to the trained models: :func:`aconvlib.analysis.locality.decompose`,
:func:`~aconvlib.analysis.locality.attention_sink`, :func:`~aconvlib.analysis.locality.erf` and the gradient ERF
of :func:`aconvlib.analysis.receptive_field.mixer_receptive_field`.

- :func:`constructed_prior_context`: ``A = 1 bᵀ + w (G − 1 uᵀ)`` with a known prior ``b`` (uniform plus a sink of
  share ``s`` at the last token), ``G`` the 3×3 :func:`~aconvlib.book.primers.box_map` on a torus and
  ``u = 1/N``. Each row of ``G − 1uᵀ`` sums to zero and so does each column (G is doubly stochastic), so the
  column mean of A is exactly ``b``: the decomposition recovers ``b`` and ``R = w (G − 1uᵀ)``. By hand:
  context mass ``½‖R_q‖₁ = w (1 − k²/N)``, prior TV distance ``½‖b − u‖₁ = s (1 − 1/N)``, sink ratio
  ``N·b[last] = 1 − s + sN``; R⁺ lies on the k×k box, and exactly half of ``|R_q|`` does.
- :func:`conv_stack`: ``depth`` depthwise 3×3 convolutions with uniform weights 1/9 (zero padding) as a token
  mixer. Its gradient map from one output position is the ``depth``-fold convolution of the 3×3 box: support
  ``2·depth + 1`` per side, per axis a distribution of variance ``2·depth/3``, so its 80% window grows like
  √depth (the central-limit picture of the ERF paper), not like the support.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..analysis import locality as L
from ..analysis.receptive_field import mixer_receptive_field
from .primers import Primer, PrimerError, _grid, box_map, gaussian_map, uniform_map

__all__ = ["attention_mixer", "constructed_prior_context", "conv_stack", "erf_primer", "gaussian_erf_estimate",
           "prior_context_primer"]


# ---------------------------------------------------------------------------------------------- chapter 4

def constructed_prior_context(grid=(16, 16), weight: float = 0.5, sink: float = 0.1, k: int = 3) -> dict:
    """The map ``A = 1 bᵀ + weight·(G − 1uᵀ)`` of the module docstring and its known parts.

    Returns ``A`` [N, N], ``b`` (the prior put in), ``R`` (the context put in), ``G`` (the k×k box map) and the
    hand-derived ``context_mass`` = ``weight·(1 − k²/N)``, ``prior_tv`` = ``sink·(1 − 1/N)`` and ``sink_ratio`` =
    ``1 − sink + sink·N``. A must be non-negative: ``b ≥ weight/N`` everywhere, i.e. ``sink ≤ 1 − weight``.
    """
    g = _grid(grid)
    n = g[0] * g[1]
    if not 0 <= weight <= 1 or not 0 <= sink <= 1:
        raise PrimerError(f"weight and sink are shares in [0, 1], got weight={weight}, sink={sink}")
    if sink > 1 - weight + 1e-12:
        raise PrimerError(f"sink {sink} > 1 − weight {1 - weight:g}: A = 1bᵀ + w(G − 1uᵀ) would have negative "
                          "entries (the prior must give every key at least w/N)")
    u = torch.full((n,), 1.0 / n, dtype=torch.float64)
    b = (1 - sink) * u
    b[-1] += sink
    G = box_map(g, k)
    R = weight * (G - u[None, :])
    return dict(A=b[None, :] + R, b=b, R=R, G=G, grid=g, N=n, weight=weight, sink=sink, k=k,
                context_mass=weight * (1 - k * k / n), prior_tv=sink * (1 - 1 / n), sink_ratio=1 - sink + sink * n)


def prior_context_primer(grid=(16, 16), weight: float = 0.5, sink: float = 0.1, query: tuple[int, int] = (5, 6)
                         ) -> Primer:
    """Chapter 4's decomposition run on :func:`constructed_prior_context`: is the prior put in recovered, is the
    context mass the hand-derived one, how local are R⁺ and |R|?

    ``values``: the constructed parts (``b``, ``R``, hand-derived ``context_mass``, ``prior_tv``, ``sink_ratio``),
    and what :func:`~aconvlib.analysis.locality.decompose` measures: ``dec`` (the decomposition),
    ``prior_error`` (max |b̂ − b|), ``context_error`` (max |R̂ − R|), ``erf_context_pos``, ``erf_context``,
    ``uniform_erf``, ``sink`` (:func:`~aconvlib.analysis.locality.attention_sink`).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm, TwoSlopeNorm

    c = constructed_prior_context(grid, weight, sink)
    g, n, A = c["grid"], c["N"], c["A"]
    if not (0 <= query[0] < g[0] and 0 <= query[1] < g[1]):
        raise PrimerError(f"the query {tuple(query)} lies outside the {g[0]}×{g[1]} grid")
    dec = L.decompose(A, g)
    ks = dec.kernel_sizes
    r_hat = A - dec.prior[None, :]
    v = dict(c, dec=dec, prior_error=float((dec.prior - c["b"]).abs().max()),
             context_error=float((r_hat - c["R"]).abs().max()),
             erf_context_pos=float(L.erf(dec.context_pos_asm, ks)), erf_context=float(L.erf(dec.context_asm, ks)),
             uniform_erf=float(L.erf(L.uniform_asm(g, ks), ks)), sink_found=L.attention_sink(A, g))
    q = query[0] * g[1] + query[1]
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.9), layout="constrained")
    panels = [(A[q] * n, f"A[q] (× 1/N), q = {tuple(query)}", LogNorm(0.3, n), "inferno"),
              (dec.prior * n, "recovered prior b (× 1/N)", LogNorm(0.3, n), "inferno"),
              (r_hat[q] * n, "context R[q] (× 1/N)", TwoSlopeNorm(0, -weight - 1e-9, None), "RdBu_r"),
              (r_hat[q].clamp(min=0) * n, "its positive part R⁺[q] (× 1/N)", None, "inferno")]
    for ax, (img, title, norm, cmap) in zip(axes, panels):
        im = ax.imshow(img.reshape(g).numpy(), cmap=cmap, norm=norm, interpolation="nearest")
        ax.plot([query[1]], [query[0]], marker="+", color="cyan", markersize=9, mew=2)
        ax.set(title=title, xticks=[], yticks=[])
        ax.title.set_fontsize(8)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"prior mass {dec.prior_mass:.3f}, context mass {dec.context_mass:.3f} "
                 f"(by hand: {c['context_mass']:.3f}); ERF of R⁺ {v['erf_context_pos']:.0f}, of |R| "
                 f"{v['erf_context']:.0f}, uniform map {v['uniform_erf']:.0f}", fontsize=9)
    return Primer(v, fig)


# ---------------------------------------------------------------------------------------------- chapter 5

def conv_stack(depth: int, grid, kernel: int = 3):
    """A token mixer ``[B, N, C] → [B, N, C]``: ``depth`` depthwise ``kernel``×``kernel`` convolutions with uniform
    weights ``1/kernel²`` and zero padding on ``grid`` (no bias, no nonlinearity)."""
    g = _grid(grid)
    if depth < 1 or kernel < 1 or kernel % 2 == 0:
        raise PrimerError(f"a conv stack needs depth ≥ 1 and an odd kernel, got depth={depth}, kernel={kernel}")

    def fn(x: torch.Tensor) -> torch.Tensor:
        b, nt, ch = x.shape
        y = x.transpose(1, 2).reshape(b, ch, *g)                            # [B, C, H', W']
        w = torch.full((ch, 1, kernel, kernel), 1.0 / kernel ** 2, dtype=x.dtype)
        for _ in range(depth):
            y = torch.nn.functional.conv2d(y, w, padding=kernel // 2, groups=ch)
        return y.reshape(b, ch, nt).transpose(1, 2)                         # [B, N, C]

    return fn


def attention_mixer(A: torch.Tensor):
    """The token mixer ``x ↦ A x`` of a fixed attention map A [N, N] (values = the input tokens)."""
    return lambda x: torch.einsum("qk,bkc->bqc", A.to(x.dtype), x)


def gaussian_erf_estimate(depth: float, threshold: float = 0.8, odd: bool = False) -> float:
    """The central-limit estimate of a ``depth``-deep uniform 3×3 stack's ERF: per axis a Gaussian of variance
    ``2·depth/3``; the K×K window (K tokens wide) holds ``threshold`` when each axis holds √threshold, i.e.
    K ≈ 2·z·√(2·depth/3) with z the normal quantile of (1 + √threshold)/2. ``odd``: the smallest odd K at least
    that (the windows are odd)."""
    import math
    from statistics import NormalDist

    z = NormalDist().inv_cdf((1 + threshold ** 0.5) / 2)
    k = 2 * z * (2 * depth / 3) ** 0.5
    return float(2 * math.ceil((k - 1) / 2) + 1) if odd else k


def erf_primer(grid: int = 33, depths: Sequence[int] = tuple(range(1, 13)), sigma: float = 2.0,
               show_depths: Sequence[int] = (1, 4, 12)) -> Primer:
    """The gradient ERF (chapter 8's measure; chapter 5 reads the same 80% window from the maps) of stacks of 3×3
    convolutions against two attention maps on a ``grid``×``grid`` grid, from its centre.

    ``values``: ``depths``; ``erf`` and ``support`` (the side of the gradient map's non-zero square) per depth;
    ``estimate`` (:func:`gaussian_erf_estimate`, rounded up to an odd K); ``attention`` (name → gradient ERF of the uniform map and of a
    Gaussian blob of width ``sigma``) and ``attention_map_erf`` (the same read from the maps' centre-query ASM
    curve, as chapter 5 reads it; equal to the gradient ERF for a fixed map).
    """
    import matplotlib.pyplot as plt

    g = _grid(grid)
    if g[0] % 2 == 0:
        raise PrimerError(f"use an odd grid side, so that one token is the centre; got {grid}")
    if max(depths) > (g[0] - 1) // 2:
        raise PrimerError(f"a depth-{max(depths)} stack reaches {2 * max(depths) + 1} tokens: more than the "
                          f"{g[0]}-token grid")
    x = torch.zeros(1, g[0] * g[1], 1, dtype=torch.float64)   # the mixers are linear: any input gives the same map
    rfs = {d: mixer_receptive_field(conv_stack(d, g), x, g) for d in depths}
    support = {d: int((rf.center_map > 1e-12 * rf.center_map.max()).any(1).sum()) for d, rf in rfs.items()}
    maps = {"uniform attention": uniform_map(g), f"local attention (blob σ={sigma:g})": gaussian_map(g, sigma)}
    att = {name: mixer_receptive_field(attention_mixer(A), x, g) for name, A in maps.items()}
    c = (g[0] // 2) * g[1] + g[1] // 2
    ks = L.odd_kernel_sizes(g)
    map_erf = {name: float(L.erf(L.asm_curve(A[c:c + 1], g, ks, query_index=torch.tensor([c])), ks))
               for name, A in maps.items()}
    fig = plt.figure(figsize=(10, 3.4), layout="constrained")
    sub = fig.subfigures(1, 2, width_ratios=[1.1, 1])
    ax = sub[0].subplots()
    ds = np.array(list(depths))
    ax.plot(ds, [rfs[d].erf for d in ds], "o", color="tab:blue", label="ERF of n stacked 3×3 convs (80%)")
    ax.plot(ds, [support[d] for d in ds], "s", mfc="none", color="tab:grey", label="support 2n + 1")
    fine = np.linspace(1, ds.max(), 100)
    ax.plot(fine, [gaussian_erf_estimate(d) for d in fine], color="tab:blue", lw=0.8,
            label="Gaussian estimate 2z√(2n/3)")
    ax.step(ds, [gaussian_erf_estimate(d, odd=True) for d in ds], where="mid", color="tab:blue", lw=0.8,
            ls=":", label="… rounded up to an odd K")
    for (name, rf), col in zip(att.items(), ("tab:red", "tab:orange")):
        ax.axhline(rf.erf, color=col, ls="--", label=f"{name}: ERF {rf.erf:.0f}")
    ax.set(xlabel="depth n (number of 3×3 convolutions)", ylabel="tokens (window side)",
           title=f"ERF from the centre of a {g[0]}×{g[1]} grid")
    ax.legend(fontsize=7)
    axs = sub[1].subplots(1, len(show_depths))
    for a, d in zip(np.atleast_1d(axs), show_depths):
        a.imshow(rfs[d].center_map.numpy(), cmap="inferno", interpolation="nearest")
        a.set(title=f"n = {d}: ERF {rfs[d].erf:.0f}\nsupport {support[d]}", xticks=[], yticks=[])
        a.title.set_fontsize(8)
    sub[1].suptitle("gradient mass maps of the conv stack", fontsize=9)
    return Primer(dict(grid=g, depths=list(depths), erf={d: rf.erf for d, rf in rfs.items()}, support=support,
                       estimate={d: gaussian_erf_estimate(d, odd=True) for d in depths},
                       attention={k: rf.erf for k, rf in att.items()}, attention_map_erf=map_erf), fig)
