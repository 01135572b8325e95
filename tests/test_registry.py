import pytest
import torch

from aconvlib.models import (SUPPORTED_PIPELINES, MissingWeightsError, UnknownModelError, UnsupportedPipelineError,
                             get_spec, list_models, load_denoiser, load_pipeline, self_attention_layers,
                             unet_level_grids)

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
def test_offline_missing_weights_message(name, empty_hub):
    # offline_hub patches what huggingface_hub read at import: the loaders really look in the empty cache
    # (monkeypatch.setenv("HF_HUB_CACHE") after import would leave them looking in the user's own cache)
    from huggingface_hub import constants

    assert constants.HF_HUB_CACHE == str(empty_hub) and constants.HF_HUB_OFFLINE
    with pytest.raises(MissingWeightsError) as e:
        load_denoiser(name)
    msg = str(e.value)
    spec = get_spec(name)
    assert spec.hub_id in msg and str(empty_hub) in msg
    assert ("mini-sd" if spec.family == "unet" else "mini-dit") in msg
    assert "weights=False" in msg


def test_offline_pipeline_message(empty_hub):
    with pytest.raises(MissingWeightsError, match="stabilityai/stable-diffusion-xl-base-1.0") as e:
        load_pipeline("sdxl")
    assert "mini-sd" in str(e.value)


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


# ---------------------------------------------------------------------------------------------------------------
# Loading the published hub layouts (tiny random-weight fixtures, aconvlib.testing.hub_fixtures), offline
# ---------------------------------------------------------------------------------------------------------------

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
PIXART_512 = "PixArt-alpha/PixArt-Sigma-XL-2-512-MS"
PIXART_BASE = "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"
PIPELINES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
             "pixart-sigma-512": "PixArtSigmaPipeline", "pixart-sigma-1024": "PixArtSigmaPipeline"}


def _snapshot(hub, repo_id):
    folder = hub / ("models--" + repo_id.replace("/", "--"))
    return folder / "snapshots" / (folder / "refs" / "main").read_text()


def _latents(pipe, **kw):
    from aconvlib.book.studies import generation_kwargs

    pipe.set_progress_bar_config(disable=True)
    return pipe("a red fox in the snow", num_inference_steps=2, height=64, width=64, output_type="latent",
                generator=torch.Generator().manual_seed(0), **generation_kwargs(pipe), **kw).images


