"""The locality claims of the paper (Fig. 2, Fig. 4a/b, Sec. 3.2 III, Fig. 5, Fig. 6) judged on measured maps.

Chapters 2–5 call these functions on the per-layer frames of :func:`aconvlib.book.studies.analyze_study`;
each returns a table for the reader and a :class:`~aconvlib.analysis.evidence.Verdict`. The rules, written
once here and quoted by the chapters:

- **Per grid level, never pooled.** Layers on a 32×32, a 16×16 and an 8×8 grid have different uniform
  baselines (the 3×3 window holds 9/1024, 9/256, 9/64 of the keys), so statistics are medians over the layers
  of one level, and a verdict needs every measurable level.
- **Next to the uniform map.** Every ASM, high-pass ASM, context ASM and ERF is shown with what the uniform
  map scores under the same clipped-window rule on the same grid (:func:`aconvlib.analysis.locality.uniform_asm`,
  :func:`aconvlib.analysis.evidence.uniform_erf`). The high-pass and context terms of a uniform map are zero,
  so their baseline is the same area share: what a spatially unstructured magnitude map puts in the window.
- **Measurable windows only.** A window as large as the grid (K ≥ the shorter side) cannot separate local
  from global: its level is "not measurable", never "holds" (:func:`aconvlib.analysis.evidence.window_measurable`).
- **Paper bounds on our grids.** A bound stated on the paper's grid is used as stated and scaled by the ratio
  of top-level grid sides, ``bound · our_top_side / paper_top_side`` (the paper applies one bound to the layers
  of every level; we scale it once, by the top levels: SD1.5 at 512 px has a 64-token top level, PixArt-Σ's
  maps in Figs. 4–5 are 64×64, i.e. PixArt-Σ at 1024 px; PixArt-Σ 512 has 32×32 tokens, SDXL 64/32 at 1024 px).
- **Intervals over prompts.** Every verdict's deciding number carries a 95% bootstrap interval over the
  prompts (one capture per prompt, :func:`level_intervals`, :func:`image_ratio_intervals`); a criterion is
  met or missed only when the whole interval lies on one side of it, otherwise the prompts do not decide it
  and the verdict is "not testable here" with the number of prompts that would.
- **Artifacts (attention sinks) relative to uniform.** A layer's most-attended key is an artifact when the
  average query gives it at least ``artifact_ratio`` times the uniform share 1/N; an absolute share (0.1)
  would mean 6.4× uniform on 8×8 and 102× on 32×32.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..analysis.evidence import (FAILS, HOLDS, NOT_TESTABLE, Verdict, bootstrap_interval, is_difference,
                                 newcombe_interval, proportion, scaled_bound, uniform_erf, window_measurable)
from ..analysis.locality import uniform_asm

__all__ = ["PAPER_TOP_SIDE", "artifact_table", "paper_erf_bound", "context_verdict", "erf_verdict", "fig2_verdict", "fig4a_verdict",
           "fig4b_verdict", "image_ratio_intervals", "level_intervals", "level_table", "na_control_verdict",
           "top_side"]

PAPER_TOP_SIDE = 64      # SD1.5 at 512 px and PixArt-Σ at 1024 px (the paper's Figs. 4–5): 64×64 top-level maps
LOCAL_RATIO = 2.0        # "concentrated": the 3×3 window holds at least twice the uniform map's share


def _share(curve, ks, k: int) -> float:
    ks = list(ks)
    return float(curve[ks.index(k)]) if k in ks else float("nan")


def top_side(df: pd.DataFrame) -> int:
    """The largest grid side among a model's layers (its top level)."""
    return int(max(max(g) for g in df["grid"]))


def _grid(g) -> str:
    return f"{g[0]}×{g[1]}"


def paper_erf_bound(paper: dict, family: str) -> float:
    """The paper's ERF bound (Fig. 5) for a denoiser family: SD1.5's for U-Nets, PixArt-Σ's for transformers (the
    paper states none for joint-attention transformers such as FLUX: the DiT bound is the one that applies to a
    transformer whose blocks all see one token grid)."""
    return paper["erf_bound_unet"] if family == "unet" else paper["erf_bound_dit"]


