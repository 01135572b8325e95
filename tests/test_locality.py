"""Known answers for aconvlib.locality on analytic maps (checked against brute-force loops)."""
import math

import numpy as np
import pytest
import torch

from aconvlib.analysis import locality as L


def grid_coords(grid):
    h, w = grid
    idx = torch.arange(h * w)
    return idx // w, idx % w


def uniform(grid):
    n = grid[0] * grid[1]
    return torch.full((n, n), 1.0 / n)


def gaussian_local(grid, sigma):
    r, c = grid_coords(grid)
    d2 = (r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2
    a = torch.exp(-d2.double() / (2 * sigma ** 2))
    return a / a.sum(1, keepdim=True)


def brute_asm(A, grid, ks):
    """Loop reference: mean over queries of the clipped-window sums."""
    h, w = grid
    A = A.double().numpy().reshape(-1, h, w)
    out = []
    for k in ks:
        r = (k - 1) // 2
        tot = 0.0
        for q in range(h * w):
            i, j = divmod(q, w)
            tot += A[q, max(0, i - r):min(h, i + r + 1), max(0, j - r):min(w, j + r + 1)].sum()
        out.append(tot / (h * w))
    return np.array(out)


@pytest.mark.parametrize("grid", [(5, 5), (4, 7), (6, 3)])
def test_uniform_is_window_area_over_n(grid):
    ks = L.odd_kernel_sizes(grid)
    curve = L.asm_curve(uniform(grid), grid, ks)
    np.testing.assert_allclose(curve.numpy(), brute_asm(uniform(grid), grid, ks), atol=1e-12)
    n = grid[0] * grid[1]
    assert curve[0].item() == pytest.approx(1 / n)
    assert curve[-1].item() == pytest.approx(1.0)


def test_border_windows_are_clipped_not_shifted():
    grid = (4, 6)
    _, per_q = L.asm_curve(uniform(grid), grid, [3], per_query=True)
    n = 24
    assert per_q[0, 0].item() == pytest.approx(4 / n)         # corner: 2x2 keys
    assert per_q[1, 0].item() == pytest.approx(6 / n)         # top edge: 2x3 keys
    assert per_q[6 + 1, 0].item() == pytest.approx(9 / n)     # interior: 3x3 keys
    assert per_q[23, 0].item() == pytest.approx(4 / n)        # last corner


def test_delta_map_is_fully_local():
    grid = (5, 8)
    A = torch.eye(40)
    ks = L.odd_kernel_sizes(grid)
    curve = L.asm_curve(A, grid, ks)
    assert torch.allclose(curve, torch.ones_like(curve))
    assert L.erf(curve, ks).item() == 1
    g = L.asm_gradient(curve, ks)
    assert g[0].item() == 1 and torch.all(g[1:] == 0)


@pytest.mark.parametrize("grid,sigma", [((9, 9), 1.0), ((7, 12), 2.0)])
def test_gaussian_matches_brute_force_and_is_monotone(grid, sigma):
    A = gaussian_local(grid, sigma)
    ks = L.odd_kernel_sizes(grid)
    curve = L.asm_curve(A, grid, ks, chunk=7)
    np.testing.assert_allclose(curve.numpy(), brute_asm(A, grid, ks), atol=1e-10)
    assert torch.all(torch.diff(curve) >= -1e-12)
    # a wider Gaussian has a larger ERF
    wide = L.asm_curve(gaussian_local(grid, 2 * sigma), grid, ks)
    assert L.erf(wide, ks) > L.erf(curve, ks)


def test_sink_at_last_pixel():
    grid = (4, 5)
    A = torch.zeros(20, 20)
    A[:, -1] = 1.0
    ks = L.odd_kernel_sizes(grid)
    curve = L.asm_curve(A, grid, ks)
    np.testing.assert_allclose(curve.numpy(), brute_asm(A, grid, ks), atol=1e-12)
    sink = L.attention_sink(A, grid)
    assert sink.key == 19 and sink.position == (3, 4) and sink.share == pytest.approx(1.0)
    flagged = L.detect_artifacts({"a": A, "b": uniform(grid)}, {"a": grid, "b": grid}, ratio=3.0)
    assert list(flagged) == ["a"]


def test_artifact_rule_is_relative_to_the_uniform_share():
    """One key drawing 3.2× the uniform share: an artifact on an 8×8 and a 32×32 grid alike (an absolute share of
    0.1 would flag it on neither: 0.05 and 0.003)."""
    for side in (8, 32):
        n = side * side
        A = torch.full((n, n), 1.0 / n)
        A[:, -1] += 2.2 / n
        A /= A.sum(1, keepdim=True)
        sink = L.attention_sink(A, (side, side))
        assert sink.ratio_to_uniform == pytest.approx(3.2 / (1 + 2.2 / n), rel=1e-6) and sink.share < 0.1
        assert list(L.detect_artifacts({"a": A}, {"a": (side, side)}, ratio=3.0)) == ["a"]


def test_kernel_sizes_must_be_odd():
    with pytest.raises(ValueError):
        L.asm_curve(uniform((3, 3)), (3, 3), [2])
    with pytest.raises(ValueError):
        L.asm_curve(uniform((3, 3)), (3, 4), [1])


def test_erf_threshold_and_nan():
    ks = [1, 3, 5, 7]
    curve = torch.tensor([[0.1, 0.5, 0.8, 1.0], [0.1, 0.2, 0.3, 0.4]])
    out = L.erf(curve, ks, 0.8)
    assert out[0].item() == 5 and math.isnan(out[1].item())


def test_gradient_backward_difference():
    ks = [1, 3, 7]
    g = L.asm_gradient(torch.tensor([0.2, 0.6, 1.0]), ks)
    np.testing.assert_allclose(g.numpy(), [0.2, 0.2, 0.1])


def test_prior_plus_local_mixture():
    grid = (6, 5)
    n = 30
    alpha = 0.7
    prior = torch.rand(n, generator=torch.Generator().manual_seed(0)).double()
    prior /= prior.sum()
    A = alpha * prior[None].expand(n, n) + (1 - alpha) * torch.eye(n, dtype=torch.float64)
    dec = L.decompose(A, grid)
    expected_b = alpha * prior + (1 - alpha) / n
    assert torch.allclose(dec.prior, expected_b)
    assert dec.prior.sum().item() == pytest.approx(1.0)
    assert dec.context_mass == pytest.approx((1 - alpha) * (1 - 1 / n))
    assert dec.prior_mass + dec.context_mass == pytest.approx(1.0)
    assert dec.context_asm[0].item() == pytest.approx(0.5)  # |R_q| puts half its mass on q itself
    assert dec.prior_image.shape == grid


def test_decompose_of_uniform_and_of_pure_local():
    grid = (4, 4)
    dec = L.decompose(uniform(grid), grid)
    assert dec.context_mass == pytest.approx(0.0, abs=1e-12) and dec.prior_tv_uniform == pytest.approx(0, abs=1e-12)
    dec = L.decompose(torch.eye(16), grid)
    assert dec.context_mass == pytest.approx(1 - 1 / 16)


def test_butterworth_filter_definition():
    grid = (8, 6)
    f = L.butterworth_highpass(grid, cutoff=0.25, order=2)
    assert f.shape == (8, 4) and f[0, 0] == 0
    # at D = D0 the gain is 1/2; D0 = 0.25 cycles/token = row frequency index 2 on 8 rows
    assert f[2, 0].item() == pytest.approx(0.5)
    assert f[4, 3].item() == pytest.approx(1 / (1 + (0.25 / math.hypot(0.5, 0.5)) ** 4))


def test_highpass_removes_dc_and_smooth_component():
    grid = (8, 8)
    A = gaussian_local(grid, 1.0)
    signed = L.highpass(A, grid, cutoff=0.15, norm="none")
    assert torch.allclose(signed.sum(1), torch.zeros(64, dtype=torch.float64), atol=1e-12)
    mixed = 0.5 * A + 0.5 / 64
    # adding a constant (pure DC) only scales the filtered map: the normalized map is unchanged
    assert torch.allclose(L.highpass(mixed, grid, 0.15), L.highpass(A, grid, 0.15), atol=1e-10)
    assert torch.isnan(L.highpass_asm_curve(uniform(grid), grid, [1, 3])).all()


def test_highpass_delta_matches_numpy_reference():
    grid = (9, 11)
    n = 99
    cutoff, order = 0.2, 2
    fy = np.fft.fftfreq(9)[:, None]
    fx = np.fft.fftfreq(11)[None, :]
    d = np.hypot(fy, fx)
    with np.errstate(divide="ignore"):
        filt = np.where(d > 0, 1 / (1 + (cutoff / np.where(d > 0, d, 1)) ** (2 * order)), 0.0)
    ks = [1, 3, 5]
    ref = np.zeros(len(ks))
    for q in range(n):
        img = np.zeros(n)
        img[q] = 1
        hp = np.abs(np.real(np.fft.ifft2(np.fft.fft2(img.reshape(9, 11)) * filt))).ravel()
        hp /= hp.sum()
        i, j = divmod(q, 11)
        for t, k in enumerate(ks):
            r = (k - 1) // 2
            ref[t] += hp.reshape(9, 11)[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].sum()
    ref /= n
    got = L.highpass_asm_curve(torch.eye(n), grid, ks, cutoff, order, chunk=10)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-10)
    # a local map keeps most of its high-frequency magnitude near the query
    assert got[-1] > 0.5


