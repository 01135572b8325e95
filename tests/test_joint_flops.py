"""FLUX's rows of Table 1 (a joint attention layer vs its ΔConv hybrid) and FLUX's layer shape in the block
benchmark: the formula against FlopCounterMode on a converted tiny FLUX layer, the rows against the formula."""
import pytest
import torch

from aconvlib.mixers.flops import attention_flops_2mac, deltaconv_flops, deltaconv_flops_breakdown, joint_flops


def test_joint_flops_parts_add_up_and_the_attention_is_the_joint_sequence():
    j = joint_flops((4, 6), 5, 32, 3)
    n, l, c, s = 24, 5, 32, 29
    assert j["attention"] == attention_flops_2mac(s, c)
    assert j["hybrid"] == j["projections"] + j["text_queries"] + j["image_to_text"] + j["deltaconv"]
    assert j["projections"] == 8 * s * c * c and j["deltaconv"] == deltaconv_flops((4, 6), c, 3)
    assert j["text_queries"] == 4 * l * s * c + 4 * l * s and j["image_to_text"] == 4 * n * l * c + 4 * n * l
    assert j["image_quadratic"] == 4 * n * n * c + 4 * n * n
    assert joint_flops((4, 6), 5, 32, 3, out_projection=False)["projections"] == 6 * s * c * c
    # the hybrid has no N² term: doubling the grid side at most ~4× its cost, attention's ~16× once N ≫ L
    big, bigger = joint_flops((64, 64), 5, 32, 3), joint_flops((128, 128), 5, 32, 3)
    assert bigger["hybrid"] / big["hybrid"] < 4.1 and bigger["attention"] / big["attention"] > 12
    with pytest.raises(ValueError):
        joint_flops((0, 4), 5, 32)


def test_joint_flops_matches_flop_counter_on_a_converted_flux_double_block():
    """FlopCounterMode counts matrix products (2 per MAC) and not the CPU SDPA kernel nor elementwise work: on a
    converted double-stream layer that is the projections of all S tokens plus the ΔConvBlock's matmul part."""
    from torch.utils.flop_counter import FlopCounterMode

    from aconvlib.mixers import kernels
    from aconvlib.mixers.convert import latent_size, mixer_layers, to_deltaconv
    from aconvlib.models import denoise
    from aconvlib.testing.dummies import tiny_flux, tiny_inputs

    model = to_deltaconv(tiny_flux(), kernel_sizes=3, seed=0)
    inp = tiny_inputs(model, hw=(8, 12), text_len=5)
    seen = {}

    def keep(name):
        def pre(module, args, kwargs):
            seen.setdefault(name, (args, kwargs))
        return pre

    layers = dict(mixer_layers(model))
    hooks = [layers[n].register_forward_pre_hook(keep(n), with_kwargs=True) for n in layers]
    with torch.no_grad():
        denoise(model, inp["x"], inp["t"], inp["text_states"], **inp["cond"])    # the layer's real arguments
    for h in hooks:
        h.remove()
    args, kwargs = seen["transformer_blocks.0.attn"]
    with torch.no_grad(), kernels.use_backend("torch"), latent_size(model, (8, 12)), \
            FlopCounterMode(display=False) as fc:
        layers["transformer_blocks.0.attn"](*args, **kwargs)
    counted = fc.get_total_flops()
    shape = kwargs.get("hidden_states", args[0] if args else None).shape
    c = shape[-1]
    grid = (4, 6)                       # FLUX packs 2×2 latent cells per token
    per_sample = joint_flops(grid, 5, c, 3)["projections"] + deltaconv_flops_breakdown(grid, c, 3)["matmul"]
    assert counted == shape[0] * per_sample                     # batch 2


