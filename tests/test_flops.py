import pytest

from aconvlib.mixers.flops import attention_flops, flops_vs_resolution, self_attention_table


def test_attention_flops_formula_known_values():
    # 4NC^2 + 4N^2C + 4N^2
    assert attention_flops(1, 1) == 12
    assert attention_flops(2, 3) == 4 * 2 * 9 + 4 * 4 * 3 + 4 * 4
    # SD1.5 top layer at 512 px: N = 4096, C' = 320
    assert attention_flops(4096, 320) == 4 * 4096 * 320**2 + 4 * 4096**2 * 320 + 4 * 4096**2 == 23_219_666_944


def test_attention_flops_rejects_bad_sizes():
    with pytest.raises(ValueError):
        attention_flops(0, 320)


def test_quadratic_growth():
    # N^2 terms dominate: doubling the side (4x tokens) gives close to 16x for large N
    r = attention_flops(4 * 65536, 320) / attention_flops(65536, 320)
    assert 15 < r < 16


def test_self_attention_table_sd15():
    t = self_attention_table("sd15", (512, 1024))
    assert len(t) == 16
    top = t.iloc[0]
    assert top["grid@512"] == "64x64" and top["grid@1024"] == "128x128"
    assert top["GFLOPs@512"] == pytest.approx(23.219666944)


def test_flops_vs_resolution_non_square():
    df = flops_vs_resolution(["pixart-sigma-1024"], [512, (1440, 2560)])
    assert list(df["size"]) == ["512x512", "1440x2560"]
    assert (df["layers"] == 28).all()
    n = (1440 // 16) * (2560 // 16)
    assert df["total_GFLOPs"].iloc[1] == pytest.approx(28 * attention_flops(n, 1152) / 1e9)


def test_paper_table1_self_attention_row_is_reproduced():
    """The paper's Table 1 self-attention row = one module, batch 2, 2 FLOPs per MAC (within 0.5%)."""
    from aconvlib.mixers.flops import table1_comparison

    t = table1_comparison()
    assert len(t) == 12
    assert ((t["attn ours/paper"] - 1).abs() < 0.005).all(), t[["model", "size", "attn ours/paper"]]
