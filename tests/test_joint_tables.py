"""The joint-attention models in the locality chapters: each model's own sampler (ModelSpec.sampling), the text side of
a capture study (text share split by the prompt's token mask), the per-layer sink table and the per-block-type table,
the paper's ERF bound per family, and the Fig. 2 layout."""
import numpy as np
import pytest
import torch

from aconvlib.book.joint_tables import (block_type_table, fig2_layers, joint_studies, layer_block_types,
                                        layers_by_block_type, sink_table)
from aconvlib.book.locality_claims import paper_erf_bound
from aconvlib.book.studies import CaptureStudy, analyze_study, layer_label, model_generation, pool_studies
from aconvlib.models import Sampling, get_spec


# ---------------------------------------------------------------------------------------------- sampling defaults
def test_models_with_their_own_sampler_take_it_and_the_others_keep_the_chapters():
    gen = {"steps": 20, "guidance_scale": 4.5, "height": 128, "seed": 3}
    assert model_generation("sd15", gen) == gen and model_generation("mini-dit", gen) == gen
    flux = model_generation("flux-dev", gen)
    assert (flux["steps"], flux["guidance_scale"], flux["scheduler"], flux["max_sequence_length"]) == (50, 3.5,
                                                                                                         "pipeline", 512)
    assert flux["height"] == 128 and flux["seed"] == 3 and gen["steps"] == 20     # the chapter's gen is not changed
    schnell = model_generation("flux-schnell", gen)
    assert (schnell["steps"], schnell["guidance_scale"], schnell["max_sequence_length"]) == (4, 0.0, 256)
    sd3 = model_generation("sd3.5-medium", gen)
    assert (sd3["steps"], sd3["guidance_scale"], sd3["scheduler"]) == (40, 4.5, "pipeline")
    assert "max_sequence_length" not in sd3
    assert get_spec("sd3.5-large").sampling.steps == 28 and get_spec("sdxl").sampling is None


@pytest.mark.parametrize("kw, says", [({"steps": 0, "guidance_scale": 1.0}, "steps"),
                                      ({"steps": 4, "guidance_scale": -1.0}, "guidance_scale"),
                                      ({"steps": 4, "guidance_scale": 1.0, "scheduler": "ddim"}, "scheduler")])
def test_sampling_refuses_bad_values(kw, says):
    with pytest.raises(ValueError, match=says):
        Sampling(**kw)
    assert Sampling(4, 0.0, max_sequence_length=256).call_kwargs() == {"max_sequence_length": 256}
    assert Sampling(4, 0.0).call_kwargs() == {}


def test_joint_layer_labels_name_the_block_type():
    assert layer_label("transformer_blocks.3.attn", "double") == "double 3"
    assert layer_label("single_transformer_blocks.12.attn", "single") == "single 12"
    assert layer_label("transformer_blocks.2.attn", "joint") == "joint 2"
    assert layer_label("transformer_blocks.2.attn2", "self") == "self 2"
    assert layer_label("transformer_blocks.4.attn1") == "block 4"                  # PixArt unchanged
    assert layer_label("down_blocks.1.attentions.0.transformer_blocks.0.attn1") == "down1.0"


def test_paper_erf_bound_per_family():
    paper = {"erf_bound_unet": 20, "erf_bound_dit": 15}
    assert [paper_erf_bound(paper, f) for f in ("unet", "dit", "joint")] == [20, 15, 15]


# ---------------------------------------------------------------------------------------------- synthetic studies
GRID = (4, 4)
N = 16


def _study(model="m-joint"):
    """Two joint layers on a 4×4 grid: ``double 0`` half uniform and half on key 5, ``single 0`` uniform; plus an
    image-only layer (no text side) whose map is the identity."""
    uniform = torch.full((N, N), 1.0 / N)
    sink = 0.5 * uniform.clone()
    sink[:, 5] += 0.5
    maps = {"transformer_blocks.0.attn": sink, "single_transformer_blocks.0.attn": uniform,
            "transformer_blocks.0.attn2": torch.eye(N)}
    kinds = {"transformer_blocks.0.attn": "double", "single_transformer_blocks.0.attn": "single",
             "transformer_blocks.0.attn2": "self"}
    layers = [dict(name=n, label=layer_label(n, k), level=0, grid=GRID, heads=2, block_type=k) for n, k in kinds.items()]
    keys = torch.tensor([0.1, 0.3, 0.05, 0.05, 0.05, 0.05])
    joint = {"transformer_blocks.0.attn": {"block_type": "double", "text_share": torch.full((N,), 0.6),
                                           "padding_share": torch.full((N,), 0.4), "text_key_mass": keys},
             "single_transformer_blocks.0.attn": {"block_type": "single", "text_share": torch.linspace(0.2, 0.4, N),
                                                  "padding_share": torch.zeros(N), "text_key_mass": keys.flip(0)}}
    return CaptureStudy(model=model, weights="random", family="joint", prompts=["p"], images=np.zeros((1, 8, 8, 3)),
                        layers=layers, maps=maps, grids={n: GRID for n in maps}, params={}, joint=joint)


