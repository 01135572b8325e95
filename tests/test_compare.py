"""The comparison on the embedded models (aconvlib.mini.compare) and the token-mixer benchmark (bench_mixers)."""
import json

import pandas as pd
import pytest
import torch

from aconvlib.mini import compare as C


def sweep_frame(teacher, values):
    rows = [{"K": None, "prompt_adherence": teacher}] + [{"K": k, "prompt_adherence": v} for k, v in values.items()]
    return pd.DataFrame(rows)


def test_smallest_kernel_keeping():
    f = sweep_frame(0.9, {3: 0.2, 5: 0.7, 7: 0.88, 9: 0.91, 13: 0.9})
    assert C.smallest_kernel_keeping(f, 0.05) == 7
    assert C.smallest_kernel_keeping(f, 0.25) == 5
    # a dip at a larger K moves the answer past it: every larger K must keep the quality
    f = sweep_frame(0.9, {3: 0.9, 5: 0.5, 7: 0.9})
    assert C.smallest_kernel_keeping(f, 0.05) == 7
    assert C.smallest_kernel_keeping(sweep_frame(0.9, {3: 0.1, 5: 0.2}), 0.05) is None


def test_tolerance_is_at_least_one_prompt_and_the_text_says_what_was_tried():
    # 16 prompts: the teacher 15/16, K = 13 and 15 lose one prompt (14/16): within one prompt's share (6.25%)
    f = sweep_frame(15 / 16, {3: 0.0, 9: 10 / 16, 13: 14 / 16, 15: 14 / 16}).assign(n_prompts=16, grid=16)
    assert C.keep_tolerance(f, 0.05) == pytest.approx(1 / 16)
    assert C.keep_tolerance(f, 0.10) == pytest.approx(0.10)
    assert C.smallest_kernel_keeping(f, 0.05) == 13
    assert C.describe_smallest_kernel(f, 13) == "13 (0.81 of the 16-token side)"
    f = f.assign(n_prompts=64)         # the same shares on 64 prompts: a 6.25% loss is more than 5%
    assert C.smallest_kernel_keeping(f, 0.05) is None
    assert C.describe_smallest_kernel(f, None) == "none of K = 3, 9, 13, 15 (K = 15 scores 88% against the teacher's 94%)"
    assert C.keep_tolerance(sweep_frame(0.9, {3: 0.1}), 0.05) == 0.05      # no prompt count: as given


def test_student_info_reads_budget(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"distill": {"steps": 80, "batch": 8, "lr": 3e-4, "seed": 0}}))
    (d / "distill_log.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"step": 5, "loss": 1.0}, {"step": 80, "loss": 0.5}, {"summary": {"seconds": 600.0}},
        {"summary": {"seconds": 120.0}}]))
    i = C.student_info(d)
    assert i["samples"] == 640 and i["final_loss"] == 0.5 and i["minutes"] == pytest.approx(12.0)


def test_variants_name_missing_students(monkeypatch, tmp_path):
    monkeypatch.setattr(C, "student_dir", lambda model, mixer, budget="cpu": tmp_path / f"{model}-{mixer}-{budget}")
    variants, notes = C.comparison_variants("mini-sd", na_kernel=5, window=25)
    methods = [v.method for v in variants]
    assert methods[0] == "self-attention" and methods[-2:] == ["window", "na"]
    assert "deltaconv" in methods          # the shipped student
    assert sum("CPU-budget" in n for n in notes) == 2
    assert variants[-1].kernel == 5 and variants[-2].options == {"window": 25, "mode": "1d"}
    assert variants[-1].method is C.Method.NA and variants[-2].window == 25        # typed rows: no label to parse


