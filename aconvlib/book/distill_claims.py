"""Chapters 7 and 8: the paper's Table 3 and Fig. 8 claims, decided from recorded numbers with intervals.

- :func:`paper_table3_comparison`: the paper's own Table 3 (``data/paper/tables.yml``), ΔConv against the teacher
  and against the other efficient method of each base model, per metric, with the metric's direction
  (DS ↑, FDD ↓, CLIP ↑): what "matches or beats" can honestly say.
- :func:`adherence_estimate`: k of n from an evaluation row (its ``per_image`` results when present, else the
  rounded share), as an :class:`~aconvlib.analysis.evidence.Estimate` with its Wilson interval.
- :func:`quality_verdict` (Table 3): the student keeps the teacher's prompt adherence when the 95% Newcombe interval
  of (student − teacher) lies above −``tolerance``; it fails when the interval lies entirely below −``tolerance``;
  otherwise n is too small to tell (the n that would is given).
- :func:`cross_resolution_verdict` (Fig. 8): the student generalizes better than the teacher at another
  resolution when the interval of (student − teacher) lies above 0; fails when below 0; both at 0 is a floor
  (not testable: neither can be worse); otherwise n is too small.
- :func:`student_budget`: steps (all runs and the last), minutes, from a student folder's log.
- :func:`attention_grids`: the token grids of a model's ``attn1`` layers at an image size (architecture only).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Optional

__all__ = ["METRIC_DIRECTION", "adherence_estimate", "attention_grids", "cross_resolution_verdict", "n_for_tolerance",
           "paper_table3_comparison", "quality_verdict", "student_budget"]

METRIC_DIRECTION = {"DS": 1, "FDD": -1, "CLIP": 1}     # +1: higher is better


def paper_table3_comparison(table3: Optional[Mapping] = None):
    """One row per (base model, other method, metric): ΔConv's value, the other's, the signed difference
    (ΔConv − other) and whether ΔConv is ``better``/``worse``/``equal`` given the metric's direction."""
    import pandas as pd

    if table3 is None:
        from ..models import paper_table

        table3 = paper_table("table3_quality")
    rows = []
    for base, methods in table3.items():
        dc = methods["deltaconv"]
        for other, vals in methods.items():
            if other == "deltaconv":
                continue
            for i, (metric, sign) in enumerate(METRIC_DIRECTION.items()):
                d = dc[i] - vals[i]
                rows.append({"base": base, "against": other, "metric": metric, "ΔConv": dc[i], "other": vals[i],
                             "ΔConv − other": round(d, 4),
                             "ΔConv is": "equal" if d == 0 else ("better" if d * sign > 0 else "worse")})
    return pd.DataFrame(rows)


def adherence_estimate(row: Mapping):
    """k of n prompt adherence of an evaluation row as a Wilson :class:`Estimate`."""
    from ..analysis.evidence import proportion

    n = int(row["n_prompts"])
    per = row.get("per_image") if hasattr(row, "get") else None
    if isinstance(per, dict):              # {"scene": [0/1, ...]}
        per = per.get("scene")
    if isinstance(per, (list, tuple)) and len(per) == n:   # evaluate_model's per_image: 1 where the scene matches
        k = int(sum(bool(x) for x in per))
    else:
        k = int(round(float(row["prompt_adherence"]) * n))
    return proportion(k, n)


def n_for_tolerance(p1: float, p2: float, tolerance: float) -> int:
    """Prompts per arm for a 95% interval of p1 − p2 of half-width ``tolerance`` (normal approximation; a share at
    0 or 1 counts as 1/n away from it, so the answer stays finite)."""
    v = max(p1 * (1 - p1), 0.01) + max(p2 * (1 - p2), 0.01)
    return int(math.ceil(1.96 ** 2 * v / tolerance ** 2))


def _fmt(e) -> str:
    return f"{e.value:.0%} [{e.lo:.0%}, {e.hi:.0%}] (n={e.n})"