def level_table(frames: dict, paper: dict, families: dict, window: int = 11) -> pd.DataFrame:
    """One row per model and grid level: medians over the level's layers next to the uniform map's values.

    Columns: model, grid, layers, ``asm3`` / ``uniform3`` / ``ratio3`` (median over layers of ASM(3) / uniform),
    ``asm{w}`` / ``hp{w}`` / ``uniform{w}`` (window ``w``, the paper's 10×10 as the odd 11×11) and whether that
    window is measurable on the grid, ``erf`` / ``erf_hp`` / ``erf_context`` (of |R|) / ``erf_context_pos`` (of the
    positive part R⁺) (medians) / ``uniform_erf``, the
    paper's ERF bound as stated and scaled to the grid, and ``prior_tv`` (median TV distance of b to uniform).
    """
    rows = []
    for m, df in frames.items():
        bound = paper_erf_bound(paper, families[m])
        scaled = scaled_bound(bound, paper["erf_reference_grid"], top_side(df))
        for grid, g in df.groupby(df["grid"].map(tuple), sort=False):
            ks = g["ks"].iloc[0]
            u = uniform_asm(grid, ks).numpy()
            asm3 = [_share(c, ks, 3) for c in g["asm"]]
            rows.append({
                "model": m, "grid": _grid(grid), "side": min(grid), "layers": len(g),
                "asm3": float(np.median(asm3)), "uniform3": _share(u, ks, 3),
                "ratio3": float(np.median([a / _share(u, ks, 3) for a in asm3])),
                f"asm{window}": float(np.median([_share(c, ks, window) for c in g["asm"]])),
                f"hp{window}": float(np.median([_share(c, ks, window) for c in g["hp"]])),
                f"uniform{window}": _share(u, ks, window), f"measurable{window}": window_measurable(window, grid),
                "erf": float(g["erf"].median()), "erf_hp": float(g["erf_hp"].median()),
                "erf_context": float(g["erf_context"].median()),
                "erf_context_pos": float(g["erf_context_pos"].median()),
                "uniform_erf": uniform_erf(grid, paper["erf_mass"]),
                "erf_bound": bound, "erf_bound_scaled": scaled,
                "share_below_bound": float((g["erf"] < bound).mean()),
                "share_below_scaled": float((g["erf"] < scaled).mean()),
                "bound_measurable": window_measurable(int(np.ceil(scaled)), grid) and scaled >= 3,
                "prior_tv": float(g["prior_tv_uniform"].median()),
            })
    return pd.DataFrame(rows)


