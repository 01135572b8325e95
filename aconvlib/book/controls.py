"""The control rows of issue 20 as a chapter shows them: one tidy table from the stored ``controls.json``.

``scripts/eval_controls.py`` scores, on each embedded model and the same held-out prompts and noise, the teacher,
self-attention removed, uniform attention, NA at the paper-scaled and the chapters' K, and the ΔConv / LinFusion
students (:func:`aconvlib.mini.compare.control_variants`), with intervals. :func:`controls_table` reads its JSON
into one row per model and row:

``model, row, method, K, K/grid, n, k, adherence, adherence_lo, adherence_hi, fdd, fdd_lo, fdd_hi,
d_adherence, d_adherence_lo, d_adherence_hi, adherence_difference, d_fdd, d_fdd_lo, d_fdd_hi, fdd_difference``

(``d_*``: the row minus the teacher on the same prompts, paired bootstrap; ``*_difference``: its 95% interval
excludes 0, the only case the book calls a difference; missing for the teacher itself).
:func:`format_controls` turns it into the strings a chapter prints (``"81% [64%, 92%]"``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

__all__ = ["CONTROL_COLUMNS", "controls_table", "format_controls", "live_na_controls", "na_image_rows",
           "quality_summary"]

CONTROL_COLUMNS = ["model", "row", "method", "K", "K/grid", "n", "k", "adherence", "adherence_lo", "adherence_hi",
                   "fdd", "fdd_lo", "fdd_hi", "d_adherence", "d_adherence_lo", "d_adherence_hi", "adherence_difference",
                   "d_fdd", "d_fdd_lo", "d_fdd_hi", "fdd_difference"]


def _triple(est: Optional[dict], prefix: str) -> dict:
    if not est:
        return {prefix: float("nan"), f"{prefix}_lo": float("nan"), f"{prefix}_hi": float("nan")}
    return {prefix: float(est["value"]), f"{prefix}_lo": float(est["lo"]), f"{prefix}_hi": float(est["hi"])}


def controls_table(path, models=None):
    """``(meta, DataFrame)`` of a stored ``controls.json`` (columns :data:`CONTROL_COLUMNS`, rows in the stored
    order), only ``models`` if given; ``(None, None)`` with a printed line when the file does not exist."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        print(f"{path} not found: it is produced by scripts/eval_controls.py; nothing stored to show.")
        return None, None
    data = json.loads(path.read_text())
    rows = []
    for r in data.get("rows", []):
        if models is not None and r["model"] not in models:
            continue
        d = r.get("diff_to_teacher") or {}
        rows.append({"model": r["model"], "row": r["row"], "method": r["method"],
                     "K": pd.NA if r.get("K") is None else int(r["K"]),
                     "K/grid": float("nan") if r.get("K/grid") is None else float(r["K/grid"]),
                     "n": int(r["n"]), "k": int(r["k"]), **_triple(r["adherence"], "adherence"),
                     **_triple(r["fdd"], "fdd"), **_triple(d.get("adherence"), "d_adherence"),
                     "adherence_difference": d.get("adherence_is_difference", pd.NA),
                     **_triple(d.get("fdd"), "d_fdd"), "fdd_difference": d.get("fdd_is_difference", pd.NA)})
    frame = pd.DataFrame(rows, columns=CONTROL_COLUMNS)
    frame["K"] = frame["K"].astype("Int64")
    for c in ("adherence_difference", "fdd_difference"):
        frame[c] = frame[c].astype("boolean")
    return data.get("meta", {}), frame


def _interval(v, lo, hi, pct: bool, signed: bool = False) -> str:
    if v != v:   # NaN
        return "—"
    if pct:
        f = (lambda x: f"{x * 100:+.0f}%") if signed else (lambda x: f"{x * 100:.0f}%")
    else:
        f = (lambda x: f"{x:+.0f}") if signed else (lambda x: f"{x:.0f}")
    return f"{f(v)} [{f(lo)}, {f(hi)}]"


def format_controls(frame):
    """The table of :func:`controls_table` as strings for a chapter: model, row, K, K/grid, adherence (k/n and
    Wilson 95%), FDD analogue (bootstrap 95%), the differences to the teacher (paired bootstrap 95%) and
    "difference?" (the interval excludes 0)."""
    import pandas as pd

    def yes(x):
        return "—" if x is pd.NA or x is None else ("yes" if bool(x) else "no")

    out = pd.DataFrame({
        "model": frame["model"], "row": frame["row"],
        "K": frame["K"].map(lambda k: "—" if k is pd.NA else str(int(k))),
        "K/grid": frame["K/grid"].map(lambda x: "—" if x != x else f"{x:.2f}"),
        "adherence": [f"{k}/{n} · " + _interval(v, lo, hi, True) for k, n, v, lo, hi in
                      zip(frame["k"], frame["n"], frame["adherence"], frame["adherence_lo"], frame["adherence_hi"])],
        "FDD analogue": [_interval(v, lo, hi, False) for v, lo, hi in zip(frame["fdd"], frame["fdd_lo"], frame["fdd_hi"])],
        "Δ adherence vs teacher": [_interval(v, lo, hi, True, True) for v, lo, hi in
                                   zip(frame["d_adherence"], frame["d_adherence_lo"], frame["d_adherence_hi"])],
        "difference? (adherence)": frame["adherence_difference"].map(yes),
        "Δ FDD vs teacher": [_interval(v, lo, hi, False, True) for v, lo, hi in
                             zip(frame["d_fdd"], frame["d_fdd_lo"], frame["d_fdd_hi"])],
        "difference? (FDD)": frame["fdd_difference"].map(yes),
        "n": frame["n"]})
    return out.reset_index(drop=True)


