"""The locality verdicts (aconvlib.book.locality_claims) on constructed per-layer frames whose answers are known."""
import numpy as np
import pandas as pd
import pytest
import torch

from aconvlib.analysis import locality as L
from aconvlib.analysis.evidence import FAILS, HOLDS, NOT_TESTABLE
from aconvlib.book import locality_claims as LC

PAPER = {"erf_bound_dit": 15, "erf_bound_unet": 20, "erf_reference_grid": 64, "erf_mass": 0.8,
         "highpass_window": 10, "highpass_mass": 0.8}


def uniform(grid):
    n = grid[0] * grid[1]
    return torch.full((n, n), 1.0 / n)


def local(grid, width=0.7, floor=0.0):
    """Each query attends to a Gaussian blob of ``width`` tokens around itself (+ a uniform floor)."""
    h, w = grid
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).double()
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    A = torch.exp(-d2 / (2 * width ** 2)) + floor
    return (A / A.sum(1, keepdim=True)).float()


def frame(maps: dict) -> pd.DataFrame:
    """analyze_study's columns for hand-made maps: label → (A, grid)."""
    rows = []
    for label, (A, grid) in maps.items():
        ks = L.odd_kernel_sizes(grid)
        asm = L.asm_curve(A, grid, ks)
        hp = L.highpass_asm_curve(A, grid, ks, 0.1, 2)
        dec = L.decompose(A, grid, ks)
        sink = L.attention_sink(A, grid)
        rows.append(dict(label=label, grid=grid, ks=ks, asm=asm.numpy(), hp=hp.numpy(), erf=float(L.erf(asm, ks)),
                         erf_hp=float(L.erf(hp, ks)), erf_context=float(L.erf(dec.context_asm, ks)),
                         erf_context_pos=float(L.erf(dec.context_pos_asm, ks)),
                         prior_tv_uniform=dec.prior_tv_uniform, sink_share=sink.share, sink_pos=sink.position,
                         sink_ratio=sink.ratio_to_uniform))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def frames():
    g16, g8 = (16, 16), (8, 8)
    return {"flat": frame({"a": (uniform(g16), g16), "b": (uniform(g16), g16), "c": (uniform(g8), g8)}),
            "peaked": frame({"a": (local(g16), g16), "b": (local(g16), g16)})}


def test_levels_are_not_pooled_and_uniform_maps_score_their_baselines(frames):
    lv = LC.level_table(frames, PAPER, {"flat": "unet", "peaked": "dit"})
    flat = lv[lv["model"] == "flat"].set_index("grid")
    assert list(flat.index) == ["16×16", "8×8"] and list(flat["layers"]) == [2, 1]
    assert flat["ratio3"].tolist() == pytest.approx([1.0, 1.0])
    assert (flat["erf"] == flat["uniform_erf"]).all() and flat["uniform_erf"].tolist() == [23, 11]
    assert flat.loc["16×16", "measurable11"] and not flat.loc["8×8", "measurable11"]
    # the paper's bound scaled by the top-level sides: 20 · 16/64 = 5 for the U-Net, 15 · 16/64 = 3.75 for the DiT
    assert flat["erf_bound_scaled"].tolist() == [5.0, 5.0] and flat["bound_measurable"].all()
    big = LC.level_table({"f": frames["flat"]}, {**PAPER, "erf_bound_unet": 40}, {"f": "unet"}).set_index("grid")
    assert big.loc["16×16", "bound_measurable"] and not big.loc["8×8", "bound_measurable"]   # 10 ≥ 8
    assert lv[lv["model"] == "peaked"]["erf_bound_scaled"].iloc[0] == 3.75


def test_uniform_attention_fails_every_locality_claim_and_a_local_map_passes_the_local_ones(frames):
    lv = LC.level_table(frames, PAPER, {"flat": "unet", "peaked": "dit"})
    iv = LC.image_ratio_intervals({"flat": [frames["flat"]] * 3, "peaked": [frames["peaked"]] * 3})
    assert LC.fig4a_verdict(iv, "flat").verdict == FAILS
    assert LC.fig4a_verdict(iv, "peaked").verdict == HOLDS
    assert LC.erf_verdict(lv, "flat", 4).verdict == FAILS
    assert LC.erf_verdict(lv, "peaked", 4).verdict == HOLDS         # ERF 3 < 3.75 in every layer
    assert LC.context_verdict(lv, "flat", 4).verdict == FAILS
    assert LC.context_verdict(lv, "peaked", 4).verdict == HOLDS


def test_fig4b_is_not_testable_when_no_level_can_hold_the_window():
    g8 = (8, 8)
    lv = LC.level_table({"small": frame({"a": (local(g8), g8)})}, PAPER, {"small": "dit"})
    v = LC.fig4b_verdict(lv, "small", 0.8, 4)
    assert v.verdict == NOT_TESTABLE and "64×64" in v.how_to_test


def test_image_intervals_bootstrap_over_images():
    g = (16, 16)
    imgs = [frame({"a": (local(g, w), g), "b": (local(g, w), g)}) for w in (0.6, 0.7, 0.8, 1.5)]
    iv = LC.image_ratio_intervals({"m": imgs}, seed=0)
    r = iv.iloc[0]
    assert r["images"] == 4 and r["lo"] <= r["ratio3"] <= r["hi"] and r["hi"] - r["lo"] > 0.1
    # the point estimate equals the ratio of the map averaged over the images (ASM is linear)
    mean_map = sum(local(g, w) for w in (0.6, 0.7, 0.8, 1.5)) / 4
    ks = L.odd_kernel_sizes(g)
    expect = float(L.asm_curve(mean_map, g, ks)[1] / L.uniform_asm(g, ks)[1])
    assert r["ratio3"] == pytest.approx(expect, rel=1e-5)
    assert LC.fig2_verdict(iv, "m").verdict == HOLDS


