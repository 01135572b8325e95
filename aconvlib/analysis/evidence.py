"""What a number establishes: intervals, uniform baselines, measurability and verdicts.

Every chapter of the book states a claim of the paper, measures it on a named model and gives a verdict
no stronger than its evidence. This module holds the rules, in one place:

- **Intervals** (95% unless asked). A share of successes (prompt adherence, k of n images) gets the Wilson
  score interval; a difference of two shares on different images, Newcombe's hybrid score interval; a
  statistic of per-item values (FDD analogue over images, an ASM ratio over layers or prompts), a
  percentile bootstrap over the items (paired for two conditions on the same items). A difference is
  *a difference* only when its interval excludes zero (:func:`is_difference`).
- **Uniform baselines.** A locality number means something only next to what a map with no locality
  scores under the same clipped-window rule on the same grid: the uniform map ``A = 1/N``, whose
  ASM(K) is the mean clipped window area over N (:func:`aconvlib.analysis.locality.uniform_asm`) and whose
  ERF is :func:`uniform_erf`. The high-pass map of a uniform row is zero (all its energy is DC), and the
  context term of a uniform map is zero, so for high-pass ASM, context ASM and gradient ERFs the
  baseline is the same closed form: the share a spatially unstructured magnitude map puts in the window.
- **Measurability.** A window as large as the grid (K ≥ the shorter grid side) holds every key from the
  centre query: it cannot tell a local map from a global one, so a claim about it is *not measurable*
  on that grid, never "holds" (:func:`window_measurable`).
- **Paper bounds on other grids.** A bound stated on the paper's grid (e.g. ERF < 15 on 64×64 tokens) is
  used both as stated and scaled to our grid by the ratio of grid sides, ``bound · side / paper_side``
  (:func:`scaled_bound`); the rule is written next to every use.
- **Verdicts** (:class:`Verdict`): ``holds``, ``fails`` or ``not testable here`` per claim and model,
  with n, the deciding numbers, their interval and, for "not testable here", what would test it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = ["HOLDS", "FAILS", "NOT_TESTABLE", "VERDICTS", "Estimate", "Verdict", "bootstrap_difference",
           "bootstrap_interval", "is_difference", "newcombe_interval", "proportion", "scaled_bound",
           "uniform_erf", "wilson_interval", "window_measurable"]

HOLDS, FAILS, NOT_TESTABLE = "holds", "fails", "not testable here"
VERDICTS = (HOLDS, FAILS, NOT_TESTABLE)


def _z(conf: float) -> float:
    from scipy.stats import norm

    if not 0 < conf < 1:
        raise ValueError(f"conf must be in (0, 1), got {conf}")
    return float(norm.ppf(0.5 + conf / 2))


# ------------------------------------------------------------------------------------------------ intervals
def wilson_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial share k/n (the right one for small n and shares near 0 or 1).

    ``wilson_interval(16, 16)`` is (0.806, 1.0): sixteen successes out of sixteen do not show a rate above 0.81.
    """
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    z = _z(conf)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, conf: float = 0.95) -> tuple[float, float]:
    """Interval of the difference of two independent shares k1/n1 − k2/n2 (Newcombe 1998, method 10: the
    hybrid score interval built from the two Wilson intervals)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, conf)
    l2, u2 = wilson_interval(k2, n2, conf)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def _stat(values: np.ndarray, stat: Callable) -> float:
    return float(stat(values))


def bootstrap_interval(values: Sequence, stat: Callable = np.mean, n_boot: int = 2000, conf: float = 0.95,
                       seed: int = 0, bias_correct: bool = False) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over items (rows of ``values``, resampled with replacement).

    ``values`` may be 1-D (one number per item) or 2-D (one feature vector per item, e.g. classifier features
    for a Fréchet distance: ``stat`` then takes the resampled [n, d] array). Seeded: the same call gives the
    same interval.

    ``bias_correct=True`` shifts the percentile interval by the bootstrap's estimate of the statistic's bias,
    ``mean(boot) − stat(values)``. Use it for statistics that resampling with replacement inflates, such as a
    Fréchet distance (a resample repeats images: about 63% are distinct, so its covariance is narrower and its
    distance larger); without it such an interval can lie entirely above the point estimate.
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        raise ValueError(f"a bootstrap needs at least 2 items, got {len(x)}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(int(n_boot), len(x)))
    boots = np.array([_stat(x[i], stat) for i in idx])
    shift = float(boots.mean() - _stat(x, stat)) if bias_correct else 0.0
    a = (1 - conf) / 2
    return float(np.quantile(boots, a)) - shift, float(np.quantile(boots, 1 - a)) - shift


def bootstrap_difference(a: Sequence, b: Sequence, stat: Callable = np.mean, paired: bool = True,
                         n_boot: int = 2000, conf: float = 0.95, seed: int = 0,
                         bias_correct: bool = False) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(a) − stat(b)``.

    ``paired=True``: a[i] and b[i] come from the same item (the same prompt and noise under two conditions);
    the same resampled indices are used for both, which removes the between-item spread from the difference.
    ``bias_correct``: as in :func:`bootstrap_interval` (the two statistics' resampling biases need not cancel).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if paired and len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    if min(len(a), len(b)) < 2:
        raise ValueError("a bootstrap needs at least 2 items per sample")
    rng = np.random.default_rng(seed)
    diffs = np.empty(int(n_boot))
    for j in range(int(n_boot)):
        ia = rng.integers(0, len(a), len(a))
        ib = ia if paired else rng.integers(0, len(b), len(b))
        diffs[j] = _stat(a[ia], stat) - _stat(b[ib], stat)
    shift = float(diffs.mean() - (_stat(a, stat) - _stat(b, stat))) if bias_correct else 0.0
    q = (1 - conf) / 2
    return float(np.quantile(diffs, q)) - shift, float(np.quantile(diffs, 1 - q)) - shift


def is_difference(interval: tuple[float, float]) -> bool:
    """A difference is called one only when its interval excludes zero."""
    lo, hi = interval
    return bool(lo > 0 or hi < 0)


@dataclass(frozen=True)
class Estimate:
    """A number with its n and 95% interval, printed as ``0.81 [0.64, 0.92] (n=32)``."""

    value: float
    lo: float
    hi: float
    n: int
    method: str = ""

    def __str__(self) -> str:
        return self.format()

    def format(self, fmt: str = ".2f", pct: bool = False) -> str:
        if pct:
            return f"{self.value:.0%} [{self.lo:.0%}, {self.hi:.0%}] (n={self.n})"
        return f"{self.value:{fmt}} [{self.lo:{fmt}}, {self.hi:{fmt}}] (n={self.n})"

    def as_dict(self) -> dict:
        return asdict(self)


def proportion(k: int, n: int, conf: float = 0.95) -> Estimate:
    """k of n as an :class:`Estimate` with its Wilson interval."""
    lo, hi = wilson_interval(k, n, conf)
    return Estimate(k / n, lo, hi, int(n), "Wilson")


# ------------------------------------------------------------------------------------------- baselines
def uniform_erf(grid: tuple[int, int], threshold: float = 0.8) -> int:
    """ERF of the uniform map on ``grid`` under the clipped-window rule: the smallest odd K whose mean clipped
    window holds ``threshold`` of the keys. A measured ERF equal to it shows no locality at all."""
    from .locality import odd_kernel_sizes, uniform_asm

    ks = odd_kernel_sizes(tuple(grid))
    curve = uniform_asm(tuple(grid), ks)
    return int(next(k for k, v in zip(ks, curve.tolist()) if v >= threshold - 1e-9))


def window_measurable(k: int, grid: tuple[int, int]) -> bool:
    """Whether a K×K window can separate local from global on ``grid``: K must be smaller than the shorter side
    (a window as large as the grid holds every key from the centre query)."""
    return int(k) < min(int(g) for g in grid)


def scaled_bound(bound: float, paper_side: int, side: int) -> float:
    """A paper bound stated on a ``paper_side``-token grid, scaled to a ``side``-token grid by the ratio of the
    sides (``bound · side / paper_side``): e.g. ERF < 15 on 64 tokens → < 3.75 on 16 tokens."""
    if paper_side < 1 or side < 1:
        raise ValueError(f"grid sides must be positive, got {paper_side} and {side}")
    return float(bound) * int(side) / int(paper_side)


# --------------------------------------------------------------------------------------------- verdicts
@dataclass
class Verdict:
    """One cell of the book's verdict table: a claim of the paper on one model.

    Args:
        claim: the paper's item (``"Fig. 4a"``, ``"Table 3"``, ...); model: who produced the numbers
            (``mini-sd``, ``sd15``, ...).
        verdict: ``holds`` | ``fails`` | ``not testable here``.
        deciding: the numbers that decide it, as one short line (values with their intervals).
        n: how many items the deciding numbers rest on (prompts, images, layers); None where nothing is sampled.
        baseline: what the same measure gives on the baseline (uniform map, no self-attention, the teacher).
        how_to_test: for ``not testable here``, what would test it (model, grid, command).
        chapter: where it is measured.
    """

    claim: str
    model: str
    verdict: str
    deciding: str
    n: Optional[int] = None
    baseline: str = ""
    how_to_test: str = ""
    chapter: str = ""
    numbers: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.verdict == NOT_TESTABLE and not self.how_to_test:
            raise ValueError(f"{self.claim} on {self.model}: a 'not testable here' verdict must say what would test it")

    def as_record(self) -> dict:
        """The dict a chapter records (``record(f"verdict/{claim}/{model}", v.as_record())``)."""
        d = asdict(self)
        d["numbers"] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.numbers.items()}
        return d

    def sentence(self) -> str:
        """One line a reader can quote."""
        n = f", n={self.n}" if self.n else ""
        base = f"; baseline: {self.baseline}" if self.baseline else ""
        test = f" What would test it: {self.how_to_test}" if self.verdict == NOT_TESTABLE else ""
        return f"{self.claim} on {self.model}: **{self.verdict}** ({self.deciding}{n}{base}).{test}"
