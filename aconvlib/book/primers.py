"""The locality chapters' primers: constructed attention maps whose measures can be computed by hand.

Each primer of chapters 2–5 builds the idea of its chapter on a map the reader can reason about, and measures it
with the *same* functions the chapter then applies to the trained models (:mod:`aconvlib.analysis.locality`,
:mod:`aconvlib.analysis.receptive_field`), so the closed forms below are also checks of those functions
(``tests/test_primers.py``).

Constructed maps (row-stochastic [N, N] float64 over an H'×W' grid, raster order, as in the locality module):

- :func:`uniform_map`: ``A = 1/N``. A centre query's window holds exactly ``K²/N`` while ``K ≤`` the grid side;
  averaged over all queries with clipped windows it is :func:`aconvlib.analysis.locality.uniform_asm`.
- :func:`gaussian_map`: each row a Gaussian blob of width σ around its query (renormalized on the grid, or on a
  torus). Separable, so a query's window mass is the product of two 1-D sums.
- :func:`mixture_map`: ``w · blob + (1 − w) · uniform``. ASM is linear in the map, so its ASM is the same mix of
  the two curves; the Butterworth high-pass removes the uniform part completely (it is pure DC), so the high-pass
  ASM of the mixture equals the blob's for every ``w > 0``.
- :func:`box_map`: each row uniform on the k×k window around its query, on a torus (every key lies in exactly
  k² windows, so the column means are exactly 1/N): the context term of chapter 4's primer.

The primer functions (:func:`attention_map_primer`, :func:`asm_primer`, :func:`highpass_primer`) return a
:class:`Primer`: the numbers (``values``) and one matplotlib figure. Chapters 4 and 5's primers live in
:mod:`aconvlib.book.primers_context`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..analysis import locality as L

__all__ = ["Primer", "PrimerError", "asm_primer", "attention_map_primer", "box_map", "butterworth_response",
           "gaussian_map", "highpass_primer", "mixture_map", "uniform_map"]


class PrimerError(ValueError):
    """A primer was asked for a map that cannot exist (one line saying which parameter and why)."""


@dataclass
class Primer:
    """A primer's result: ``values`` (name → number, curve or map) and its ``figure`` (matplotlib)."""

    values: dict = field(default_factory=dict)
    figure: object = None

    def __getitem__(self, key):
        return self.values[key]


def _grid(grid) -> tuple[int, int]:
    g = (int(grid), int(grid)) if np.isscalar(grid) else (int(grid[0]), int(grid[1]))
    if min(g) < 1:
        raise PrimerError(f"a grid needs positive sides, got {grid}")
    return g


