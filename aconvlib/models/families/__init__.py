"""Denoiser families: everything aconvlib knows about one kind of diffusers denoiser, in one place.

A :class:`~aconvlib.models.families.base.DenoiserFamily` says, for its denoiser classes, how to find
the self-attention layers and their token grids for a latent size, how to call the denoiser, and
what it predicts. Supported: ``unet`` (``UNet2DConditionModel``: SD1.5, SDXL, mini-sd), ``dit``
(``PixArtTransformer2DModel``: PixArt-Σ, mini-dit) and ``joint`` (``FluxTransformer2DModel``,
``SD3Transformer2DModel``: FLUX.1, SD3.5 — joint text-image attention). Adding a family is one new module defining a
subclass, registered here, plus its tests.
"""
from __future__ import annotations

from .base import DenoiserFamily, TextConditioning
from .joint import JointFamily
from .pixart import PixArtFamily
from .unet import OFFICIAL_KERNEL_SIZES as _UNET_OFFICIAL
from .unet import PAPER_KERNEL_SIZES as _UNET_PAPER
from .unet import UNetFamily

FAMILIES: dict[str, DenoiserFamily] = {}


def register_family(family: DenoiserFamily) -> DenoiserFamily:
    """Make a family known to :func:`family_of` and :func:`get_family`."""
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> DenoiserFamily:
    """The family registered as ``name`` (``"unet"``, ``"dit"``)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown denoiser family {name!r}; families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def supported_classes() -> tuple[str, ...]:
    """Class names of every supported denoiser."""
    return tuple(c for f in FAMILIES.values() for c in f.class_names)


def family_of(denoiser) -> DenoiserFamily:
    """The family of a denoiser instance; TypeError naming the supported classes otherwise."""
    for fam in FAMILIES.values():
        if fam.matches(denoiser):
            return fam
    raise TypeError(f"unsupported denoiser {type(denoiser).__name__}; supported: {', '.join(supported_classes())}")


def text_conditioning(kind: str) -> TextConditioning:
    """The text conditioning of the architecture ``kind`` (a ``family.kind`` value, as caches record it)."""
    for fam in FAMILIES.values():
        for cond in fam.conditionings():
            if cond.kind == kind:
                return cond
    raise ValueError(f"unknown architecture {kind!r}; known: "
                     f"{', '.join(c.kind for f in FAMILIES.values() for c in f.conditionings())}")


register_family(UNetFamily())
register_family(PixArtFamily())
register_family(JointFamily())

#: the authors' per-resolution kernel sizes of the U-Nets, by architecture (``family.kind``) and (part, level)
OFFICIAL_KERNEL_SIZES = dict(_UNET_OFFICIAL)
#: the paper's kernel size K by architecture (``family.kind``)
PAPER_KERNEL_SIZES = {**_UNET_PAPER, "pixart": PixArtFamily().paper_kernel_size(None)}

__all__ = ["DenoiserFamily", "FAMILIES", "JointFamily", "OFFICIAL_KERNEL_SIZES", "PAPER_KERNEL_SIZES", "PixArtFamily",
           "TextConditioning", "UNetFamily", "family_of", "get_family", "register_family", "supported_classes",
           "text_conditioning"]
