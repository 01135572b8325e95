"""Model knowledge (the bottom layer of aconvlib): the registry of models, the denoiser families,
their self-attention layers and token grids, the latent-size tracker, and the package data.
``ModelSpec`` (with the family it names) is the only source of a model's facts: latent factor, patch size, grid
multiple, bucket table, text conditioning, the paper's kernel sizes; the layers above receive a spec, never a
name to parse.

Nothing here imports from another aconvlib subpackage (only the layer-0 module :mod:`aconvlib.utils`).
"""
from .families import (DenoiserFamily, TextConditioning, family_of, get_family, register_family, supported_classes,
                       text_conditioning)
from .families.unet import unet_level_grids
from .layers import SelfAttentionLayer, default_latent_hw, denoise, get_denoiser, self_attention_layers
from .sampling import Sampling
from .registry import (
    FIXTURE_MARK,
    MissingWeightsError,
    ModelSpec,
    SUPPORTED_PIPELINES,
    UnknownModelError,
    UnsupportedPipelineError,
    get_spec,
    list_models,
    load_denoiser,
    lookup_spec,
    load_pipeline,
    register_model,
    weights_source,
)
from .released import RELEASED_CHECKPOINTS, ReleasedCheckpoint, released_checkpoint, released_for
from .resources import config_dir, data_dir, models_dir, paper_table
from .tracker import LatentTracker

__all__ = [
    "FIXTURE_MARK", "DenoiserFamily", "LatentTracker", "MissingWeightsError", "ModelSpec", "SUPPORTED_PIPELINES", "Sampling",
    "SelfAttentionLayer", "TextConditioning",
    "UnknownModelError",
    "UnsupportedPipelineError",
    "config_dir", "data_dir", "default_latent_hw", "denoise", "family_of", "get_denoiser", "get_family", "get_spec",
    "list_models", "load_denoiser", "load_pipeline", "lookup_spec", "models_dir", "paper_table", "register_family", "register_model",
    "RELEASED_CHECKPOINTS", "ReleasedCheckpoint", "released_checkpoint", "released_for", "self_attention_layers", "supported_classes", "text_conditioning", "unet_level_grids", "weights_source",
]