@pytest.mark.slow
def test_training_free_variants_restore_the_teacher_and_evaluate():
    from aconvlib.models import get_denoiser, load_pipeline

    pipe = load_pipeline("mini-dit")
    den = get_denoiser(pipe)
    before = {n: type(m).__name__ for n, m in den.named_modules() if n.endswith("attn1")}
    procs = {k: type(v).__name__ for k, v in den.attn_processors.items()}
    variants, _ = C.comparison_variants("mini-dit", na_kernel=3, window=9, cpu_budget=False, shipped=False)
    from aconvlib.book.comparison import table3_live
    from aconvlib.book.labels import variant_label

    frame, notes, images = table3_live(["mini-dit"], ["a large red circle at the center"] * 2, steps=2,
                                       na_kernel=3, window=9, n_real=50, cpu_budget=False, shipped=False,
                                       return_images=True)
    assert list(frame["method"]) == ["self-attention", "window", "na"]
    assert list(frame["variant"]) == ["self-attention (teacher)", "window attention (9 keys)", "NA K=3"]
    assert frame["n_prompts"].tolist() == [2, 2, 2]
    assert set(images) == {("mini-dit", variant_label(v)) for v in variants}
    # training-free variants are undone: the teacher comes back unchanged
    for v in variants:
        with C.variant_pipeline("mini-dit", v, teacher=pipe):
            pass
    assert {n: type(m).__name__ for n, m in den.named_modules() if n.endswith("attn1")} == before
    assert {k: type(v).__name__ for k, v in den.attn_processors.items()} == procs
    sweep = C.na_sweep("mini-dit", [3, 15], ["a large red circle at the center"] * 2, steps=2, n_real=50, teacher=pipe)
    assert sweep["K"].isna().tolist() == [True, False, False]
    assert sweep["K_per_level"].tolist()[1:] == ["3", "15"]
    # every live row keeps its per-image results, so the chapter can show intervals next to the shares
    from aconvlib.book.comparison import with_intervals
    from aconvlib.mini.intervals import adherence_estimate

    shown = with_intervals(sweep)
    first = sweep.iloc[0].to_dict()
    assert shown["adherence [95% CI]"].iloc[0] == adherence_estimate(first).format(pct=True)
    assert shown["adherence [95% CI]"].str.endswith("(n=2)").all() and shown["FDD [95% CI]"].str.contains(r"\[").all()
    stored = pd.DataFrame([{"fdd": 5.0, "intervals": {"adherence": {"value": 0.5, "lo": 0.2, "hi": 0.8, "n": 8},
                                                     "fdd": {"value": 5.0, "lo": 4.0, "hi": 6.0, "n": 8}}},
                           {"fdd": 5.0}])   # an older stored row without per-image results
    assert with_intervals(stored)["adherence [95% CI]"].tolist() == ["50% [20%, 80%] (n=8)", "—"]
    assert with_intervals(stored)["FDD [95% CI]"].tolist() == ["5 [4, 6] (n=8)", "—"]


@pytest.mark.slow
def test_mini_receptive_fields_teacher_and_student():
    from aconvlib.mini import adapter_dir
    from aconvlib.mixers import load_mixer
    from aconvlib.models import load_pipeline

    teacher = load_pipeline("mini-dit")
    rfs = C.mini_receptive_fields(teacher, n=2, timesteps=(500,), positions=1)
    assert len(rfs) == 4 or len(rfs) > 0
    assert all(r.grid == (16, 16) and 1 <= r.erf <= 31 for r in rfs)
    student = load_mixer(load_pipeline("mini-dit"), str(adapter_dir("mini-dit") / "adapter"), kind="deltaconv")
    srfs = C.mini_receptive_fields(student, n=2, timesteps=(500, 100), positions=1)
    assert [r.name for r in srfs] == [r.name for r in rfs]
    assert all(r.info["kind"] == "deltaconv" and len(r.info["per_timestep_erf"]) == 2 for r in srfs)


