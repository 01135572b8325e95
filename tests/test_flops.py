import pytest

from aconvlib.book.flops_tables import flops_vs_resolution, self_attention_table
from aconvlib.mixers.flops import attention_flops


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
    from aconvlib.book.table1 import table1_comparison

    t = table1_comparison()
    assert len(t) == 12
    assert ((t["attn ours/paper"] - 1).abs() < 0.005).all(), t[["model", "size", "attn ours/paper"]]


# ------------------------------------------------------------------------------------------------
# every mixer kind: per-layer rows, FlopCounterMode cross-check, Table 1 baselines
# ------------------------------------------------------------------------------------------------
import torch  # noqa: E402
from conftest import tiny_pixart, tiny_unet  # noqa: E402

from aconvlib.mixers.convert import get_adapter, mixer_layers, to_mixer  # noqa: E402
from aconvlib.mixers.flops import (count_mixer_flops, deltaconv_flops, deltaconv_flops_breakdown,  # noqa: E402
                                   ditfastattn_window, linear_attention_params, mixer_table)
from aconvlib.book.flops_tables import mixer_table_frame  # noqa: E402
from aconvlib.book.table1 import table1_comparison  # noqa: E402

OPTIONS = {"deltaconv": dict(kernel_sizes=3), "linear": dict(hidden_ratio=0.5), "window": dict(window=5, mode="2d")}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_deltaconv_breakdown_is_the_formula_split():
    # hand count, grid 5×7, C = 16, K = 3, Ci = 8, stages 5×7 and 2×3:
    # matmul 2·35·16·8 + 2·35·9·8 + 2·6·9·8 + 2·35·8·16 + 2·16² = 24336
    # other  35·8 + (35·8 + 8·35·4) + (35·4 + 6·4) + 3·35·16 + 16 = 3540
    assert deltaconv_flops_breakdown((5, 7), 16, 3) == {"matmul": 24336, "elementwise": 3540}
    assert deltaconv_flops((5, 7), 16, 3) == 27876


@pytest.mark.parametrize("kind", list(OPTIONS))
@pytest.mark.parametrize("make,hw", [(tiny_unet, (12, 20)), (tiny_pixart, (6, 10))], ids=["unet", "pixart"])
def test_flop_counter_agrees_with_the_formulas(kind, make, hw):
    """FlopCounterMode sees exactly the matrix-product part of each formula (see count_mixer_flops)."""
    model = to_mixer(make(), kind, **OPTIONS[kind])
    rows = count_mixer_flops(model, hw, batch=2)
    assert [r["layer"] for r in rows] == [n for n, _ in mixer_layers(model)]
    for r in rows:
        assert r["matches"], r
        n = r["grid"][0] * r["grid"][1]
        if kind == "window":  # projections (+ the dense N×N product where PyTorch counts the SDPA kernel)
            assert r["counted"] in (r["expected"], r["expected"] + r["dense_sdpa"])
            assert 0 < r["formula"] - r["expected"] < r["dense_sdpa"] + 2 * 4 * n * n  # window pairs < N²
        else:
            assert r["counted"] == r["expected"] < r["formula"]  # elementwise work is not counted


@pytest.mark.parametrize("kind", list(OPTIONS))
def test_mixer_table_of_a_stock_model_equals_that_of_the_converted_one(kind):
    stock, converted = tiny_unet(), to_mixer(tiny_unet(), kind, **OPTIONS[kind])
    a, b = mixer_table(stock, kind, (12, 20), **OPTIONS[kind]), mixer_table(converted, latent_hw=(12, 20))
    key = lambda r: (r.name, r.kind, r.grid, r.size, r.attn_params, r.mixer_params, r.attn_flops,  # noqa: E731
                     r.mixer_flops, r.counted_flops, r.formula)
    assert [key(r) for r in a] == [key(r) for r in b] and len(a) == 7
    own = {n: sum(p.numel() for p in m.block.parameters()) for n, m in mixer_layers(converted)}
    if kind == "window":
        assert all(r.mixer_params == 0 for r in b)  # runs on attn1's weights
    else:
        assert {r.name: r.mixer_params for r in b} == own
        assert sum(own.values()) == sum(p.numel() for p in get_adapter(converted).parameters())
    df = mixer_table_frame(b)
    assert df["layer"].iloc[-1] == "TOTAL" and df["mixer GFLOPs (2/MAC)"].iloc[-1] == pytest.approx(
        sum(r.mixer_flops for r in b) / 1e9)
    with pytest.raises(ValueError, match="already holds"):
        mixer_table(converted, "deltaconv" if kind != "deltaconv" else "linear")


