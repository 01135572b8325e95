"""Tiny random-weight denoisers for tests, in the spirit of diffusers' ``get_dummy_components``.

Each keeps its family's topology (U-Net: cross-attention down/up blocks; PixArt: adaLN-single DiT with
learned sigma) at a size that runs in milliseconds on a CPU.
"""
from __future__ import annotations

import torch

__all__ = ["tiny_flux", "tiny_inputs", "tiny_pixart", "tiny_sd3", "tiny_unet"]


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


def tiny_flux(seed: int = 0, guidance: bool = False, **overrides):
    """A ``FluxTransformer2DModel`` with 1 double- and 1 single-stream block (2 heads × 16, RoPE axes 4/6/6,
    16 latent channels packed 2×2 → 64 inputs, text width 32); ``guidance`` embeds the guidance scale (FLUX-dev)."""
    from diffusers import FluxTransformer2DModel

    cfg = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
               num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=guidance,
               axes_dims_rope=(4, 6, 6))
    cfg.update(overrides)
    torch.manual_seed(seed)
    return FluxTransformer2DModel(**cfg).eval()


def tiny_sd3(seed: int = 0, dual: bool = True, **overrides):
    """An ``SD3Transformer2DModel`` with 2 joint blocks (2 heads × 16, patch 2, RMS q/k norms); ``dual`` gives the
    first block SD3.5-medium's image-only second attention (``attn2``)."""
    from diffusers import SD3Transformer2DModel

    cfg = dict(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=16,
               num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=16,
               pos_embed_max_size=32, qk_norm="rms_norm", dual_attention_layers=(0,) if dual else ())
    cfg.update(overrides)
    torch.manual_seed(seed)
    return SD3Transformer2DModel(**cfg).eval()


def tiny_inputs(model, batch: int = 2, hw: tuple[int, int] = (8, 8), seed: int = 0, text_len: int = 3) -> dict:
    """Inputs for :func:`aconvlib.models.denoise`: ``x``, ``t``, ``text_states`` and the family's ``cond``."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    width = (getattr(cfg, "caption_channels", None) or getattr(cfg, "joint_attention_dim", None)
             or cfg.cross_attention_dim)
    channels = cfg.in_channels // 4 if type(model).__name__ == "FluxTransformer2DModel" else cfg.in_channels
    out = {"x": torch.randn(batch, channels, *hw, generator=g),
           "t": torch.randint(0, 1000, (batch,), generator=g),
           "text_states": torch.randn(batch, text_len, width, generator=g), "cond": {}}
    if getattr(cfg, "addition_embed_type", None) == "text_time":
        out["cond"] = {"text_embeds": torch.randn(batch, cfg.cross_attention_dim, generator=g),
                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]).repeat(batch, 1)}
    if getattr(cfg, "pooled_projection_dim", None):   # joint-attention transformers
        out["cond"] = {"pooled_projections": torch.randn(batch, cfg.pooled_projection_dim, generator=g)}
    return out
