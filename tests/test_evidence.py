"""Intervals, uniform baselines, measurability and verdicts (aconvlib.analysis.evidence)."""
import numpy as np
import pytest
import torch

from aconvlib.analysis import evidence as ev
from aconvlib.analysis.locality import asm_curve, erf, odd_kernel_sizes, uniform_asm


@pytest.mark.parametrize("k, n", [(0, 8), (3, 8), (16, 16), (31, 32), (250, 512)])
def test_wilson_matches_scipy(k, n):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert ev.wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_wilson_refuses_impossible_counts():
    with pytest.raises(ValueError):
        ev.wilson_interval(5, 4)
    with pytest.raises(ValueError):
        ev.wilson_interval(0, 0)


def test_newcombe_difference_of_equal_shares_contains_zero_and_of_far_shares_excludes_it():
    assert not ev.is_difference(ev.newcombe_interval(8, 8, 8, 8))          # 0/8 vs 0/8 is no difference
    assert not ev.is_difference(ev.newcombe_interval(15, 16, 16, 16))       # one prompt of 16
    lo, hi = ev.newcombe_interval(31, 32, 10, 32)
    assert ev.is_difference((lo, hi)) and lo < 31 / 32 - 10 / 32 < hi


def test_bootstrap_is_seeded_and_covers_the_mean():
    x = np.random.default_rng(0).normal(1.0, 1.0, 200)
    a = ev.bootstrap_interval(x, seed=3)
    assert a == ev.bootstrap_interval(x, seed=3) and a[0] < x.mean() < a[1] and a[0] < 1.0 < a[1]
    # paired: a constant shift is exactly that shift, whatever the between-item spread
    lo, hi = ev.bootstrap_difference(x + 0.5, x, paired=True)
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    # 2-D items: a statistic of the resampled rows
    feats = np.random.default_rng(1).normal(size=(50, 3))
    lo, hi = ev.bootstrap_interval(feats, stat=lambda f: float(f[:, 0].mean()))
    assert lo < feats[:, 0].mean() < hi


@pytest.mark.parametrize("grid", [(8, 8), (16, 16), (32, 32), (8, 12)])
def test_uniform_baselines_equal_their_closed_forms(grid):
    """uniform_asm / uniform_erf against a brute-force uniform map measured by the same clipped-window code."""
    n = grid[0] * grid[1]
    A = torch.full((n, n), 1.0 / n)
    ks = odd_kernel_sizes(grid)
    measured = asm_curve(A, grid, ks)
    assert torch.allclose(measured, uniform_asm(grid, ks), atol=1e-12)
    assert ev.uniform_erf(grid) == int(erf(measured, ks))


def test_the_issue_numbers_of_the_uniform_erf():
    # mini-sd's measured ERFs 45/23/11 on its 32/16/8 grids are exactly the uniform map's
    assert [ev.uniform_erf((g, g)) for g in (32, 16, 8)] == [45, 23, 11]


def test_window_measurability_and_scaled_bounds():
    assert not ev.window_measurable(11, (8, 8)) and not ev.window_measurable(16, (16, 16))
    assert ev.window_measurable(11, (16, 16)) and ev.window_measurable(7, (8, 12))
    assert ev.scaled_bound(15, 64, 16) == 3.75 and ev.scaled_bound(20, 64, 32) == 10


def test_verdicts_are_one_of_three_and_untestable_ones_say_what_would_test_them():
    v = ev.Verdict("Fig. 4b", "mini-dit", ev.FAILS, "hp mass in 11×11 0.61 ≤ raw 0.64", n=6)
    assert "**fails**" in v.sentence() and v.as_record()["verdict"] == "fails"
    with pytest.raises(ValueError):
        ev.Verdict("Fig. 4b", "mini-dit", "sort of", "x")
    with pytest.raises(ValueError, match="what would test it"):
        ev.Verdict("Fig. 8", "mini-sd", ev.NOT_TESTABLE, "0/8 vs 0/8")
    ok = ev.Verdict("Fig. 8", "mini-sd", ev.NOT_TESTABLE, "0/8 vs 0/8 (floor)", how_to_test="sd15 at 1024 px")
    assert "What would test it: sd15 at 1024 px" in ok.sentence()


def test_bias_corrected_bootstrap_contains_an_inflated_statistic():
    """A Fréchet-like statistic that resampling inflates (fewer distinct items → larger value): the plain
    percentile interval lies above the point estimate, the bias-corrected one contains it."""
    x = np.random.default_rng(0).normal(size=(64, 4))

    def inflated(f):   # grows as the resample holds fewer distinct rows
        return 1000.0 / len(np.unique(f, axis=0))

    point = inflated(x)
    lo, hi = ev.bootstrap_interval(x, inflated, n_boot=300)
    assert lo > point
    lo, hi = ev.bootstrap_interval(x, inflated, n_boot=300, bias_correct=True)
    assert lo <= point <= hi
    lo, hi = ev.bootstrap_difference(x, x[::-1].copy(), inflated, paired=False, n_boot=300, bias_correct=True)
    assert lo <= 0 <= hi
