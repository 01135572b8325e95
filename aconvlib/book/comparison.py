"""Chapter 8's tables: the stored comparison results, the ERF table of teacher vs student, and the real-model run.

- :func:`stored_rows`: a JSON results file of ``scripts/eval_comparison.py`` or ``aconv bench-mixers`` as
  ``(meta, frame)``, or ``(None, None)`` with the reason printed when it does not exist.
- :func:`erf_table`: per layer, the gradient ERF (:mod:`aconvlib.analysis.receptive_field`) of two pipelines
  measured the same way (teacher and ΔConv student), side by side.
- :func:`real_comparison`: Table 3 on the real checkpoints (``full`` profile): the teacher, the training-free
  baselines (window attention, NA) and the distilled students whose adapters are given, scored with the
  paper's metrics (:mod:`aconvlib.analysis.metrics`); whatever is missing (weights, encoders, adapters, the
  reference set) is named in plain words and skipped, never replaced by something else.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .tables import RowsReport

__all__ = ["RealComparison", "erf_table", "fig9_verdict", "k_over_grid", "real_comparison", "stored_rows",
           "summary_markdown", "table3_live", "uniform_erf_at", "variant_row", "with_intervals"]


def stored_rows(path) -> tuple[Optional[dict], Optional[object]]:
    """``(meta, DataFrame of rows)`` of a stored results JSON; ``(None, None)`` (and a printed line) if absent."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        print(f"{path} not found: it is produced by the command named in this section; nothing stored to show.")
        return None, None
    data = json.loads(path.read_text())
    return data.get("meta", {}), pd.DataFrame(data.get("rows", []))


def table3_live(models: Sequence[str], prompts, *, return_images: bool = False, **options):
    """Table 3 on the embedded models, live (:func:`aconvlib.mini.compare.evaluate_variants` with ``options``), as
    ``(frame, notes, images)``: one row per model and variant (``model``, ``variant`` — the label —, ``method``,
    ``training``, ``setting``, the evaluator's columns and its per-image ``per_image`` / ``features``, from which
    :func:`with_intervals` adds intervals), the notes naming missing students, and ``{(model, label): images}``
    when ``return_images``."""
    import pandas as pd

    from ..mini.compare import PER_IMAGE_COLUMNS, QUALITY_COLUMNS, evaluate_variants
    from .labels import variant_label, variant_setting, variant_training

    results, notes = evaluate_variants(models, prompts, return_images=return_images, **options)
    rows, images = [], {}
    for m, v, r in results:
        label = variant_label(v)
        if return_images:
            images[(m, label)] = r.pop("images")
        rows.append({"model": m, "variant": label, "method": v.method.value, "training": variant_training(v),
                     "setting": variant_setting(v), **{k: r[k] for k in QUALITY_COLUMNS + PER_IMAGE_COLUMNS}})
    return pd.DataFrame(rows), notes, images


def variant_row(frame, model: str, variant: str):
    """The row of ``variant`` for ``model`` in a Table-3 frame (a pandas Series), or None."""
    if frame is None:
        return None
    r = frame[(frame["model"] == model) & (frame["variant"] == variant)]
    return None if r.empty else r.iloc[0]


def _adh(row) -> str:
    from .distill_claims import adherence_estimate

    e = adherence_estimate(row)
    return f"{e.value:.0%} [{e.lo:.0%}, {e.hi:.0%}]"


def with_intervals(frame, reference=None, seed: int = 0):
    """``frame`` (Table-3 or NA-sweep rows) with two columns added: ``adherence [95% CI]`` (Wilson, k of n) and
    ``FDD [95% CI]`` (bias-corrected bootstrap over the images, :mod:`aconvlib.mini.intervals`).

    Live rows carry the evaluator's ``per_image`` and ``features``; stored rows (``scripts/eval_comparison.py``)
    carry them computed as ``intervals``. A row with neither gets "—" (an older stored run: no per-image results
    were kept)."""
    from ..mini.intervals import adherence_estimate, fdd_estimate

    def fmt_stored(d, pct):
        if pct:
            return f"{d['value']:.0%} [{d['lo']:.0%}, {d['hi']:.0%}] (n={d['n']})"
        return f"{d['value']:.0f} [{d['lo']:.0f}, {d['hi']:.0f}] (n={d['n']})"

    adh, fdd = [], []
    for _, r in frame.iterrows():
        iv = r.get("intervals")
        if isinstance(iv, dict):
            adh.append(fmt_stored(iv["adherence"], True))
            fdd.append(fmt_stored(iv["fdd"], False))
        elif r.get("per_image") is not None and not isinstance(r.get("per_image"), float):   # NaN: not kept
            res = r.to_dict()
            adh.append(adherence_estimate(res).format(pct=True))
            feats = res.get("features")
            fdd.append(fdd_estimate(res, reference, seed=seed).format(".0f")
                       if feats is not None and len(feats) > 1 else "—")
        else:
            adh.append("—")
            fdd.append("—")
    return frame.assign(**{"adherence [95% CI]": adh, "FDD [95% CI]": fdd})