def live_na_controls(pipe, prompts, na_kernel: int, *, steps: int, guidance_scale: float, seed: int = 0,
                     n_real: int = 500, return_images: bool = False, store=None, n_images: Optional[int] = None,
                     write: bool = False) -> dict:
    """Score an embedded model four ways on the same prompts and noise (chapter 5's live Fig. 6 test): its own
    self-attention, NA with ``na_kernel`` in every ``attn1``, no self-attention (``none``) and uniform attention
    (``uniform``). Returns label → :func:`aconvlib.mini.evaluate.evaluate_model` result (with per-image results;
    with ``return_images`` also the images, which :func:`na_image_rows` reuses) and ``source``; ``pipe`` is restored
    after each condition.

    ``store``: a path prefix of stored evaluations (:mod:`aconvlib.book.stored_evals`), one store per condition,
    ``<store>-<condition>`` (e.g. ``…/cpu_na_controls/mini-sd-na-k-7``): a condition whose weights, prompts and
    sampler settings match an entry is read from it, else sampled live (``source`` says which); ``write=True``
    samples and stores. With a store the results hold the first ``n_images`` images (default: all).
    """
    from ..mini import dataset as data
    from ..mini.evaluate import evaluate_model
    from ..mixers.convert import mixer_applied
    from ..mixers.neighborhood import neighborhood_attention
    from .stored_evals import evaluate_stored

    prompts = data.prompts(prompts, "heldout") if isinstance(prompts, int) else list(prompts)

    def score(label):
        if store is None:
            r = evaluate_model(pipe, prompts, steps, guidance_scale, seed, n_real=n_real, return_images=return_images)
            return {**r, "source": "live"}
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        return evaluate_stored(pipe, prompts, Path(f"{store}-{slug}"), label=label, write=write,
                               n_images=len(prompts) if n_images is None else n_images, num_inference_steps=steps,
                               guidance_scale=guidance_scale, seed=seed, n_real=n_real)

    out = {"self-attention": score("self-attention")}
    with neighborhood_attention(pipe, na_kernel):
        out[f"NA K={na_kernel}"] = score(f"NA K={na_kernel}")
    for label, kind in (("no self-attention", "none"), ("uniform attention", "uniform")):
        with mixer_applied(pipe, kind):
            out[label] = score(label)
    return out


def _uint8(images) -> "np.ndarray":
    """[P, 3, H, W] floats in [0, 1] → uint8 [P, H, W, 3], rounded as the pipelines' PIL output is."""
    import numpy as np

    return (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def na_image_rows(pipe, prompts, na_kernel: int, *, steps: int, guidance_scale: float, seed: int = 0,
                  size: Optional[tuple] = None, evaluation: Optional[dict] = None, **call):
    """Chapter 5's picture of Fig. 6: uint8 images [P, H, W, 3] of ``prompts`` with the model's own self-attention
    and with NA (``na_kernel``), from the same noise (one batch, ``torch.Generator().manual_seed(seed)``).

    When ``evaluation`` (:func:`live_na_controls` with ``return_images=True`` or a store) has already sampled the
    same prompts first, with the same steps, guidance, seed and image ``size`` (given), its images are those (its first batch
    draws the same noise; the pixels are rounded as the PIL output), so nothing is sampled twice. ``size``: the
    (height, width) to sample, None for the pipeline's default (then nothing is reused); ``call``: extra pipeline arguments.
    Returns ``(full, na, source)`` with ``source`` "reused from the controls" (sampled there, or read from their
    store) or "sampled here".
    """
    import numpy as np
    import torch

    from ..mixers.neighborhood import neighborhood_attention

    prompts, label = list(prompts), f"NA K={na_kernel}"
    if evaluation is not None and {"self-attention", label} <= set(evaluation):
        own, na = evaluation["self-attention"], evaluation[label]
        same = all(r.get("images") is not None and len(r["images"]) >= len(prompts)
                   and list(r["prompts"][:len(prompts)]) == prompts
                   and (r["steps"], r["guidance_scale"], r["seed"]) == (steps, guidance_scale, seed)
                   and size is not None and tuple(r["images"].shape[-2:]) == tuple(size) for r in (own, na))
        if same and len(prompts) <= 64:   # evaluate_model's first batch holds 64 prompts
            n = len(prompts)
            return _uint8(own["images"][:n]), _uint8(na["images"][:n]), "reused from the controls"
    kw = dict(call, num_inference_steps=steps, guidance_scale=guidance_scale)
    if size is not None:
        kw.update(height=size[0], width=size[1])

    def sample():
        out = pipe(prompts, generator=torch.Generator().manual_seed(seed), **kw).images
        return np.stack([np.asarray(im.convert("RGB")) for im in out])

    full = sample()
    with neighborhood_attention(pipe, na_kernel):
        na_imgs = sample()
    return full, na_imgs, "sampled here"


def quality_summary(results: dict, model: str, seed: int = 0):
    """One row per condition of :func:`live_na_controls`: ``model``, ``n``, ``adherence [95% CI]`` (Wilson) and
    ``FDD analogue [95% CI]`` (bias-corrected bootstrap over the images); and the ``(k, n)`` counts the Fig. 6
    verdict takes (:func:`aconvlib.book.locality_claims.na_control_verdict`)."""
    import pandas as pd

    from ..mini.intervals import adherence_estimate, fdd_estimate

    counts, rows = {}, {}
    for label, res in results.items():
        a = adherence_estimate(res)
        counts[label] = (int(round(a.value * a.n)), a.n)
        rows[label] = {"model": model, "n": a.n, "adherence [95% CI]": a.format(pct=True),
                       "FDD analogue [95% CI]": fdd_estimate(res, seed=seed).format(".0f")}
    frame = pd.DataFrame(rows).T.rename_axis("condition").reset_index()
    return frame, counts
