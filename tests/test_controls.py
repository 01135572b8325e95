"""The controls of issue 20: self-attention removed ("none"), uniform attention ("uniform"), the LinFusion-style
student started from scratch, and the per-image evaluator results with their intervals."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from aconvlib.mixers.controls import NoAttention, UniformAttention
from aconvlib.mixers.convert import (MIXERS, LinearAttentionAdapter, NoAttentionAdapter, UniformAttentionAdapter,
                                     get_adapter, load_mixer, mixer_applied, mixer_layers, restore_attention,
                                     save_mixer, to_mixer)
from aconvlib.models import denoise, self_attention_layers
from aconvlib.testing.dummies import tiny_inputs, tiny_pixart, tiny_unet

MAKERS = pytest.mark.parametrize("make", [tiny_unet, tiny_pixart], ids=["unet", "pixart"])
CONTROLS = pytest.mark.parametrize("kind", ["none", "uniform"])


@pytest.fixture(autouse=True)
def _one_thread():
    """Shared cores: one thread is many times faster on tiny models."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _attn(seed=0, dtype=torch.float64, heads=2, dim_head=8, query_dim=16):
    torch.manual_seed(seed)
    a = Attention(query_dim=query_dim, heads=heads, dim_head=dim_head, bias=True).to(dtype)
    with torch.no_grad():
        for p in a.parameters():
            if p.ndim == 1:
                p.normal_(0, 0.3)
    return a.eval()


def _run(model, seed=0, hw=(8, 8)):
    with torch.no_grad():
        return denoise(model, **{k: v for k, v in tiny_inputs(model, hw=hw, seed=seed).items() if k != "cond"})


@pytest.fixture(scope="module")
def _hooks():
    """Context managers that change the stock model's attn1 by forward hooks (the references)."""
    import contextlib

    @contextlib.contextmanager
    def hooked(model, where: str):
        handles = []
        for layer in self_attention_layers(model):
            target = layer.module if where == "attn1" else getattr(layer.module, where)
            handles.append(target.register_forward_hook(lambda m, args, out: torch.zeros_like(out)))
        try:
            yield model
        finally:
            for h in handles:
                h.remove()

    return hooked


# ------------------------------------------------------------------------------------------------ modules
def test_no_attention_outputs_zeros_of_the_right_shape_and_dtype():
    attn = _attn()
    x = torch.randn(3, 35, 16, dtype=torch.float64)
    m = NoAttention.from_attention(attn)
    y = m(x, grid=(5, 7))
    assert y.shape == (3, 35, 16) and y.dtype == torch.float64 and not y.any()
    assert NoAttention(24)(x.float()).shape == (3, 35, 24)
    assert not list(m.parameters())
    with pytest.raises(ValueError, match="encoder_hidden_states must be None"):
        m(x, encoder_hidden_states=x)
    with pytest.raises(ValueError, match="out_dim must be a positive integer"):
        NoAttention(0)


def test_uniform_attention_is_sdpa_with_equal_scores_and_shares_the_modules():
    attn = _attn()
    x = torch.randn(2, 35, 16, dtype=torch.float64)
    m = UniformAttention.from_attention(attn)
    assert m.to_v is attn.to_v and m.to_out is attn.to_out          # shared, nothing copied
    b, n, _ = x.shape
    v = attn.to_v(x).view(b, n, 2, 8).transpose(1, 2)
    q = torch.zeros_like(v)                                         # q = 0: every score 0, softmax 1/N
    ref = F.scaled_dot_product_attention(q, attn.to_k(x).view(b, n, 2, 8).transpose(1, 2), v)
    ref = attn.to_out[0](ref.transpose(1, 2).reshape(b, n, 16))
    y = m(x)
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=0)
    assert torch.equal(y, y[:, :1].expand_as(y))                     # the same vector at every query
    assert not torch.allclose(y, attn(x), atol=1e-3)                 # and not the attention itself


# ------------------------------------------------------------------------------------------------ in a denoiser
@MAKERS
def test_none_equals_the_stock_model_with_attn1_outputs_zeroed(make, _hooks):
    model = make()
    ref = _run(model)
    with _hooks(model, "attn1"):
        zeroed = _run(model)
    assert not torch.allclose(zeroed, ref, atol=1e-4)                # removing self-attention changes the output
    to_mixer(model, "none")
    assert type(get_adapter(model)) is NoAttentionAdapter
    assert all(isinstance(w.block, NoAttention) for _, w in mixer_layers(model))
    torch.testing.assert_close(_run(model), zeroed, atol=0, rtol=0)
    restore_attention(model)
    assert torch.equal(_run(model), ref)