def summary_markdown(models: Sequence[str], table1, table3, table3_source: str, sweep=None, erf_tables=None,
                     tolerance: float = 0.05) -> str:
    """The chapter's closing "paper vs ours" table (markdown) from the same frames its sections printed:
    ``table1`` (:func:`~aconvlib.book.table1.table1_comparison`), ``table3`` (rows of
    :func:`~aconvlib.mini.compare.evaluate_variants` or the stored file), ``sweep`` (NA sweep rows, optional),
    ``erf_tables`` (model → :func:`erf_table` frame with ``teacher`` and ``ΔConv (shipped)`` columns, optional)."""
    from ..mini.compare import describe_smallest_kernel, keep_tolerance, smallest_kernel_keeping

    tokens = table1["tokens"]
    same = (table1["LinFusion paper tokens"] - tokens).abs() <= 0.01 * tokens   # rows whose paper entry uses our frame
    lf = table1.loc[same, "LinFusion ours/paper"]
    lf1 = table1.loc[same, "LinFusion ours (1 head)/paper"]
    from .distill_claims import paper_table3_comparison

    cmp = paper_table3_comparison()
    worse = cmp[cmp["ΔConv is"] == "worse"]
    paper_t3 = (f"ΔConv better than the teacher or baseline in {int((cmp['ΔConv is'] == 'better').sum())} of {len(cmp)} "
                "(model, method, metric) cells, worse in " + ", ".join(f"{r.metric} vs {r.against} on {r.base}"
                                                                     for r in worse.itertuples()) + " (no intervals)")
    lines = ["| | the paper (real models) | ours (embedded models) |", "|---|---|---|",
             "| FLOPs (Table 1) | ΔConv < LinFusion < self-attention from 1024 px; DiTFastAttn 0.7–0.97× attention | "
             f"same ordering (our count); LinFusion ours / paper {lf.min():.2f}–{lf.max():.2f} with the module's heads, "
             f"{lf1.min():.3f}–{lf1.max():.3f} with one C×C state (rows where the paper's LinFusion entry uses the same frame) |"]
    for m in models:
        rows = table3[table3["model"] == m]
        if rows.empty:
            continue
        cells = [f"{r['variant']}: {_adh(r)} / {r['fdd']:.0f}" for _, r in rows.iterrows()]
        source = rows["source"].iloc[0] if "source" in rows else table3_source
        lines.append(f"| Table 3, {m} | {paper_t3} | "
                     f"prompt adherence / FDD analogue, {int(rows['n_prompts'].iloc[0])} held-out prompts ({source}): "
                     + "; ".join(cells) + " |")
    if sweep is not None:
        for m in models:
            f = sweep[sweep["model"] == m]
            if f.empty:
                continue
            lines.append(f"| Fig. 6, {m} | NA with K = 13 (0.2 of SD's 64-token side) keeps SD's quality | smallest K "
                         f"keeping the teacher's adherence (within {keep_tolerance(f, tolerance):.1%}, "
                         f"{int(f['n_prompts'].iloc[0])} prompts): {describe_smallest_kernel(f, smallest_kernel_keeping(f, tolerance))} |")
    for m, t in (erf_tables or {}).items():
        lines.append(f"| Fig. 9, {m} | the ΔConv model's ERF closely matches the teacher's | median gradient ERF: teacher "
                     f"{t['ERF teacher'].median():.0f}, ΔConv student {t['ERF ΔConv (shipped)'].median():.0f}"
                     + (f", uniform field at the same positions {t['ERF uniform'].median():.0f}" if "ERF uniform" in t else "")
                     + f" ({len(t)} layers; grids {', '.join(dict.fromkeys(t['grid']))}) |")
    return "\n".join(lines)