def image_ratio_intervals(per_image: dict, k: int = 3, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Median over a level's layers of ASM(k) / uniform, with a 95% bootstrap interval over images.

    ``per_image``: model → list of per-image frames (one :func:`analyze_study` frame per generated image, same
    layers). ASM is linear in the map, so the ASM of the maps averaged over a resample of images is the mean of
    their per-image curves: each bootstrap draw resamples images, averages their ASM(k) per layer, divides by
    the uniform share and takes the median over the level's layers.
    """
    rows = []
    for m, frames in per_image.items():
        first = frames[0]
        for grid, idx in first.groupby(first["grid"].map(tuple), sort=False).groups.items():
            ks = first.loc[idx[0], "ks"]
            u = _share(uniform_asm(grid, ks).numpy(), ks, 3 if k == 3 else k)
            vals = np.array([[_share(f.loc[i, "asm"], ks, k) for i in idx] for f in frames])   # [images, layers]

            def stat(x):
                return float(np.median(x.mean(axis=0) / u))

            point = stat(vals)
            lo, hi = bootstrap_interval(vals, stat, n_boot=n_boot, seed=seed) if len(frames) > 1 else (np.nan, np.nan)
            rows.append({"model": m, "grid": _grid(grid), "layers": len(idx), "images": len(frames),
                         f"ratio{k}": point, "lo": lo, "hi": hi, "measurable": window_measurable(k, grid)})
    return pd.DataFrame(rows)


def _level_value(row, quantity: str) -> float:
    """One layer's value of ``quantity`` in one analysis frame row: ``asm{w}`` / ``hp{w}`` (mass inside the w×w
    window), ``hp-raw{w}`` (their difference) or a scalar column (``erf``, ``erf_hp``, ``erf_context_pos``,
    ``erf_context``, ``prior_tv_uniform`` …)."""
    import re

    m = re.fullmatch(r"(asm|hp|hp-raw)(\d+)", quantity)
    if m is None:
        return float(row[quantity])
    kind, w = m.group(1), int(m.group(2))
    if kind == "hp-raw":
        return _share(row["hp"], row["ks"], w) - _share(row["asm"], row["ks"], w)
    return _share(row[kind], row["ks"], w)


def level_intervals(per_prompt: dict, quantities: Sequence[str], n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per model, grid level and quantity: the median over the level's layers of the mean over prompts of each
    prompt's value, with a 95% percentile-bootstrap interval over prompts.

    ``per_prompt``: model → list of per-prompt :func:`~aconvlib.book.studies.analyze_study` frames (same layers,
    :func:`aconvlib.book.setup.prompt_frames`). ``quantities``: see :func:`_level_value` (``"hp-raw11"`` is the
    paired difference high-pass − raw inside 11×11 on each prompt). For ASM, which is linear in the map, the
    point value equals the pooled map's; for the ERFs and the high-pass mass (non-linear in the map) it is the
    typical prompt's value, which can differ from the pooled map's median in :func:`level_table`. Columns: model,
    grid, side, layers, prompts, quantity, value, lo, hi (NaN with one prompt).
    """
    rows = []
    for m, frames in per_prompt.items():
        first = frames[0]
        for grid, idx in first.groupby(first["grid"].map(tuple), sort=False).groups.items():
            for q in quantities:
                vals = np.array([[_level_value(f.loc[i], q) for i in idx] for f in frames])   # [prompts, layers]

                def stat(x):
                    return float(np.median(x.mean(axis=0)))

                lo, hi = (bootstrap_interval(vals, stat, n_boot=n_boot, seed=seed) if len(frames) > 1
                          else (np.nan, np.nan))
                rows.append({"model": m, "grid": _grid(grid), "side": min(grid), "layers": len(idx),
                             "prompts": len(frames), "quantity": q, "value": stat(vals), "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


def _interval(intervals: Optional[pd.DataFrame], model: str, grid: str, quantity: str):
    if intervals is None:
        return None
    r = intervals[(intervals["model"] == model) & (intervals["grid"] == grid) & (intervals["quantity"] == quantity)]
    return None if r.empty else r.iloc[0]


def _fmt(iv, fmt: str = ".2f") -> str:
    return "" if iv is None or np.isnan(iv["lo"]) else f" [{iv['lo']:{fmt}}, {iv['hi']:{fmt}}]"


def _per_prompt(iv, fmt: str = ".2f") -> str:
    """`` (per prompt v [lo, hi])``: the interval's own point value (the typical prompt's, which for a non-linear
    measure can differ from the pooled map's number printed before it) and its interval; empty without one."""
    return "" if iv is None else f" (per prompt {iv['value']:{fmt}}{_fmt(iv, fmt)})"


def _side(iv, point: float, threshold: float, below_is_good: bool) -> Optional[bool]:
    """Whether the criterion "point below (or above) threshold" is met (True), missed (False) or undecided (None)
    by the interval ``iv`` (the point alone when no interval is given). A NaN point (e.g. the ERF of a context
    term with no mass: a uniform map has R = 0) misses the criterion."""
    if point is None or np.isnan(point):
        return False
    lo, hi = (point, point) if iv is None or np.isnan(iv["lo"]) else (iv["lo"], iv["hi"])
    if below_is_good:
        return True if hi < threshold else False if lo >= threshold else None
    return True if lo > threshold else False if hi <= threshold else None


def _combine(checks: Sequence[Optional[bool]]) -> str:
    """Every criterion met → holds; any missed → fails; otherwise undecided (not testable with these prompts)."""
    if any(c is False for c in checks):
        return FAILS
    if all(c is True for c in checks):
        return HOLDS
    return NOT_TESTABLE


def _levels_verdict(lows, highs, threshold):
    if all(lo > threshold for lo in lows):
        return HOLDS
    if any(hi < threshold for hi in highs):
        return FAILS
    return NOT_TESTABLE


def _ratio_verdict(claim: str, intervals: pd.DataFrame, model: str, chapter: str, how: str) -> Verdict:
    r = intervals[(intervals["model"] == model) & intervals["measurable"]]
    n = int(r["images"].iloc[0])
    parts = "; ".join(f"{g}: {x:.1f}× [{lo:.1f}, {hi:.1f}]" for g, x, lo, hi in zip(r["grid"], r["ratio3"], r["lo"],
                                                                                       r["hi"]))
    v = _levels_verdict(r["lo"], r["hi"], LOCAL_RATIO) if n > 1 else NOT_TESTABLE
    return Verdict(claim, model, v, f"ASM(3) / uniform share, median over layers per level [95% bootstrap over "
                                    f"images, one per prompt]: {parts}", n=n,
                   baseline=f"uniform map = 1× (exactly quadratic in K); criterion > {LOCAL_RATIO:g}× at every level",
                   how_to_test=how if v == NOT_TESTABLE else "", chapter=chapter)


def fig2_verdict(intervals: pd.DataFrame, model: str, chapter: str = "02_attention_maps") -> Verdict:
    """Fig. 2, "attention concentrated within local neighbourhoods": at every measurable level the median 3×3
    mass must exceed :data:`LOCAL_RATIO` × uniform with its whole interval (:func:`image_ratio_intervals`); fails
    when a level's interval lies below; otherwise the images do not decide it."""
    return _ratio_verdict("Fig. 2", intervals, model, chapter, "more images (n_images) to narrow the intervals, or "
                          "a real model: aconv book 02 --profile full")


def fig4a_verdict(intervals: pd.DataFrame, model: str, chapter: str = "03_asm_highpass") -> Verdict:
    """Fig. 4a, "ASM grows like a smooth signal yet concentrates at small K": the uniform map is exactly quadratic
    in K and has no concentration, so the paper's reading is the excess of ASM(3) over it; the same rule as
    :func:`fig2_verdict`, on the chapter's prompts."""
    return _ratio_verdict("Fig. 4a", intervals, model, chapter, "more prompts (n_prompts) to narrow the intervals, "
                          "or a real model: aconv book 03 --profile full")


def fig4b_verdict(levels: pd.DataFrame, model: str, mass: float, n_prompts: int, window: int = 11,
                  chapter: str = "03_asm_highpass", intervals: Optional[pd.DataFrame] = None) -> Verdict:
    """Fig. 4b: after the high-pass, "> ``mass`` of the signal within 10×10" and more local than the raw map.

    Only levels where the window is measurable count. On each: the high-pass mass inside the window must exceed
    ``mass`` and the raw mass (paired difference high-pass − raw on each prompt > 0). With ``intervals``
    (:func:`level_intervals` with ``hp{w}`` and ``hp-raw{w}``) a criterion is met or missed only when its 95%
    interval over prompts lies on one side; fails when any is missed, holds when all are met, otherwise not
    testable with these prompts. Not testable with no measurable level.
    """
    r = levels[levels["model"] == model]
    meas = r[r[f"measurable{window}"]]
    parts = []
    for g, h, a, u, mk in zip(r["grid"], r[f"hp{window}"], r[f"asm{window}"], r[f"uniform{window}"],
                              r[f"measurable{window}"]):
        d, hv = _interval(intervals, model, g, f"hp-raw{window}"), _interval(intervals, model, g, f"hp{window}")
        parts.append(f"{g}: high-pass {h:.2f} vs raw {a:.2f} vs uniform {u:.2f}"
                     + (f"; per prompt: high-pass {hv['value']:.2f}{_fmt(hv)}" if hv is not None else "")
                     + (f", high-pass − raw {d['value']:+.2f}{_fmt(d, '+.2f')}" if d is not None else "")
                     + ("" if mk else " (not measurable)"))
    parts = "; ".join(parts)
    if meas.empty:
        return Verdict("Fig. 4b", model, NOT_TESTABLE, f"mass within {window}×{window}: {parts}", n=n_prompts,
                       how_to_test=f"a grid larger than {window}×{window} tokens, e.g. PixArt-Σ 1024 (64×64): "
                                   "aconv book 03 --profile full", chapter=chapter)
    checks = []
    for g, h, a in zip(meas["grid"], meas[f"hp{window}"], meas[f"asm{window}"]):
        hp_iv, d_iv = _interval(intervals, model, g, f"hp{window}"), _interval(intervals, model, g, f"hp-raw{window}")
        checks.append(_side(hp_iv, h if hp_iv is None else hp_iv["value"], mass, below_is_good=False))
        checks.append(_side(d_iv, h - a if d_iv is None else d_iv["value"], 0.0, below_is_good=False))
    v = _combine(checks)
    how = f"more prompts (n_prompts above {n_prompts}) to narrow the intervals" if v == NOT_TESTABLE else ""
    return Verdict("Fig. 4b", model, v, f"mass within {window}×{window} (the paper's 10×10), median over layers "
                                        f"[95% bootstrap over prompts]: {parts}", n=n_prompts,
                   baseline=f"criterion: high-pass > {mass:g} and > raw on every measurable level",
                   how_to_test=how, chapter=chapter)


def context_verdict(levels: pd.DataFrame, model: str, n_prompts: int, tv_max: float = 0.25,
                    chapter: str = "04_prior_context", intervals: Optional[pd.DataFrame] = None) -> Verdict:
    """Sec. 3.2 III: a nearly constant prior b plus a *localized* context term r.

    Criteria (stated in the chapter): b nearly constant = median total-variation distance to uniform below
    ``tv_max``; r localized = the ERF of its positive part R⁺ (attention above the prior; median over the
    level's layers) below the paper's ERF bound scaled to the grid *and* at least one odd step (2) below the
    uniform map's ERF, on every level where the scaled bound is measurable. The ERF of |R| is shown too but
    cannot decide it: |R| holds −b at every key a query ignores (half its mass, spread over the grid), so a
    perfectly local map has a |R|-ERF near the uniform map's. With ``intervals`` (:func:`level_intervals` with
    ``erf_context_pos`` and ``prior_tv_uniform``) a criterion counts only when its interval over prompts is on
    one side. Not testable where no level is measurable."""
    r = levels[levels["model"] == model]
    parts = []
    for g, e, ea, u, bs, b, t in zip(r["grid"], r["erf_context_pos"], r["erf_context"], r["uniform_erf"],
                                     r["erf_bound"], r["erf_bound_scaled"], r["prior_tv"]):
        ie, it = _interval(intervals, model, g, "erf_context_pos"), _interval(intervals, model, g, "prior_tv_uniform")
        parts.append(f"{g}: ERF of R⁺ {e:.0f}{_per_prompt(ie, '.0f')}, of |R| {ea:.0f}, vs uniform {u} (paper's "
                     f"bound {bs:g} scaled to {b:.1f}); prior TV {t:.2f}{_per_prompt(it)}")
    parts = "; ".join(parts)
    meas = r[r["bound_measurable"]]
    if meas.empty:
        return Verdict("Sec. 3.2 III", model, NOT_TESTABLE, parts, n=n_prompts,
                       how_to_test="a grid on which the scaled ERF bound is at least 3×3: a real model, "
                                   "aconv book 04 --profile full", chapter=chapter)
    checks = []
    for g, e, u, b, t in zip(meas["grid"], meas["erf_context_pos"], meas["uniform_erf"], meas["erf_bound_scaled"],
                             meas["prior_tv"]):
        ie, it = _interval(intervals, model, g, "erf_context_pos"), _interval(intervals, model, g, "prior_tv_uniform")
        checks += [_side(ie, e if ie is None else ie["value"], min(b, u - 2 + 1e-9), below_is_good=True),
                   _side(it, t if it is None else it["value"], tv_max, below_is_good=True)]
    v = _combine(checks)
    how = f"more prompts (n_prompts above {n_prompts}) to narrow the intervals" if v == NOT_TESTABLE else ""
    return Verdict("Sec. 3.2 III", model, v, parts + (" [95% bootstrap over prompts]" if intervals is not None else ""),
                   n=n_prompts, baseline=f"uniform map's ERF; criteria: TV(b, uniform) < {tv_max}, ERF of R⁺ < scaled "
                                         "bound and ≤ uniform ERF − 2", how_to_test=how, chapter=chapter)


def erf_verdict(levels: pd.DataFrame, model: str, n_prompts: int, chapter: str = "05_erf",
                intervals: Optional[pd.DataFrame] = None) -> Verdict:
    """Fig. 5, "ERF below the bound in most layers": on the levels where the scaled bound is measurable, more
    than half of the layers have an ERF below the scaled bound (and the same layers are then below the uniform
    map's ERF, which is larger than any measurable bound). The bound as stated is shown next to it. With
    ``intervals`` (:func:`level_intervals` with ``erf``) the level's median ERF must also lie on the same side
    of the scaled bound with its whole interval over prompts, otherwise the prompts do not decide it."""
    r = levels[levels["model"] == model]
    parts = "; ".join(f"{g}: median ERF {e:.0f}{_per_prompt(_interval(intervals, model, g, 'erf'), '.0f')} vs uniform {u}; "
                      f"below {b:g} (stated) {s:.0%}, below {sb:.1f} (scaled) {ss:.0%}" for g, e, u, b, s, sb, ss in
                      zip(r["grid"], r["erf"], r["uniform_erf"], r["erf_bound"], r["share_below_bound"],
                          r["erf_bound_scaled"], r["share_below_scaled"]))
    meas = r[r["bound_measurable"]]
    if meas.empty:
        return Verdict("Fig. 5", model, NOT_TESTABLE, parts, n=n_prompts,
                       how_to_test="a grid on which the scaled bound is at least 3×3: aconv book 05 --profile full",
                       chapter=chapter)
    below = float((meas["share_below_scaled"] * meas["layers"]).sum() / meas["layers"].sum())
    v = HOLDS if below > 0.5 else FAILS
    if intervals is not None:
        ivs = [_interval(intervals, model, g, "erf") for g in meas["grid"]]
        sides = [_side(iv, e if iv is None else iv["value"], b, below_is_good=True)
                 for iv, e, b in zip(ivs, meas["erf"], meas["erf_bound_scaled"])]
        if any(s is None or s != (v == HOLDS) for s in sides):
            v = NOT_TESTABLE
    how = f"more prompts (n_prompts above {n_prompts}) to narrow the intervals" if v == NOT_TESTABLE else ""
    return Verdict("Fig. 5", model, v, f"{below:.0%} of the layers on measurable levels below the scaled bound; {parts}"
                   + (" [95% bootstrap over prompts]" if intervals is not None else ""),
                   n=n_prompts, baseline="uniform map's ERF per level", how_to_test=how, chapter=chapter,
                   numbers={"share": below})


def artifact_table(frames: dict, ratio: float) -> pd.DataFrame:
    """Most-attended key of every layer: share, multiple of the uniform share, position, whether it is the last
    token (the paper's artifact location) and whether it counts as an artifact (``sink_ratio ≥ ratio``)."""
    rows = []
    for m, df in frames.items():
        for _, r in df.iterrows():
            h, w = r["grid"]
            rows.append({"model": m, "layer": r["label"], "grid": _grid(r["grid"]),
                         "share": float(r["sink_share"]), "× uniform": float(r["sink_ratio"]),
                         "row, col": f"{r['sink_pos'][0]}, {r['sink_pos'][1]}",
                         "last token": tuple(r["sink_pos"]) == (h - 1, w - 1),
                         "artifact": bool(r["sink_ratio"] >= ratio)})
    return pd.DataFrame(rows)


def na_control_verdict(model: str, results: dict, na_label: str, chapter: str = "05_erf") -> Verdict:
    """Fig. 6, "NA in place of every self-attention keeps the quality", judged against the no-self-attention
    control on the same prompts and evaluator.

    ``results``: label → (k adherent, n) for ``"self-attention"``, ``na_label`` and ``"no self-attention"``.
    Holds when removing self-attention costs adherence (its difference to the teacher excludes 0: the test can
    see a loss) while NA's difference does not; fails when NA's loss is a difference; not testable here when
    the model keeps its adherence without any self-attention (then NA keeping it says nothing about locality).
    """
    (kt, nt), (kn, nn), (k0, n0) = results["self-attention"], results[na_label], results["no self-attention"]
    d_na, d_0 = newcombe_interval(kn, nn, kt, nt), newcombe_interval(k0, n0, kt, nt)
    p = {lab: proportion(*kn_) for lab, kn_ in results.items()}
    deciding = (f"adherence: self-attention {p['self-attention'].format(pct=True)}, {na_label} "
                f"{p[na_label].format(pct=True)}, no self-attention {p['no self-attention'].format(pct=True)}; "
                f"NA − teacher [{d_na[0]:+.0%}, {d_na[1]:+.0%}], none − teacher [{d_0[0]:+.0%}, {d_0[1]:+.0%}]")
    if is_difference(d_na) and d_na[1] < 0:
        v, how = FAILS, ""
    elif not (is_difference(d_0) and d_0[1] < 0):
        v, how = NOT_TESTABLE, ("a model that needs its self-attention (removing it must cost adherence), "
                                "e.g. SD1.5 with NA K=13: aconv book 05 --profile full")
    else:
        v, how = HOLDS, ""
    return Verdict("Fig. 6", model, v, deciding, n=nt,
                   baseline="the same model with no self-attention at all (the loss the test can detect)",
                   how_to_test=how, chapter=chapter)
