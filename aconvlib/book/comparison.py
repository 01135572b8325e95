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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

__all__ = ["RealComparison", "erf_table", "real_comparison", "stored_rows", "summary_markdown", "variant_row"]


def stored_rows(path) -> tuple[Optional[dict], Optional[object]]:
    """``(meta, DataFrame of rows)`` of a stored results JSON; ``(None, None)`` (and a printed line) if absent."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        print(f"{path} not found: it is produced by the command named in this section; nothing stored to show.")
        return None, None
    data = json.loads(path.read_text())
    return data.get("meta", {}), pd.DataFrame(data.get("rows", []))


def variant_row(frame, model: str, variant: str):
    """The row of ``variant`` for ``model`` in a Table-3 frame (a pandas Series), or None."""
    if frame is None:
        return None
    r = frame[(frame["model"] == model) & (frame["variant"] == variant)]
    return None if r.empty else r.iloc[0]


def summary_markdown(models: Sequence[str], table1, table3, table3_source: str, sweep=None, erf_tables=None,
                     tolerance: float = 0.05) -> str:
    """The chapter's closing "paper vs ours" table (markdown) from the same frames its sections printed:
    ``table1`` (:func:`~aconvlib.mixers.flops.table1_comparison`), ``table3`` (rows of
    :func:`~aconvlib.mini.compare.evaluate_variants` or the stored file), ``sweep`` (NA sweep rows, optional),
    ``erf_tables`` (model → :func:`erf_table` frame with ``teacher`` and ``ΔConv (shipped)`` columns, optional)."""
    from ..mini.compare import describe_smallest_kernel, keep_tolerance, smallest_kernel_keeping

    tokens = table1["grid"].map(lambda g: int(g.split("×")[0]) * int(g.split("×")[1]))
    same = (table1["LinFusion paper tokens"] - tokens).abs() <= 0.01 * tokens   # rows whose paper entry uses our frame
    lf = table1.loc[same, "LinFusion ours/paper"]
    lf1 = table1.loc[same, "LinFusion ours (1 head)/paper"]
    lines = ["| | the paper (real models) | ours (embedded models) |", "|---|---|---|",
             "| FLOPs (Table 1) | ΔConv < LinFusion < self-attention from 1024 px; DiTFastAttn 0.7–0.97× attention | "
             f"same ordering (our count); LinFusion ours / paper {lf.min():.2f}–{lf.max():.2f} with the module's heads, "
             f"{lf1.min():.3f}–{lf1.max():.3f} with one C×C state (rows where the paper's LinFusion entry uses the same frame) |"]
    for m in models:
        rows = table3[table3["model"] == m]
        if rows.empty:
            continue
        cells = [f"{r['variant']}: {r['prompt_adherence']:.0%} / {r['fdd']:.0f}" for _, r in rows.iterrows()]
        source = rows["source"].iloc[0] if "source" in rows else table3_source
        lines.append(f"| Table 3, {m} | ΔConv on par with or better than the teacher and the baselines (DS, FDD, CLIP) | "
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
                     f"{t['ERF teacher'].median():.0f}, ΔConv student {t['ERF ΔConv (shipped)'].median():.0f} "
                     f"(grids {', '.join(dict.fromkeys(t['grid']))}) |")
    return "\n".join(lines)


def erf_table(fields: Mapping[str, Sequence], labels: Optional[Mapping[str, str]] = None):
    """One row per layer: grid, and per pipeline (``fields``: label → list of
    :class:`~aconvlib.analysis.receptive_field.ReceptiveField`, same layers in the same order) its ERF, ERF / grid
    side and the mass inside the centred window of the *first* pipeline's ERF (how much of the second pipeline's
    field lies where the first one holds 80% of its own)."""
    import pandas as pd

    names = list(fields)
    first = fields[names[0]]
    rows = []
    for i, ref in enumerate(first):
        row = {"layer": (labels or {}).get(ref.name, ref.name), "grid": f"{ref.grid[0]}×{ref.grid[1]}"}
        for n in names:
            rf = fields[n][i]
            if rf.name != ref.name:
                raise ValueError(f"layer {i}: {n} has {rf.name}, {names[0]} has {ref.name}")
            row[f"ERF {n}"] = rf.erf
            row[f"ERF/side {n}"] = rf.relative
            k = int(ref.erf)
            row[f"mass in {names[0]}'s ERF window, {n}"] = rf.mass_within(k) if k in rf.kernel_sizes else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class RealComparison:
    """What :func:`real_comparison` measured: ``rows`` (one per model and variant), ``lines`` (plain-language
    notes, one per thing done or skipped), ``images`` (model → variant → uint8 [P, H, W, 3]), ``prompts``."""

    rows: list = field(default_factory=list)
    lines: list = field(default_factory=list)
    images: dict = field(default_factory=dict)
    prompts: dict = field(default_factory=dict)

    @property
    def table(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


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
    from ..mini.compare import per_model
    from ..mixers.convert import load_mixer, restore_attention, to_mixer
    from ..mixers.neighborhood import neighborhood_attention
    from ..models import MissingWeightsError, get_spec
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
        variants = [("self-attention (teacher)", "teacher", None), (f"window attention ({win} keys)", "window", None),
                    (f"NA K={k}", "na", None)]
        for kind, title in (("deltaconv", "ΔConv"), ("linear", "LinFusion")):
            loc, why = resolve_adapter(adapters.get(m, {}).get(kind), adapter_base)
            if loc is None:
                rep.lines.append(f"{m}: no distilled {title} adapter ({why}); its row is not measured. None is "
                                 f"published; distill one with aconvlib.training.distill (mixer={kind!r}).")
            else:
                variants.append((f"{title} (distilled)", kind, loc))
        rep.images[m], rep.prompts[m] = {}, texts
        for label, kind, loc in variants:
            t0 = time.perf_counter()
            if kind == "teacher":
                imgs = _generate(pipe, texts, **kw)
            elif kind == "na":
                with neighborhood_attention(pipe, k):
                    imgs = _generate(pipe, texts, **kw)
            else:
                if kind == "window":
                    to_mixer(pipe, "window", window=win, mode="1d")
                else:
                    load_mixer(pipe, loc, kind=kind, keep_original=True)
                try:
                    imgs = _generate(pipe, texts, **kw)
                finally:
                    restore_attention(pipe)
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
