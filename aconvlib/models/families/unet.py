"""The ``unet`` family: ``UNet2DConditionModel`` (SD1.5, SDXL, mini-sd)."""
from __future__ import annotations

import math
import re

import torch

from .base import DenoiserFamily, TextConditioning

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^mid_block\.")


def unet_level_grids(latent_hw: tuple[int, int], num_levels: int) -> list[tuple[int, int]]:
    """Grids of a U-Net's resolution levels: each stride-2 3×3 (pad 1) downsample maps n → ceil(n/2)."""
    h, w = latent_hw
    grids = [(h, w)]
    for _ in range(num_levels - 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        grids.append((h, w))
    return grids


# The authors' released per-resolution kernel sizes, by (part, level); level 0 = full latent resolution.
OFFICIAL_KERNEL_SIZES = {
    "sd15": {("down", 0): 7, ("down", 1): 9, ("down", 2): 5, ("mid", 3): 3,
             ("up", 2): 5, ("up", 1): 9, ("up", 0): 11},
    "sdxl": {("down", 1): 9, ("down", 2): 7, ("mid", 2): 9, ("up", 2): 9, ("up", 1): 13},
}
#: the paper's one kernel size per architecture
PAPER_KERNEL_SIZES = {"sd15": 9, "sdxl": 13}


class UNetFamily(DenoiserFamily):
    name = "unet"
    class_names = ("UNet2DConditionModel",)
    pipeline_attr = "unet"
    embedded_alternative = "mini-sd"

    def kind(self, denoiser) -> str:
        return "sdxl" if self.needs_text_time(denoiser) else "sd15"

    def conditionings(self) -> tuple[TextConditioning, ...]:
        return TextConditioning("sd15"), TextConditioning("sdxl", pooled_and_time_ids=True)

    def paper_kernel_size(self, denoiser) -> int:
        return PAPER_KERNEL_SIZES[self.kind(denoiser)]

    def official_kernel_sizes(self, denoiser) -> dict[tuple[str, int], int]:
        return OFFICIAL_KERNEL_SIZES[self.kind(denoiser)]

    def grid_factors(self, config, latent_factor):
        # skip connections line up only if the latent is a multiple of 2 per down-sampling
        return int(latent_factor), 1, 2 ** (len(config["block_out_channels"]) - 1)

    @staticmethod
    def needs_text_time(denoiser) -> bool:
        """SDXL-style ``text_time`` conditioning (pooled text embeds + size/crop time ids)."""
        return getattr(denoiser.config, "addition_embed_type", None) == "text_time"

    def num_levels(self, denoiser) -> int:
        return len(denoiser.config.block_out_channels)

    def level_grids(self, denoiser, latent_hw):
        return unet_level_grids(latent_hw, self.num_levels(denoiser))

    def layer_level(self, denoiser, name: str) -> int:
        n = self.num_levels(denoiser)
        m = _BLOCK.match(name)
        if m is None:
            raise ValueError(f"cannot place layer {name!r} in the U-Net")
        if name.startswith("mid_block"):
            return n - 1
        idx = int(m.group(2))
        return idx if m.group(1) == "down_blocks" else n - 1 - idx

    def layer_part(self, name: str) -> str:
        return "mid" if name.startswith("mid_block") else "down" if name.startswith("down_blocks") else "up"

    def call_timestep(self, args, kwargs):
        t = kwargs.get("timestep")
        return args[1] if t is None and len(args) > 1 else t   # UNet2DConditionModel(sample, timestep, ...)

    def denoise(self, denoiser, x, t, text_states, **cond):
        added = None
        if self.needs_text_time(denoiser):
            missing = [k for k in ("text_embeds", "time_ids") if k not in cond]
            if missing:
                raise ValueError(f"this U-Net uses SDXL text_time conditioning: pass {' and '.join(missing)} "
                                 "(pooled text embeddings [B, D] and size/crop time ids [B, 6])")
            added = {"text_embeds": cond.pop("text_embeds"), "time_ids": cond.pop("time_ids")}
        if cond:
            raise TypeError(f"unexpected conditioning for a U-Net: {sorted(cond)}")
        return denoiser(x, t, encoder_hidden_states=text_states, added_cond_kwargs=added, return_dict=False)[0]
