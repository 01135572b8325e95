"""Configs of the hub fixtures (:mod:`aconvlib.testing.hub_fixtures`): the published ones with widths and depths
shrunk; the denoisers' from the architecture configs aconvlib ships (``ModelSpec.config_path``)."""
from __future__ import annotations

import json

from ._fixture_tokenizers import _T5_SP_VOCAB, CLIP_VOCAB_SIZE


def _shrunk(model: str, published: dict, shrunk: dict) -> dict:
    """The denoiser config a fixture of ``model`` ships: the architecture config aconvlib ships for it
    (``ModelSpec.config_path``), plus the keys of the published repo's file that the shipped one leaves out
    (``published``: its version stamp, defaults written out), with the widths/depths in ``shrunk`` made tiny."""
    from ..models.registry import get_spec

    cfg = json.loads(get_spec(model).config_path.read_text())
    if set(shrunk) - set(cfg) or set(published) & set(cfg):
        raise ValueError(f"{model}: shrunk keys must exist in the shipped config and published ones must not "
                         f"({sorted(set(shrunk) - set(cfg))}, {sorted(set(published) & set(cfg))})")
    return {**cfg, **published, **shrunk}


def _sd15_unet_config() -> dict:
    return _shrunk("sd15", {"_diffusers_version": "0.6.0"}, {
        "block_out_channels": [16, 32, 32, 32],
        "norm_num_groups": 16,  # must divide the 16 channels of the first level
    })


_SDXL_TIME_EMBED = 8  # shrunk: addition_time_embed_dim 256
_SDXL_POOLED = 32  # shrunk: text_encoder_2 projection_dim 1280

# keys of the published SDXL unet/config.json (diffusers 0.19) that the shipped config leaves at their defaults
_SDXL_PUBLISHED_DEFAULTS = {
    "_diffusers_version": "0.19.0.dev0", "class_embed_type": None, "class_embeddings_concat": False,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_norm": None, "dual_cross_attention": False,
    "encoder_hid_dim": None, "encoder_hid_dim_type": None, "mid_block_only_cross_attention": None,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "num_attention_heads": None, "num_class_embeds": None,
    "only_cross_attention": False, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default", "time_cond_proj_dim": None, "time_embedding_act_fn": None,
    "time_embedding_dim": None, "time_embedding_type": "positional", "timestep_post_act": None,
    "upcast_attention": None,
}


def _sdxl_unet_config() -> dict:
    return _shrunk("sdxl", _SDXL_PUBLISHED_DEFAULTS, {
        "addition_time_embed_dim": _SDXL_TIME_EMBED,
        "attention_head_dim": [1, 2, 4],  # heads: head dim 64 -> 8, the same 1:2:4 progression
        "block_out_channels": [8, 16, 32],
        "norm_num_groups": 8,  # must divide the 8 channels of the first level
        "projection_class_embeddings_input_dim": 6 * _SDXL_TIME_EMBED + _SDXL_POOLED,  # published 6*256 + 1280
        "transformer_layers_per_block": [1, 2, 3],
    })


def _vae_config(sdxl: bool) -> dict:
    cfg = {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.20.0.dev0" if sdxl else "0.6.0",
        "act_fn": "silu",
        "block_out_channels": [8, 16, 32, 32],  # shrunk: [128, 256, 512, 512]
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 2,  # shrunk: 32 (4 channels per group at the first level, as published)
        "out_channels": 3,
        "sample_size": 1024 if sdxl else 512,
        "scaling_factor": 0.13025 if sdxl else 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }
    if sdxl:
        cfg["_name_or_path"] = "../sdxl-vae/"
        cfg["force_upcast"] = True
    return cfg


def _clip_l_config(sdxl: bool) -> dict:
    """openai/clip-vit-large-patch14 text tower (SD1.5 text_encoder, SDXL text_encoder)."""
    return {
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 768,  # kept: SD1.5 cross-attention width (and 768 of SDXL's 2048)
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 64,  # shrunk: 3072
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 1,  # shrunk: 12
        "pad_token_id": 1,
        "projection_dim": 768,
        "torch_dtype": "float16" if sdxl else "float32",
        "transformers_version": "4.32.0.dev0" if sdxl else "4.37.2",
        "vocab_size": CLIP_VOCAB_SIZE,  # shrunk: 49408
    }


