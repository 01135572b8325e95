"""DeltaConvBlock: shapes, dtypes, argument errors, semantics (gate scale, pool branch, locality)."""
import math

import pytest
import torch

from aconvlib.mixers.deltaconv import DeltaConvBlock, stage_gradient_maps, stage_grid


@pytest.mark.parametrize("grid", [(8, 8), (7, 5), (1, 6), (9, 3), (2, 2)])
def test_shapes_non_square_and_odd(grid):
    torch.manual_seed(0)
    blk = DeltaConvBlock(32, 5)
    x = torch.randn(3, grid[0] * grid[1], 32)
    y = blk(x, grid)
    assert y.shape == x.shape and torch.isfinite(y).all()
    stages = blk.forward_stages(x, grid)
    assert [tuple(s.shape) for s in stages] == [(3, *grid, 8)] * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(dtype):
    torch.manual_seed(0)
    blk = DeltaConvBlock(24, 3, scales=(1, 0.5, 0.25)).to(dtype)
    x = torch.randn(2, 9 * 11, 24, dtype=dtype)
    y = blk(x, (9, 11))
    assert y.dtype == dtype and torch.isfinite(y).all()
    ref = blk.float()(x.float(), (9, 11))
    assert torch.allclose(y.float(), ref, atol=0.05, rtol=0.05)


def test_layout_and_parameters():
    blk = DeltaConvBlock(64, 9)
    assert blk.inner_dim == 32
    assert blk.in_proj.out_features == 32 and blk.out_proj.in_features == 32  # 2 stages × 32/2
    assert [tuple(s.weight.shape) for s in blk.stages] == [(9, 9, 32)] * 2
    n = 64 * 32 + 32 + 2 * 81 * 32 + 32 * 64 + 64 + 64 * 64 + 64
    assert sum(p.numel() for p in blk.parameters()) == n
    from aconvlib.mixers.flops import deltaconv_params

    assert deltaconv_params(64, 9) == n


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=16, kernel_size=4), "odd"),
    (dict(dim=16, kernel_size=0), "odd"),
    (dict(dim=16, kernel_size=3.0), "odd"),
    (dict(dim=16, scales=(1, 0)), r"\(0, 1\]"),
    (dict(dim=16, scales=(1, 2)), r"\(0, 1\]"),
    (dict(dim=16, scales=()), "at least one"),
    (dict(dim=16, kernel_size=[3, 5, 7]), "kernel sizes"),
    (dict(dim=6, ratio=0.5), "even integer"),
    (dict(dim=16, ratio=0.3), "even integer"),
    (dict(dim=0), "positive"),
    (dict(dim=16, gate="relu"), "gate"),
    (dict(dim=16, gate_scale="sqrt"), "gate_scale"),
    (dict(dim=16, backend="cuda"), "backend"),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeltaConvBlock(**kwargs)


def test_input_errors():
    blk = DeltaConvBlock(16, 3)
    with pytest.raises(ValueError, match="does not match"):
        blk(torch.randn(1, 20, 16), (4, 4))
    with pytest.raises(ValueError, match="channels"):
        blk(torch.randn(1, 16, 8), (4, 4))
    with pytest.raises(ValueError, match=r"\[B, N, C\]"):
        blk(torch.randn(16, 16), (4, 4))
    with pytest.raises(ValueError, match="pair"):
        blk(torch.randn(1, 16, 16), 16)


def test_gate_scale_variants():
    torch.manual_seed(0)
    x = torch.randn(1, 36, 32)
    outs = {}
    for gs in ("divide", "multiply", 1.0):
        torch.manual_seed(1)
        blk = DeltaConvBlock(32, 3, scales=(1,), gate_scale=gs)
        outs[gs] = blk.forward_stages(x, (6, 6))[0]
    half = 8  # C·r/2
    assert blk.stages[0].gate_factor == 1.0
    assert torch.allclose(outs["divide"] * half, outs["multiply"], atol=1e-5)
    assert torch.allclose(outs["divide"] * math.sqrt(half), outs[1.0], atol=1e-6)


def test_pool_branch_reads_the_block_input_and_is_global():
    torch.manual_seed(0)
    blk = DeltaConvBlock(16, 3)
    for p in blk.in_proj.parameters():
        torch.nn.init.zeros_(p)  # pyramid sees zeros: output = out_proj.bias + pool branch
    x = torch.randn(2, 25, 16)
    y = blk(x, (5, 5))
    expected = blk.out_proj.bias + blk.pool_proj(x.mean(1, keepdim=True))
    assert torch.allclose(y, expected.expand_as(y), atol=1e-6)


def test_stage_gradient_maps_are_local_per_stage():
    torch.manual_seed(0)
    blk = DeltaConvBlock(16, 3)
    rf = stage_gradient_maps(blk, (15, 15), position=(7, 7))
    assert list(rf) == ["stage_0", "stage_1", "local", "total"]       # stable keys; labels are the book's
    s0, s1 = rf["stage_0"], rf["stage_1"]
    assert (s0 > 0).sum() == 9  # 3×3 at full resolution
    assert (s0 > 0)[6:9, 6:9].all()
    assert 9 < (s1 > 0).sum() < 225  # wider at half resolution, still local
    assert (rf["total"] > 0).all()  # pool branch: every position
    assert (rf["local"] > 0).sum() == (s1 > 0).sum()


def test_stage_grid():
    assert stage_grid((64, 64), 0.5) == (32, 32)
    assert stage_grid((7, 5), 0.5) == (3, 2)
    assert stage_grid((1, 9), 0.5) == (1, 4)
    assert stage_grid((9, 9), 1 / 3) == (3, 3)


def test_stage_gradient_maps_use_the_one_gradient_definition():
    """The total map is analysis.receptive_field's G_p of the whole block (one definition of the gradient map)."""
    from aconvlib.analysis.receptive_field import gradient_map

    torch.manual_seed(1)
    blk = DeltaConvBlock(8, 3)
    x = torch.randn(1, 49, 8)
    rf = stage_gradient_maps(blk, (7, 7), position=(2, 5), x=x)
    g = gradient_map(lambda t: blk(t, (7, 7)), x, (7, 7), (2, 5)).float()
    assert torch.equal(rf["total"], g)
    with pytest.warns(DeprecationWarning, match="stage_gradient_maps"):
        from aconvlib.mixers.deltaconv import receptive_field  # noqa: F401  (the earlier name)