def _window_mass(A, k):
    """Mean over queries of the mass inside the query's clipped k×k window (a loop, independent of the package)."""
    r, total = (k - 1) // 2, 0.0
    for q in range(N):
        qi, qj = divmod(q, GRID[1])
        total += sum(float(A[q, i * GRID[1] + j]) for i in range(max(0, qi - r), min(GRID[0], qi + r + 1))
                     for j in range(max(0, qj - r), min(GRID[1], qj + r + 1)))
    return total / N


def test_sink_table_puts_locality_next_to_the_text_side_and_image_sinks():
    study = _study()
    frames = {"m-joint": analyze_study(study)}
    t = sink_table({"m-joint": study, "m-plain": CaptureStudy(**{**study.__dict__, "joint": {}})}, frames).set_index("layer")
    assert list(t.index) == ["double 0", "single 0", "self 0"]                 # the plain study is not a joint one
    uni3 = _window_mass(torch.full((N, N), 1.0 / N), 3)
    assert t.loc["double 0", "ratio3"] == pytest.approx(_window_mass(study.maps["transformer_blocks.0.attn"], 3) / uni3)
    assert t.loc["single 0", "ratio3"] == pytest.approx(1.0)
    assert t.loc["double 0", "text_share"] == pytest.approx(0.6)
    assert t.loc["double 0", "padding_share"] == pytest.approx(0.4)
    assert t.loc["double 0", "prompt_share"] == pytest.approx(0.2)
    assert t.loc["single 0", "text_share"] == pytest.approx(0.3)
    assert (t.loc["double 0", "top_text_key"], t.loc["single 0", "top_text_key"]) == (1, 4)
    assert t.loc["double 0", "top_text_key_share"] == pytest.approx(0.3)
    # key 5 = (1, 1) draws 0.5/16 + 0.5 of every query: 8.5× the uniform share; nothing else reaches 3×
    assert t.loc["double 0", "image_sinks"] == 1 and t.loc["double 0", "top_sink"] == "1, 1"
    assert t.loc["double 0", "top_sink_ratio"] == pytest.approx(8.5)
    assert t.loc["single 0", "image_sinks"] == 0 and t.loc["single 0", "top_sink"] == ""
    assert t.loc["self 0", "top_text_key"] == -1 and np.isnan(t.loc["self 0", "text_share"])
    assert t.loc["self 0", "block type"] == "self"
    with pytest.raises(ValueError, match="ratio"):
        sink_table({"m-joint": study}, frames, ratio=0)


def test_block_type_table_takes_medians_per_block_type_and_reads_analysis_columns():
    a, b = _study("a"), _study("b")
    b.maps = {**b.maps, "transformer_blocks.0.attn": torch.full((N, N), 1.0 / N)}    # b's double layer uniform
    frames = {m: analyze_study(s) for m, s in (("a", a), ("b", b))}
    table = sink_table({"a": a, "b": b}, frames)
    out = block_type_table(table, ["ratio3", "text_share", "prior_tv_uniform"], frames=frames)
    assert list(zip(out["model"], out["block type"])) == [("a", "double"), ("a", "single"), ("a", "self"),
                                                            ("b", "double"), ("b", "single"), ("b", "self")]
    assert list(out["layers"]) == [1] * 6
    row = out.set_index(["model", "block type"])
    assert row.loc[("b", "double"), "ratio3"] == pytest.approx(1.0) and row.loc[("a", "double"), "ratio3"] > 1.1
    assert row.loc[("a", "double"), "prior_tv_uniform"] == pytest.approx(
        float(frames["a"].set_index("label").loc["double 0", "prior_tv_uniform"]))
    assert np.isnan(row.loc[("a", "self"), "text_share"])
    with pytest.raises(KeyError, match="frames="):
        block_type_table(table, ["prior_tv_uniform"])
    with pytest.raises(KeyError, match="neither"):
        block_type_table(table, ["no_such_column"], frames=frames)
    empty = block_type_table(sink_table({}, {}), ["ratio3"])
    assert empty.empty and list(empty.columns) == ["model", "block type", "grid", "layers", "ratio3"]