def quality_verdict(model: str, teacher: Mapping, student: Mapping, *, tolerance: float = 0.05, chapter: str,
                    student_label: str = "ΔConv", where: str = "", how_to_test: str = "", claim: str = "Table 3"):
    """Table 3 on one model (see the module docstring). ``teacher`` / ``student``: evaluation rows
    (``n_prompts``, ``prompt_adherence``, ``fdd``, optional ``per_image``)."""
    from ..analysis.evidence import FAILS, HOLDS, NOT_TESTABLE, Verdict, newcombe_interval

    t, s = adherence_estimate(teacher), adherence_estimate(student)
    kt, ks = round(t.value * t.n), round(s.value * s.n)
    lo, hi = newcombe_interval(ks, s.n, kt, t.n)
    verdict = HOLDS if lo >= -tolerance else FAILS if hi < -tolerance else NOT_TESTABLE
    need = n_for_tolerance(t.value, s.value, tolerance)
    fdd = ""
    if "fdd" in teacher and "fdd" in student:
        iv = student.get("intervals") if hasattr(student, "get") else None
        d = (iv or {}).get("diff_to_teacher") if isinstance(iv, dict) else None
        if d and d.get("fdd"):
            f = d["fdd"]
            fdd = (f"; FDD analogue teacher {float(teacher['fdd']):.1f} vs {student_label} {float(student['fdd']):.1f}, "
                   f"difference {f['value']:+.1f} [{f['lo']:+.1f}, {f['hi']:+.1f}] (bias-corrected paired bootstrap "
                   f"95%: {'a difference' if d['fdd_is_difference'] else 'not a difference'})")
        else:
            fdd = (f"; FDD analogue teacher {float(teacher['fdd']):.1f} vs {student_label} {float(student['fdd']):.1f} "
                   "(no interval: needs per-image features)")
    deciding = (f"adherence teacher {_fmt(t)} vs {student_label} {_fmt(s)}, difference {s.value - t.value:+.1%} "
                f"[{lo:+.1%}, {hi:+.1%}] (Newcombe 95%), tolerance ±{tolerance:.0%}{fdd}{where}")
    return Verdict(claim=claim, model=model, verdict=verdict, deciding=deciding, n=min(t.n, s.n),
                   baseline=f"the self-attention teacher on the same prompts and noise",
                   how_to_test=(how_to_test or f"≈{need} prompts per arm would bound the difference to ±{tolerance:.0%}")
                   if verdict == NOT_TESTABLE else "", chapter=chapter,
                   numbers={"teacher": t.value, "student": s.value, "diff_lo": lo, "diff_hi": hi, "n": min(t.n, s.n)})


def cross_resolution_verdict(model: str, teacher: Mapping, student: Mapping, px: int, train_px: int, *, chapter: str,
                             floor_how_to_test: str):
    """Fig. 8 on one model at ``px`` (trained at ``train_px``); see the module docstring."""
    from ..analysis.evidence import FAILS, HOLDS, NOT_TESTABLE, Verdict, newcombe_interval

    t, s = adherence_estimate(teacher), adherence_estimate(student)
    kt, ks = round(t.value * t.n), round(s.value * s.n)
    lo, hi = newcombe_interval(ks, s.n, kt, t.n)
    floor = kt == 0 and ks == 0
    verdict = NOT_TESTABLE if floor else HOLDS if lo > 0 else FAILS if hi < 0 else NOT_TESTABLE
    deciding = (f"adherence at {px} px (trained at {train_px} px): teacher {_fmt(t)} vs ΔConv {_fmt(s)}, "
                f"difference {s.value - t.value:+.0%} [{lo:+.0%}, {hi:+.0%}] (Newcombe 95%)"
                + ("; both at 0: a floor, neither can be worse" if floor else ""))
    how = floor_how_to_test if floor else (
        f"≈{n_for_tolerance(t.value, s.value, max(abs(s.value - t.value), 0.05))} prompts per arm" if verdict == NOT_TESTABLE else "")
    return Verdict(claim="Fig. 8", model=model, verdict=verdict, deciding=deciding, n=min(t.n, s.n),
                   baseline=f"the self-attention teacher at {px} px, same prompts and noise", how_to_test=how,
                   chapter=chapter, numbers={"teacher": t.value, "student": s.value, "diff_lo": lo, "diff_hi": hi})


def student_budget(folder) -> dict:
    """``steps_total`` / ``minutes_total`` over every run in ``distill_log.jsonl`` (one ``summary`` line per run),
    ``runs``, and ``steps_last_run`` (the last summary's step; the ``config.json`` beside it is that run's)."""
    folder = Path(folder)
    log = folder / "distill_log.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
    summ = [x["summary"] for x in lines if "summary" in x]
    return {"runs": len(summ), "steps_total": int(sum(s.get("step", 0) for s in summ)),
            "steps_last_run": int(summ[-1].get("step", 0)) if summ else None,
            "minutes_total": sum(s.get("seconds", 0.0) for s in summ) / 60}


def attention_grids(model: str, px: int) -> list[tuple[int, int]]:
    """Distinct token grids of ``model``'s ``attn1`` layers at ``px``×``px`` (architecture, no weights), largest first."""
    from ..models import get_spec, load_denoiser, self_attention_layers

    den = load_denoiser(model, weights=False, device="meta")
    return sorted({tuple(l.grid) for l in self_attention_layers(den, get_spec(model).latent_grid(px, px))}, reverse=True)