@MAKERS
def test_uniform_equals_the_stock_model_with_q_zero(make, _hooks):
    model = make()
    ref = _run(model)
    with _hooks(model, "to_q"):                                       # q = 0 in the stock processor: equal scores
        flat = _run(model)
    assert not torch.allclose(flat, ref, atol=1e-4)
    to_mixer(model, "uniform")
    assert type(get_adapter(model)) is UniformAttentionAdapter
    torch.testing.assert_close(_run(model), flat, atol=1e-5, rtol=1e-5)
    for hw in ((12, 8), (4, 4)):                                     # any grid: uniform needs none
        assert torch.isfinite(_run(model, hw=hw)).all()
    restore_attention(model)
    assert torch.equal(_run(model), ref)


@CONTROLS
@MAKERS
def test_controls_are_training_free_restore_and_save_only_their_config(kind, make, tmp_path):
    model = make()
    names = [l.name for l in self_attention_layers(model)]
    stock = {n: model.get_submodule(n) for n in names}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ref = _run(model)
    with mixer_applied(model, kind) as m:
        assert m is model and get_adapter(model).kind == kind and MIXERS[kind].trainable is False
        assert not list(get_adapter(model).parameters())
        assert not any(p.requires_grad for p in model.parameters())
        out = _run(model)
        save_mixer(model, tmp_path)
    assert all(model.get_submodule(n) is stock[n] for n in names) and not mixer_layers(model)
    assert torch.equal(_run(model), ref)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["_class_name"] == MIXERS[kind].__name__ and len(cfg["layers"]) == len(names)
    load_mixer(model, str(tmp_path))
    assert torch.equal(_run(model), out)
    restore_attention(model)
    assert torch.equal(_run(model), ref)


def test_mixer_applied_restores_after_an_error_and_takes_the_kinds_options():
    model = tiny_unet()
    ref = _run(model)
    with pytest.raises(RuntimeError, match="boom"):
        with mixer_applied(model, "none"):
            raise RuntimeError("boom")
    assert not mixer_layers(model) and torch.equal(_run(model), ref)
    with pytest.raises(TypeError, match=r"mixer kind 'uniform' takes the options \[\], not \['window'\]"):
        to_mixer(model, "uniform", window=3)
    with mixer_applied(model, "window", window=3, mode="2d"):
        assert {w.kind for _, w in mixer_layers(model)} == {"window"}
    assert torch.equal(_run(model), ref)


def test_controls_are_refused_for_distillation():
    from aconvlib.training.distill import DistillConfig, check_trainable_kind, make_student

    for kind in ("none", "uniform"):
        with pytest.raises(ValueError, match="training-free .* nothing to distill"):
            check_trainable_kind(kind)
        with pytest.raises(ValueError, match="nothing to distill"):
            DistillConfig(mixer=kind)
        with pytest.raises(ValueError, match="nothing to distill"):
            make_student(SimpleNamespace(unet=tiny_unet()), kind=kind)


# ------------------------------------------------------------------------------------------------ same start
def test_linear_attention_from_scratch_or_from_the_teacher():
    model = tiny_unet()
    first = self_attention_layers(model)[0]
    teacher_q = first.module.to_q.weight.detach().clone()
    to_mixer(model, "linear", seed=0)                                     # default: the teacher's projections
    blk = get_adapter(model).block(first.name)
    assert torch.equal(blk.to_q.weight, teacher_q) and get_adapter(model).config.init == "teacher"
    restore = tiny_unet()
    a = to_mixer(tiny_unet(), "linear", seed=0, init="scratch")
    b = to_mixer(restore, "linear", seed=0, init="scratch")
    blk = get_adapter(a).block(first.name)
    assert get_adapter(a).config.init == "scratch"
    assert not torch.allclose(blk.to_q.weight, teacher_q, atol=1e-3)      # fresh, not the teacher's
    assert all(torch.equal(x, y) for x, y in zip(get_adapter(a).state_dict().values(),
                                                   get_adapter(b).state_dict().values()))   # seeded
    assert not torch.equal(_run(a), _run(tiny_unet()))
    with pytest.raises(ValueError, match=r"init must be one of \('teacher', 'scratch'\)"):
        to_mixer(tiny_unet(), "linear", init="random")


