"""Model registry and self-attention layer enumeration."""
from .layers import SelfAttentionLayer, denoise, denoiser_input, get_denoiser, self_attention_layers, unet_level_grids
from .registry import (
    CONFIG_DIR,
    DATA_DIR,
    MissingWeightsError,
    ModelSpec,
    UnknownModelError,
    get_spec,
    list_models,
    load_denoiser,
    load_pipeline,
    register_model,
)

__all__ = [
    "CONFIG_DIR", "DATA_DIR", "MissingWeightsError", "ModelSpec", "SelfAttentionLayer", "UnknownModelError",
    "denoise", "denoiser_input", "get_denoiser", "get_spec", "list_models", "load_denoiser", "load_pipeline", "register_model", "self_attention_layers",
    "unet_level_grids",
]
