"""The ``dit`` family: ``PixArtTransformer2DModel`` (PixArt-Σ, mini-dit)."""
from __future__ import annotations

from .base import DenoiserFamily, TextConditioning


class PixArtFamily(DenoiserFamily):
    name = "dit"
    class_names = ("PixArtTransformer2DModel",)
    pipeline_attr = "transformer"
    embedded_alternative = "mini-dit"

    def kind(self, denoiser) -> str:
        return "pixart"

    def conditionings(self) -> tuple[TextConditioning, ...]:
        return (TextConditioning("pixart", attention_mask=True),)

    def paper_kernel_size(self, denoiser) -> int:
        return 13

    def official_kernel_sizes(self, denoiser) -> int:
        return 13

    def grid_factors(self, config, latent_factor):
        return int(latent_factor), int(config["patch_size"]), 1

    def level_grids(self, denoiser, latent_hw):
        p = int(denoiser.config.patch_size)
        if latent_hw[0] % p or latent_hw[1] % p:
            raise ValueError(f"latent size {tuple(latent_hw)} is not divisible by the patch size {p}")
        return [(latent_hw[0] // p, latent_hw[1] // p)]

    def call_timestep(self, args, kwargs):
        t = kwargs.get("timestep")
        # PixArtTransformer2DModel(hidden_states, encoder_hidden_states, timestep, ...)
        return args[2] if t is None and len(args) > 2 else t

    def denoise(self, denoiser, x, t, text_states, **cond):
        mask = cond.pop("encoder_attention_mask", None)
        if cond:
            raise TypeError(f"unexpected conditioning for PixArt: {sorted(cond)}")
        if not hasattr(t, "ndim") or t.ndim == 0:   # PixArt's adaLN-single embeds one timestep per item
            import torch

            t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        added = {"resolution": None, "aspect_ratio": None}
        if getattr(denoiser, "use_additional_conditions", False):  # PixArt-α style size conditioning
            h, w = 8 * x.shape[-2], 8 * x.shape[-1]  # pixels, for the SD VAE's factor 8
            added = {"resolution": x.new_tensor([[h, w]]).repeat(x.shape[0], 1),
                     "aspect_ratio": x.new_tensor([[h / w]]).repeat(x.shape[0], 1)}
        out = denoiser(x, encoder_hidden_states=text_states, timestep=t, encoder_attention_mask=mask,
                       added_cond_kwargs=added, return_dict=False)[0]
        if out.shape[1] == 2 * x.shape[1]:  # learned sigma (PixArt-Σ): keep the mean prediction
            out = out.chunk(2, dim=1)[0]
        return out