def test_linear_scratch_init_round_trips(tmp_path):
    model = to_mixer(tiny_pixart(), "linear", seed=3, init="scratch")
    ref = _run(model)
    save_mixer(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["init"] == "scratch"
    loaded = load_mixer(tiny_pixart(), str(tmp_path))
    assert isinstance(get_adapter(loaded), LinearAttentionAdapter) and get_adapter(loaded).config.init == "scratch"
    assert torch.equal(_run(loaded), ref)


def test_distill_init_option(tmp_path):
    from diffusers import DDPMScheduler

    from aconvlib.training.accelerated import Distiller
    from aconvlib.training.distill import DistillConfig, check_init, make_student

    assert DistillConfig().init is None and DistillConfig(mixer="linear", init="scratch").init == "scratch"
    assert check_init("deltaconv", None) == "scratch" and check_init("linear", None) == "teacher"
    with pytest.raises(ValueError, match="ΔConv students start from fresh blocks"):
        DistillConfig(init="teacher")
    with pytest.raises(ValueError, match="init must be one of"):
        DistillConfig(mixer="linear", init="copy")
    with pytest.raises(ValueError, match="either from a saved adapter or from fresh mixers"):
        DistillConfig(mixer="linear", init="scratch", init_adapter="x")
    teacher = SimpleNamespace(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000))
    name = self_attention_layers(teacher.unet)[0].name
    q = teacher.unet.get_submodule(name).to_q.weight
    from_teacher = make_student(teacher, kind="linear")
    scratch = make_student(teacher, kind="linear", init="scratch")
    assert torch.equal(get_adapter(from_teacher.unet).block(name).to_q.weight, q)
    assert not torch.allclose(get_adapter(scratch.unet).block(name).to_q.weight, q, atol=1e-3)

    def batches(start):
        g = torch.Generator().manual_seed(start)
        while True:
            yield torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 3, 16, generator=g)

    cfg = DistillConfig(steps=1, batch=2, warmup=0, log_every=1, mixer="linear", init="scratch")
    Distiller(teacher, scratch, batches, cfg, tmp_path, quiet=True).run()
    assert json.loads((tmp_path / "config.json").read_text())["distill"]["init"] == "scratch"
    assert json.loads((tmp_path / "adapter" / "config.json").read_text())["init"] == "scratch"


def test_accelerated_distiller_builds_the_scratch_linear_student(tmp_path):
    from diffusers import DDPMScheduler

    from aconvlib.training.accelerated import AcceleratedDistiller, RunConfig
    from aconvlib.training.distill import DistillConfig

    def batches(start):
        g = torch.Generator().manual_seed(start)
        while True:
            yield torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 3, 16, generator=g)

    for init in ("teacher", "scratch"):
        teacher = SimpleNamespace(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000))
        name = self_attention_layers(teacher.unet)[0].name
        q = teacher.unet.get_submodule(name).to_q.weight.detach().clone()
        cfg = DistillConfig(steps=1, batch=2, warmup=0, log_every=1, mixer="linear", init=init)
        d = AcceleratedDistiller(teacher, batches, cfg, tmp_path / init, run=RunConfig(), device="cpu", quiet=True)
        assert d.adapter.config.init == init
        assert torch.equal(d.adapter.block(name).to_q.weight, q) == (init == "teacher")


# ------------------------------------------------------------------------------------------------ mini pipelines
def test_controls_on_the_mini_pipelines():
    from aconvlib.models import load_pipeline

    for model in ("mini-dit", "mini-sd"):
        pipe = load_pipeline(model)
        kw = dict(num_inference_steps=2, output_type="pt", height=32, width=32)
        ref = pipe(["a red circle"], generator=torch.Generator().manual_seed(0), **kw).images
        for kind in ("none", "uniform"):
            assert to_mixer(pipe, kind) is pipe and len(mixer_layers(pipe)) == len(self_attention_layers(
                load_pipeline(model).transformer if model == "mini-dit" else load_pipeline(model).unet))
            img = pipe(["a red circle"], generator=torch.Generator().manual_seed(0), **kw).images
            assert img.shape == ref.shape and torch.isfinite(img).all() and not torch.allclose(img, ref, atol=1e-3)
            restore_attention(pipe)
        assert torch.equal(pipe(["a red circle"], generator=torch.Generator().manual_seed(0), **kw).images, ref)


