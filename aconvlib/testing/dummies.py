"""Tiny random-weight denoisers for tests, in the spirit of diffusers' ``get_dummy_components``.

Each keeps its family's topology (U-Net: cross-attention down/up blocks; PixArt: adaLN-single DiT with
learned sigma) at a size that runs in milliseconds on a CPU.
"""
from __future__ import annotations

import torch

__all__ = ["tiny_inputs", "tiny_pixart", "tiny_unet"]


def tiny_unet(seed: int = 0, cross_attention_dim: int = 16, text_time: bool = False, **overrides):
    """A 2-level ``UNet2DConditionModel`` (8×8 latent, 4 channels). ``text_time=True`` adds SDXL's
    ``text_time`` conditioning (pooled text embeds of ``cross_attention_dim`` + 6 time ids)."""
    from diffusers import UNet2DConditionModel

    cfg = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
               down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
               cross_attention_dim=cross_attention_dim, attention_head_dim=2, norm_num_groups=8)
    if text_time:
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=4,
                   projection_class_embeddings_input_dim=cross_attention_dim + 6 * 4)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return UNet2DConditionModel(**cfg).eval()


def tiny_pixart(seed: int = 0, learned_sigma: bool = True, **overrides):
    """A 2-block ``PixArtTransformer2DModel`` (8×8 latent, patch 2, 2 heads × 8); ``learned_sigma`` doubles the
    output channels as PixArt-Σ does."""
    from diffusers import PixArtTransformer2DModel

    cfg = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8 if learned_sigma else 4,
               num_layers=2, sample_size=8, patch_size=2, cross_attention_dim=16, caption_channels=16,
               norm_type="ada_norm_single", use_additional_conditions=False)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return PixArtTransformer2DModel(**cfg).eval()


def tiny_inputs(model, batch: int = 2, hw: tuple[int, int] = (8, 8), seed: int = 0, text_len: int = 3) -> dict:
    """Inputs for :func:`aconvlib.models.denoise`: ``x``, ``t``, ``text_states`` and the family's ``cond``."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    width = getattr(cfg, "caption_channels", None) or cfg.cross_attention_dim
    out = {"x": torch.randn(batch, cfg.in_channels, *hw, generator=g),
           "t": torch.randint(0, 1000, (batch,), generator=g),
           "text_states": torch.randn(batch, text_len, width, generator=g), "cond": {}}
    if getattr(cfg, "addition_embed_type", None) == "text_time":
        out["cond"] = {"text_embeds": torch.randn(batch, cfg.cross_attention_dim, generator=g),
                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]).repeat(batch, 1)}
    return out