def _clip_bigg_config() -> dict:
    """laion CLIP ViT-bigG text tower (SDXL text_encoder_2)."""
    return {
        "architectures": ["CLIPTextModelWithProjection"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_size": 1280,  # kept: 1280 of SDXL's 2048 cross-attention width
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 64,  # shrunk: 5120
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 20,
        "num_hidden_layers": 1,  # shrunk: 32
        "pad_token_id": 1,
        "projection_dim": _SDXL_POOLED,  # shrunk: 1280
        "torch_dtype": "float16",
        "transformers_version": "4.32.0.dev0",
        "vocab_size": CLIP_VOCAB_SIZE,  # shrunk: 49408
    }


def _safety_checker_config() -> dict:
    return {
        "_name_or_path": "CompVis/stable-diffusion-safety-checker",
        "architectures": ["StableDiffusionSafetyChecker"],
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "model_type": "clip",
        "projection_dim": 16,  # shrunk: 768
        "text_config": {"dropout": 0.0, "hidden_size": 32, "intermediate_size": 37,  # shrunk: 768, 3072
                        "model_type": "clip_text_model", "num_attention_heads": 2, "num_hidden_layers": 1},
        "torch_dtype": "float32",
        "transformers_version": "4.37.2",
        "vision_config": {"dropout": 0.0, "hidden_size": 32, "intermediate_size": 37,  # shrunk: 1024, 4096
                          "model_type": "clip_vision_model", "num_attention_heads": 2,  # shrunk: 16
                          "num_hidden_layers": 1, "patch_size": 14},  # shrunk: 24 layers
    }


def _feature_extractor_config() -> dict:
    return {
        "crop_size": 224,
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_resize": True,
        "image_processor_type": "CLIPImageProcessor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": 224,
    }


def _t5_config() -> dict:
    """google t5-v1_1-xxl encoder (PixArt text_encoder): d_model 4096 kept for caption_channels."""
    return {
        "architectures": ["T5EncoderModel"],
        "classifier_dropout": 0.0,
        "d_ff": 32,  # shrunk: 10240
        "d_kv": 16,  # shrunk: 64
        "d_model": 4096,
        "decoder_start_token_id": 0,
        "dense_act_fn": "gelu_new",
        "dropout_rate": 0.1,
        "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "is_gated_act": True,
        "layer_norm_epsilon": 1e-06,
        "model_type": "t5",
        "num_decoder_layers": 1,  # shrunk: 24
        "num_heads": 2,  # shrunk: 64
        "num_layers": 1,  # shrunk: 24
        "output_past": True,
        "pad_token_id": 0,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.38.2",
        "use_cache": True,
        "vocab_size": _T5_SP_VOCAB + 100,  # shrunk: 32128
    }


def _pixart_transformer_config(px: int) -> dict:
    return _shrunk(f"pixart-sigma-{px}", {"_diffusers_version": "0.28.0.dev0"}, {
        "cross_attention_dim": 144,  # = heads * 72
        "num_attention_heads": 2,
        "num_layers": 2,
    })


def _pndm_config() -> dict:
    return {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.6.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    }


def _euler_config() -> dict:
    return {
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": "0.19.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
        "use_karras_sigmas": False,
    }


def _dpm_config() -> dict:
    return {
        "_class_name": "DPMSolverMultistepScheduler",
        "_diffusers_version": "0.28.0.dev0",
        "algorithm_type": "dpmsolver++",
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "dynamic_thresholding_ratio": 0.995,
        "euler_at_final": False,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": float("-inf"),
        "lower_order_final": True,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "rescale_betas_zero_snr": False,
        "sample_max_value": 1.0,
        "solver_order": 2,
        "solver_type": "midpoint",
        "steps_offset": 0,
        "thresholding": False,
        "timestep_spacing": "linspace",
        "trained_betas": None,
        "use_karras_sigmas": False,
        "use_lu_lambdas": False,
        "variance_type": None,
    }
