import pytest
import torch

from aconvlib.models import (MissingWeightsError, UnknownModelError, get_spec, list_models, load_denoiser,
                             load_pipeline, self_attention_layers, unet_level_grids)

REAL = ["sd15", "sdxl", "pixart-sigma-512", "pixart-sigma-1024"]


def test_real_models_registered_with_hub_ids():
    names = {s.name for s in list_models()}
    assert set(REAL) <= names
    assert get_spec("SD15").hub_id == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert get_spec("pixart-sigma-1024").family == "dit"


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as e:
        get_spec("sd16")
    msg = str(e.value)
    assert "sd16" in msg and all(n in msg for n in REAL)


def test_unknown_name_that_is_not_a_hub_id_fails_in_loaders():
    with pytest.raises(UnknownModelError):
        load_denoiser("not-a-model")


@pytest.mark.parametrize("name", ["sd15", "pixart-sigma-512"])
def test_offline_missing_weights_message(name, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MissingWeightsError) as e:
        load_denoiser(name)
    msg = str(e.value)
    spec = get_spec(name)
    assert spec.hub_id in msg
    assert ("mini-sd" if spec.family == "unet" else "mini-dit") in msg
    assert "weights=False" in msg


def test_offline_pipeline_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="stabilityai/stable-diffusion-xl-base-1.0"):
        load_pipeline("sdxl")


@pytest.mark.parametrize("name,count,grid0", [("sd15", 16, (64, 64)), ("sdxl", 70, (64, 64)),
                                              ("pixart-sigma-512", 28, (32, 32)), ("pixart-sigma-1024", 28, (64, 64))])
def test_self_attention_enumeration(name, count, grid0):
    spec = get_spec(name)
    den = load_denoiser(name, weights=False, device="meta")
    layers = self_attention_layers(den, spec.latent_grid(spec.default_px, spec.default_px))
    assert len(layers) == count
    assert layers[0].grid == grid0
    assert all(l.name.endswith("attn1") for l in layers)
    assert all(l.heads * l.head_dim == l.channels for l in layers)


def test_sd15_layer_grids_and_heads_at_512():
    den = load_denoiser("sd15", weights=False, device="meta")
    layers = {l.name: l for l in self_attention_layers(den, (64, 64))}
    assert layers["down_blocks.1.attentions.0.transformer_blocks.0.attn1"].grid == (32, 32)
    assert layers["mid_block.attentions.0.transformer_blocks.0.attn1"].grid == (8, 8)
    up = layers["up_blocks.3.attentions.2.transformer_blocks.0.attn1"]
    assert (up.grid, up.heads, up.head_dim) == ((64, 64), 8, 40)


def test_sdxl_head_dim_is_64_everywhere():
    den = load_denoiser("sdxl", weights=False, device="meta")
    assert {l.head_dim for l in self_attention_layers(den, (128, 128))} == {64}


def test_non_square_grids_round_up_like_strided_convs():
    assert unet_level_grids((90, 160), 4) == [(90, 160), (45, 80), (23, 40), (12, 20)]
    den = load_denoiser("sd15", weights=False, device="meta")
    grids = {l.grid for l in self_attention_layers(den, (90, 160))}
    assert grids == {(90, 160), (45, 80), (23, 40), (12, 20)}


def test_grid_matches_a_real_forward_pass():
    """The derived grids equal the token counts that the attention layers really see."""
    den = load_denoiser("sd15", weights=False, device="meta")
    cfg = dict(den.config)
    cfg.update(block_out_channels=(32, 32, 32, 32), norm_num_groups=8, cross_attention_dim=16, attention_head_dim=2,
               layers_per_block=1)
    from diffusers import UNet2DConditionModel
    tiny = UNet2DConditionModel.from_config(cfg).eval()
    layers = self_attention_layers(tiny, (18, 30))
    hooks_ok = []
    for l in layers:
        l.module.register_forward_pre_hook(lambda m, a, k, name=l.name: hooks_ok.append((name, (a or (k["hidden_states"],))[0].shape[1])),
                                           with_kwargs=True)
    with torch.no_grad():
        tiny(torch.randn(1, 4, 18, 30), 10, encoder_hidden_states=torch.randn(1, 3, 16))
    tokens = dict(hooks_ok)
    assert tokens == {l.name: l.tokens for l in layers}


def test_latent_grid_rejects_non_multiples():
    with pytest.raises(ValueError, match="multiple of 8"):
        get_spec("sd15").latent_grid(500, 512)


def test_meta_device_allocates_nothing():
    den = load_denoiser("pixart-sigma-1024", weights=False, device="meta")
    assert all(p.device.type == "meta" for p in den.parameters())