def test_artifacts_are_relative_to_the_uniform_share():
    g = (8, 8)
    A = uniform(g).clone()
    A[:, -1] += 2.5 / 64
    A /= A.sum(1, keepdim=True)
    t = LC.artifact_table({"m": frame({"sink": (A, g), "flat": (uniform(g), g)})}, ratio=3.0)
    assert t["artifact"].tolist() == [True, False] and t["last token"].tolist()[0]


@pytest.mark.parametrize("counts, expect", [
    ({"self-attention": (16, 16), "NA K=7": (16, 16), "no self-attention": (16, 16)}, NOT_TESTABLE),  # no SA needed
    ({"self-attention": (16, 16), "NA K=7": (16, 16), "no self-attention": (2, 16)}, HOLDS),
    ({"self-attention": (16, 16), "NA K=7": (3, 16), "no self-attention": (2, 16)}, FAILS),
])
def test_the_na_verdict_needs_the_no_attention_control(counts, expect):
    assert LC.na_control_verdict("m", counts, "NA K=7").verdict == expect


def test_the_context_erf_of_a_perfectly_local_map_is_near_uniform_but_its_positive_part_is_local():
    """Why the verdict reads R⁺: a 3×3-local map's |R| holds −b over the whole grid (half its mass)."""
    g = (16, 16)
    dec = L.decompose(local(g, 0.7), g)
    ks = dec.kernel_sizes
    assert float(L.erf(dec.context_asm, ks)) >= 19            # uniform: 23
    assert float(L.erf(dec.context_pos_asm, ks)) == 3


def test_level_intervals_bootstrap_over_prompts_and_asm_matches_the_pooled_map():
    g = (16, 16)
    widths = (0.6, 0.7, 0.9, 1.4)
    prompts = [frame({"a": (local(g, w), g), "b": (local(g, w, floor=0.002), g)}) for w in widths]
    iv = LC.level_intervals({"m": prompts}, ["asm3", "hp-raw11", "erf"], n_boot=500)
    asm3 = iv[iv["quantity"] == "asm3"].iloc[0]
    assert asm3["prompts"] == 4 and asm3["layers"] == 2 and asm3["lo"] <= asm3["value"] <= asm3["hi"]
    pooled = frame({"a": (sum(local(g, w) for w in widths) / 4, g),
                    "b": (sum(local(g, w, floor=0.002) for w in widths) / 4, g)})
    # ASM is linear in the map: the mean over prompts of each prompt's ASM(3) is the pooled map's ASM(3)
    assert asm3["value"] == pytest.approx(float(np.median([c[1] for c in pooled["asm"]])), rel=1e-5)
    d = iv[iv["quantity"] == "hp-raw11"].iloc[0]
    by_hand = np.median([np.mean([LC._share(f.loc[i, "hp"], f.loc[i, "ks"], 11) - LC._share(f.loc[i, "asm"],
                                  f.loc[i, "ks"], 11) for f in prompts]) for i in range(2)])
    assert d["value"] == pytest.approx(by_hand)
    one = LC.level_intervals({"m": prompts[:1]}, ["erf"])
    assert np.isnan(one["lo"].iloc[0])                                   # one prompt: no interval


def test_an_interval_that_straddles_the_criterion_decides_nothing(frames):
    lv = LC.level_table(frames, PAPER, {"flat": "unet", "peaked": "dit"})
    g = "16×16"

    def ivs(model, rows):
        return pd.DataFrame([{"model": model, "grid": g, "quantity": q, "value": v, "lo": lo, "hi": hi}
                             for q, (v, lo, hi) in rows.items()])

    # the peaked map holds Fig. 5 on its point value (ERF 3 < 3.75); an interval reaching above the bound
    v = LC.erf_verdict(lv, "peaked", 4, intervals=ivs("peaked", {"erf": (3, 3, 5)}))
    assert v.verdict == NOT_TESTABLE and "more prompts" in v.how_to_test and "[3, 5]" in v.deciding
    assert LC.erf_verdict(lv, "peaked", 4, intervals=ivs("peaked", {"erf": (3, 3, 3)})).verdict == HOLDS
    # Fig. 4b: high-pass mass above 0.8 but the high-pass − raw difference straddles 0 → undecided
    big = (32, 32)
    lv_b = LC.level_table({"p": frame({"a": (local(big), big)})}, PAPER, {"p": "dit"})
    gb = "32×32"
    rows = pd.DataFrame([{"model": "p", "grid": gb, "quantity": "hp11", "value": 0.95, "lo": 0.9, "hi": 0.97},
                         {"model": "p", "grid": gb, "quantity": "hp-raw11", "value": 0.01, "lo": -0.02, "hi": 0.03}])
    assert LC.fig4b_verdict(lv_b, "p", 0.8, 4, intervals=rows).verdict == NOT_TESTABLE
    rows.loc[1, ["lo", "hi"]] = [-0.05, -0.01]                           # the whole interval below 0: fails
    assert LC.fig4b_verdict(lv_b, "p", 0.8, 4, intervals=rows).verdict == FAILS
    # context: a uniform map has no context term (its ERF is NaN): the criterion is missed, not undecided
    assert LC.context_verdict(lv, "flat", 4, intervals=ivs("flat", {"prior_tv_uniform": (0, 0, 0)})).verdict == FAILS
