"""Tiny random-weight hub fixtures (aconvlib.testing.hub_fixtures) load offline with plain diffusers/transformers."""
import json
import os
from pathlib import Path

import pytest
import torch

from aconvlib.testing import hub_fixtures as hf
from aconvlib.testing.hub_fixtures import FIXTURE_REPOS, build_hub_cache, offline_hub

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
PIXART_1024 = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
PIXART_512 = "PixArt-alpha/PixArt-Sigma-XL-2-512-MS"
PIXART_BASE = "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"
PROMPT = "a photo of an astronaut riding a horse"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models on a shared 2-core machine: intra-op threads make each step ~40x slower (spin-waiting).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-fixtures")
    build_hub_cache(root)
    return root


@pytest.fixture
def hub(root):
    with offline_hub(root) as hub:
        yield hub


def _snapshot(hub: Path, repo_id: str) -> Path:
    folder = hub / ("models--" + repo_id.replace("/", "--"))
    return folder / "snapshots" / (folder / "refs" / "main").read_text()


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generator():
    return torch.Generator("cpu").manual_seed(0)


def _chain(exc):
    """The exception and everything it was raised from or while handling (both links: diffusers re-raises with
    ``from`` the Hub error while the missing-file error is the context)."""
    todo, seen = [exc], set()
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        todo += [exc.__cause__, exc.__context__]


# ---------------------------------------------------------------------------------------------------------------
# Layout and configs
# ---------------------------------------------------------------------------------------------------------------

def test_cache_layout_matches_huggingface_hub(hub):
    for repo_id in FIXTURE_REPOS:
        folder = hub / ("models--" + repo_id.replace("/", "--"))
        commit = (folder / "refs" / "main").read_text()
        snap = folder / "snapshots" / commit
        tree = json.loads((folder / "trees" / f"{commit}.json").read_text())
        files = sorted(str(p.relative_to(snap)) for p in snap.rglob("*") if not p.is_dir())
        assert files == sorted(tree["files"]), repo_id
        for rel, entry in tree["files"].items():
            link = snap / rel
            assert link.is_symlink() and link.resolve().parent == (folder / "blobs").resolve()
            assert link.stat().st_size == entry["size"]
            assert ("lfs_sha256" in entry) == rel.endswith((".safetensors", ".model"))
    import huggingface_hub

    scan = huggingface_hub.scan_cache_dir(hub)
    assert not scan.warnings
    assert {r.repo_id for r in scan.repos} == set(FIXTURE_REPOS)