def test_layers_by_block_type_and_fig2_layers():
    study = _study()
    assert layer_block_types(study)["single_transformer_blocks.0.attn"] == "single"
    assert layers_by_block_type(study, 1) == ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn",
                                              "transformer_blocks.0.attn2"]
    names = [f"transformer_blocks.{i}.attn" for i in range(5)] + [f"single_transformer_blocks.{i}.attn" for i in range(9)]
    many = CaptureStudy(model="m", weights="random", family="joint", prompts=[], images=np.zeros((1, 8, 8, 3)),
                        layers=[dict(name=n, label=n, level=0, grid=GRID, heads=1,
                                     block_type="single" if n.startswith("single") else "double") for n in names],
                        maps={}, grids={}, params={})
    assert layers_by_block_type(many, 3) == [names[0], names[2], names[4], names[5], names[9], names[13]]
    assert fig2_layers(many, 3) == [names[0], names[6], names[13]]
    assert fig2_layers(many, 50) == names
    with pytest.raises(ValueError):
        layers_by_block_type(many, 0)
    with pytest.raises(ValueError):
        fig2_layers(many, 0)
    y = _study()
    found = joint_studies({"x": many, "y": y})
    assert list(found) == ["y"] and found["y"] is y


def test_fig2_rows_layout():
    from aconvlib.book.plotting import plot_fig2_rows

    study = _study()
    fig = plot_fig2_rows(study, study.names()[:2], [(0.3, 0.3), (0.9, 0.1)])
    assert len(fig.axes) == 2 * 3
    assert fig.axes[1].get_title() == "double 0\nmax 8.5× uniform"      # query (0.3, 0.3) is token 5, the sink
    assert fig.axes[2].get_title() == "single 0\nmax 1.0× uniform"
    with pytest.raises(ValueError):
        plot_fig2_rows(study, [], [(0.5, 0.5)])


def test_pool_studies_averages_the_text_side():
    a, b = _study(), _study()
    b.joint = {n: {**s, "text_share": s["text_share"] * 0 + 0.2} for n, s in b.joint.items()}
    pooled = pool_studies([a, b])
    assert torch.allclose(pooled.joint["transformer_blocks.0.attn"]["text_share"], torch.full((N,), 0.4))
    assert pooled.joint["transformer_blocks.0.attn"]["block_type"] == "double"


# ---------------------------------------------------------------------------------------------- on the fixtures
def test_capture_study_keeps_the_text_side_split_by_the_prompt_mask(fixture_hub, tmp_path):
    from aconvlib.book.studies import capture_study, load_study_pipeline

    pipe = load_study_pipeline("flux-dev")
    assert "FlowMatch" in type(pipe.scheduler).__name__                       # the model's own scheduler by default
    with pytest.raises(ValueError, match="flow-matching"):
        load_study_pipeline("flux-dev", scheduler="dpm")
    kw = dict(steps=2, guidance_scale=3.5, height=128, width=128, pipe=pipe, output_dir=tmp_path, verbose=False,
              max_sequence_length=8)
    long = capture_study("flux-dev", ["a red fox sits on a snowy hill under a pale winter sky at dawn"], **kw)
    short = capture_study("flux-dev", ["fox"], **kw)
    assert short.params["scheduler"] == "pipeline" and short.params["max_sequence_length"] == 8
    assert {d["block_type"] for d in short.layers} == {"double", "single"}
    assert {d["label"] for d in short.layers} >= {"double 0", "single 0"}
    for name, side in long.joint.items():
        assert side["text_key_mass"].shape == (8,)
        assert torch.all(side["padding_share"] == 0)          # the long prompt fills all 8 tokens: no padding
        assert torch.all(side["text_share"] > 0)
        s = short.joint[name]                                  # "fox" </s> + 6 padding tokens
        assert torch.all(s["padding_share"] > 0) and torch.all(s["padding_share"] < s["text_share"])
    again = capture_study("flux-dev", ["fox"], **kw)            # from the cache, text side included
    assert again.path == short.path and torch.equal(again.joint[name]["padding_share"], s["padding_share"])