@pytest.mark.parametrize("c,ratio,qkv_bias", [(16, 1.0, False), (24, 0.5, True), (320, 1.5, False)])
def test_linear_attention_params_formula(c, ratio, qkv_bias):
    from aconvlib.mixers.linear_attention import GeneralizedLinearAttention

    m = GeneralizedLinearAttention(c, 4, c // 4, hidden_ratio=ratio, qkv_bias=qkv_bias)
    assert linear_attention_params(c, ratio, qkv_bias) == sum(p.numel() for p in m.parameters())


def test_table1_linfusion_and_ditfastattn_rows():
    t = table1_comparison()
    assert len(t) == 12
    pix, sd = t[t["model"] == "pixart"].set_index("size"), t[t["model"] == "sd15"].set_index("size")
    # DiTFastAttn: back-solved window reproduces the paper; it keeps 72-90% of the N² work
    assert ((pix["DiTFastAttn ours/paper"] - 1).abs() < 2e-4).all()
    assert pix["DiTFastAttn kept N² share"].between(0.70, 0.90).all()
    assert (pix["DiTFastAttn window (1d)"] % 2 == 1).all() and sd["DiTFastAttn paper"].isna().all()
    # LinFusion: the paper counts the state as one C×C head (within 1.2%); per-head it is ~0.8 of the paper
    other = t[~((t["model"] == "pixart") & (t["size"] == "2K"))]
    assert other["LinFusion ours (1 head)/paper"].between(0.985, 0.992).all()
    assert other["LinFusion ours/paper"].between(0.80, 0.82).all()
    # the paper's PixArt-2K LinFusion entry is for 2560×1440 (14,400 tokens), not the 2048² of its attention column
    assert abs(pix.loc["2K", "LinFusion paper tokens"] - 14400) <= 2 and pix.loc["2K", "grid"] == "128×128"
    assert list(table1_comparison(baselines=False).columns) == list(t.columns[:13])
    rho, w = ditfastattn_window(1024, 1152, 30.41e9)
    assert 0.89 < rho < 0.90 and w == 1387


# ---------------------------------------------------------------- issue 20: chapter 0's statements, computed
def test_dominant_terms_pixart_512_projections_dominate():
    from aconvlib.book.flops_tables import dominant_terms
    from aconvlib.mixers.flops import attention_terms

    t = attention_terms(32 * 32, 1152)           # one PixArt-Σ layer at 512 px
    assert t["projections"] > t["quadratic"]     # 4NC'² = 5.4 G > 4N²C' + 4N² = 4.8 G
    assert round(t["projections"] / 1e9, 1) == 5.4 and round(t["quadratic"] / 1e9, 1) == 4.8
    d = dominant_terms(["pixart-sigma-512", "sd15"], [512, 1024]).set_index(["model", "px"])
    assert d.loc[("pixart-sigma-512", 512), "dominant"] == "projections"
    assert d.loc[("pixart-sigma-512", 1024), "dominant"] == "N² terms"
    assert d.loc[("sd15", 512), "dominant"] == "N² terms"
    assert d.loc[("pixart-sigma-512", 512), "projections_GFLOPs"] == pytest.approx(28 * t["projections"] / 1e9)


def test_growth_per_doubling_is_computed_not_16():
    from aconvlib.book.flops_tables import flops_vs_resolution, growth_per_doubling

    g = growth_per_doubling(flops_vs_resolution(["sdxl"], [512, 1024, 1536])).set_index("from_px")["factor"]
    assert list(g.index) == [512.0]              # 1536 is no doubling of anything listed
    assert g.loc[512.0] == pytest.approx(7.43, abs=0.01)   # SDXL 512→1024: 7.4×, not 16×


def test_table1_attention_conventions():
    from aconvlib.book.table1 import table1_attention_conventions

    c = table1_attention_conventions().set_index(["model", "size"])
    ours = c["8NC'², batch 2, 4K = 4096×2160"]
    assert (ours - 1).abs().max() < 0.0035                        # our convention reproduces the row
    text = c["8NC'², batch 2, 4K = 3840×2160"]
    assert text.loc[("sd15", "4K")] == pytest.approx(0.882, abs=0.002)   # the paper's own 4K frame does not
    assert (text.drop(index=[("sd15", "4K"), ("pixart", "4K")]) == ours.drop(index=[("sd15", "4K"), ("pixart", "4K")])).all()
    assert (c["paper formula, batch 1"] < 0.51).all()                     # Sec. 3.1's formula, one sample: about half