# ------------------------------------------------------------------------------------------------ per-image results
def test_evaluate_model_returns_per_image_results_that_rebuild_its_numbers():
    from aconvlib.mini import dataset as data
    from aconvlib.mini.evaluate import evaluate_model, frechet_distance, real_features
    from aconvlib.models import load_pipeline

    prompts = data.prompts(4, "heldout")
    res = evaluate_model(load_pipeline("mini-dit"), prompts, num_inference_steps=3, n_real=64)
    keys = {"n_prompts", "prompt_adherence", "shape", "color", "size", "position", "fdd", "steps", "guidance_scale",
            "scheduler"}
    assert keys <= set(res)                                          # the existing keys, unchanged
    assert res["prompts"] == prompts and res["seed"] == 0 and res["n_real"] == 64
    assert len(res["per_image"]) == 4 and set(res["per_image"]) <= {0, 1}
    assert sum(res["per_image"]) / 4 == res["prompt_adherence"]
    assert res["features"].shape == (4, 256)
    assert frechet_distance(res["features"], real_features(64)) == pytest.approx(res["fdd"], rel=1e-9)


@pytest.mark.parametrize("n,d", [(40, 8), (24, 64)])
def test_frechet_to_equals_frechet_distance(n, d):
    from aconvlib.mini.evaluate import frechet_distance, frechet_to

    g = torch.Generator().manual_seed(n)
    real = torch.randn(300, d, generator=g) @ torch.randn(d, d, generator=g) * 0.3
    gen = torch.randn(n, d, generator=g) + 0.5
    assert frechet_to(real)(gen) == pytest.approx(frechet_distance(gen, real), rel=1e-6, abs=1e-6)
    assert frechet_to(real)(gen.numpy()) == pytest.approx(frechet_distance(gen, real), rel=1e-6, abs=1e-6)


def _fake(per_image, features, prompts=None):
    from aconvlib.mini.evaluate import frechet_distance

    return {"per_image": list(per_image), "prompt_adherence": float(np.mean(per_image)), "features": features,
            "fdd": frechet_distance(features, _REAL), "prompts": prompts or [f"p{i}" for i in range(len(per_image))],
            "seed": 0, "n_real": len(_REAL)}


_REAL = torch.randn(200, 6, generator=torch.Generator().manual_seed(5))


def test_intervals_and_paired_differences():
    from aconvlib.mini.intervals import adherence_estimate, fdd_estimate, paired_difference

    g = torch.Generator().manual_seed(1)
    f = torch.randn(30, 6, generator=g)
    good = _fake([1] * 27 + [0] * 3, f)
    e = adherence_estimate(good)
    assert (e.value, e.n) == (0.9, 30) and e.lo == pytest.approx(0.744, abs=1e-3) and e.hi == pytest.approx(0.965, abs=1e-3)
    fe = fdd_estimate(good, reference=_REAL, n_boot=300)
    assert fe.n == 30 and fe.lo < fe.hi and fe.value == good["fdd"]
    same = paired_difference(good, _fake(good["per_image"], f.clone()), reference=_REAL, n_boot=300)
    assert (same["adherence"].lo, same["adherence"].hi, same["fdd"].lo, same["fdd"].hi) == (0, 0, 0, 0)
    assert not same["adherence_is_difference"] and not same["fdd_is_difference"]
    bad = _fake([0] * 25 + [1] * 5, f + 2.0)                         # far from the reference, mostly wrong
    d = paired_difference(bad, good, reference=_REAL, n_boot=300)
    assert d["adherence"].value == pytest.approx(5 / 30 - 27 / 30) and d["adherence"].hi < 0 and d["adherence_is_difference"]
    assert d["fdd"].value > 0 and d["fdd"].lo > 0 and d["fdd_is_difference"]
    one_flip = _fake([0] + [1] * 26 + [0] * 3, f)                     # one prompt lost: not a difference
    assert not paired_difference(one_flip, good, reference=_REAL, n_boot=300)["adherence_is_difference"]
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference(good, _fake(good["per_image"], f, prompts=[f"q{i}" for i in range(30)]), reference=_REAL)
    with pytest.raises(ValueError, match="no per-image results"):
        adherence_estimate({"prompt_adherence": 1.0})