def test_published_file_names(hub):
    sd15 = _snapshot(hub, SD15)
    for comp in ("unet", "vae"):
        assert (sd15 / comp / "diffusion_pytorch_model.safetensors").is_file()
        assert (sd15 / comp / "diffusion_pytorch_model.fp16.safetensors").is_file()
    for comp in ("text_encoder", "safety_checker"):
        assert (sd15 / comp / "model.safetensors").is_file() and (sd15 / comp / "model.fp16.safetensors").is_file()
    assert {p.name for p in (sd15 / "tokenizer").iterdir()} == {"merges.txt", "special_tokens_map.json",
                                                                "tokenizer_config.json", "vocab.json"}
    assert (sd15 / "feature_extractor" / "preprocessor_config.json").is_file()
    sdxl = _snapshot(hub, SDXL)
    assert (sdxl / "text_encoder_2" / "model.fp16.safetensors").is_file()
    for repo_id in (PIXART_1024, PIXART_BASE):
        snap = _snapshot(hub, repo_id)
        names = {p.name for p in (snap / "text_encoder").iterdir()}
        assert names == {"config.json", "model.safetensors.index.json"} | {
            f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)}
        assert {p.name for p in (snap / "tokenizer").iterdir()} == {
            "added_tokens.json", "special_tokens_map.json", "spiece.model", "tokenizer_config.json"}
    p512 = _snapshot(hub, PIXART_512)
    assert not (p512 / "model_index.json").exists()
    assert {str(p.relative_to(p512)) for p in p512.rglob("*") if p.is_file()} == {
        ".gitattributes", "README.md", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors"}


def _config(hub, repo_id, rel):
    return json.loads((_snapshot(hub, repo_id) / rel).read_text())


def test_configs_keep_published_topology(hub):
    sd15 = _config(hub, SD15, "unet/config.json")
    assert sd15["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert sd15["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert (sd15["cross_attention_dim"], sd15["attention_head_dim"], sd15["layers_per_block"]) == (768, 8, 2)
    assert _config(hub, SD15, "text_encoder/config.json")["hidden_size"] == 768

    sdxl = _config(hub, SDXL, "unet/config.json")
    assert sdxl["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert sdxl["cross_attention_dim"] == 2048 and sdxl["addition_embed_type"] == "text_time"
    assert isinstance(sdxl["transformer_layers_per_block"], list) and sdxl["transformer_layers_per_block"][0] == 1
    te1 = _config(hub, SDXL, "text_encoder/config.json")
    te2 = _config(hub, SDXL, "text_encoder_2/config.json")
    assert te1["hidden_size"] + te2["hidden_size"] == 2048
    assert sdxl["projection_class_embeddings_input_dim"] == 6 * sdxl["addition_time_embed_dim"] + te2["projection_dim"]
    assert _config(hub, SDXL, "tokenizer_2/special_tokens_map.json")["pad_token"] == "!"

    for repo_id, px in ((PIXART_1024, 1024), (PIXART_512, 512), (PIXART_BASE, 1024)):
        cfg = _config(hub, repo_id, "transformer/config.json")
        assert cfg["_class_name"] == "PixArtTransformer2DModel"
        assert (cfg["patch_size"], cfg["caption_channels"], cfg["attention_head_dim"], cfg["out_channels"]) == (
            2, 4096, 72, 8)
        assert cfg["sample_size"] == px // 8 and cfg["interpolation_scale"] == {512: 1, 1024: 2}[px]
        assert cfg["use_additional_conditions"] is False
        assert cfg["cross_attention_dim"] == cfg["num_attention_heads"] * 72
    assert _config(hub, PIXART_1024, "text_encoder/config.json")["d_model"] == 4096

    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

    for repo_id, cls in ((SD15, PNDMScheduler), (SDXL, EulerDiscreteScheduler),
                         (PIXART_1024, DPMSolverMultistepScheduler), (PIXART_BASE, DPMSolverMultistepScheduler)):
        sched = cls.from_pretrained(repo_id, subfolder="scheduler")
        assert sched.config.prediction_type == "epsilon"


def test_sizes_stay_small(hub):
    limits = {SD15: 30, SDXL: 90, PIXART_1024: 16, PIXART_512: 8, PIXART_BASE: 16}  # MiB, fp16 variants included
    for repo_id, limit in limits.items():
        blobs = hub / ("models--" + repo_id.replace("/", "--")) / "blobs"
        assert sum(p.stat().st_size for p in blobs.iterdir()) < limit * 2**20, repo_id


# ---------------------------------------------------------------------------------------------------------------
# Plain diffusers loading and generation, offline
# ---------------------------------------------------------------------------------------------------------------

def test_sd15_pipeline_loads_and_generates(hub):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    pipe = _quiet(DiffusionPipeline.from_pretrained(SD15))
    assert type(pipe) is StableDiffusionPipeline
    assert isinstance(pipe.safety_checker, StableDiffusionSafetyChecker)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert pipe.tokenizer.model_max_length == 77
    ids = pipe.tokenizer(PROMPT).input_ids
    assert ids[0] == pipe.tokenizer.convert_tokens_to_ids("<|startoftext|>")
    assert ids[-1] == pipe.tokenizer.convert_tokens_to_ids("<|endoftext|>") == len(pipe.tokenizer) - 1
    out = pipe(PROMPT, num_inference_steps=2, height=64, width=64, generator=_generator())  # PIL + safety checker
    assert out.images[0].size == (64, 64)
    assert out.nsfw_content_detected == [False]


def test_sdxl_pipeline_loads_and_generates(hub):
    from diffusers import DiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    pipe = _quiet(DiffusionPipeline.from_pretrained(SDXL, dtype=torch.float32))
    assert type(pipe) is StableDiffusionXLPipeline
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.tokenizer_2.pad_token_id == 0
    latents = pipe(PROMPT, num_inference_steps=2, height=64, width=64, output_type="latent",
                   generator=_generator()).images
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()


def test_sdxl_plain_load_without_dtype_mixes_dtypes_and_fails(hub):
    """Why ``load_pipeline`` always passes a dtype: the published SDXL text-encoder configs say
    torch_dtype=float16, which transformers 5 follows when no dtype is given, while diffusers keeps the UNet and
    VAE in float32, so a plain load cannot generate. (If a library upgrade changes this, this test says so.)"""
    from diffusers import DiffusionPipeline

    pipe = _quiet(DiffusionPipeline.from_pretrained(SDXL))
    assert pipe.text_encoder.dtype == pipe.text_encoder_2.dtype == torch.float16
    assert pipe.unet.dtype == pipe.vae.dtype == torch.float32
    with pytest.raises(RuntimeError, match="dtype"):
        pipe(PROMPT, num_inference_steps=1, height=64, width=64, output_type="latent")


def test_pixart_1024_pipeline_loads_and_generates(hub):
    from diffusers import DiffusionPipeline, PixArtSigmaPipeline
    from transformers import T5EncoderModel

    pipe = _quiet(DiffusionPipeline.from_pretrained(PIXART_1024))
    assert type(pipe) is PixArtSigmaPipeline
    assert isinstance(pipe.text_encoder, T5EncoderModel)
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    tok = pipe.tokenizer
    assert tok.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]
    assert len(tok) == pipe.text_encoder.config.vocab_size
    # use_resolution_binning=False: otherwise 64 px is snapped to the 1024 px aspect-ratio bins.
    latents = pipe(PROMPT, num_inference_steps=2, height=64, width=64, use_resolution_binning=False,
                   output_type="latent", generator=_generator()).images
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()


def test_pixart_512_is_transformer_only(hub):
    from diffusers import DiffusionPipeline, PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel.from_pretrained(PIXART_512, subfolder="transformer")
    assert (transformer.config.sample_size, transformer.config.interpolation_scale) == (64, 1)
    with pytest.raises(OSError):  # no model_index.json, as published
        DiffusionPipeline.from_pretrained(PIXART_512)


def test_pixart_512_published_usage(hub):
    from diffusers import PixArtSigmaPipeline, PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel.from_pretrained(PIXART_512, subfolder="transformer")
    pipe = _quiet(PixArtSigmaPipeline.from_pretrained(PIXART_BASE, transformer=transformer))
    assert pipe.transformer is transformer
    out = pipe(PROMPT, num_inference_steps=2, height=64, width=64, use_resolution_binning=False,
               generator=_generator())
    assert out.images[0].size == (64, 64)


def test_fp16_variant_loads(hub):
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    pipe = DiffusionPipeline.from_pretrained(SD15, variant="fp16", dtype=torch.float16)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float16
    full = UNet2DConditionModel.from_pretrained(SDXL, subfolder="unet").conv_in.weight
    half = UNet2DConditionModel.from_pretrained(SDXL, subfolder="unet", variant="fp16").conv_in.weight
    assert torch.equal(half, full.half().float()) and not torch.equal(half, full)  # the fp16 file was read


# ---------------------------------------------------------------------------------------------------------------
# Determinism, idempotence, missing repos, the offline context, the command line
# ---------------------------------------------------------------------------------------------------------------

def _blobs(hub, repo_id):
    blobs = hub / ("models--" + repo_id.replace("/", "--")) / "blobs"
    return {p.name: p.read_bytes() for p in blobs.iterdir()}


def test_rebuild_gives_identical_bytes(root, tmp_path):
    other = build_hub_cache(tmp_path, [PIXART_512])
    assert _blobs(other, PIXART_512) == _blobs(hf.hub_cache_dir(root), PIXART_512)


@pytest.mark.slow
def test_full_rebuild_gives_identical_bytes(root, tmp_path):
    other = build_hub_cache(tmp_path)
    for repo_id in FIXTURE_REPOS:
        assert _blobs(other, repo_id) == _blobs(hf.hub_cache_dir(root), repo_id), repo_id


def test_build_is_idempotent(root):
    ref = hf.hub_cache_dir(root) / ("models--" + SD15.replace("/", "--")) / "refs" / "main"
    before = ref.stat().st_mtime_ns
    assert build_hub_cache(root) == hf.hub_cache_dir(root)
    assert ref.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="unknown fixture repo"):
        build_hub_cache(root, ["org/not-a-fixture"])


def test_absent_repo_gives_the_usual_offline_error(tmp_path):
    from diffusers import DiffusionPipeline, UNet2DConditionModel
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from transformers import CLIPTextModel

    with offline_hub(tmp_path, [PIXART_512]):  # only the 512 transformer is cached
        loaders = [lambda: DiffusionPipeline.from_pretrained(SD15),
                   lambda: UNet2DConditionModel.from_pretrained(SDXL, subfolder="unet"),
                   lambda: CLIPTextModel.from_pretrained(SD15, subfolder="text_encoder")]
        for load in loaders:
            with pytest.raises(OSError) as e:
                load()
            assert any(isinstance(x, LocalEntryNotFoundError) for x in _chain(e.value))
        with pytest.raises(LocalEntryNotFoundError):
            snapshot_download(SD15)


def test_offline_hub_patches_imported_libraries_and_restores(root, monkeypatch, tmp_path):
    import diffusers.utils.constants
    import diffusers.utils.hub_utils
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)  # as if imported online, elsewhere
    monkeypatch.setattr(diffusers.utils.hub_utils, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    before = (c.HF_HUB_CACHE, c.HF_HOME, diffusers.utils.constants.HF_HOME)
    with offline_hub(root) as hub:
        assert hub == hf.hub_cache_dir(root)
        assert c.HF_HUB_CACHE == str(hub) and c.HF_HOME == str(root.resolve()) and c.is_offline_mode()
        assert diffusers.utils.hub_utils.HF_HUB_OFFLINE is True
        assert diffusers.utils.constants.HF_HOME == str(root.resolve())
        assert os.environ["HF_HUB_CACHE"] == str(hub) and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert (c.HF_HUB_CACHE, c.HF_HOME, diffusers.utils.constants.HF_HOME) == before
    assert c.HF_HUB_OFFLINE is False and diffusers.utils.hub_utils.HF_HUB_OFFLINE is False
    assert os.environ["HF_HUB_CACHE"] == str(tmp_path / "elsewhere") and "TRANSFORMERS_OFFLINE" not in os.environ


def test_command_line(root, capsys):
    assert hf.main([str(root)]) == 0
    out = capsys.readouterr().out
    assert f"HF_HUB_CACHE={hf.hub_cache_dir(root)}" in out
    assert all(repo_id in out for repo_id in FIXTURE_REPOS) and "MiB" in out