def uniform_erf_at(grid, positions, threshold: float = 0.8) -> int:
    """ERF of the uniform field (every input token weighted 1/N) measured exactly like a gradient ERF: the same
    output ``positions`` and the same clipped centred windows (:func:`~aconvlib.analysis.locality.asm_curve`). With
    every grid position it equals :func:`aconvlib.analysis.evidence.uniform_erf`. A measured ERF equal to it shows
    no locality at those positions."""
    import torch

    from ..analysis.locality import asm_curve, erf, odd_kernel_sizes

    grid = (int(grid[0]), int(grid[1]))
    n = grid[0] * grid[1]
    pos = [(int(r), int(c)) for r, c in positions]
    ks = odd_kernel_sizes(grid)
    a = torch.full((len(pos), n), 1.0 / n, dtype=torch.float64)
    curve = asm_curve(a, grid, ks, query_index=torch.tensor([r * grid[1] + c for r, c in pos]))
    return int(erf(curve, ks, threshold))


def erf_table(fields: Mapping[str, Sequence], labels: Optional[Mapping[str, str]] = None, uniform: bool = True):
    """One row per layer: grid, and per pipeline (``fields``: label → list of
    :class:`~aconvlib.analysis.receptive_field.ReceptiveField`, same layers in the same order) its ERF, ERF / grid
    side and the mass inside the centred window of the *first* pipeline's ERF (how much of the second pipeline's
    field lies where the first one holds 80% of its own). Every column uses the same output positions (the first
    pipeline's; a pipeline measured at other positions is an error), and with ``uniform`` the column
    ``ERF uniform`` gives the uniform field's ERF at those positions (:func:`uniform_erf_at`)."""
    import pandas as pd

    names = list(fields)
    first = fields[names[0]]
    rows = []
    for i, ref in enumerate(first):
        row = {"layer": (labels or {}).get(ref.name, ref.name), "grid": f"{ref.grid[0]}×{ref.grid[1]}",
               "positions": len(ref.positions)}
        if uniform:
            row["ERF uniform"] = uniform_erf_at(ref.grid, ref.positions, ref.threshold)
        for n in names:
            rf = fields[n][i]
            if rf.name != ref.name:
                raise ValueError(f"layer {i}: {n} has {rf.name}, {names[0]} has {ref.name}")
            if [tuple(p) for p in rf.positions] != [tuple(p) for p in ref.positions]:
                raise ValueError(f"layer {ref.name}: {n} was measured at other output positions than {names[0]}")
            row[f"ERF {n}"] = rf.erf
            row[f"ERF/side {n}"] = rf.relative
            k = int(ref.erf)
            row[f"mass in {names[0]}'s ERF window, {n}"] = rf.mass_within(k) if k in rf.kernel_sizes else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def fig9_verdict(model: str, table, student: str = "ΔConv (shipped)", tolerance: float = 2.0,
                 chapter: str = "08_comparison", others: Sequence[str] = ("LinFusion (CPU budget)",)):
    """Fig. 9 ("the student's ERF closely matches the teacher's") on one model, from :func:`erf_table`'s frame.

    *Not testable* when the teacher's ERF is not narrower than the uniform field's at the same positions (median
    over layers of teacher − uniform ≥ 0): agreement with a field that has no locality says nothing. Otherwise the
    per-layer difference student − teacher (n = layers) gets a 95% bootstrap interval of its mean: *holds* when the
    interval lies within ±``tolerance`` (one odd window step by default), *fails* when it excludes 0 and leaves
    that band, else not testable (too few layers)."""
    import numpy as np

    from ..analysis.evidence import FAILS, HOLDS, NOT_TESTABLE, Verdict, bootstrap_interval, is_difference

    t, s, u = table["ERF teacher"].to_numpy(float), table[f"ERF {student}"].to_numpy(float), table["ERF uniform"].to_numpy(float)
    d = s - t
    lo, hi = bootstrap_interval(d) if len(d) > 1 and d.std() > 0 else (float(d.mean()), float(d.mean()))
    no_locality = float(np.median(t - u)) >= 0
    if no_locality:
        verdict = NOT_TESTABLE
    elif -tolerance <= lo and hi <= tolerance:
        verdict = HOLDS
    elif is_difference((lo, hi)) and (lo > tolerance or hi < -tolerance):
        verdict = FAILS
    else:
        verdict = NOT_TESTABLE
    extra = "; ".join(f"{o} {np.median(table[f'ERF {o}']):.0f} (per layer {', '.join(f'{v:.0f}' for v in table[f'ERF {o}'])})"
                      for o in others if f"ERF {o}" in table)
    deciding = (f"median gradient ERF teacher {np.median(t):.0f}, {student} {np.median(s):.0f}, uniform field at the same "
                f"positions {np.median(u):.0f}; student − teacher per layer mean {d.mean():+.1f} [{lo:+.1f}, {hi:+.1f}] "
                f"(bootstrap 95% over {len(d)} layers), tolerance ±{tolerance:g}"
                + ("; the interval excludes 0 (a difference) but not the tolerance band"
                   if verdict == NOT_TESTABLE and not no_locality and is_difference((lo, hi)) else "")
                + (f"; {extra}" if extra else ""))
    how = ""
    if verdict == NOT_TESTABLE:
        how = ("a model whose teacher's ERF is narrower than the uniform field's, on a grid larger than the student's "
               "kernels, e.g. sd15 or pixart-sigma-1024 + released ΔConv weights on a GPU: aconv book 08 --profile full"
               if no_locality else f"more layers or images (n = {len(d)} layers here)")
    return Verdict(claim="Fig. 9", model=model, verdict=verdict, deciding=deciding, n=len(d),
                   baseline=f"uniform field at the same output positions: median ERF {np.median(u):.0f}",
                   how_to_test=how, chapter=chapter,
                   numbers={"teacher_median": float(np.median(t)), "student_median": float(np.median(s)),
                            "uniform_median": float(np.median(u)), "diff_lo": float(lo), "diff_hi": float(hi)})