# ------------------------------------------------------------------------------------------------ rows and table
def test_paper_scaled_kernels_and_control_rows():
    from aconvlib.mini import compare as C

    assert [C.paper_scaled_kernel(s) for s in (16, 32, 64)] == [3, 7, 13]
    assert C.finest_grid_side("mini-dit") == 16 and C.finest_grid_side("mini-sd") == 32
    from aconvlib.book.labels import variant_label, variant_training

    rows, notes = C.control_variants("mini-dit")
    labels = [variant_label(v) for v in rows]
    assert labels[:5] == ["self-attention (teacher)", "no self-attention", "uniform attention",
                          "NA K=3 (paper-scaled)", "NA K=5 (chapter's K)"]
    assert [v.method for v in rows[:5]] == ["self-attention", "none", "uniform", "na", "na"]
    assert [v.kernel for v in rows[3:5]] == [3, 5]
    rows, _ = C.control_variants("mini-sd")
    assert [variant_label(v) for v in rows if v.method == "na"] == ["NA K=7 (paper-scaled, chapter's K)"]   # K coincide
    students = {variant_label(v): v for v in rows if v.folder is not None}
    for label, v in students.items():                                # every student row names its start
        assert ("from scratch" in label) == ("fresh" in variant_training(v)), label


def test_variant_pipeline_applies_and_restores_the_controls():
    from aconvlib.mini import compare as C
    from aconvlib.models import get_denoiser, load_pipeline

    pipe = load_pipeline("mini-dit")
    den = get_denoiser(pipe)
    stock = {n: m for n, m in den.named_modules() if n.endswith("attn1")}
    for v in C.control_variants("mini-dit")[0][1:3]:
        with C.variant_pipeline("mini-dit", v, teacher=pipe) as p:
            assert p is pipe and {w.kind for _, w in mixer_layers(p)} == {v.method}
        assert {n: m for n, m in den.named_modules() if n.endswith("attn1")} == stock


def test_controls_table_reads_the_stored_file():
    from pathlib import Path

    from aconvlib.book.controls import CONTROL_COLUMNS, controls_table, format_controls

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "cpu_controls" / "controls.json"
    meta, frame = controls_table(path)
    assert list(frame.columns) == CONTROL_COLUMNS and len(frame) > 0
    stored = json.loads(path.read_text())
    assert meta["n_prompts"] == stored["meta"]["n_prompts"] and (frame["n"] == meta["n_prompts"]).all()
    assert set(frame["model"]) <= {"mini-sd", "mini-dit"}
    assert (frame["k"] / frame["n"] == frame["adherence"]).all()
    assert ((frame["adherence_lo"] <= frame["adherence"]) & (frame["adherence"] <= frame["adherence_hi"])).all()
    for model, rows in frame.groupby("model"):
        teacher = rows[rows["method"] == "self-attention"]
        assert len(teacher) == 1 and teacher["d_adherence"].isna().all()
        others = rows[rows["method"] != "self-attention"]
        assert (others["d_adherence"] - (others["adherence"] - float(teacher["adherence"].iloc[0]))).abs().max() < 1e-9
        excl = (others["d_adherence_lo"] > 0) | (others["d_adherence_hi"] < 0)
        assert (excl == others["adherence_difference"].astype(bool)).all()
        assert (others["fdd_difference"].astype(bool) == ((others["d_fdd_lo"] > 0) | (others["d_fdd_hi"] < 0))).all()
        na = rows[rows["method"] == "na"]
        assert (na["K/grid"] - na["K"].astype(float) / (32 if model == "mini-sd" else 16)).abs().max() < 1e-3
    text = format_controls(frame)
    assert len(text) == len(frame) and text["difference? (adherence)"].isin(["yes", "no", "—"]).all()
    assert controls_table(path, models=["mini-dit"])[1]["model"].eq("mini-dit").all()
    assert controls_table(path.with_name("missing.json")) == (None, None)


def test_quality_table_gives_intervals_where_per_image_results_exist():
    """Live evaluator rows get adherence and FDD intervals; a stored summary row without per-image results shows "—"."""
    import torch

    from aconvlib.book.training_report import quality_table
    from aconvlib.mini.evaluate import real_features

    real = real_features(200)
    live = {"n_prompts": 8, "prompt_adherence": 0.75, "fdd": 1.0, "per_image": [1, 1, 1, 0, 1, 1, 0, 1],
            "features": torch.as_tensor(real[:8]), "n_real": 200}
    t = quality_table({"live": live, "stored": {"n_prompts": 512, "prompt_adherence": 0.98, "fdd": 98.3}})
    assert t.loc["live", "adherence [95% CI]"].startswith("75% [") and "(n=8)" in t.loc["live", "adherence [95% CI]"]
    assert "[" in t.loc["live", "FDD [95% CI]"]
    assert t.loc["stored", "adherence [95% CI]"] == "—" and t.loc["stored", "FDD [95% CI]"] == "—"
