"""Figures of the locality chapters (matplotlib / seaborn), reused by chapters 02–05.

Inputs are :class:`aconvlib.book.studies.CaptureStudy` objects, the per-layer DataFrames of
:func:`aconvlib.book.studies.analyze_study`, training/distillation logs and FLOPs tables. Every function returns the matplotlib ``Figure``.
"""
from __future__ import annotations

import textwrap

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

__all__ = ["level_curves", "mark_phase_changes", "plot_asm_curves", "plot_attention_overlays", "plot_distill_curves",
           "plot_erf", "plot_erf_maps", "plot_flops_vs_resolution", "plot_fig2_rows", "plot_image_rows",
           "plot_na_sweep", "plot_prior"]

_PALETTE = "viridis"


def _query_token(point: tuple[float, float], grid: tuple[int, int]) -> int:
    """Token under the fractional image position ``(y, x)`` in [0, 1)."""
    i = min(int(point[0] * grid[0]), grid[0] - 1)
    j = min(int(point[1] * grid[1]), grid[1] - 1)
    return i * grid[1] + j


def plot_attention_overlays(study, layer_names: Optional[Sequence[str]] = None,
                            query_points: Sequence[tuple[float, float]] = ((0.3, 0.3), (0.5, 0.7), (0.8, 0.2)),
                            image_index: int = 0, alpha: float = 0.65, cmap: str = "inferno", size: float = 1.9):
    """Each layer's attention map (rows) for several query points (columns), over the generated image.

    A query point is a fractional image position (y, x); it is mapped to the token under it in each
    layer's grid and its centre is marked with a cyan cross. The heat map is the query's row of the averaged map,
    shown on the token grid stretched over the image and scaled to its own maximum (printed).
    """
    names = list(layer_names or study.names())
    img = study.images[image_index]
    h, w = img.shape[:2]
    fig, axes = plt.subplots(len(names), len(query_points) + 1, figsize=(size * (len(query_points) + 1),
                             size * len(names)), squeeze=False, layout="constrained")
    labels = {d["name"]: d["label"] for d in study.layers}
    for r, name in enumerate(names):
        grid = tuple(study.grids[name])
        A = study.maps[name]
        axes[r, 0].imshow(img)
        axes[r, 0].set_ylabel(f"{labels.get(name, name)}\n{grid[0]}×{grid[1]}", fontsize=8)
        for c, pt in enumerate(query_points, start=1):
            ax = axes[r, c]
            q = _query_token(pt, grid)
            row = A[q].reshape(grid).numpy()
            ax.imshow(img, extent=(0, w, h, 0))
            ax.imshow(row / max(row.max(), 1e-12), extent=(0, w, h, 0), cmap=cmap, alpha=alpha, vmin=0, vmax=1,
                      interpolation="nearest")
            qy, qx = (q // grid[1] + 0.5) * h / grid[0], (q % grid[1] + 0.5) * w / grid[1]   # token centre
            ax.plot([qx], [qy], marker="+", color="cyan", markersize=9, mew=2)
            ax.set_title(f"max {row.max():.2g} (uniform {1 / row.size:.2g})", fontsize=7)
        if r == 0:
            axes[0, 0].set_title("image", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    # the title wraps to the grid's width, so the figure is no wider than its panels (a page-wide figure)
    title = (f"{study.model} ({study.weights} weights): self-attention maps averaged over heads and steps; "
             f"prompt: “{study.prompts[image_index]}”")
    fig.suptitle("\n".join(textwrap.wrap(title, int(11 * size * (len(query_points) + 1)))), fontsize=9)
    return fig


def plot_fig2_rows(study, layer_names: Sequence[str], query_points: Sequence[tuple[float, float]] = ((0.5, 0.5),),
                   image_index: int = 0, cmap: str = "inferno", size: float = 1.6):
    """The layout of the paper's Fig. 2: one row per query point, the image and then one column per layer (module
    order), each panel the query's row of the averaged map on the token grid, scaled to its own maximum (printed
    as a multiple of the uniform share 1/N); the query token is marked with a cyan cross."""
    names = list(layer_names)
    if not names or not query_points:
        raise ValueError("plot_fig2_rows needs at least one layer and one query point")
    img = study.images[image_index]
    labels = {d["name"]: d["label"] for d in study.layers}
    fig, axes = plt.subplots(len(query_points), len(names) + 1, figsize=(size * (len(names) + 1),
                             size * len(query_points)), squeeze=False, layout="constrained")
    for r, pt in enumerate(query_points):
        axes[r, 0].imshow(img)
        axes[r, 0].set_ylabel(f"query ({pt[0]:.2f}, {pt[1]:.2f})", fontsize=8)
        for c, name in enumerate(names, start=1):
            grid = tuple(study.grids[name])
            q = _query_token(pt, grid)
            row = study.maps[name][q].reshape(grid).numpy()
            ax = axes[r, c]
            ax.imshow(row / max(row.max(), 1e-12), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.plot([q % grid[1]], [q // grid[1]], marker="+", color="cyan", markersize=8, mew=2)
            ax.set_title(f"{labels.get(name, name)}\nmax {row.max() * row.size:.1f}× uniform", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    title = (f"{study.model} ({study.weights} weights): attention maps across layers (the layout of the paper's "
             f"Fig. 2), averaged over heads and steps; prompt: “{study.prompts[image_index]}”")
    fig.suptitle("\n".join(textwrap.wrap(title, int(11 * size * (len(names) + 1)))), fontsize=9)
    return fig


def level_curves(df, column: str = "asm", by: str = "level") -> list[dict]:
    """Mean curve of ``column`` over the layers of each ``by`` group (layers of one level share K)."""
    out = []
    for key, g in df.groupby(by, sort=True):
        out.append(dict(key=key, grid=g["grid"].iloc[0], ks=np.asarray(g["ks"].iloc[0]),
                        curve=np.mean(np.stack(g[column].to_list()), axis=0), n_layers=len(g)))
    return out


def plot_asm_curves(frames: dict, column: str = "asm", title: str = "", uniform_reference: bool = True,
                    mark_k: Optional[int] = None):
    """ASM(K) and its gradient vs K, one line per (model, resolution level), mean over the level's layers.

    Args:
        frames: model label → DataFrame from :func:`~aconvlib.studies.analyze_study`.
        column: ``"asm"`` (raw maps), ``"hp"`` (Butterworth high-pass) or ``"context_asm"`` (|R|).
        uniform_reference: dotted line of a uniform (perfectly global) map on the same grid.
        mark_k: draw a vertical line at this K (e.g. 11 for "within 10×10").
    """
    from ..analysis.locality import asm_gradient, uniform_asm

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    series = [(m, c) for m, df in frames.items() for c in level_curves(df, column)]
    colors = sns.color_palette("tab10", len(series))
    for (model, c), col in zip(series, colors):
        lbl = f"{model} {c['grid'][0]}×{c['grid'][1]} ({c['n_layers']} layers)"
        a1.plot(c["ks"], c["curve"], "-o", ms=3, color=col, label=lbl)
        a2.plot(c["ks"], asm_gradient(c["curve"], c["ks"]).numpy(), "-o", ms=3, color=col, label=lbl)
        if uniform_reference:
            a1.plot(c["ks"], uniform_asm(c["grid"], c["ks"]), ":", color=col, lw=1)
    for ax, yl in ((a1, "ASM(K)"), (a2, "dASM/dK")):
        ax.set_xlabel("kernel size K")
        ax.set_ylabel(yl)
        if mark_k:
            ax.axvline(mark_k, color="grey", ls="--", lw=0.8)
    a1.set_ylim(0, 1.02)
    a1.legend(fontsize=7, loc="lower right")
    if uniform_reference:
        a1.text(0.02, 0.97, "dotted: uniform map (no locality)", transform=a1.transAxes, fontsize=7, va="top")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_prior(df, title: str = "", max_layers: int = 10):
    """The prior b of each layer as an image (top) and the prior/context mass split per layer (bottom)."""
    rows = df.head(max_layers)
    n = len(rows)
    fig = plt.figure(figsize=(max(8, 1.3 * n), 4.6))
    gs = fig.add_gridspec(2, n, height_ratios=[1, 1.4])
    for i, (_, r) in enumerate(rows.iterrows()):
        ax = fig.add_subplot(gs[0, i])
        b = np.asarray(r["prior"]) * r["tokens"]   # in units of the uniform share 1/N
        im = ax.imshow(b, cmap=_PALETTE, vmin=0, vmax=max(2.0, float(b.max())))
        ax.set_title(f"{r['label']}\nmax {b.max():.1f}/N", fontsize=7)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(im, ax=fig.axes, shrink=0.6, label="b · N")
    ax = fig.add_subplot(gs[1, :])
    x = np.arange(len(df))
    ax.bar(x, df["prior_mass"], color="tab:blue", label="prior  Σ min(A_q, b)")
    ax.bar(x, df["context_mass"], bottom=df["prior_mass"], color="tab:orange", label="context  ½‖R_q‖₁")
    ax.set_xticks(x, df["label"], rotation=45, fontsize=7)
    ax.set_ylabel("share of attention mass")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_erf(df, title: str = "", limit: Optional[float] = None, columns: Sequence[str] = ("erf", "erf_hp"),
             relative: bool = False):
    """ERF per layer (bars for raw and high-pass maps); artifact layers hatched and starred.

    ``relative=True`` divides each ERF by its layer's grid side ``max(H', W')`` (grids of different
    sizes and models become comparable); ``limit`` is then a fraction of the side too.
    """
    names = {"erf": "raw maps", "erf_hp": "high-pass maps", "erf_context": "context |R|"}
    side = df["grid"].map(max).to_numpy(dtype=float) if relative else np.ones(len(df))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(df) * len(columns)), 3.6))
    x = np.arange(len(df))
    width = 0.8 / len(columns)
    for i, col in enumerate(columns):
        bars = ax.bar(x + (i - (len(columns) - 1) / 2) * width, df[col] / side, width, label=names.get(col, col))
        for bar, art in zip(bars, df["artifact"]):
            if art:
                bar.set_hatch("//")
                bar.set_edgecolor("red")
    for xi, (_, r), s in zip(x, df.iterrows(), side):
        if r["artifact"]:
            ax.annotate(f"★ sink {r['sink_share']:.0%}\nat {tuple(r['sink_pos'])}",
                        (xi, max(r[c] for c in columns) / s), ha="center", va="bottom", fontsize=6, color="red")
    if limit:
        ax.axhline(limit, color="grey", ls="--", lw=1, label=f"paper's bound ({limit:.2f})" if relative
                   else f"paper's bound K = {limit}")
    ax.set_xticks(x, [f"{lbl}\n{g[0]}×{g[1]}" for lbl, g in zip(df["label"], df["grid"])], rotation=45, fontsize=7)
    ax.set_ylabel("ERF / grid side" if relative else "ERF: smallest K with ASM ≥ 0.8")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def mark_phase_changes(ax, log: Sequence[dict], **line_kw) -> None:
    """Dashed vertical line at the first step of every later training phase (``phase`` field of log records)."""
    for r0, r1 in zip(log, log[1:]):
        if r1.get("phase", 1) != r0.get("phase", 1):
            ax.axvline(r1["step"], **{"ls": "--", "lw": 1, "c": "gray", **line_kw})


def plot_image_rows(rows: dict, prompts: Sequence[str], size: float = 1.8, title: str = ""):
    """A grid of images: one row per setting (``label → uint8 [P, H, W, 3]``), one column per prompt."""
    labels = list(rows)
    n = len(prompts)
    fig, axes = plt.subplots(len(labels), n, figsize=(size * n, size * len(labels) + 0.6), squeeze=False)
    for r, lbl in enumerate(labels):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(rows[lbl][c])
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(lbl, fontsize=8)
            if r == 0:
                ax.set_title("\n".join(_wrap(prompts[c], 28)), fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def plot_flops_vs_resolution(df, ax=None, value: str = "total_GFLOPs"):
    """Log-log plot of attention FLOPs per denoiser call against image size, one line per model."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for model, g in df.groupby("model", sort=False):
        ax.plot(g["px"], g[value], marker="o", label=model)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("image side √(H·W) (px)")
    ax.set_ylabel(value.replace("_", " "))
    ax.set_title("Self-attention cost per denoiser call")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return ax


def plot_distill_curves(models, smooth: int = 10):
    """One panel per loss term (total, Min-SNR ε terms, feature term), one line per embedded model's shipped
    distillation log, dashed lines at phase changes (``phase`` field of the log); returns the figure."""
    from ..mini import adapter_dir, read_log

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for model in models:
        log = read_log(adapter_dir(model))
        steps = np.array([r["step"] for r in log])
        for ax, key, title in zip(axes, ("loss", "out", "feat"), ("total L", "L_out (Min-SNR ε terms)", "L_f (features)")):
            y = np.array([r[key] for r in log])
            k = max(1, min(smooth, len(y) // 5))
            ys = np.convolve(y, np.ones(k) / k, mode="valid")
            line, = ax.plot(steps[k - 1:], ys, label=model)
            mark_phase_changes(ax, log, c=line.get_color(), alpha=0.6)  # re-distillation after the teacher changed
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    return fig


def plot_erf_maps(fields: dict, labels: Optional[dict] = None, title: str = "", max_layers: int = 12):
    """Gradient ERF maps (paper Fig. 9): one row per pipeline (``fields``: label → list of
    :class:`~aconvlib.analysis.receptive_field.ReceptiveField`, same layers), one column per layer; each panel is the
    mass map of the position nearest the grid's centre (log colour scale, own per panel), with the centred ERF×ERF
    window drawn in white."""
    from matplotlib.patches import Rectangle

    names = list(fields)
    n = min(max_layers, len(fields[names[0]]))
    fig, axes = plt.subplots(len(names), n, figsize=(1.7 * n + 0.6, 1.9 * len(names) + 0.5), squeeze=False)
    for i, name in enumerate(names):
        for j, rf in enumerate(fields[name][:n]):
            ax = axes[i, j]
            m = rf.center_map.numpy()
            pos = min(rf.positions, key=lambda p: (p[0] - rf.grid[0] // 2) ** 2 + (p[1] - rf.grid[1] // 2) ** 2)
            floor = max(m.max() * 1e-4, 1e-12)
            ax.imshow(np.log10(np.maximum(m, floor)), cmap="magma")
            r = int(rf.erf) // 2
            ax.add_patch(Rectangle((pos[1] - r - 0.5, pos[0] - r - 0.5), 2 * r + 1, 2 * r + 1, fill=False, ec="white",
                                   lw=0.8))
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{(labels or {}).get(rf.name, rf.name)}\n{rf.grid[0]}×{rf.grid[1]}", fontsize=7)
            ax.set_xlabel(f"ERF {rf.erf:.0f}", fontsize=7)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _interval_band(rows, col: str):
    """(lo, hi) arrays of ``col``'s 95% interval from stored ``intervals`` (scripts/eval_comparison.py), or None."""
    key = {"prompt_adherence": "adherence", "fdd": "fdd"}.get(col)
    if key is None or "intervals" not in rows or not all(isinstance(x, dict) for x in rows["intervals"]):
        return None
    return ([x[key]["lo"] for x in rows["intervals"]], [x[key]["hi"] for x in rows["intervals"]])


def plot_na_sweep(sweeps: dict, column: str = "prompt_adherence", marks: Optional[dict] = None, title: str = ""):
    """Quality vs NA window K per model (``sweeps``: model → frame of :func:`aconvlib.mini.compare.na_sweep`, rows with
    ``K = None`` drawn as the teacher's horizontal line). ``marks``: model → {label: K} drawn as vertical lines
    (e.g. the chapter-5 ERF, the shipped ΔConv kernel). Rows that carry stored ``intervals`` get a shaded 95% band.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    colors = dict(zip(sweeps, sns.color_palette("tab10", len(sweeps))))
    for ax, col in zip(axes, (column, "fdd")):
        for m, df in sweeps.items():
            ks = df.dropna(subset=["K"]).sort_values("K")
            ax.plot(ks["K"], ks[col], "o-", color=colors[m], label=f"{m}, NA")
            band = _interval_band(ks, col)
            if band is not None:     # stored rows with intervals: Wilson (adherence) / bootstrap (FDD) 95%
                ax.fill_between(ks["K"], band[0], band[1], color=colors[m], alpha=0.15, lw=0)
            teacher = df.loc[df["K"].isna(), col]
            if len(teacher):
                ax.axhline(float(teacher.iloc[0]), color=colors[m], ls="--", lw=1, label=f"{m}, full attention")
            for i, (lbl, k) in enumerate((marks or {}).get(m, {}).items()):
                ax.axvline(k, color=colors[m], ls=":", lw=1)
                ax.annotate(lbl, (k, 1 - 0.08 * (i + 1)), xycoords=("data", "axes fraction"), fontsize=6,
                            color=colors[m], rotation=90, ha="right", va="top")
        ax.set_xlabel("NA window K (clipped to each layer's grid)")
        ax.set_ylabel({"prompt_adherence": "prompt adherence", "fdd": "FDD analogue (lower is better)"}.get(col, col))
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