def test_bench_mixers_rows_and_markdown(tmp_path):
    from aconvlib.book import benchmarks as B
    from aconvlib.book.benchmark_tables import mixer_frame
    from aconvlib.mixers.timing import parse_size

    res = B.bench_mixers(models=["sd15-top"], sizes=["32x48"], modes=["fwd", "fwdbwd"], kernels_k=(3,), na_kernel=3,
                         device="cpu", out=tmp_path, tag="t", command="test", quiet=True)
    assert len(res["rows"]) == 2
    r = res["rows"][0]
    assert r["grid"] == "4x6" and r["tokens"] == 24
    for key in ("sdpa", "na_k3", "window_w9", "linear", "deltaconv_k3_torch"):
        assert r[f"{key}_ms"] > 0
    assert r["deltaconv_k3_triton_ms"] is None
    assert r["linear_vs_sdpa"] == pytest.approx(r["sdpa_ms"] / r["linear_ms"])
    md = (tmp_path / "bench_mixers_t.md").read_text()
    assert "NA K=3" in md and "Command: `test`" in md and "Paper, Table 2" in md
    stored = json.loads((tmp_path / "bench_mixers_t.json").read_text())
    assert stored["meta"]["na_backend"] == "torch" and stored["meta"]["window"] == 9
    f = mixer_frame(stored, "fwd", ratios=True)
    assert f.loc["Self-attention (SDPA)", "32×48"] == 1.0
    assert parse_size("1440x2560") == (1440, 2560) and parse_size(256) == (256, 256)
    with pytest.raises(ValueError, match="unknown mixer"):
        B.bench_mixers(impls=["nope"], device="cpu", quiet=True)


@pytest.mark.parametrize("bad", ["1x", "x512", "512x", "12a", "0", "-4"])
def test_bench_sizes_are_checked_before_any_work(bad, tmp_path, capsys):
    from aconvlib.cli import main
    from aconvlib.book import benchmarks as B
    from aconvlib.mixers.timing import parse_size

    with pytest.raises(SystemExit) as e:
        main(["bench-mixers", "--sizes", bad, "--out", str(tmp_path)])
    assert e.value.code == 2 and "--sizes" in capsys.readouterr().err
    with pytest.raises(ValueError):
        parse_size(bad)
    with pytest.raises(ValueError, match="smaller than one token of sd15-top"):
        B.bench_mixers(models=["sd15-top"], sizes=["64", "4"], out=tmp_path, device="cpu", quiet=True)
    assert list(tmp_path.iterdir()) == []
    assert parse_size(" 1024 × 576 ") == (1024, 576)