def test_table1_joint_rows_follow_the_formula_at_the_pixart_frames():
    from aconvlib.book.module_shapes import module_shape
    from aconvlib.book.table1 import paper_table1, table1_joint

    t = table1_joint()
    shape = module_shape("flux-dev")
    assert (shape["channels"], shape["heads"], shape["kernel_size"], shape["px_per_token"]) == (3072, 24, 13, 16)
    assert list(t["size"]) == list(paper_table1()["pixart"]["sizes"])
    row = t.set_index("size").loc["16K"]
    assert row["grid"] == "540×960" and row["text tokens"] == 512
    j = joint_flops((540, 960), 512, 3072, 13)
    assert row["attn ours"] == pytest.approx(j["attention"] / 1e9) and row["hybrid ours"] == pytest.approx(j["hybrid"] / 1e9)
    assert row["attn/hybrid ours"] > 50 and t.set_index("size").loc["512", "attn/hybrid ours"] < 1.2
    assert t["attn/hybrid ours"].is_monotonic_increasing
    assert table1_joint(batch=2)["attn ours"].iloc[0] == pytest.approx(2 * t["attn ours"].iloc[0])
    assert table1_joint(text_tokens=0)["hybrid: text attention"].eq(0).all()


def test_block_benchmark_times_flux_layer_shape_and_keeps_the_stored_seed_order():
    from aconvlib.book.benchmarks import bench_blocks, triton_output_share
    from aconvlib.book.module_shapes import BENCH_MODELS, MODELS

    assert "flux" in BENCH_MODELS and MODELS["flux"]["channels"] == 3072
    torch.set_num_threads(1)
    res = bench_blocks(["flux"], sizes=[128], modes=("fwd",), impls=("sdpa", "torch"), device="cpu", quiet=True)
    (row,) = res["rows"]
    assert (row["model"], row["grid"], row["channels"], row["kernel_size"]) == ("flux", "8x8", 3072, 13)
    assert row["sdpa_ms"] > 0 and row["torch_ms"] > 0 and row["speedup_torch"] == pytest.approx(
        row["sdpa_ms"] / row["torch_ms"])
    stored = triton_output_share(grid_side=4)
    assert set(stored) == {"sd15-top", "pixart-sigma"}
    with_flux = triton_output_share(["sd15-top", "pixart-sigma", "flux"], grid_side=4)
    assert {k: with_flux[k] for k in stored} == stored         # the stored shapes' seeds are unchanged
    assert 0 < with_flux["flux"] < 1


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_joint_conversion_table_counts_what_to_deltaconv_builds(kind, monkeypatch):
    from aconvlib.book import flops_tables
    from aconvlib.mixers.convert import get_adapter, to_deltaconv
    from aconvlib.testing.dummies import tiny_flux, tiny_sd3

    make = tiny_flux if kind == "flux" else tiny_sd3
    monkeypatch.setattr(flops_tables, "load_denoiser", lambda *a, **k: make())
    model = "flux-dev" if kind == "flux" else "sd3.5-medium"
    t = flops_tables.joint_conversion_table(model, px=64, text_tokens=7, kernel_sizes=3)
    body, total = t.iloc[:-1], t.iloc[-1]
    converted = to_deltaconv(make(), kernel_sizes=3)
    assert total["new params (M)"] * 1e6 == pytest.approx(sum(p.numel() for p in get_adapter(converted).parameters()))
    assert total["attn params (M)"] * 1e6 == pytest.approx(
        sum(p.numel() for n, m in make().named_modules() if n in set(body["layer"]) for p in m.parameters()))
    first = body.iloc[0]
    assert first["grid"] == "4×4" and first["text tokens"] == 7         # 64 px: 8×8 latent, 2×2 per token
    assert first["attn GFLOPs (2/MAC)"] * 1e9 == pytest.approx(joint_flops((4, 4), 7, 32, 3)["attention"])
    assert first["replacement GFLOPs"] * 1e9 == pytest.approx(joint_flops((4, 4), 7, 32, 3)["hybrid"])
    kinds = set(body["block type"])
    assert kinds == ({"double", "single"} if kind == "flux" else {"joint", "self"})
    if kind == "flux":          # the single-stream attention has no output projection
        single = body[body["block type"] == "single"].iloc[0]
        assert single["attn GFLOPs (2/MAC)"] * 1e9 == pytest.approx(
            joint_flops((4, 4), 7, 32, 3, out_projection=False)["attention"])
    else:                       # SD3.5's image-only attn2: plain attention vs a ΔConvBlock
        self_row = body[body["block type"] == "self"].iloc[0]
        assert self_row["text tokens"] == 0
        assert self_row["attn GFLOPs (2/MAC)"] * 1e9 == pytest.approx(attention_flops_2mac(16, 32))
        assert self_row["replacement GFLOPs"] * 1e9 == pytest.approx(deltaconv_flops((4, 4), 32, 3))
