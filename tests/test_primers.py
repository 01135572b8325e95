"""The locality primers (chapters 2–5): their closed forms, computed by hand, against what aconvlib measures."""
import math

import numpy as np
import pytest
import torch

from aconvlib.analysis import locality as L
from aconvlib.analysis.receptive_field import mixer_receptive_field
from aconvlib.book import primers as P
from aconvlib.book import primers_context as Q


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


# ------------------------------------------------------------------------------------------- constructed maps

@pytest.mark.parametrize("make", [lambda g: P.uniform_map(g), lambda g: P.gaussian_map(g, 1.3),
                                  lambda g: P.gaussian_map(g, 2.0, torus=True), lambda g: P.mixture_map(g, 1.0, 0.4),
                                  lambda g: P.box_map(g, 3)], ids=["uniform", "blob", "blob-torus", "mix", "box"])
def test_constructed_maps_are_row_stochastic(make):
    A = make((6, 9))
    assert A.shape == (54, 54) and (A >= 0).all()
    assert torch.allclose(A.sum(1), torch.ones(54, dtype=torch.float64), atol=1e-12)


def test_box_map_on_a_torus_is_doubly_stochastic():
    A = P.box_map((7, 5), 3)
    assert torch.allclose(A.sum(0), torch.ones(35, dtype=torch.float64), atol=1e-12)
    assert int((A[0] > 0).sum()) == 9          # the corner query's box wraps around: still 9 keys


# ------------------------------------------------------------------------------------------- uniform ASM = K²/N