def test_bench_commands_pass_every_argument_to_the_benchmark(capsys):
    from aconvlib.cli import main

    for argv in (["bench-mixers", "--help"], ["bench-blocks", "--", "-h"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        out = capsys.readouterr().out
        assert e.value.code == 0 and f"usage: aconv {argv[0]}" in out and "--sizes" in out
    with pytest.raises(SystemExit) as e:       # other commands still refuse what they do not know
        main(["models", "--sizes", "512"])
    assert e.value.code == 2 and "unrecognized arguments: --sizes 512" in capsys.readouterr().err


def test_na_processor_with_a_fixed_grid_matches_the_mask():
    from diffusers.models.attention_processor import Attention

    from aconvlib.mixers.neighborhood import NeighborhoodAttnProcessor, neighborhood_mask

    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    x = torch.randn(1, 25, 8)
    ref = attn(x, attention_mask=None)
    attn.set_processor(NeighborhoodAttnProcessor(7, "torch", grid=(5, 5)))
    torch.testing.assert_close(attn(x), ref)       # K ≥ grid: full attention
    attn.set_processor(NeighborhoodAttnProcessor(3, "torch", grid=(5, 5)))
    assert not torch.allclose(attn(x), ref)
    assert neighborhood_mask((4, 5), 3).sum(1).min() == 9


def test_erf_table_and_summary():
    from aconvlib.analysis.receptive_field import mixer_receptive_field
    from aconvlib.book.comparison import erf_table, summary_markdown, variant_row
    from aconvlib.book.table1 import table1_comparison

    grid = (9, 9)
    x = torch.randn(1, 81, 2)
    ident = mixer_receptive_field(lambda t: t, x, grid, name="a.attn1")
    glob = mixer_receptive_field(lambda t: t.mean(1, keepdim=True).expand_as(t), x, grid, name="a.attn1")
    t = erf_table({"teacher": [glob], "ΔConv (shipped)": [ident]}, {"a.attn1": "L0"})
    assert t.loc[0, "layer"] == "L0" and t.loc[0, "ERF teacher"] == 9 and t.loc[0, "ERF ΔConv (shipped)"] == 1
    assert t.loc[0, "mass in teacher's ERF window, ΔConv (shipped)"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="layer 0"):
        erf_table({"a": [ident], "b": [mixer_receptive_field(lambda t: t, x, grid, name="other")]})
    t3 = pd.DataFrame([{"model": "m", "variant": "self-attention (teacher)", "n_prompts": 4, "prompt_adherence": 0.5,
                        "fdd": 10.0}, {"model": "m", "variant": "NA K=3", "n_prompts": 4, "prompt_adherence": 0.25,
                                       "fdd": 20.0}])
    assert variant_row(t3, "m", "NA K=3")["fdd"] == 20.0 and variant_row(t3, "m", "x") is None
    sweep = pd.DataFrame([{"model": "m", "K": None, "grid": 16, "n_prompts": 4, "prompt_adherence": 0.5},
                          {"model": "m", "K": 3, "grid": 16, "n_prompts": 4, "prompt_adherence": 0.5}])
    md = summary_markdown(["m"], table1_comparison(), t3, "live", sweep, {"m": t}, 0.05)
    assert "NA K=3: 25% [5%, 70%] / 20" in md and "smallest K" in md and "0.988" in md   # adherence with its Wilson interval
    assert "ΔConv on par" not in md and "worse in FDD vs linfusion on sd15_512" in md    # Table 3 computed, not "match or beat"
    assert "uniform field at the same positions 9" in md
    assert "(within 25.0%, 4 prompts): 3 (0.19 of the 16-token side)" in md   # one prompt of 4 > 5%


def test_real_comparison_without_models_or_weights(empty_hub):
    from aconvlib.book.comparison import real_comparison

    rep = real_comparison([])
    assert rep.rows == [] and "real_models is empty" in rep.lines[0]
    rep = real_comparison(["sd15"], n_prompts=1, steps=1)
    assert rep.rows == [] and any("sd15: weights not available" in l for l in rep.lines)
    with pytest.raises(ValueError, match="not in real_models"):
        real_comparison(["sd15"], {"sdxl": {"deltaconv": "x"}})


@pytest.mark.slow
def test_real_comparison_on_the_fixture_hub(fixture_hub, tmp_path):
    """The `full` code path on a tiny random-weight SD1.5: teacher, window attention and NA from the same noise; a
    missing CLIP encoder and a missing adapter are named, not replaced."""
    from aconvlib.book.comparison import real_comparison

    # "deltaconv": "none": without it the authors' released SD1.5 student (cached in the fixture hub) is the ΔConv row
    rep = real_comparison(["sd15"], {"sd15": {"linear": str(tmp_path / "none"), "deltaconv": "none"}}, n_prompts=2,
                          steps=2, height=64, width=64, na_kernel=3)
    assert [r["variant"] for r in rep.rows] == ["self-attention (teacher)", "window attention (9 keys)", "NA K=3"]
    assert all(r["CLIP"] is None for r in rep.rows)
    assert set(rep.images["sd15"]) == {r["variant"] for r in rep.rows}
    assert rep.images["sd15"]["NA K=3"].shape == (2, 64, 64, 3)
    text = "\n".join(rep.lines)
    assert "no distilled ΔConv adapter" in text and "no distilled LinFusion adapter" in text
    assert "CLIP metric not computed" in text and "FDD not computed" in text


def test_block_frame_states_the_stored_benchmarks_ratios():
    from aconvlib.book.benchmark_tables import block_frame

    row = dict(model="m", px=1024, mode="fwd", sdpa_ms=3.0, torch_ms=2.0, triton_ms=0.5, sdpa_peak_mib=100.0,
               triton_peak_mib=40.0)
    skipped = dict(model="m", px=2048, mode="fwd", sdpa_ms=None, torch_ms=5.0, triton_ms=1.0)   # SDPA not timed
    f = block_frame({"rows": [row, skipped, dict(row, mode="fwdbwd", triton_ms=3.0, triton_peak_mib=None)]})
    assert list(f.index) == [("m", 1024, "fwd"), ("m", 1024, "fwdbwd")]
    r = f.loc[("m", 1024, "fwd")]
    assert (r["triton_speedup"], r["triton_peak_vs_sdpa"], r["triton_over_torch"]) == (6.0, 0.4, 4.0)
    assert f.loc[("m", 1024, "fwdbwd"), "triton_peak_vs_sdpa"] != f.loc[("m", 1024, "fwdbwd"), "triton_peak_vs_sdpa"]  # NaN
    assert block_frame({"rows": [dict(row, sdpa_ms=1 / 3)]}).loc[("m", 1024, "fwd"), "sdpa_ms"] == 0.3333  # 4 digits
    with pytest.raises(ValueError, match="no row with both"):
        block_frame({"rows": [skipped]})


# ---------------------------------------------------------------- issue 20: chapter 8's statements, computed
def test_uniform_erf_at_all_positions_is_the_uniform_erf():
    from aconvlib.analysis.evidence import uniform_erf
    from aconvlib.analysis.receptive_field import erf_positions
    from aconvlib.book.comparison import uniform_erf_at

    for g in [(16, 16), (8, 8), (6, 10)]:
        every = [(r, c) for r in range(g[0]) for c in range(g[1])]
        assert uniform_erf_at(g, every) == uniform_erf(g)
    assert uniform_erf_at((16, 16), erf_positions((16, 16), 3)) == 19     # the 3×3 lattice of chapter 8


def _erf_frame(teacher, student, uniform, lin=None):
    import pandas as pd

    d = {"ERF teacher": teacher, "ERF ΔConv (shipped)": student, "ERF uniform": uniform}
    if lin is not None:
        d["ERF LinFusion (CPU budget)"] = lin
    return pd.DataFrame(d)


def test_fig9_verdict_rules():
    from aconvlib.book.comparison import fig9_verdict

    # mini-dit-like: teacher narrower than uniform, student wider by 4 in every layer -> fails
    v = fig9_verdict("m", _erf_frame([12] * 6, [16] * 6, [19] * 6, [19] * 6))
    assert v.verdict == "fails" and "LinFusion (CPU budget) 19" in v.deciding
    # teacher as wide as the uniform field -> agreement says nothing
    v = fig9_verdict("m", _erf_frame([39, 19, 11], [39, 19, 11], [39, 19, 11]))
    assert v.verdict == "not testable here" and "sd15" in v.how_to_test
    # close agreement on a local teacher -> holds
    assert fig9_verdict("m", _erf_frame([9, 9, 11, 9], [9, 11, 11, 9], [19] * 4)).verdict == "holds"
    # mini-dit's stored pattern: wider by 0-6 per layer; a difference, but not beyond ±2 -> not testable, said so
    v = fig9_verdict("m", _erf_frame([13, 9, 9, 11, 17, 19], [17, 15, 15, 15, 17, 17], [19] * 6))
    assert v.verdict == "not testable here" and "excludes 0 (a difference)" in v.deciding


def test_paper_table3_comparison_is_not_match_or_beat():
    from aconvlib.book.distill_claims import paper_table3_comparison

    c = paper_table3_comparison().set_index(["base", "against", "metric"])["ΔConv is"]
    assert c[("sd15_512", "linfusion", "FDD")] == "worse"
    assert c[("pixart_512", "self_attention", "FDD")] == "worse"
    assert c[("sdxl_1024", "self_attention", "CLIP")] == "worse"
    assert c[("pixart_1024", "self_attention", "CLIP")] == "worse"
    assert c[("sd15_512", "self_attention", "FDD")] == "better"        # 210.86 -> 200.15 (lower is better)


def test_k_over_grid():
    from aconvlib.book.comparison import k_over_grid

    r = k_over_grid({"mini-dit": 5, "mini-sd": 7}, {"mini-dit": 16, "mini-sd": 32})
    assert r["mini-dit"] == pytest.approx(0.3125) and r["paper"] == pytest.approx(13 / 64)


def test_student_budget_totals_all_runs():
    from aconvlib.book.distill_claims import student_budget
    from aconvlib.mini import adapter_dir

    b = student_budget(adapter_dir("mini-dit"))
    assert b["runs"] == 3 and b["steps_total"] == 3281 + 1000 + 3695 and b["steps_last_run"] == 3695


def test_quality_and_cross_resolution_verdicts():
    from aconvlib.book.distill_claims import cross_resolution_verdict, quality_verdict

    t = {"n_prompts": 512, "prompt_adherence": 504 / 512, "fdd": 98.3}
    s = {"n_prompts": 512, "prompt_adherence": 499 / 512, "fdd": 98.9}
    assert quality_verdict("m", t, s, chapter="07").verdict == "holds"
    assert quality_verdict("m", {"n_prompts": 32, "prompt_adherence": 1.0}, {"n_prompts": 32, "prompt_adherence": 10 / 32},
                           chapter="08").verdict == "fails"
    small = quality_verdict("m", {"n_prompts": 16, "prompt_adherence": 1.0}, {"n_prompts": 16, "prompt_adherence": 15 / 16},
                            chapter="07")
    assert small.verdict == "not testable here" and "prompts per arm" in small.how_to_test
    floor = cross_resolution_verdict("m", {"n_prompts": 8, "prompt_adherence": 0.0}, {"n_prompts": 8, "prompt_adherence": 0.0},
                                     128, 64, chapter="07", floor_how_to_test="sd15 at 1024 px")
    assert floor.verdict == "not testable here" and "floor" in floor.deciding
    worse = cross_resolution_verdict("m", {"n_prompts": 8, "prompt_adherence": 5 / 8}, {"n_prompts": 8, "prompt_adherence": 0.0},
                                     128, 64, chapter="07", floor_how_to_test="x")
    assert worse.verdict == "fails"


def test_adherence_estimate_uses_per_image_results():
    from aconvlib.book.distill_claims import adherence_estimate

    e = adherence_estimate({"n_prompts": 4, "prompt_adherence": 0.5, "per_image": [1, 1, 1, 0]})
    assert e.value == 0.75 and e.n == 4                  # the per-image results decide, not the rounded share
    assert adherence_estimate({"n_prompts": 32, "prompt_adherence": 10 / 32}).value == 10 / 32


def test_quality_verdict_states_the_stored_fdd_difference_and_its_interval():
    from aconvlib.book.distill_claims import quality_verdict

    t = {"n_prompts": 32, "prompt_adherence": 0.5, "fdd": 200.0}
    d = {"adherence": {"value": 0.0, "lo": -0.1, "hi": 0.1, "n": 32}, "adherence_is_difference": False,
         "fdd": {"value": 30.0, "lo": 10.0, "hi": 50.0, "n": 32}, "fdd_is_difference": True}
    s = {"n_prompts": 32, "prompt_adherence": 0.5, "fdd": 230.0, "intervals": {"diff_to_teacher": d}}
    v = quality_verdict("m", t, s, chapter="08")
    assert "difference +30.0 [+10.0, +50.0]" in v.deciding and "a difference)" in v.deciding
    d["fdd_is_difference"] = False
    assert "not a difference" in quality_verdict("m", t, s, chapter="08").deciding
    assert "no interval" in quality_verdict("m", t, {k: x for k, x in s.items() if k != "intervals"},
                                             chapter="08").deciding