def k_over_grid(kernels: Mapping[str, int], grids: Mapping[str, int], paper_k: int = 13, paper_side: int = 64) -> dict:
    """K / grid side per model (largest attention grid), next to the paper's 13/64: ``{model: ratio, "paper": r}``."""
    out = {m: int(k) / int(grids[m]) for m, k in kernels.items()}
    out["paper"] = paper_k / paper_side
    return out


class RealComparison(RowsReport):
    """What :func:`real_comparison` measured: ``rows`` (one per model and variant), ``lines`` (plain-language
    notes, one per thing done or skipped), ``images`` (model → variant → uint8 [P, H, W, 3]), ``prompts``."""


def _metric(fn, what: str, missing: dict, *args, **kwargs):
    """``fn(*args, **kwargs)``, or None after noting (once) that its encoder's weights are missing."""
    from ..analysis.metrics import MetricWeightsError

    if what in missing:
        return None
    try:
        return fn(*args, **kwargs)
    except MetricWeightsError as e:
        missing[what] = str(e).splitlines()[0]
        return None


def _reference_images(reference_dir) -> list:
    from PIL import Image

    files = sorted(p for p in Path(reference_dir).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    return [Image.open(p).convert("RGB") for p in files]


def real_comparison(models: Sequence[str], adapters: Optional[Mapping[str, Mapping[str, str]]] = None, *,
                    n_prompts: int = 4, steps: int = 20, guidance_scale: float = 4.5, height: Optional[int] = None,
                    width: Optional[int] = None, seed: int = 0, device: str = "cpu", dtype: str = "float32",
                    na_kernel=13, window=None, reference_dir: Optional[str] = None, batch_size: int = 1,
                    adapter_base: Optional[Path] = None) -> RealComparison:
    """Table 3 on the real models, with the paper's metrics where their encoders are available.

    Per model (skipped with a line when its weights are missing): the stock pipeline (teacher), window attention
    (1-D band of ``window`` keys, default ``na_kernel²``) and NA K×K on the teacher's own weights (training-free),
    and every distilled student in ``adapters[model]`` (``{"deltaconv" | "linear": folder or hub id}``), all from
    the same prompts and noise. Metrics: CLIP score against the prompts (:func:`~aconvlib.analysis.metrics.clip_score`)
    and, when ``reference_dir`` holds reference images, FDD against them; DS needs the reference image paired
    with each prompt (the paper's LAION set), which no profile provides, so it is not computed and the lines say so.
    ``na_kernel`` / ``window``: an int or ``{model: value}``.
    """
    import torch

    from ..analysis.metrics import clip_score, fdd
    from ..mini.compare import Variant, per_model
    from ..mixers.variants import Method, mounted
    from ..models import MissingWeightsError, get_spec
    from .labels import method_title, variant_label
    from .real_adapters import _generate, resolve_adapter
    from .studies import default_prompts, load_study_pipeline

    rep = RealComparison()
    models = list(models or [])
    adapters = {m: dict(v or {}) for m, v in dict(adapters or {}).items()}
    if not models:
        rep.lines.append("No real model selected under this profile (real_models is empty): the embedded models above "
                         "are the whole measurement. The `full` profile runs this part on SD1.5, SDXL and PixArt-Σ.")
        return rep
    unknown = sorted(set(adapters) - set(models))
    if unknown:
        raise ValueError(f"real_adapters names {unknown}, which are not in real_models {models}")
    reference = None
    if reference_dir:
        if Path(reference_dir).is_dir():
            reference = _reference_images(reference_dir)
            rep.lines.append(f"FDD reference: {len(reference)} images from {reference_dir}.")
        else:
            rep.lines.append(f"FDD reference folder {reference_dir} does not exist: FDD not computed.")
    else:
        rep.lines.append("No reference image set (the paper's 10k LAION images are not distributed; set reference_dir): "
                         "FDD not computed. DS needs the reference image of each prompt: not computed.")
    missing: dict = {}
    for m in models:
        spec = get_spec(m)
        h, w = height or spec.default_px, width or spec.default_px
        texts = default_prompts(m, n_prompts)
        try:
            pipe = load_study_pipeline(m, device, dtype)
        except MissingWeightsError as e:
            rep.lines.append(f"{m}: weights not available here, skipped ({str(e).splitlines()[0]})")
            continue
        k = int(per_model(na_kernel, m))
        win = int(per_model(window, m)) if window is not None else k * k
        kw = dict(steps=steps, guidance_scale=guidance_scale, height=h, width=w, seed=seed, batch_size=batch_size)
        variants = [(Variant(Method.TEACHER), None), (Variant(Method.WINDOW, window=win, options={"window": win,
                                                                                                    "mode": "1d"}), None),
                    (Variant(Method.NA, kernel=k), None)]
        for method in (Method.DELTACONV, Method.LINEAR):
            loc, why = resolve_adapter(adapters.get(m, {}).get(method.value), adapter_base)
            if loc is None:
                rep.lines.append(f"{m}: no distilled {method_title(method)} adapter ({why}); its row is not measured. "
                                 f"None is published; distill one with aconvlib.training.distill "
                                 f"(mixer={method.value!r}).")
            else:
                variants.append((Variant(method, student="given"), loc))
        rep.images[m], rep.prompts[m] = {}, texts
        for v, loc in variants:
            label = variant_label(v)
            t0 = time.perf_counter()
            with mounted(pipe, v.method, kernel=v.kernel, adapter=loc, **v.options):
                imgs = _generate(pipe, texts, **kw)
            seconds = (time.perf_counter() - t0) / len(texts)
            rep.images[m][label] = imgs
            row = {"model": m, "variant": label, "prompts": len(texts), "size": f"{h}x{w}", "steps": steps,
                   "s_per_image": round(seconds, 3)}
            row["CLIP"] = _metric(clip_score, "CLIP", missing, list(imgs), texts, device=device)
            if reference is not None and len(imgs) >= 2:
                row["FDD"] = _metric(fdd, "DINOv2", missing, list(imgs), reference, device=device)
            rep.rows.append(row)
        rep.lines.append(f"{m}: {len(variants)} variant(s) generated from the same {len(texts)} prompt(s) and noise, "
                         f"{h}x{w} px, {steps} steps.")
        del pipe
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
    for what, why in missing.items():
        rep.lines.append(f"{what} metric not computed: its encoder's weights are not available here ({why}).")
    return rep
