"""Intervals of the mini evaluator's numbers, and paired differences of two conditions on the same prompts.

:func:`~aconvlib.mini.evaluate.evaluate_model` returns, next to its shares and its FDD analogue, the per-image
results (``per_image``: 1 where the image's classified scene equals its prompt; ``features``: the classifier
features the FDD analogue is computed from). With the rules of :mod:`aconvlib.analysis.evidence`:

- :func:`adherence_estimate`: prompt adherence k/n with its Wilson 95% interval;
- :func:`fdd_estimate`: the FDD analogue with a percentile-bootstrap 95% interval over the generated images
  (the real reference set is fixed; each resample refits the generated Gaussian);
- :func:`paired_difference`: condition A − condition B on the same prompts and initial noise (e.g. a mixer
  minus the teacher): the adherence difference with a paired bootstrap over prompts, the FDD difference with a
  paired bootstrap over images (the same resampled prompts for both), and whether each interval excludes 0
  (:func:`~aconvlib.analysis.evidence.is_difference`: only then is it called a difference).

A caveat the chapters state with the numbers: with a few dozen images in 256 dimensions the Fréchet distance
is dominated by its covariance terms and biased upward, and a bootstrap resample (which repeats images: about
63% distinct) has fewer distinct images still, so the plain percentile bootstrap of one row's FDD sits *above*
the full-sample value (on the embedded models, 64 images, the whole interval did). The intervals here are
therefore bias-corrected: the percentile interval shifted by the bootstrap's estimate of that bias,
``mean(boot) − value`` (:func:`aconvlib.analysis.evidence.bootstrap_interval` with ``bias_correct=True``;
:func:`fdd_bootstrap_median` shows the size of the shift). The paired difference of two conditions (the same
resampled images for both) largely cancels the bias and is the comparison to use.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..analysis.evidence import Estimate, bootstrap_difference, bootstrap_interval, is_difference, proportion
from .evaluate import frechet_to, real_features

__all__ = ["adherence_estimate", "as_record", "fdd_bootstrap_median", "fdd_estimate", "paired_difference",
           "row_intervals"]

N_BOOT = 2000


def _per_image(res: dict) -> np.ndarray:
    if "per_image" not in res:
        raise ValueError("this evaluator result has no per-image results ('per_image'): it comes from an older "
                         "evaluate_model or a stored summary; evaluate again to get intervals")
    return np.asarray(res["per_image"], dtype=np.float64)


def _features(res: dict) -> np.ndarray:
    f = res.get("features")
    if f is None:
        raise ValueError("this evaluator result has no per-image classifier features ('features'); evaluate again "
                         "(or load them with the stored rows) to get FDD intervals")
    return f.double().numpy() if hasattr(f, "double") else np.asarray(f, dtype=np.float64)


def _reference(res: dict, reference):
    return reference if reference is not None else real_features(int(res.get("n_real", 1000)))


def adherence_estimate(res: dict, conf: float = 0.95) -> Estimate:
    """Prompt adherence k/n of one evaluator result with its Wilson interval."""
    ok = _per_image(res)
    return proportion(int(ok.sum()), len(ok), conf)


def fdd_estimate(res: dict, reference=None, n_boot: int = N_BOOT, conf: float = 0.95, seed: int = 0) -> Estimate:
    """The FDD analogue of one evaluator result with a bias-corrected percentile-bootstrap interval over its images
    (the percentile interval shifted by the bootstrap's bias estimate: resampling repeats images and inflates a
    Fréchet distance, so the plain interval of a 64-image FDD lies entirely above the value).

    ``reference``: the real features ``[n_real, d]`` (default: :func:`~aconvlib.mini.evaluate.real_features` of the
    result's ``n_real``, the shipped classifier's)."""
    f = _features(res)
    stat = frechet_to(_reference(res, reference))
    lo, hi = bootstrap_interval(f, stat, n_boot=n_boot, conf=conf, seed=seed, bias_correct=True)
    return Estimate(float(res["fdd"]) if "fdd" in res else stat(f), lo, hi, len(f),
                    "bias-corrected bootstrap over images")


def fdd_bootstrap_median(res: dict, reference=None, n_boot: int = N_BOOT, seed: int = 0) -> float:
    """The median of :func:`fdd_estimate`'s bootstrap distribution (the same resamples): how far resampling the
    images moves the FDD analogue away from its full-sample value (see the module docstring)."""
    f = _features(res)
    return bootstrap_interval(f, frechet_to(_reference(res, reference)), n_boot=n_boot, conf=0.0, seed=seed)[0]


def paired_difference(a: dict, b: dict, reference=None, n_boot: int = N_BOOT, conf: float = 0.95,
                      seed: int = 0) -> dict:
    """Condition ``a`` − condition ``b`` (two evaluator results on the same prompts and noise).

    Returns ``{"adherence": Estimate, "adherence_is_difference": bool, "fdd": Estimate, "fdd_is_difference": bool,
    "n": n}``: the adherence difference (share of a − share of b, paired bootstrap over prompts) and the FDD
    difference (paired bootstrap over images, the same resampled prompts for both), each with its interval and
    whether the interval excludes 0. Raises ValueError when the two results are not on the same prompts and seed.
    """
    for key in ("prompts", "seed"):
        if key in a and key in b and a[key] != b[key]:
            raise ValueError(f"a paired difference needs the same prompts and noise: the two results differ in {key!r}")
    pa, pb = _per_image(a), _per_image(b)
    if len(pa) != len(pb):
        raise ValueError(f"a paired difference needs the same prompts: {len(pa)} vs {len(pb)} images")
    lo, hi = bootstrap_difference(pa, pb, paired=True, n_boot=n_boot, conf=conf, seed=seed)
    adherence = Estimate(float(pa.mean() - pb.mean()), lo, hi, len(pa), "paired bootstrap over prompts")
    out = {"n": len(pa), "adherence": adherence, "adherence_is_difference": is_difference((lo, hi))}
    if a.get("features") is not None and b.get("features") is not None:
        fa, fb = _features(a), _features(b)
        stat = frechet_to(_reference(a, reference))
        lo, hi = bootstrap_difference(fa, fb, stat, paired=True, n_boot=n_boot, conf=conf, seed=seed,
                                      bias_correct=True)
        value = (float(a["fdd"]) - float(b["fdd"])) if "fdd" in a and "fdd" in b else stat(fa) - stat(fb)
        out.update(fdd=Estimate(value, lo, hi, len(fa), "bias-corrected paired bootstrap over images"),
                   fdd_is_difference=is_difference((lo, hi)))
    return out


def as_record(e: Optional[Estimate], digits: int = 6) -> Optional[dict]:
    """An :class:`Estimate` as a JSON-ready dict (rounded), or None."""
    if e is None:
        return None
    return {"value": round(e.value, digits), "lo": round(e.lo, digits), "hi": round(e.hi, digits), "n": e.n,
            "method": e.method}


def row_intervals(r: dict, teacher: Optional[dict] = None, reference=None, n_boot: int = N_BOOT) -> dict:
    """The interval fields a stored row keeps, from its evaluator result ``r`` (``per_image``, ``features``,
    ``fdd``) and, unless ``r`` is the teacher, the teacher's on the same prompts and noise: ``k`` (images whose
    scene matches the prompt), ``adherence`` (Wilson), ``fdd`` (bias-corrected bootstrap, plus the bootstrap's
    median ``boot_median``) and ``diff_to_teacher`` (paired differences and whether each interval excludes 0)."""
    fdd = as_record(fdd_estimate(r, reference, n_boot=n_boot))
    fdd["boot_median"] = round(fdd_bootstrap_median(r, reference, n_boot=n_boot), 6)
    out = {"k": int(sum(r["per_image"])), "adherence": as_record(adherence_estimate(r)), "fdd": fdd,
           "diff_to_teacher": None}
    if teacher is not None:
        d = paired_difference(r, teacher, reference, n_boot=n_boot)
        out["diff_to_teacher"] = {"adherence": as_record(d["adherence"]),
                                  "adherence_is_difference": d["adherence_is_difference"],
                                  "fdd": as_record(d["fdd"]), "fdd_is_difference": d["fdd_is_difference"]}
    return out
