"""Hub fixtures of the joint-attention models (:mod:`aconvlib.testing.hub_fixtures` builds them): tiny random-weight
``black-forest-labs/FLUX.1-dev``, ``black-forest-labs/FLUX.1-schnell`` and ``stabilityai/stable-diffusion-3.5-medium``
in their published layouts:

* FLUX.1: ``FluxPipeline``; ``transformer/`` in 3 safetensors shards with ``diffusion_pytorch_model.safetensors.
  index.json``; ``text_encoder/`` CLIP ViT-L/14 (``CLIPTextModel``); ``text_encoder_2/`` T5-v1.1-XXL encoder in 2
  shards with ``model.safetensors.index.json``; ``tokenizer/`` (CLIP BPE), ``tokenizer_2/`` (T5: ``spiece.model`` and
  ``tokenizer.json``); the 16-channel ``vae/``; ``scheduler/`` (``FlowMatchEulerDiscreteScheduler``). The repos'
  original-format root files (``flux1-*.safetensors``, ``ae.safetensors``) are left out: diffusers does not read them.
* SD3.5-medium: ``StableDiffusion3Pipeline``; ``transformer/`` one safetensors file (as published: 4.6 GB, under
  diffusers' shard size); ``text_encoder/`` CLIP-L and ``text_encoder_2/`` CLIP-G (``CLIPTextModelWithProjection``);
  ``text_encoder_3/`` T5-XXL in 2 shards; ``tokenizer``/``tokenizer_2`` (CLIP), ``tokenizer_3`` (T5 ``spiece.model``);
  the 16-channel VAE and the flow-matching scheduler.

The transformer, VAE and scheduler configs are the ones aconvlib ships for these models (``data/configs/<model>/``),
with widths and depths shrunk (marked ``# shrunk``). Interface widths are kept: T5's 4096 (``joint_attention_dim``),
CLIP-L's 768 (FLUX's ``pooled_projection_dim``), CLIP-L + CLIP-G = 2048 (SD3's pooled projection), 16 latent
channels, FLUX's 64 packed input channels.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ._fixture_configs import _clip_bigg_config, _clip_l_config, _t5_config
from ._fixture_files import (_GITATTRIBUTES, _diffusers_weights, _json_bytes, _prefixed, _readme, _sharded,
                             _transformers_component)
from ._fixture_tokenizers import _clip_tokenizer_files, _t5_tokenizer_files

FLUX_DEV = "black-forest-labs/FLUX.1-dev"
FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"
SD35_MEDIUM = "stabilityai/stable-diffusion-3.5-medium"
JOINT_REPOS = (FLUX_DEV, FLUX_SCHNELL, SD35_MEDIUM)
_MODEL = {FLUX_DEV: "flux-dev", FLUX_SCHNELL: "flux-schnell", SD35_MEDIUM: "sd3.5-medium"}


def _shipped(model: str, name: str) -> dict:
    from ..models.registry import get_spec

    return json.loads((get_spec(model).config_path.parent / f"{name}.json").read_text())


def _transformer_config(repo: str) -> dict:
    cfg = _shipped(_MODEL[repo], "transformer")
    if repo == SD35_MEDIUM:
        return {**cfg, "_diffusers_version": "0.31.0.dev0",
                "attention_head_dim": 16,            # shrunk: 64
                "caption_projection_dim": 32,        # shrunk: 1536 (= heads * head dim)
                "dual_attention_layers": [0, 1],     # shrunk: [0, ..., 12] of 24 blocks
                "num_attention_heads": 2,            # shrunk: 24
                "num_layers": 3,                     # shrunk: 24
                "pos_embed_max_size": 64}            # shrunk: 384 (64 patches: 1024 px)
    return {**cfg, "_diffusers_version": "0.30.0.dev0",
            "attention_head_dim": 16,                # shrunk: 128
            "axes_dims_rope": [4, 6, 6],             # shrunk: the default (16, 56, 56), summing to the head dim
            "num_attention_heads": 2,                # shrunk: 24
            "num_layers": 2,                         # shrunk: 19
            "num_single_layers": 2}                  # shrunk: 38


def _vae_config(repo: str) -> dict:
    return {**_shipped(_MODEL[repo], "vae"), "_diffusers_version": "0.30.0.dev0" if repo != SD35_MEDIUM else
            "0.31.0.dev0",
            "block_out_channels": [8, 16, 32, 32],   # shrunk: [128, 256, 512, 512]
            "norm_num_groups": 2}                    # shrunk: 32


def _scheduler_config(repo: str) -> dict:
    return {**_shipped(_MODEL[repo], "scheduler"),
            "_diffusers_version": "0.30.0.dev0" if repo != SD35_MEDIUM else "0.31.0.dev0"}


def _diffusers_sharded(folder: str, config: dict, seed_key: str, shards: int) -> dict[str, bytes]:
    """A diffusers component as published in ``shards`` safetensors files plus its index (1: one file)."""
    files = _diffusers_weights(config["_class_name"], config, seed_key, "diffusion_pytorch_model", False)
    if shards > 1:
        import safetensors.torch

        tensors = safetensors.torch.load(files.pop("diffusion_pytorch_model.safetensors"))
        files = _sharded("diffusion_pytorch_model", tensors, shards)
    return _prefixed(folder, {"config.json": _json_bytes(config), **files})


def _t5_fast_tokenizer_files(max_length: int) -> dict[str, bytes]:
    """The T5 tokenizer files with ``tokenizer.json`` (FLUX publishes it), converted from the fixture's spiece.model
    by transformers, as ``save_pretrained`` writes it."""
    from transformers import T5TokenizerFast

    files = _t5_tokenizer_files()
    cfg = json.loads(files["tokenizer_config.json"])
    cfg["model_max_length"] = max_length
    files["tokenizer_config.json"] = (json.dumps(cfg, indent=2) + "\n").encode()
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        tok = T5TokenizerFast.from_pretrained(tmp)
        files["tokenizer.json"] = tok.backend_tokenizer.to_str(pretty=True).encode()
    files.pop("added_tokens.json")   # FLUX's tokenizer_2 has none: tokenizer.json holds the added tokens
    return files


def _with_projection(cfg: dict, projection_dim: int) -> dict:
    return {**cfg, "architectures": ["CLIPTextModelWithProjection"], "projection_dim": projection_dim,
            "torch_dtype": "float16"}


def flux_files(repo: str) -> dict[str, bytes]:
    files = {
        ".gitattributes": _GITATTRIBUTES.encode(),
        "README.md": _readme(repo, "apache-2.0" if repo == FLUX_SCHNELL else "other"),
        "model_index.json": _json_bytes({
            "_class_name": "FluxPipeline",
            "_diffusers_version": "0.30.0.dev0",
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "FluxTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }),
        "scheduler/scheduler_config.json": _json_bytes(_scheduler_config(repo)),
    }
    files.update(_prefixed("tokenizer", _clip_tokenizer_files("<|endoftext|>", sdxl=False)))
    files.update(_prefixed("tokenizer_2", _t5_fast_tokenizer_files(512)))
    # dev and schnell ship the same CLIP-L, T5-XXL and VAE: same seeds, same bytes
    files.update(_transformers_component("text_encoder", {**_clip_l_config(False), "torch_dtype": "bfloat16"},
                                         "CLIPTextModel", "flux-clip-l", False))
    files.update(_transformers_component("text_encoder_2", {**_t5_config(), "torch_dtype": "bfloat16"},
                                         "T5EncoderModel", "flux-t5-xxl", False, shards=2))
    files.update(_diffusers_sharded("vae", _vae_config(repo), "flux-vae", 1))
    files.update(_diffusers_sharded("transformer", _transformer_config(repo), f"{_MODEL[repo]}-transformer", 3))
    return files


def sd35_files(repo: str = SD35_MEDIUM) -> dict[str, bytes]:
    files = {
        ".gitattributes": _GITATTRIBUTES.encode(),
        "README.md": _readme(repo, "other"),
        "model_index.json": _json_bytes({
            "_class_name": "StableDiffusion3Pipeline",
            "_diffusers_version": "0.31.0.dev0",
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "text_encoder_3": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "tokenizer_3": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "SD3Transformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }),
        "scheduler/scheduler_config.json": _json_bytes(_scheduler_config(repo)),
    }
    files.update(_prefixed("tokenizer", _clip_tokenizer_files("<|endoftext|>", sdxl=True)))
    files.update(_prefixed("tokenizer_2", _clip_tokenizer_files("!", sdxl=True)))
    files.update(_prefixed("tokenizer_3", _t5_tokenizer_files()))
    # CLIP-L (768) + CLIP-G (1280) pooled = the transformer's 2048 pooled projection: projections kept
    files.update(_transformers_component("text_encoder", _with_projection(_clip_l_config(True), 768),
                                         "CLIPTextModelWithProjection", "sd3-clip-l", False))
    files.update(_transformers_component("text_encoder_2", _with_projection(_clip_bigg_config(), 1280),
                                         "CLIPTextModelWithProjection", "sd3-clip-g", False))
    files.update(_transformers_component("text_encoder_3", {**_t5_config(), "torch_dtype": "float16"},
                                         "T5EncoderModel", "sd3-t5-xxl", False, shards=2))
    files.update(_diffusers_sharded("vae", _vae_config(repo), "sd3-vae", 1))
    files.update(_diffusers_sharded("transformer", _transformer_config(repo), "sd3.5-medium-transformer", 1))
    return files


BUILDERS = {FLUX_DEV: lambda variants: flux_files(FLUX_DEV), FLUX_SCHNELL: lambda variants: flux_files(FLUX_SCHNELL),
            SD35_MEDIUM: lambda variants: sd35_files()}
