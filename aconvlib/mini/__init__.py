"""The embedded models ``mini-sd`` and ``mini-dit``: small text-to-image models trained by this project
on the procedural dataset :mod:`aconvlib.data` and shipped in ``data/models/``.

Importing this package registers both in :mod:`aconvlib.models.registry`.
"""
from __future__ import annotations

import functools

import torch

from aconvlib.models.registry import DATA_DIR, MissingWeightsError, ModelSpec, get_spec, register_model

from .pipeline import MiniPipeline
from .tokenizer import WordTokenizer

MODELS_DIR = DATA_DIR / "models"


def model_dir(name: str):
    """Folder of a shipped embedded pipeline (diffusers layout)."""
    return MODELS_DIR / name


def _check(name: str):
    d = model_dir(name)
    if not (d / "model_index.json").exists():
        raise MissingWeightsError(f"embedded model {name!r} is missing from {d}; train it with "
                                  f"`aconv train --model {name}` and copy <out>/pipeline there")
    return d


def _quiet() -> None:
    """Silence loading chatter (progress bars, dtype notes) of diffusers and transformers."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def load_mini_pipeline(name: str, device="cpu", dtype: torch.dtype = torch.float32, **_) -> MiniPipeline:
    """Load ``mini-sd`` or ``mini-dit`` from ``data/models`` (no network)."""
    _quiet()
    return MiniPipeline.from_pretrained(_check(name), device=device, dtype=dtype)


def load_mini_denoiser(name: str, device="cpu", dtype: torch.dtype = torch.float32):
    """Load only the denoiser (``UNet2DConditionModel`` / ``PixArtTransformer2DModel``) of an embedded model."""
    from diffusers import PixArtTransformer2DModel, UNet2DConditionModel
    _quiet()
    spec = get_spec(name)
    cls = UNet2DConditionModel if spec.family == "unet" else PixArtTransformer2DModel
    m = cls.from_pretrained(_check(name) / spec.denoiser_subfolder, torch_dtype=dtype)
    return m.to(device).eval()


for _name, _fam, _sub, _p, _desc in (
    ("mini-sd", "unet", "unet", 1, "embedded SD1.5-topology U-Net, 64 px, pixel-unshuffle latent (10 self-attention layers)"),
    ("mini-dit", "dit", "transformer", 2, "embedded PixArt-style DiT, 64 px, 16x16 tokens (6 self-attention layers)"),
):
    register_model(ModelSpec(_name, _fam, None, _sub, 64, 2, _p, _desc, embedded=True,
                             pipeline_loader=functools.partial(load_mini_pipeline, _name),
                             denoiser_loader=functools.partial(load_mini_denoiser, _name)), overwrite=True)

__all__ = ["MiniPipeline", "WordTokenizer", "load_mini_pipeline", "load_mini_denoiser", "model_dir"]
