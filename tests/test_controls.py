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

    from aconvlib.training.distill import DistillConfig, Distiller, check_init, make_student

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
    assert json.loads((tmp_path / "config.json").read_text())["init"] == "scratch"
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