@pytest.mark.parametrize("side", [9, 15])
def test_uniform_asm_of_the_centre_query_is_k2_over_n(side):
    g, n = (side, side), side * side
    c = (side // 2) * side + side // 2
    ks = L.odd_kernel_sizes(g)
    curve = L.asm_curve(P.uniform_map(g)[c:c + 1], g, ks, query_index=torch.tensor([c]))
    by_hand = [min(k, side) ** 2 / n for k in ks]   # K²/N until the window covers the grid, then 1
    assert curve.tolist() == pytest.approx(by_hand, abs=1e-12)


def test_uniform_asm_averaged_over_queries_by_hand():
    # 8×8, K = 3: per axis 6 positions see 3 rows and 2 border positions see 2: mean side 22/8
    g = (8, 8)
    assert float(L.asm_curve(P.uniform_map(g), g, [3])[0]) == pytest.approx((22 / 8) ** 2 / 64, abs=1e-12)
    p = P.attention_map_primer(grid=g)
    assert p["uniform3"] == pytest.approx((22 / 8) ** 2 / 64, abs=1e-12)
    assert p["ratio3"]["uniform"] == pytest.approx(1.0, abs=1e-12)
    assert p["ratio3"]["Gaussian blob, σ = 1"] > 5


def test_asm_primer_curves_follow_the_closed_forms():
    p = P.asm_primer(grid=(16, 16), sigma=1.5, weight=0.3)
    ks = p["ks"]
    assert p["centre_uniform"][:8].tolist() == pytest.approx([k * k / 256 for k in ks[:8]], abs=1e-12)
    assert p["asm"]["uniform"].tolist() == pytest.approx(L.uniform_asm((16, 16), ks).tolist(), abs=1e-12)
    # ASM is linear in the map: the mixture's curve is the mix of the two curves
    mix = 0.3 * p["asm"]["blob σ=1.5"] + 0.7 * p["asm"]["uniform"]
    assert p["asm"]["mixture (30% blob)"] == pytest.approx(mix, abs=1e-12)
    # the blob's ASM(3) for the centre query: the square of the central 1-D mass (separable)
    d = np.arange(16) - 8
    w = np.exp(-d ** 2 / (2 * 1.5 ** 2))
    c = 8 * 16 + 8
    centre3 = float(L.asm_curve(P.gaussian_map((16, 16), 1.5)[c:c + 1], (16, 16), [3], query_index=torch.tensor([c])))
    assert centre3 == pytest.approx((w[7:10].sum() / w.sum()) ** 2, abs=1e-12)


# ------------------------------------------------------------------------------------------- Butterworth

@pytest.mark.parametrize("order", [1, 2, 4])
def test_butterworth_gain_is_one_half_at_the_cutoff(order):
    p = P.highpass_primer(grid=(30, 30), orders=(order,), weights=(1.0,))
    assert p["gain_at_cutoff"][order] == pytest.approx(0.5, abs=1e-12)
    d, h = p["response"][order]
    at = np.isclose(d, 0.2)                          # 2·D0: 1 / (1 + (1/2)^(2n))
    assert h[at] == pytest.approx(np.full(at.sum(), 1 / (1 + 0.25 ** order)), abs=1e-12)
    assert h[d == 0].tolist() == [0.0]


def test_butterworth_gain_at_cutoff_is_nan_when_the_grid_lacks_it():
    p = P.highpass_primer(grid=(32, 32), orders=(2,), weights=(1.0,))   # 0.1 is not a multiple of 1/32
    assert math.isnan(p["gain_at_cutoff"][2])


def test_highpass_asm_of_the_mixture_does_not_depend_on_the_weight():
    p = P.highpass_primer(grid=(16, 16), sigma=1.0, weights=(0.05, 0.5, 1.0))
    assert p["hp"][0.05] == pytest.approx(p["hp"][1.0], abs=1e-9)
    assert p["hp"][0.5] == pytest.approx(p["hp"][1.0], abs=1e-9)
    assert not np.allclose(p["raw"][0.05], p["raw"][1.0])   # the raw curves do depend on it


# ------------------------------------------------------------------------------------------- prior + context

def test_prior_and_context_are_recovered():
    p = Q.prior_context_primer(grid=(16, 16), weight=0.5, sink=0.1)
    dec, n = p["dec"], 256
    assert p["prior_error"] < 1e-12 and p["context_error"] < 1e-12
    assert dec.context_mass == pytest.approx(0.5 * (1 - 9 / n), abs=1e-12)
    assert dec.prior_mass == pytest.approx(1 - 0.5 * (1 - 9 / n), abs=1e-12)
    assert dec.prior_tv_uniform == pytest.approx(0.1 * (1 - 1 / n), abs=1e-12)
    assert p["sink_found"].key == n - 1
    assert p["sink_found"].ratio_to_uniform == pytest.approx(1 - 0.1 + 0.1 * n, abs=1e-9)
    # R⁺ lies on the 3×3 box: mean 3×3 mass (196 interior queries 1, 56 edge 6/9, 4 corners 4/9) ≥ 0.8
    pos3 = float(dec.context_pos_asm[dec.kernel_sizes.index(3)])
    assert pos3 == pytest.approx((196 + 56 * 6 / 9 + 4 * 4 / 9) / n, abs=1e-12)
    assert p["erf_context_pos"] == 3
    assert p["erf_context"] > 3 * p["erf_context_pos"]          # |R|: half its mass spread over the grid


def test_constructed_map_refuses_negative_entries():
    with pytest.raises(P.PrimerError, match="negative"):
        Q.constructed_prior_context((16, 16), weight=0.6, sink=0.5)
    c = Q.constructed_prior_context((16, 16), weight=0.6, sink=0.4)   # s = 1 − w: the floor is exactly 0
    assert float(c["A"].min()) == pytest.approx(0.0, abs=1e-15)


# ------------------------------------------------------------------------------------------- ERF of conv stacks

def _trinomial_erf(n, threshold=0.8):
    w = np.array([1.0])
    for _ in range(n):
        w = np.convolve(w, [1.0, 1.0, 1.0]) / 3
    return next(k for k in range(1, 2 * n + 2, 2) if w[n - k // 2:n + k // 2 + 1].sum() ** 2 >= threshold - 1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_conv_stack_support_is_2n_plus_1_and_its_erf_the_trinomial_one(n):
    g = (17, 17)
    rf = mixer_receptive_field(Q.conv_stack(n, g), torch.randn(2, 289, 3, dtype=torch.float64), g)
    nz = rf.center_map > 1e-12 * rf.center_map.max()
    assert int(nz.any(1).sum()) == int(nz.any(0).sum()) == 2 * n + 1
    assert rf.erf == _trinomial_erf(n)
    assert rf.erf == Q.gaussian_erf_estimate(n, odd=True)     # the central-limit estimate, odd K


def test_erf_primer_against_attention():
    p = Q.erf_primer(grid=17, depths=(1, 2, 3), sigma=1.0, show_depths=(1, 3))
    assert p["support"] == {1: 3, 2: 5, 3: 7}
    assert p["erf"] == {1: 3.0, 2: 5.0, 3: 5.0}
    # the uniform map from the centre of 17×17: 15²/289 = 0.78 < 0.8 ≤ 17²/289
    assert p["attention"]["uniform attention"] == 17
    assert p["attention"] == p["attention_map_erf"]        # gradient ERF = map ERF for a fixed map
    with pytest.raises(P.PrimerError, match="odd grid"):
        Q.erf_primer(grid=16)
    with pytest.raises(P.PrimerError, match="reaches"):
        Q.erf_primer(grid=9, depths=(5,))


def test_bad_inputs_get_one_clear_error():
    with pytest.raises(P.PrimerError, match="sigma"):
        P.gaussian_map((4, 4), 0)
    with pytest.raises(P.PrimerError, match="weight"):
        P.mixture_map((4, 4), 1.0, 1.5)
    with pytest.raises(P.PrimerError, match="box side"):
        P.box_map((4, 4), 2)
    with pytest.raises(P.PrimerError, match="outside"):
        P.attention_map_primer(grid=(8, 8), query=(8, 0))
    with pytest.raises(P.PrimerError, match="high-frequency"):
        P.highpass_primer(weights=(0.0,))
