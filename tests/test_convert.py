"""to_deltaconv / load_deltaconv on small random-weight U-Net and PixArt models (and their pipelines)."""
import json

import pytest
import torch

from aconvlib.mixers.deltaconv import DeltaConvBlock
from aconvlib.mixers.convert import (DeltaConvAdapter, DeltaConvSelfAttention, deltaconv_layers, get_adapter, latent_size,
                              load_deltaconv, resolve_kernel_sizes, save_deltaconv, to_deltaconv)
from aconvlib.models import self_attention_layers

diffusers = pytest.importorskip("diffusers")


def tiny_unet(seed=0, cross=24):
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross, attention_head_dim=4, norm_num_groups=8).eval()


def tiny_pixart(seed=0):
    torch.manual_seed(seed)
    return diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=12, norm_type="ada_norm_single",
        use_additional_conditions=False, norm_num_groups=1).eval()


def run(model, hw, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, *hw, generator=g)
    with torch.no_grad():
        if isinstance(model, diffusers.UNet2DConditionModel):
            return model(x, torch.tensor([5, 500]), encoder_hidden_states=torch.randn(2, 3, 24, generator=g)).sample
        return model(x, encoder_hidden_states=torch.randn(2, 3, 12, generator=g), timestep=torch.tensor([5, 500]),
                     added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample


@pytest.mark.parametrize("make,sizes", [(tiny_unet, [(8, 8), (12, 20), (9, 7)]), (tiny_pixart, [(8, 8), (6, 10)])])
def test_conversion(make, sizes):
    model = make()
    attn2 = {n: m for n, m in model.named_modules() if n.endswith("attn2")}
    names = [l.name for l in self_attention_layers(model)]
    assert names
    assert to_deltaconv(model, seed=0) is model
    converted = dict(deltaconv_layers(model))
    assert sorted(converted) == sorted(names)  # every attn1 replaced
    assert all(isinstance(model.get_submodule(n), DeltaConvSelfAttention) for n in names)
    assert not self_attention_layers(model)  # no attention attn1 left
    assert all(model.get_submodule(n) is m for n, m in attn2.items())  # cross-attention intact
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in get_adapter(model).parameters()} and trainable
    for hw in sizes:  # any resolution: grids follow the latent
        out = run(model, hw)
        assert out.shape[-2:] == hw and torch.isfinite(out).all()


def test_gradients_reach_only_deltaconv():
    model = to_deltaconv(tiny_unet(), 3)
    x = torch.randn(1, 4, 8, 8)
    model(x, torch.tensor([10]), encoder_hidden_states=torch.randn(1, 3, 24)).sample.square().mean().backward()
    grads = [p.grad for p in get_adapter(model).parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if ".block." not in n)


def test_kernel_size_specs():
    unet = tiny_unet()
    layers = self_attention_layers(unet)
    assert set(resolve_kernel_sizes(unet, "paper").values()) == {9}
    assert set(resolve_kernel_sizes(tiny_pixart(), "paper").values()) == {13}
    ks = resolve_kernel_sizes(unet, {"down_blocks.*": 5, "*": 3})
    assert all(ks[l.name] == (5 if l.name.startswith("down") else 3) for l in layers)
    assert set(resolve_kernel_sizes(unet, lambda l: 2 * l.level + 3).values()) == {3, 5}
    with pytest.raises(ValueError, match="no K"):
        resolve_kernel_sizes(unet, {"down_blocks.*": 5})
    with pytest.raises(ValueError, match="authors' kernel-size table"):
        resolve_kernel_sizes(unet, "official")  # mid block at level 1: not SD1.5's layout
    with pytest.raises(ValueError, match="odd"):
        to_deltaconv(unet, 4)


def test_official_table_on_sd15_architecture():
    from aconvlib.models import load_denoiser

    den = load_denoiser("sd15", weights=False, device="meta")
    ks = resolve_kernel_sizes(den, "official")
    assert [ks[n] for n in ks if n.startswith("down")] == [7, 7, 9, 9, 5, 5]
    assert [ks[n] for n in ks if n.startswith("up")] == [5, 5, 5, 9, 9, 9, 11, 11, 11]
    assert [ks[n] for n in ks if n.startswith("mid")] == [3]
    to_deltaconv(den, "official")
    assert len(deltaconv_layers(den)) == 16


