"""The primers of chapters 0, 1, 6, 8, 9 and 10: the idea on a case small enough to compute by hand, in seconds on a
CPU, before the chapter measures it on trained models. (Chapter 7's toy distillation: :mod:`aconvlib.book.toy_distill`.)

Each function returns the numbers (and the hand formula next to the measured value where there is one) and a
``plot_*`` companion draws them; the chapters show the plot with :func:`aconvlib.book.figures.show_figure`.
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["attention_cost", "crossover_tokens", "evaluator_demo", "interval_coverage", "plot_attention_cost",
           "plot_evaluator_demo", "plot_interval_coverage", "plot_sink_map", "plot_stage_supports",
           "plot_verdict_examples", "sink_map_demo", "stage_supports_1d", "verdict_examples"]


# ----------------------------------------------------------------------------- chapter 0: cost by hand
def attention_cost(channels: int, tokens: Sequence[int], kernel_size: int = 9):
    """Per token count N: the paper's two attention terms (:func:`aconvlib.mixers.flops.attention_terms`), their
    sum, and a K×K depthwise convolution over the same tokens (2·N·C·K², 2 FLOPs per multiply-add) for scale."""
    import pandas as pd

    from ..mixers.flops import attention_flops, attention_terms

    rows = []
    for n in tokens:
        t = attention_terms(n, channels)
        rows.append({"N": int(n), "grid side": round(int(n) ** 0.5, 1), **t, "attention": attention_flops(n, channels),
                     f"depthwise {kernel_size}×{kernel_size}": 2 * int(n) * channels * kernel_size ** 2})
    return pd.DataFrame(rows)


def crossover_tokens(channels: int) -> int:
    """The smallest N at which attention's quadratic part (4N²C' + 4N²) reaches its projections (4NC'²), found by
    doubling then bisection on :func:`aconvlib.mixers.flops.attention_terms` (by hand: N ≥ C'²/(C'+1), i.e. N ≥ C')."""
    from ..mixers.flops import attention_terms

    def quadratic_wins(n: int) -> bool:
        t = attention_terms(n, channels)
        return t["quadratic"] >= t["projections"]

    hi = 1
    while not quadratic_wins(hi):
        hi *= 2
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if quadratic_wins(mid) else (mid, hi)
    return hi if lo == 0 or not quadratic_wins(lo) else lo


def plot_attention_cost(frame, channels: int):
    """Log-log lines of the cost table of :func:`attention_cost`, the crossover marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for col, style in (("projections", "--"), ("quadratic", ":"), ("attention", "-")):
        ax.loglog(frame["N"], frame[col], style, label=col if col != "attention" else "attention (sum)")
    dw = [c for c in frame.columns if c.startswith("depthwise")][0]
    ax.loglog(frame["N"], frame[dw], "-.", color="grey", label=dw)
    n_star = crossover_tokens(channels)
    ax.axvline(n_star, color="k", lw=0.8)
    ax.text(n_star * 1.1, ax.get_ylim()[0] * 10, f"N* = {n_star}", fontsize=8)
    ax.set_xlabel("tokens N (log)")
    ax.set_ylabel("FLOPs per layer (log)")
    ax.set_title(f"one self-attention layer with C' = {channels}")
    ax.legend(fontsize=8)
    return fig


# ----------------------------------------------------------------------------- chapter 1: the evaluator
def _caption_of_cells(shape, color, size) -> str:
    """The caption the classifier's per-cell predictions describe (empty cells omitted, cells in order)."""
    from ..mini import dataset as data

    objs = [data.SceneObject(int(s) - 1, max(int(c), 0), max(int(z), 0), cell)
            for cell, (s, c, z) in enumerate(zip(shape.tolist(), color.tolist(), size.tolist())) if s > 0]
    return data.caption(objs) if objs else "(nothing)"


def evaluator_demo(n: int = 4, seed: int = 0, swap_last: bool = True):
    """``n`` real held-out images with their captions, scored by the shipped attribute classifier as the book scores
    generated images; with ``swap_last`` the last image is paired with the first image's caption (a wrong scene).

    Returns ``(images [n, 3, 64, 64] in [0, 1], frame)``: per image the prompt, the scene the classifier reads,
    ``match`` (1 when every one of the 9 cells agrees in shape, colour and size) and per-attribute agreement."""
    import pandas as pd
    import torch

    from ..mini import dataset as data
    from ..mini.evaluate import AttributeClassifier, predict, scene_match

    b = data.make_batch(range(n), seed, "heldout")
    captions = list(b["captions"])
    if swap_last and n > 1:
        captions[-1] = captions[0]
    lab = data.labels([data.parse_caption(c) for c in captions])
    with torch.no_grad():
        pred = predict(AttributeClassifier.load(), b["pixel_values"])
    match = scene_match(pred, lab)
    occ = lab["shape"] > 0
    rows = [{"prompt": captions[i], "the classifier reads": _caption_of_cells(pred["shape"][i], pred["color"][i],
                                                                                pred["size"][i]),
             "shape": int(((pred["shape"][i] == lab["shape"][i]) | ~occ[i]).all()),
             "colour": int(((pred["color"][i] == lab["color"][i]) | ~occ[i]).all()),
             "size": int(((pred["size"][i] == lab["size"][i]) | ~occ[i]).all()),
             "position": int((pred["shape"][i] == lab["shape"][i]).all()), "match": int(match[i])} for i in range(n)]
    return (b["pixel_values"] + 1) / 2, pd.DataFrame(rows)


def plot_evaluator_demo(images, frame):
    import matplotlib.pyplot as plt
    import textwrap

    n = len(frame)
    fig, axes = plt.subplots(1, n, figsize=(2.5 * n, 3.2))
    for i, ax in enumerate(list(axes) if n > 1 else [axes]):
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.set_xticks([]), ax.set_yticks([])
        ok = "match" if frame["match"][i] else "NO match"
        ax.set_title(f"{ok}", fontsize=9, color="k" if frame["match"][i] else "crimson")
        ax.set_xlabel(textwrap.fill(frame["prompt"][i], 28), fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- chapter 6: stage by stage
def stage_supports_1d(kernel_size: int = 3, length: int = 32, position: int | None = None) -> dict:
    """How far one output of each ΔConvBlock stage reaches, on a 1-D row of ``length`` tokens: the support of the
    output at ``position`` (default the centre) as a function of the inputs, measured by pushing a unit impulse at
    every input position through all-ones kernels (so no weight can cancel), next to the hand count.

    Returns ``{"full": [L], "half": [L], "pool": [L], "width": {...}, "by_hand": {...}}`` with the responses
    (0/1 reach) and their widths. By hand: the full-resolution stage reaches K tokens; the half-resolution stage
    pools pairs (2 tokens per cell), convolves K cells (2K tokens) and bilinear upsampling mixes 2 neighbouring
    cells (one more cell: 2K + 2 tokens) on an even row (on an odd one the adaptive pooling windows overlap and it
    can be one more); the pooling branch reaches all L."""
    import torch
    import torch.nn.functional as F

    k, L = int(kernel_size), int(length)
    p = L // 2 if position is None else int(position)
    ones = torch.ones(1, 1, k)
    eye = torch.eye(L).unsqueeze(1)                                          # [L inputs, 1, L]: one impulse each

    full = F.conv1d(eye, ones, padding=k // 2)[:, 0, p]
    small = F.adaptive_avg_pool1d(eye, L // 2)                                # [L, 1, ⌊L/2⌋], as the block pools
    half = F.interpolate(F.conv1d(small, ones, padding=k // 2), size=L, mode="linear", align_corners=False)[:, 0, p]
    pool = torch.full((L,), 1.0 / L)                                          # the mean: every input reaches it
    reach = {"full": (full != 0).float(), "half": (half != 0).float(), "pool": (pool != 0).float()}
    return {**reach, "width": {k_: int(v.sum()) for k_, v in reach.items()},
            "by_hand": {"full": k, "half": 2 * k + 2, "pool": L}}


def plot_stage_supports(s: dict, kernel_size: int):
    import matplotlib.pyplot as plt

    names = {"full": f"full resolution: K = {kernel_size}", "half": f"half resolution: 2K + 2 = {2 * kernel_size + 2}",
             "pool": "pooling branch: every token"}
    fig, axes = plt.subplots(3, 1, figsize=(8, 3.4), sharex=True)
    for ax, key in zip(axes, ("full", "half", "pool")):
        ax.bar(range(len(s[key])), s[key].numpy(), width=0.9, color="tab:blue" if key != "pool" else "tab:grey")
        ax.set_yticks([])
        ax.set_ylabel(key, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_title(f"{names[key]} (measured: {s['width'][key]} tokens)", fontsize=8, loc="left")
    axes[-1].set_xlabel("input token (the output token is the centre one)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- chapter 8: an interval on a toy
def interval_coverage(p: float = 0.8, ns: Sequence[int] = (4, 16, 64), draws: int = 2000, seed: int = 0) -> dict:
    """Draw ``draws`` samples of n prompts from a method whose true adherence is ``p``; per n: the observed
    adherence of every draw, its 95% Wilson interval (:func:`aconvlib.analysis.evidence.wilson_interval`), how
    often the interval holds ``p`` (coverage, ≈ 0.95 if the interval does its job) and its mean width."""
    import numpy as np

    from ..analysis.evidence import wilson_interval

    rng = np.random.default_rng(seed)
    out = {}
    for n in ns:
        k = rng.binomial(n, p, size=draws)
        iv = {int(j): wilson_interval(int(j), n) for j in np.unique(k)}
        lo = np.array([iv[int(j)][0] for j in k])
        hi = np.array([iv[int(j)][1] for j in k])
        out[int(n)] = {"k": k, "lo": lo, "hi": hi, "coverage": float(((lo <= p) & (p <= hi)).mean()),
                       "mean_width": float((hi - lo).mean()), "values": sorted({float(j) / n for j in k})}
    return out


def plot_interval_coverage(cov: dict, p: float, show: int = 25):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cov), figsize=(3.3 * len(cov), 3.2), sharey=True)
    for ax, (n, c) in zip(axes, cov.items()):
        for i in range(show):
            miss = not c["lo"][i] <= p <= c["hi"][i]
            ax.plot([c["lo"][i], c["hi"][i]], [i, i], color="crimson" if miss else "tab:blue", lw=2)
            ax.plot(c["k"][i] / n, i, "k.", ms=3)
        ax.axvline(p, color="k", lw=0.8)
        ax.set_title(f"n = {n}: covers p in {c['coverage']:.0%}\nmean width {c['mean_width']:.2f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_xlabel("adherence")
    axes[0].set_ylabel(f"{show} repeated evaluations")
    axes[0].set_yticks([])
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- chapter 9: a verdict on toys
def verdict_examples(cases: dict | None = None, tolerance: float = 0.05):
    """Table 3's rule (:func:`aconvlib.book.distill_claims.quality_verdict`) on constructed counts: ``cases`` maps a
    name to ``((k_teacher, n), (k_student, n))``. Returns a frame with the Newcombe interval of student − teacher and
    the verdict: holds when the interval lies above −tolerance, fails when below it, not testable otherwise."""
    import pandas as pd

    from .distill_claims import quality_verdict

    cases = cases or {"16 of 16 vs 16 of 16": ((16, 16), (16, 16)),
                      "500 of 512 vs 498 of 512": ((500, 512), (498, 512)),
                      "14 of 16 vs 2 of 16": ((14, 16), (2, 16)),
                      "480 of 512 vs 400 of 512": ((480, 512), (400, 512))}
    rows = []
    for name, ((kt, nt), (ks, ns)) in cases.items():
        v = quality_verdict("toy", {"n_prompts": nt, "prompt_adherence": kt / nt},
                            {"n_prompts": ns, "prompt_adherence": ks / ns}, tolerance=tolerance, chapter="toy")
        rows.append({"teacher vs student": name, "difference": ks / ns - kt / nt, "interval lo": v.numbers["diff_lo"],
                     "interval hi": v.numbers["diff_hi"], "verdict": v.verdict})
    return pd.DataFrame(rows)


def plot_verdict_examples(frame, tolerance: float = 0.05):
    import matplotlib.pyplot as plt

    colours = {"holds": "tab:green", "fails": "crimson"}
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.55 * len(frame)))
    for i, r in frame.iterrows():
        c = colours.get(r["verdict"], "tab:grey")
        ax.plot([r["interval lo"], r["interval hi"]], [i, i], color=c, lw=3)
        ax.plot(r["difference"], i, "k|", ms=10)
        ax.text(r["interval hi"] + 0.02, i, r["verdict"], va="center", fontsize=8, color=c)
    ax.axvline(-tolerance, color="k", ls="--", lw=0.8)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_yticks(range(len(frame)), frame["teacher vs student"], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"adherence difference student − teacher, 95% interval (dashed: −{tolerance:g})")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- chapter 10: one constructed row
def sink_map_demo(grid: tuple[int, int] = (16, 16), query: tuple[int, int] = (5, 9), sigma: float = 1.2,
                  sink: tuple[int, int] | None = (15, 15), weights=(0.5, 0.3, 0.2)) -> dict:
    """A constructed attention row of the kind the explorer shows: a Gaussian blob of width ``sigma`` around the
    query, an attention sink (one key every query looks at) and a uniform floor, mixed with ``weights``
    (blob, sink, floor). Returns the map [H, W], its Butterworth high-pass (``norm="abs"``), its ASM curve, the
    uniform map's on the same grid, and both ERFs (smallest K holding 80%), via :mod:`aconvlib.analysis.locality`."""
    import torch

    from ..analysis import locality as L

    h, w = grid
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    blob = torch.exp(-((yy - query[0]) ** 2 + (xx - query[1]) ** 2) / (2 * sigma ** 2))
    parts = [blob / blob.sum(), torch.zeros(h, w, dtype=torch.float64), torch.full((h, w), 1.0 / (h * w),
                                                                                 dtype=torch.float64)]
    if sink is not None:
        parts[1][sink] = 1.0
    wsum = sum(wt for wt, part in zip(weights, parts) if part.sum() > 0)
    m = sum(wt * part for wt, part in zip(weights, parts)) / wsum
    row = m.reshape(1, h * w)
    q = torch.tensor([query[0] * w + query[1]])
    ks = L.odd_kernel_sizes(grid)
    _, curve = L.asm_curve(row, grid, ks, per_query=True, query_index=q)
    _, uni = L.asm_curve(torch.full_like(row, 1.0 / (h * w)), grid, ks, per_query=True, query_index=q)
    hp = L.highpass(row, grid, 0.1, 2, norm="abs")[0].reshape(h, w)
    return {"map": m, "highpass": hp, "k": ks, "asm": curve[0], "uniform_asm": uni[0],
            "erf": int(L.erf(curve, ks)[0]), "uniform_erf": int(L.erf(uni, ks)[0]), "query": query, "sink": sink}


def plot_sink_map(d: dict):
    import matplotlib.pyplot as plt

    from matplotlib.colors import PowerNorm

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    axes[0].imshow(d["map"].numpy(), cmap="magma", norm=PowerNorm(0.35))
    axes[0].set_title("constructed row (blob + sink + floor)", fontsize=9)
    axes[1].imshow(d["highpass"].numpy(), cmap="magma", norm=PowerNorm(0.35))
    axes[1].set_title("|high-pass| (normalised)", fontsize=9)
    for ax in axes[:2]:
        ax.plot(d["query"][1], d["query"][0], "c+", ms=10)
        ax.set_xticks([]), ax.set_yticks([])
    axes[2].plot(d["k"], d["asm"].numpy(), "o-", ms=3, label=f"row (ERF {d['erf']})")
    axes[2].plot(d["k"], d["uniform_asm"].numpy(), ":", label=f"uniform map (ERF {d['uniform_erf']})")
    axes[2].axhline(0.8, color="k", lw=0.5)
    axes[2].set_xlabel("window K")
    axes[2].set_ylabel("ASM(K)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig
