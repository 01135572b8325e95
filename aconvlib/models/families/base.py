"""The interface every denoiser family implements (see :mod:`aconvlib.models.families`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch


@dataclass(frozen=True)
class TextConditioning:
    """What a denoiser's text conditioning holds besides the token states (``family.text_conditioning``).

    Attributes:
        kind: the published architecture the denoiser follows (``family.kind``), e.g. for a cache's settings.
        pooled_and_time_ids: SDXL's ``text_time``: pooled text embeddings and size/crop time ids.
        attention_mask: PixArt's T5 attention mask (and its ``max_sequence_length``).
        pooled: a pooled text embedding (``pooled_projections``: FLUX, SD3).
    """

    kind: str
    pooled_and_time_ids: bool = False
    attention_mask: bool = False
    pooled: bool = False


class DenoiserFamily:
    """What aconvlib needs to know about one kind of denoiser.

    Class attributes:
        name: short family name (``"unet"``, ``"dit"``); ``ModelSpec.family`` refers to it.
        class_names: diffusers class names of this family's denoisers.
        pipeline_attr: the pipeline attribute (and repo subfolder) holding the denoiser.
        embedded_alternative: the embedded model to suggest when real weights are missing.
    """

    name: str = ""
    class_names: tuple[str, ...] = ()
    default_sample_size: int = 64   # latent side when the config has no ``sample_size``
    pipeline_attr: str = ""
    embedded_alternative: str = ""

    # ------------------------------------------------------------------ identity
    def matches(self, denoiser) -> bool:
        return type(denoiser).__name__ in self.class_names

    def model_class(self, config: Mapping[str, Any] | None = None):
        """The diffusers class used to load this family's denoisers (the first of :attr:`class_names`; ``config``: the
        denoiser's, read by families with several classes)."""
        import diffusers

        return getattr(diffusers, self.class_names[0])

    def kind(self, denoiser) -> str:
        """Which published model the architecture follows, for per-model tables (``"sd15"``, ``"sdxl"``, ``"pixart"``)."""
        raise NotImplementedError

    def conditionings(self) -> tuple[TextConditioning, ...]:
        """Every text conditioning this family's architectures use."""
        return ()

    def text_conditioning(self, denoiser) -> TextConditioning:
        """What the denoiser's text conditioning holds (see :class:`TextConditioning`)."""
        return next(c for c in self.conditionings() if c.kind == self.kind(denoiser))

    # ------------------------------------------------------------------ the paper's facts
    def paper_kernel_size(self, denoiser) -> int:
        """The ΔConv kernel size K the paper uses for every layer of this architecture."""
        raise NotImplementedError

    def official_kernel_sizes(self, denoiser) -> int | dict[tuple[str, int], int]:
        """The authors' released per-resolution kernel sizes: one K for every layer, or ``{(part, level): K}``
        (part as :meth:`layer_part`, level 0 = full latent resolution)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ layers and grids
    def grid_factors(self, config: Mapping[str, Any], latent_factor: int) -> tuple[int, int, int]:
        """(latent factor, patch size, down-sampling) of a denoiser with ``config``: image sides must be multiples
        of their product (VAE factor × DiT patch size × the U-Net's 2^(levels−1))."""
        raise NotImplementedError

    def is_self_attention(self, name: str, module: torch.nn.Module) -> bool:
        """Whether ``module`` (at ``name``) is a self-attention layer to analyse or replace."""
        return name.endswith("attn1") and hasattr(module, "to_q") and not getattr(module, "is_cross_attention", False)

    def layer_block_type(self, denoiser, name: str) -> str:
        """What the layer at ``name`` attends over: ``"self"`` (image tokens only) or a joint block type (see
        :mod:`aconvlib.models.families.joint`)."""
        return "self"

    def num_levels(self, denoiser) -> int:
        """Number of distinct token-grid resolutions (U-Net levels; 1 for a DiT)."""
        return 1

    def level_grids(self, denoiser, latent_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Token grid (H', W') of every level for a latent of size ``latent_hw``."""
        raise NotImplementedError

    def layer_level(self, denoiser, name: str) -> int:
        """Resolution level of the layer at module path ``name`` (0 = finest)."""
        return 0

    def layer_part(self, name: str) -> str:
        """``"down"``, ``"mid"``, ``"up"`` (U-Nets) or ``"dit"``: where a layer sits."""
        return "dit"

    # ------------------------------------------------------------------ calling
    @staticmethod
    def call_sample(args: tuple, kwargs: dict):
        """The latent a denoiser is called with, from a forward pre-hook's (args, kwargs) (None if absent)."""
        return args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))

    def call_latent_hw(self, denoiser, args: tuple, kwargs: dict) -> tuple[int, int] | None:
        """The latent (h, w) of a call, from a forward pre-hook's (args, kwargs) (None if not a latent call)."""
        sample = self.call_sample(args, kwargs)
        if isinstance(sample, torch.Tensor) and sample.ndim == 4:
            return int(sample.shape[-2]), int(sample.shape[-1])
        return None

    def call_timestep(self, args: tuple, kwargs: dict):
        """The timestep of a call, from a forward pre-hook's (args, kwargs) (None if absent)."""
        return kwargs.get("timestep")

    def denoise(self, denoiser, x: torch.Tensor, t: torch.Tensor, text_states: torch.Tensor,
                **cond) -> torch.Tensor:
        """x [B, C, h, w], t [B] or scalar, text_states [B, L, D] → prediction [B, C, h, w].

        ``cond`` holds the family's extra conditioning (SDXL: ``text_embeds``, ``time_ids``;
        PixArt: ``encoder_attention_mask``).
        """
        raise NotImplementedError

    def prediction_type(self, scheduler_config: dict) -> str:
        """What the denoiser's output means: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``."""
        return scheduler_config.get("prediction_type", "epsilon")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