def test_save_load_round_trip(tmp_path):
    model = to_deltaconv(tiny_pixart(), 5, seed=1)
    for p in get_adapter(model).parameters():  # make weights differ from any fresh init
        p.data.add_(0.01 * torch.randn_like(p))
    ref = run(model, (6, 8))
    save_deltaconv(model, tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["base_model"] == "PixArtTransformer2DModel" and len(cfg["layers"]) == 2
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "diffusion_pytorch_model.safetensors").keys()
    assert all(k.startswith("blocks.") for k in keys)  # only ΔConv weights
    stock = tiny_pixart()  # same base weights (same seed), stock attention
    assert load_deltaconv(stock, str(tmp_path)) is stock
    assert torch.equal(run(stock, (6, 8)), ref)
    assert isinstance(DeltaConvAdapter.from_pretrained(str(tmp_path)).block("transformer_blocks.0.attn1"), DeltaConvBlock)


def test_wrong_base_is_a_clear_error(tmp_path):
    save_deltaconv(to_deltaconv(tiny_pixart(), 3), tmp_path / "pixart")
    with pytest.raises(ValueError, match="made for a PixArtTransformer2DModel"):
        load_deltaconv(tiny_unet(), str(tmp_path / "pixart"))
    save_deltaconv(to_deltaconv(tiny_unet(), 3), tmp_path / "unet")
    wider = diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(24, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24, attention_head_dim=4, norm_num_groups=8)
    with pytest.raises(ValueError, match="differ in width"):
        load_deltaconv(wider, str(tmp_path / "unet"))
    converted = to_deltaconv(tiny_unet(), 3)
    with pytest.raises(ValueError, match="already"):
        load_deltaconv(converted, str(tmp_path / "unet"))


def test_blocks_outside_the_denoiser_call():
    model = to_deltaconv(tiny_pixart(), 3)
    attn = model.get_submodule("transformer_blocks.0.attn1")
    with pytest.raises(RuntimeError, match="unknown token grid"):
        attn(torch.randn(1, 12, 16))  # 12 tokens: no square grid, no latent size known
    with latent_size(model, (6, 8)):
        assert attn(torch.randn(1, 12, 16)).shape == (1, 12, 16)
    run(model, (8, 8))  # the hook now says 4×4 = 16 tokens
    with pytest.raises(RuntimeError, match="got N = 12"):
        attn(torch.randn(1, 12, 16))


@pytest.mark.slow
def test_pipeline_call_unchanged():
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=tiny_unet(),
                                             scheduler=diffusers.DDIMScheduler(steps_offset=1, clip_sample=False),
                                             safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert to_deltaconv(pipe) is pipe
    emb = torch.randn(1, 3, 24)
    for h, w in [(16, 16), (8, 24)]:
        img = pipe(prompt_embeds=emb, negative_prompt_embeds=emb, num_inference_steps=1, height=h, width=w,
                   output_type="pt").images
        assert img.shape == (1, 3, h, w) and torch.isfinite(img).all()


# ================================================================================================
# one machinery for every token mixer: to_mixer / restore_attention / save_mixer / load_mixer
# ================================================================================================
from conftest import run_tiny  # noqa: E402
from conftest import tiny_pixart as small_pixart  # noqa: E402
from conftest import tiny_unet as small_unet  # noqa: E402

from aconvlib.mixers.convert import (MIXERS, LinearAttentionAdapter, MixerSelfAttention,  # noqa: E402
                                     WindowAttentionAdapter, load_mixer, mixer_layers, restore_attention, save_mixer,
                                     to_mixer)
from aconvlib.mixers.linear_attention import GeneralizedLinearAttention  # noqa: E402
from aconvlib.mixers.window_attention import WindowAttention  # noqa: E402

OPTIONS = {"deltaconv": dict(kernel_sizes=3), "linear": dict(hidden_ratio=0.5), "window": dict(window=5, mode="2d")}
SIZES = {small_unet: [(16, 16), (12, 20)], small_pixart: [(8, 8), (6, 10)]}
MAKERS = pytest.mark.parametrize("make", [small_unet, small_pixart], ids=["unet", "pixart"])
KINDS = pytest.mark.parametrize("kind", list(OPTIONS))


