"""Enumerate the self-attention layers of a diffusers denoiser and the token grid of each.

Which modules count and how their grids follow from the latent size is the denoiser's family's
knowledge (:mod:`aconvlib.models.families`); this module turns it into :class:`SelfAttentionLayer`
records and offers the family-independent helpers the rest of the package calls.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .families import family_of, supported_classes


@dataclass(frozen=True)
class SelfAttentionLayer:
    """One self-attention layer.

    Attributes:
        name: module path, e.g. ``"down_blocks.0.attentions.0.transformer_blocks.0.attn1"``.
        module: the diffusers ``Attention`` module.
        grid: token grid (H', W') for the latent size the layers were enumerated for.
        heads, head_dim: attention heads and channels per head; ``channels`` = C' (query dim).
        level: resolution level (0 = full latent resolution for U-Nets, 0 for every DiT block).
        block_type: ``"self"`` (attends over the image tokens only) or, in joint-attention transformers, the joint
            block type (``"double"``, ``"single"``, ``"joint"``: text and image tokens in one attention, see
            :mod:`aconvlib.models.families.joint`); ``grid``/``tokens`` are the image tokens' in every case.
    """

    name: str
    module: torch.nn.Module
    grid: tuple[int, int]
    heads: int
    head_dim: int
    channels: int
    level: int
    block_type: str = "self"

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def joint(self) -> bool:
        """Whether text tokens share this attention (a joint-attention block)."""
        return self.block_type != "self"


def get_denoiser(pipe_or_denoiser) -> torch.nn.Module:
    """The denoiser of a pipeline (``.unet`` or ``.transformer``), or the argument itself if it is one."""
    try:
        family_of(pipe_or_denoiser)
        return pipe_or_denoiser
    except TypeError:
        pass
    for attr in ("unet", "transformer"):
        den = getattr(pipe_or_denoiser, attr, None)
        if den is not None:
            try:
                family_of(den)
                return den
            except TypeError:
                pass
    raise TypeError(f"cannot find a supported denoiser ({', '.join(supported_classes())}) in "
                    f"{type(pipe_or_denoiser).__name__}: pass a diffusers pipeline with .unet / .transformer, "
                    "or the denoiser itself")


def default_latent_hw(denoiser) -> tuple[int, int]:
    """The latent size of the denoiser's config (``sample_size``; FLUX, which has none: its pipeline's 128)."""
    s = getattr(denoiser.config, "sample_size", None) or family_of(denoiser).default_sample_size
    return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))


def denoise(model, x: torch.Tensor, t: torch.Tensor, text_states: torch.Tensor, **cond) -> torch.Tensor:
    """Call any supported denoiser the diffusers way: x [B, C, h, w], t [B] or scalar, text_states [B, L, D]
    → prediction [B, C, h, w] (a learned-sigma half is dropped). ``cond``: the family's extra inputs
    (SDXL: ``text_embeds``, ``time_ids``; PixArt: ``encoder_attention_mask``)."""
    return family_of(model).denoise(model, x, t, text_states, **cond)


def self_attention_layers(denoiser: torch.nn.Module, latent_hw: tuple[int, int] | None = None
                          ) -> list[SelfAttentionLayer]:
    """All self-attention layers of ``denoiser`` with their token grids (joint-attention transformers: every attention
    layer, each with its ``block_type``).

    Args:
        denoiser: a supported denoiser (``UNet2DConditionModel``, ``PixArtTransformer2DModel``).
        latent_hw: latent size (h, w) of the input; defaults to the config's ``sample_size``.

    Returns:
        The layers in module order. For a DiT the grid is ``latent / patch_size`` (which must divide).
    """
    fam = family_of(denoiser)
    grids = fam.level_grids(denoiser, tuple(latent_hw or default_latent_hw(denoiser)))
    layers = []
    for name, module in denoiser.named_modules():
        if not fam.is_self_attention(name, module):
            continue
        level = fam.layer_level(denoiser, name)
        heads = module.heads
        layers.append(SelfAttentionLayer(name, module, grids[level], heads, module.to_q.out_features // heads,
                                         module.to_q.in_features, level, fam.layer_block_type(denoiser, name)))
    return layers