def _coords(grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    n = torch.arange(grid[0] * grid[1])
    return n // grid[1], n % grid[1]


def _offsets(grid: tuple[int, int], torus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column offsets key − query [N, N] (the shortest ones on a torus)."""
    r, c = _coords(grid)
    dr, dc = r[None, :] - r[:, None], c[None, :] - c[:, None]
    if torus:
        dr = torch.remainder(dr + grid[0] // 2, grid[0]) - grid[0] // 2
        dc = torch.remainder(dc + grid[1] // 2, grid[1]) - grid[1] // 2
    return dr, dc


def uniform_map(grid) -> torch.Tensor:
    """The uniform map ``A = 1/N`` [N, N]: every query attends to every key equally (no locality)."""
    h, w = _grid(grid)
    n = h * w
    return torch.full((n, n), 1.0 / n, dtype=torch.float64)


def gaussian_map(grid, sigma: float, torus: bool = False) -> torch.Tensor:
    """Each query's row is ``exp(−d²/2σ²)`` over the keys, ``d`` the distance in tokens (shortest on a torus),
    normalized to sum to one on the grid. [N, N] float64."""
    if not sigma > 0:
        raise PrimerError(f"the blob width sigma must be positive (tokens), got {sigma}")
    dr, dc = _offsets(_grid(grid), torus)
    a = torch.exp(-(dr.double() ** 2 + dc.double() ** 2) / (2 * sigma ** 2))
    return a / a.sum(1, keepdim=True)


def mixture_map(grid, sigma: float, weight: float) -> torch.Tensor:
    """``weight · gaussian_map + (1 − weight) · uniform_map``: local concentration on a global floor."""
    if not 0 <= weight <= 1:
        raise PrimerError(f"the mixture weight must lie in [0, 1], got {weight}")
    return weight * gaussian_map(grid, sigma) + (1 - weight) * uniform_map(grid)


def box_map(grid, k: int = 3) -> torch.Tensor:
    """Each row uniform (1/k²) on the k×k window around its query, wrapping around the grid's borders (a torus),
    so every column also sums to one. [N, N] float64."""
    g = _grid(grid)
    if k < 1 or k % 2 == 0 or k > min(g):
        raise PrimerError(f"the box side k must be odd and at most the grid side {min(g)}, got {k}")
    dr, dc = _offsets(g, torus=True)
    r = (k - 1) // 2
    a = ((dr.abs() <= r) & (dc.abs() <= r)).double()
    return a / a.sum(1, keepdim=True)


def butterworth_response(grid, cutoff: float, order: int) -> tuple[np.ndarray, np.ndarray]:
    """``(D, H)``: the radial frequency (cycles per token) and the gain of
    :func:`aconvlib.analysis.locality.butterworth_highpass` at every frequency of the grid's ``rfft2``."""
    g = _grid(grid)
    fy = torch.fft.fftfreq(g[0], dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(g[1], dtype=torch.float64)[None, :]
    d = torch.sqrt(fy ** 2 + fx ** 2)
    h = L.butterworth_highpass(g, cutoff, order)
    return d.flatten().numpy(), h.flatten().numpy()


def _center(grid: tuple[int, int]) -> int:
    return (grid[0] // 2) * grid[1] + grid[1] // 2


# ---------------------------------------------------------------------------------------------- chapter 2

def attention_map_primer(grid=(8, 8), sigma: float = 1.0, query: tuple[int, int] = (2, 5), noise: float = 0.1,
                         seed: int = 0) -> Primer:
    """What an attention map is (chapter 2): three maps on a small grid, one query's row of each drawn as the
    chapter's overlays draw it (scaled to its own maximum), and the chapter's number next to it, the mass inside
    the 3×3 window around the query divided by the uniform map's (mean over queries).

    Maps: uniform; uniform with multiplicative noise of relative size ``noise`` (a near-uniform map that, scaled
    to its maximum, looks structured); a Gaussian blob of width ``sigma``. ``values``: ``grid``, ``N``, ``maps``
    (name → [N, N]), ``ratio3`` (name → ASM(3) / uniform), ``uniform3`` (the uniform map's ASM(3)).
    """
    import matplotlib.pyplot as plt

    g = _grid(grid)
    n = g[0] * g[1]
    if not (0 <= query[0] < g[0] and 0 <= query[1] < g[1]):
        raise PrimerError(f"the query {tuple(query)} lies outside the {g[0]}×{g[1]} grid")
    if not 0 <= noise < 1:
        raise PrimerError(f"noise is a relative size in [0, 1), got {noise}")
    gen = torch.Generator().manual_seed(seed)
    noisy = uniform_map(g) * (1 + noise * (2 * torch.rand(n, n, generator=gen, dtype=torch.float64) - 1))
    maps = {"uniform": uniform_map(g), f"uniform ± {noise:.0%} noise": noisy / noisy.sum(1, keepdim=True),
            f"Gaussian blob, σ = {sigma:g}": gaussian_map(g, sigma)}
    u3 = float(L.uniform_asm(g, [3])[0])
    ratio3 = {name: float(L.asm_curve(a, g, [3])[0]) / u3 for name, a in maps.items()}
    q = query[0] * g[1] + query[1]
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.9), layout="constrained")
    blob = maps[f"Gaussian blob, σ = {sigma:g}"]
    axes[0].imshow(blob.numpy(), cmap="inferno", interpolation="nearest")
    axes[0].axhline(q, color="cyan", lw=0.8)
    axes[0].set(title=f"a map A: {n}×{n}\n(Gaussian; row q = {q} marked)", xlabel="key k", ylabel="query q")
    for ax, (name, a) in zip(axes[1:], maps.items()):
        row = a[q].reshape(g).numpy()
        ax.imshow(row / row.max(), cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
        ax.plot([query[1]], [query[0]], marker="+", color="cyan", markersize=10, mew=2)
        ax.set(title=f"{name}\nrow q on the grid, ASM(3)/uniform {ratio3[name]:.2f}×", xticks=[], yticks=[])
        ax.title.set_fontsize(8)
    axes[0].title.set_fontsize(8)
    return Primer(dict(grid=g, N=n, maps=maps, ratio3=ratio3, uniform3=u3, query=q), fig)


# ---------------------------------------------------------------------------------------------- chapter 3

def asm_primer(grid=(32, 32), sigma: float = 1.5, weight: float = 0.3) -> Primer:
    """ASM(K) of a uniform map, of a Gaussian blob of width ``sigma`` and of their mixture (weight ``weight`` on
    the blob), with the ASM gradient (chapter 3's Fig. 4a reading).

    ``values``: ``ks``; ``asm`` and ``grad`` (name → curve [nK]); ``centre_uniform`` (a centre query's window mass
    in the uniform map, K²/N until K reaches the grid side); ``area_share`` (K²/N).
    """
    import matplotlib.pyplot as plt

    g = _grid(grid)
    n = g[0] * g[1]
    ks = L.odd_kernel_sizes(g)
    maps = {"uniform": uniform_map(g), f"blob σ={sigma:g}": gaussian_map(g, sigma),
            f"mixture ({weight:.0%} blob)": mixture_map(g, sigma, weight)}
    asm = {name: L.asm_curve(a, g, ks).numpy() for name, a in maps.items()}
    grad = {name: L.asm_gradient(torch.as_tensor(c), ks).numpy() for name, c in asm.items()}
    c = _center(g)
    centre = L.asm_curve(maps["uniform"][c:c + 1], g, ks, query_index=torch.tensor([c])).numpy()
    area = np.array([k * k / n for k in ks])
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    for (name, cur), col in zip(asm.items(), ("grey", "tab:blue", "tab:orange")):
        a0.plot(ks, cur, marker=".", color=col, label=name)
        a1.plot(ks, grad[name], marker=".", color=col, label=name)
    a0.plot(ks, np.minimum(area, 1), ":", color="black", label="K²/N (centre query of the uniform map)")
    a0.set(xlabel="window K", ylabel="ASM(K)", title=f"ASM(K) on a {g[0]}×{g[1]} grid", ylim=(0, 1.02))
    a1.set(xlabel="window K", ylabel="ASM gradient (mass per unit of K)", title="ASM gradient", ylim=(0, None))
    a0.legend(fontsize=7)
    a1.legend(fontsize=7)
    return Primer(dict(grid=g, N=n, ks=ks, asm=asm, grad=grad, centre_uniform=centre, area_share=area), fig)


def highpass_primer(grid=(30, 30), sigma: float = 1.5, weights: Sequence[float] = (0.1, 0.3, 1.0),
                    cutoff: float = 0.1, order: int = 2, orders: Sequence[int] = (1, 2, 4)) -> Primer:
    """The Butterworth high-pass ``H(D) = 1/(1 + (D0/D)^{2n})`` and what it does to the blob + uniform mixture.

    ``values``: ``ks``; ``response`` (order → (D, H) on the grid's frequencies); ``gain_at_cutoff`` (order → the filter's
    gain at the grid frequencies equal to D0; on a 30×30 grid D = 3/30 = 0.1 exists; NaN where none does); ``raw`` and ``hp`` (mixture weight → ASM curve of the raw and the high-pass map, the
    chapter's :func:`~aconvlib.analysis.locality.highpass_asm_curve`, ``norm="abs"``).
    """
    import matplotlib.pyplot as plt

    g = _grid(grid)
    ks = L.odd_kernel_sizes(g)
    if not weights or any(not 0 < w <= 1 for w in weights):
        raise PrimerError(f"mixture weights must lie in (0, 1] (a weight of 0 leaves no high-frequency part), "
                          f"got {list(weights)}")
    response = {n: butterworth_response(g, cutoff, n) for n in orders}
    # the gain butterworth_highpass gives at the grid frequencies equal to D0 (NaN if the grid has none)
    at_cutoff = {n: float(np.mean(h[np.isclose(d, cutoff)])) if np.isclose(d, cutoff).any() else float("nan")
                 for n, (d, h) in response.items()}
    raw = {w: L.asm_curve(mixture_map(g, sigma, w), g, ks).numpy() for w in weights}
    hp = {w: L.highpass_asm_curve(mixture_map(g, sigma, w), g, ks, cutoff, order).numpy() for w in weights}
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    dd = np.linspace(1e-4, 0.75, 400)
    for n, col in zip(orders, ("tab:green", "tab:purple", "tab:red", "tab:brown")):
        d, h = response[n]
        a0.plot(dd, 1 / (1 + (cutoff / dd) ** (2 * n)), color=col, label=f"n = {n}")
        a0.plot(d, h, ".", color=col, markersize=3)
    a0.axvline(cutoff, color="grey", ls=":")
    a0.axhline(0.5, color="grey", ls=":")
    a0.set(xlabel="radial frequency D (cycles per token)", ylabel="gain H(D)",
           title=f"Butterworth high-pass, D0 = {cutoff:g} (dots: the {g[0]}×{g[1]} grid's frequencies)")
    a0.legend(fontsize=7)
    for i, w in enumerate(weights):
        a1.plot(ks, raw[w], color=f"C{i}", ls="--", label=f"raw, {w:.0%} blob")
        a1.plot(ks, hp[w], color=f"C{i}", marker=".", label=f"high-pass, {w:.0%} blob")
    a1.set(xlabel="window K", ylabel="ASM(K)", ylim=(0, 1.02),
           title=f"mixture of a σ={sigma:g} blob and the uniform map (n = {order})")
    a1.legend(fontsize=7)
    a0.title.set_fontsize(9)
    a1.title.set_fontsize(9)
    return Primer(dict(grid=g, ks=ks, response=response, gain_at_cutoff=at_cutoff, raw=raw, hp=hp), fig)