@pytest.mark.parametrize("name", REAL)
def test_every_real_model_loads_from_its_published_layout(name, fixture_hub):
    pipe = load_pipeline(name)
    assert type(pipe).__name__ == PIPELINES[name]
    dtypes = {k: v.dtype for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
    assert set(dtypes.values()) == {torch.float32}, dtypes   # SDXL's text encoder configs say float16
    latents = _latents(pipe)
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()
    den = load_denoiser(name)
    assert type(den).__name__ == type(getattr(pipe, get_spec(name).denoiser_subfolder)).__name__
    assert not den.training


def test_pixart_512_takes_its_transformer_from_the_512_repo_and_the_rest_from_the_base(fixture_hub):
    from diffusers import PixArtTransformer2DModel

    pipe = load_pipeline("pixart-sigma-512")
    own = PixArtTransformer2DModel.from_pretrained(PIXART_512, subfolder="transformer")
    base = PixArtTransformer2DModel.from_pretrained(PIXART_BASE, subfolder="transformer")
    assert pipe.transformer.config.sample_size == own.config.sample_size == 64 != base.config.sample_size
    assert torch.equal(pipe.transformer.pos_embed.proj.weight, own.pos_embed.proj.weight)
    vae = type(pipe.vae).from_pretrained(PIXART_BASE, subfolder="vae")
    assert torch.equal(pipe.vae.encoder.conv_in.weight, vae.encoder.conv_in.weight)
    assert type(pipe.tokenizer).__name__.startswith("T5Tokenizer")


def test_hub_ids_of_registered_models_load_like_their_names(fixture_hub):
    assert type(load_pipeline(PIXART_512)).__name__ == "PixArtSigmaPipeline"   # via its companion repo
    assert type(load_denoiser(SD15)).__name__ == "UNet2DConditionModel"


def test_a_denoiser_only_repo_is_named_as_such(fixture_hub, tmp_path):
    import shutil

    from aconvlib.testing.hub_fixtures import offline_hub

    # an unregistered transformer-only repo: a copy of the 512 repo under another hub id
    root = tmp_path / "other"
    src = fixture_hub / ("models--" + PIXART_512.replace("/", "--"))
    shutil.copytree(src, root / "hub" / "models--someone--pixart-512-finetune", symlinks=True)
    with offline_hub(root, []):   # builds nothing: the cache holds only the copied repo
        with pytest.raises(UnsupportedPipelineError, match="holds a denoiser only"):
            load_pipeline("someone/pixart-512-finetune")
        assert type(load_denoiser("someone/pixart-512-finetune")).__name__ == "PixArtTransformer2DModel"


def test_pixart_512_names_the_missing_companion_repo(tmp_path):
    from aconvlib.testing.hub_fixtures import offline_hub

    with offline_hub(tmp_path, [PIXART_512]):   # the transformer is there, its VAE/T5 repo is not
        load_denoiser("pixart-sigma-512")
        with pytest.raises(MissingWeightsError, match=PIXART_BASE) as e:
            load_pipeline("pixart-sigma-512")
    assert "mini-dit" in str(e.value)


def test_fp16_variant_where_published(fixture_hub):
    pipe = load_pipeline("sd15", variant="fp16")   # no dtype: the fp16 files stay fp16 (diffusers would upcast)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float16}
    half = load_denoiser("sdxl", variant="fp16", dtype=torch.float32).conv_in.weight
    full = load_denoiser("sdxl").conv_in.weight
    assert torch.equal(half, full.half().float()) and not torch.equal(half, full)   # the fp16 file was read
    with pytest.raises(ValueError, match="publishes no 'fp16' weight variant"):
        load_pipeline("pixart-sigma-1024", variant="fp16")


def test_revision_local_files_only_and_local_folder(fixture_hub, tmp_path):
    import shutil

    commit = (fixture_hub / ("models--" + SD15.replace("/", "--")) / "refs" / "main").read_text()
    den = load_denoiser("sd15", revision=commit, local_files_only=True)
    assert torch.equal(den.conv_in.weight, load_denoiser("sd15").conv_in.weight)
    with pytest.raises(MissingWeightsError, match="0000000000000000000000000000000000000000"):
        load_denoiser("sd15", revision="0" * 40)
    folder = tmp_path / "my-sd15"
    shutil.copytree(_snapshot(fixture_hub, SD15), folder)   # a local pipeline folder (files, not cache links)
    pipe = load_pipeline(str(folder))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert torch.isfinite(_latents(pipe)).all()
    assert type(load_denoiser(str(folder))).__name__ == "UNet2DConditionModel"


def test_unsupported_pipeline_class_names_the_supported_ones(fixture_hub, tmp_path):
    import json
    import shutil

    folder = tmp_path / "img2img"
    shutil.copytree(_snapshot(fixture_hub, SD15), folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionImg2ImgPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedPipelineError) as e:
        load_pipeline(str(folder))
    msg = str(e.value)
    assert "StableDiffusionImg2ImgPipeline" in msg and all(c in msg for c in SUPPORTED_PIPELINES)


def test_a_broken_config_surfaces_as_itself(hub_root, tmp_path):
    """Only a checkpoint that is absent becomes MissingWeightsError; a cached one with a corrupt config does not."""
    import shutil

    from aconvlib.testing.hub_fixtures import offline_hub

    root = tmp_path / "copy"
    shutil.copytree(hub_root, root, symlinks=True)
    config = _snapshot(root / "hub", SD15) / "unet" / "config.json"
    blob = config.resolve()
    assert blob.is_relative_to(root)          # the copy's own blob, not the session cache's
    blob.unlink()
    blob.write_text("{ this is not json")
    with offline_hub(root):
        with pytest.raises(Exception) as e:
            load_denoiser("sd15")
        assert not isinstance(e.value, MissingWeightsError)
        assert "not a valid JSON file" in str(e.value) or isinstance(e.value, ValueError)
        with pytest.raises(Exception) as e:
            load_pipeline("sd15")
        assert not isinstance(e.value, MissingWeightsError)
        load_pipeline("sdxl")                 # the other repos are intact


def test_a_missing_dependency_surfaces_as_itself(fixture_hub, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sentencepiece(name, *a, **k):
        if name == "sentencepiece" or name.startswith("sentencepiece."):
            raise ImportError("No module named 'sentencepiece' (test)")
        return real_import(name, *a, **k)

    import sys

    for mod in [m for m in sys.modules if m == "sentencepiece" or m.startswith("sentencepiece.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_sentencepiece)
    with pytest.raises(Exception) as e:
        load_pipeline("pixart-sigma-1024")   # its T5 tokenizer is converted from spiece.model by sentencepiece
    assert not isinstance(e.value, MissingWeightsError), e.value


@pytest.mark.parametrize("name", ["sdxl", "pixart-sigma-512"])
def test_captures_in_float16_at_the_requested_size(name, fixture_hub):
    """The `full` profile's dtype on the published layouts: no dtype clash between components (SDXL's text encoders
    name float16 in their configs, its U-Net does not), and PixArt generates the requested non-square size instead
    of snapping it to an aspect-ratio bin (the captured token grid must match it)."""
    from aconvlib.book.studies import capture_study

    study = capture_study(name, n_prompts=1, steps=2, height=128, width=64, dtype="float16", output_dir=None,
                          verbose=False)
    assert study.images.shape == (1, 128, 64, 3)
    # 16×8 latent: PixArt's 2×2 patches and SDXL's first attention level (after one downsampling) both see 8×4
    assert max(tuple(lay["grid"]) for lay in study.layers) == (8, 4)
    assert all(torch.isfinite(m).all() for m in study.maps.values())