class _LargestNewTensor:
    """Records the largest tensor any torch op creates (views of ``source``, which own no memory, excluded)."""

    def __init__(self, source: torch.Tensor):
        from torch.utils._python_dispatch import TorchDispatchMode

        ptr, largest = source.untyped_storage().data_ptr(), [0]

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in (out if isinstance(out, (tuple, list)) else (out,)):
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() != ptr:
                        largest[0] = max(largest[0], t.numel())
                return out

        self.mode, self._largest = Mode(), largest

    @property
    def numel(self) -> int:
        return self._largest[0]

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def test_large_map_is_chunked_without_copies():
    grid = (32, 32)
    n = grid[0] * grid[1]
    A = gaussian_local(grid, 1.5).float()
    ks = [1, 5, 11, 63]
    c1 = L.asm_curve(A, grid, ks, chunk=1024)
    with _LargestNewTensor(A) as seen:
        c2 = L.asm_curve(A, grid, ks, chunk=100)
    assert torch.allclose(c1, c2, atol=1e-12) and c1[-1].item() == pytest.approx(1.0, abs=1e-6)
    # no op made an [N, N] copy (a .double() or .contiguous() of A would): memory grows with the chunk only
    bound = 100 * (grid[0] + 1) * (grid[1] + 1)   # one chunk's zero-padded prefix sums
    assert 0 < seen.numel <= bound < n * n
    with _LargestNewTensor(A) as seen:
        hp = L.highpass_asm_curve(A, grid, ks, 0.1, chunk=100)
    assert 0 < hp[0] < hp[1] < hp[2] <= hp[3] + 1e-12
    assert 0 < seen.numel <= bound < n * n
    with _LargestNewTensor(A) as seen:   # the check itself can fail: a full copy is seen
        A.double()
    assert seen.numel == n * n


def test_uniform_asm_closed_form_matches_measured():
    for grid in [(5, 5), (4, 7)]:
        ks = L.odd_kernel_sizes(grid)
        assert torch.allclose(L.uniform_asm(grid, ks), L.asm_curve(uniform(grid), grid, ks), atol=1e-12)
