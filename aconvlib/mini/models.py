"""Architectures of the embedded models and their fixed latent space.

Latent space: pixel-unshuffle by 2, a fixed, lossless, invertible map 64×64×3 → 32×32×12 (pixels in
[-1, 1]). A trained VAE would cost more training time and weights than the denoisers themselves at
this scale, and a lossless map keeps every generated pixel the denoiser's own work; it also gives a
32×32 latent, so mini-sd's top-level self-attention runs on 32×32 = 1024 tokens.

- ``mini-sd``: ``UNet2DConditionModel`` with SD1.5's topology scaled down: cross-attention transformer
  blocks (``attn1`` self-attention, ``attn2`` cross-attention) at every level (32², 16², 8² tokens)
  and in the mid block; widths (64, 96, 128), head_dim 32.
- ``mini-dit``: ``PixArtTransformer2DModel`` (adaLN-single, self- and cross-attention), patch 2 on the
  32×32×12 latent → 16×16 tokens, head_dim 32.
- Text encoder: a small ``CLIPTextModel`` (causal, 3 layers, width 128) over the word tokenizer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import denoise  # noqa: F401  (re-exported: the pipeline and trainer call it from here)

LATENT_FACTOR = 2
LATENT_CHANNELS = 12
TEXT_DIM = 128


def to_latent(pixels: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) pixels in [-1,1] → (B,12,H/2,W/2) latent."""
    return F.pixel_unshuffle(pixels, LATENT_FACTOR)


def from_latent(latent: torch.Tensor) -> torch.Tensor:
    """(B,12,h,w) latent → (B,3,2h,2w) pixels."""
    return F.pixel_shuffle(latent, LATENT_FACTOR)


def text_encoder_config(vocab_size: int, max_length: int = 24) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=max_length, hidden_act="gelu",
                pad_token_id=0, bos_token_id=1, eos_token_id=2, projection_dim=TEXT_DIM)


def unet_config() -> dict:
    return dict(
        sample_size=32, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
        mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=(64, 96, 128), layers_per_block=1,
        attention_head_dim=(2, 3, 4),  # diffusers' legacy name: heads per level -> head_dim 32 everywhere
        cross_attention_dim=TEXT_DIM, norm_num_groups=16, transformer_layers_per_block=1,
    )


def dit_config() -> dict:
    return dict(
        sample_size=32, patch_size=2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        num_attention_heads=6, attention_head_dim=32, num_layers=6, cross_attention_dim=192,
        norm_type="ada_norm_single", caption_channels=TEXT_DIM, use_additional_conditions=False,
        dropout=0.0, attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-6,
        interpolation_scale=1,
    )


def scheduler_config() -> dict:
    """Training noise schedule (DDPM, cosine, v-prediction); DPM-Solver++ and DDIM read the same."""
    return dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                clip_sample=False, timestep_spacing="trailing")


def build_text_encoder(vocab_size: int, max_length: int = 24):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**text_encoder_config(vocab_size, max_length)))


def build_denoiser(family: str):
    """A freshly initialised denoiser: ``"unet"`` (mini-sd) or ``"dit"`` (mini-dit)."""
    from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

    if family == "unet":
        return UNet2DConditionModel(**unet_config())
    if family == "dit":
        return PixArtTransformer2DModel(**dit_config())
    raise ValueError(f"unknown family {family!r}")


def make_scheduler(kind: str = "dpm", config: dict | None = None):
    """A diffusers scheduler on the training schedule: ``"dpm"`` (DPM-Solver++ 2M, the default),
    ``"ddim"`` or ``"ddpm"`` (training)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    cls = {"dpm": DPMSolverMultistepScheduler, "ddim": DDIMScheduler, "ddpm": DDPMScheduler}[kind]
    cfg = dict(config or scheduler_config())
    if kind == "dpm":
        cfg.setdefault("algorithm_type", "dpmsolver++")
        cfg.setdefault("solver_order", 2)
    return cls.from_config(cfg)