@pytest.fixture(autouse=True)
def _one_thread():
    """The tests' cores are shared: two threads on tiny models are many times slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _perturb(adapter, scale=0.01):
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in adapter.parameters():  # weights unlike any fresh init (or the teacher's copies)
            p.add_(scale * torch.randn(p.shape, generator=g))


@KINDS
@MAKERS
def test_every_kind_converts_runs_and_restores_the_stock_model(kind, make):
    model = make()
    names = [l.name for l in self_attention_layers(model)]
    stock = {n: model.get_submodule(n) for n in names}
    attn2 = {n: m for n, m in model.named_modules() if n.endswith("attn2")}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    hooks = len(model._forward_pre_hooks)
    ref = run_tiny(model)

    assert to_mixer(model, kind, keep_original=True, seed=0, **OPTIONS[kind]) is model
    adapter = get_adapter(model)
    assert type(adapter) is MIXERS[kind] and adapter.kind == kind
    wrappers = dict(mixer_layers(model))
    assert sorted(wrappers) == sorted(names) and all(m.kind == kind for m in wrappers.values())
    assert not self_attention_layers(model)  # no attention attn1 left
    assert all(model.get_submodule(n) is m for n, m in attn2.items())  # cross-attention intact
    block_type = {"deltaconv": DeltaConvBlock, "linear": GeneralizedLinearAttention, "window": WindowAttention}[kind]
    assert all(isinstance(m.block, block_type) for m in wrappers.values())
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if kind == "window":  # training-free: nothing new, nothing trainable, the original modules in use
        assert not trainable and not list(adapter.parameters())
        assert all(wrappers[n].block.to_q is stock[n].to_q and wrappers[n].block.to_out is stock[n].to_out
                   for n in names)
    else:
        assert trainable == {id(p) for p in adapter.parameters()} and trainable
    if kind == "linear":  # initialised from each attn1 (copies of q/k/v/out)
        blk, att = wrappers[names[0]].block, stock[names[0]]
        assert blk.to_q is not att.to_q and torch.equal(blk.to_q.weight, att.to_q.weight)
        assert torch.equal(blk.to_out[0].bias, att.to_out[0].bias)
    for hw in SIZES[make]:  # any resolution: grids follow the latent
        out = run_tiny(model, hw)
        assert out.shape[-2:] == hw and torch.isfinite(out).all()
    assert not torch.allclose(run_tiny(model), ref, atol=1e-4)  # a different mixer (window 5 < 16×16 grid)

    assert restore_attention(model) is model
    assert all(model.get_submodule(n) is stock[n] for n in names)
    assert torch.equal(run_tiny(model), ref)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert len(model._forward_pre_hooks) == hooks and not mixer_layers(model)
    with pytest.raises(ValueError, match="not converted"):
        get_adapter(model)
    to_mixer(model, kind, **OPTIONS[kind])  # a restored model converts again
    assert len(mixer_layers(model)) == len(names)


@pytest.mark.parametrize("mode", ["1d", "2d"])
@MAKERS
def test_window_covering_everything_equals_the_stock_model(make, mode):
    model = make()
    ref = run_tiny(model, SIZES[make][1])
    to_mixer(model, "window", window=1023, mode=mode)
    torch.testing.assert_close(run_tiny(model, SIZES[make][1]), ref, atol=1e-5, rtol=0)


@KINDS
@MAKERS
def test_save_load_round_trip_for_every_kind(kind, make, tmp_path):
    model = to_mixer(make(), kind, seed=1, **OPTIONS[kind])
    _perturb(get_adapter(model))
    hw = SIZES[make][1]
    ref = run_tiny(model, hw)
    save_mixer(model, tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["_class_name"] == type(get_adapter(model)).__name__ and len(cfg["layers"]) == len(mixer_layers(model))
    if kind == "window":
        assert files == ["config.json"] and all(l["window"] == 5 for l in cfg["layers"]) and cfg["mode"] == "2d"
    else:
        from safetensors.torch import load_file

        assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
        saved = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
        assert saved.keys() == get_adapter(model).state_dict().keys() and all(k.startswith("blocks.") for k in saved)
    stock = make()  # same base weights (same seed), stock attention
    assert load_mixer(stock, str(tmp_path)) is stock
    assert type(get_adapter(stock)) is type(get_adapter(model))
    assert torch.equal(run_tiny(stock, hw), ref)


@KINDS
@pytest.mark.parametrize("make,other", [(small_unet, lambda: small_unet(block_out_channels=(16, 32))),
                                        (small_pixart, lambda: small_pixart(attention_head_dim=4))],
                         ids=["unet", "pixart"])
def test_loading_into_other_widths_is_a_clear_error(kind, make, other, tmp_path):
    save_mixer(to_mixer(make(), kind, **OPTIONS[kind]), tmp_path)
    width_error = r"does not fit .* differ in width, e\.g\. .*adapter \d+ vs model \d+ channels"
    with pytest.raises(ValueError, match=width_error):
        load_mixer(other(), str(tmp_path))
    unet_made = make is small_unet
    with pytest.raises(ValueError, match=f"made for a {'UNet2DConditionModel' if unet_made else 'PixArt'}"):
        load_mixer(small_pixart() if unet_made else small_unet(), str(tmp_path))


def test_conversion_errors_are_clear(tmp_path):
    unet = small_unet()
    with pytest.raises(ValueError, match="unknown mixer kind 'conv'"):
        to_mixer(unet, "conv")
    with pytest.raises(TypeError, match=r"takes the options \['window', 'mode'\], not \['kernel_sizes'\]"):
        to_mixer(unet, "window", kernel_sizes=3)
    with pytest.raises(ValueError, match="window attention needs window="):
        to_mixer(unet, "window")
    with pytest.raises(ValueError, match="window must be a positive odd integer"):
        to_mixer(unet, "window", window=4)
    with pytest.raises(ValueError, match="names no window"):
        to_mixer(unet, "window", window={"down_blocks.*": 3})
    assert not mixer_layers(unet)  # failed conversions leave the model alone
    to_mixer(unet, "linear")
    with pytest.raises(ValueError, match="not kept"):
        restore_attention(unet)  # trained kinds drop the originals unless asked
    with pytest.raises(ValueError, match="already converted"):
        to_mixer(unet, "window", window=3)
    save_mixer(unet, tmp_path / "linear")
    with pytest.raises(ValueError, match="already holds converted token mixers"):
        load_mixer(unet, str(tmp_path / "linear"))
    with pytest.raises(ValueError, match="holds a linear adapter, not a deltaconv one"):
        load_deltaconv(small_unet(), str(tmp_path / "linear"))
    assert isinstance(LinearAttentionAdapter.from_pretrained(str(tmp_path / "linear")), LinearAttentionAdapter)


def test_per_layer_windows_and_window_adapter_from_config():
    unet = small_unet()
    to_mixer(unet, "window", window={"down_blocks.0.*": 3, "*": 7}, mode="1d")
    ws = {n: m.block.window for n, m in mixer_layers(unet)}
    assert all(w == (3 if n.startswith("down_blocks.0") else 7) for n, w in ws.items())
    assert not any(m.needs_grid for _, m in mixer_layers(unet))  # the 1-D band needs no grid
    adapter = WindowAttentionAdapter.from_config(get_adapter(unet).config)
    assert adapter.config.layers == get_adapter(unet).config.layers and not list(adapter.parameters())


def test_keep_original_for_trained_kinds_and_device_of_originals():
    model = small_pixart()
    ref = run_tiny(model)
    to_deltaconv(model, 3, keep_original=True)
    assert isinstance(model.get_submodule("transformer_blocks.0.attn1"), DeltaConvSelfAttention)
    model.double()  # a .to of the converted model does not reach the detached originals...
    restore_attention(model)
    assert model.get_submodule("transformer_blocks.0.attn1").to_q.weight.dtype == torch.float64  # ...restore does
    torch.testing.assert_close(run_tiny(model.float()), ref, atol=0, rtol=0)
    assert MixerSelfAttention is DeltaConvSelfAttention
