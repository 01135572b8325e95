"""Enumerate the self-attention layers of a diffusers denoiser and the token grid of each.

Works for ``UNet2DConditionModel`` (SD1.5, SDXL, mini-sd) and ``PixArtTransformer2DModel``
(PixArt-Σ, mini-dit): every ``Attention`` module named ``...attn1`` that is not cross-attention.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SelfAttentionLayer:
    """One self-attention layer.

    Attributes:
        name: module path, e.g. ``"down_blocks.0.attentions.0.transformer_blocks.0.attn1"``.
        module: the diffusers ``Attention`` module.
        grid: token grid (H', W') for the latent size the layers were enumerated for.
        heads, head_dim: attention heads and channels per head; ``channels`` = C' (query dim).
        level: resolution level (0 = full latent resolution for U-Nets, 0 for every DiT block).
    """

    name: str
    module: torch.nn.Module
    grid: tuple[int, int]
    heads: int
    head_dim: int
    channels: int
    level: int

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]


SUPPORTED = ("UNet2DConditionModel", "PixArtTransformer2DModel")


def get_denoiser(pipe_or_denoiser) -> torch.nn.Module:
    """The denoiser of a pipeline (``.unet`` or ``.transformer``), or the argument itself if it is one."""
    obj = pipe_or_denoiser
    if type(obj).__name__ in SUPPORTED:
        return obj
    for attr in ("unet", "transformer"):
        den = getattr(obj, attr, None)
        if den is not None and type(den).__name__ in SUPPORTED:
            return den
    raise TypeError(f"cannot find a supported denoiser ({', '.join(SUPPORTED)}) in {type(obj).__name__}: "
                    "pass a diffusers pipeline with .unet / .transformer, or the denoiser itself")


def denoiser_input(args: tuple, kwargs: dict):
    """The latent a denoiser is called with, from a forward pre-hook's (args, kwargs) (None if absent)."""
    return args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))


def denoise(model, x: torch.Tensor, t: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
    """Call a ``UNet2DConditionModel`` or ``PixArtTransformer2DModel`` the diffusers way: x [B, C, h, w],
    t [B] or scalar, text_states [B, L, D] -> prediction [B, C, h, w] (a learned-sigma half is dropped)."""
    if type(model).__name__ == "PixArtTransformer2DModel" or hasattr(model.config, "caption_channels"):
        out = model(x, encoder_hidden_states=text_states, timestep=t,
                    added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
        if out.shape[1] == 2 * x.shape[1]:  # learned sigma: keep the mean prediction
            out = out.chunk(2, dim=1)[0]
        return out
    return model(x, t, encoder_hidden_states=text_states, return_dict=False)[0]


_UNET_PATTERN = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^mid_block\.")


def _is_self_attention(name: str, module: torch.nn.Module) -> bool:
    return name.endswith("attn1") and hasattr(module, "to_q") and not getattr(module, "is_cross_attention", False)


def unet_level_grids(latent_hw: tuple[int, int], num_levels: int) -> list[tuple[int, int]]:
    """Grids of a U-Net's resolution levels: each stride-2 3×3 (pad 1) downsample maps n → ceil(n/2)."""
    h, w = latent_hw
    grids = [(h, w)]
    for _ in range(num_levels - 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        grids.append((h, w))
    return grids


def _unet_level(name: str, num_levels: int) -> int:
    m = _UNET_PATTERN.match(name)
    if m is None:
        raise ValueError(f"cannot place layer {name!r} in the U-Net")
    if name.startswith("mid_block"):
        return num_levels - 1
    idx = int(m.group(2))
    return idx if m.group(1) == "down_blocks" else num_levels - 1 - idx


def self_attention_layers(denoiser: torch.nn.Module, latent_hw: tuple[int, int] | None = None
                          ) -> list[SelfAttentionLayer]:
    """All self-attention layers of ``denoiser`` with their token grids.

    Args:
        denoiser: a ``UNet2DConditionModel`` or ``PixArtTransformer2DModel``.
        latent_hw: latent size (h, w) of the input; defaults to the config's ``sample_size``.

    Returns:
        The layers in module order. For a DiT the grid is ``latent / patch_size`` (which must divide).
    """
    cfg = denoiser.config
    if latent_hw is None:
        s = cfg.sample_size
        latent_hw = (s, s) if isinstance(s, int) else tuple(s)
    kind = type(denoiser).__name__
    layers = []
    if kind == "PixArtTransformer2DModel" or hasattr(cfg, "patch_size") and "transformer_blocks" in dict(
            denoiser.named_children()):
        p = cfg.patch_size
        if latent_hw[0] % p or latent_hw[1] % p:
            raise ValueError(f"latent size {latent_hw} is not divisible by the patch size {p}")
        grid_of = lambda name: ((latent_hw[0] // p, latent_hw[1] // p), 0)  # noqa: E731
    elif hasattr(denoiser, "down_blocks"):
        num_levels = len(cfg.block_out_channels)
        grids = unet_level_grids(latent_hw, num_levels)

        def grid_of(name):
            lvl = _unet_level(name, num_levels)
            return grids[lvl], lvl
    else:
        raise TypeError(f"unsupported denoiser {kind}: expected UNet2DConditionModel or PixArtTransformer2DModel")
    for name, module in denoiser.named_modules():
        if not _is_self_attention(name, module):
            continue
        grid, level = grid_of(name)
        channels = module.to_q.in_features
        heads = module.heads
        head_dim = module.to_q.out_features // heads
        layers.append(SelfAttentionLayer(name, module, grid, heads, head_dim, channels, level))
    return layers
