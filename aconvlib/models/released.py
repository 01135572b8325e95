"""The authors' released ΔConv students (``7eu7d7/ConvFusion``) and the format of their files, in one place.

The authors (Dong et al., ΔConvFusion) published distilled ΔConv weights for SD1.5, SDXL and PixArt-Σ on the
Hugging Face hub (their README links https://huggingface.co/7eu7d7/ConvFusion) for their own framework
(HCP-Diffusion / RainbowNeko), not for diffusers. This module holds what is known about those files:
:data:`RELEASED_CHECKPOINTS` (hub id, file, the model whose architecture it converts, the base it was distilled
from, the data, the size listed on the hub), :data:`OFFICIAL_SETTINGS` (per architecture: gate, gate scale,
pyramid scales, channel split) and the one tensor-name table :data:`OFFICIAL_TENSORS` (their tensor under a
converted block's ``conv1`` → ours under :class:`~aconvlib.mixers.deltaconv.DeltaConvBlock`, with the shape their
code gives it). :func:`aconvlib.mixers.official.load_official` reads a file with them; the hub fixtures write a
tiny one with them.

Facts, from their code (GitHub IrisRainbowNeko/ConvFusion; see /work/shared/reference/official-code-facts.md):

* Inference (``cfgs/workflow/conv/*_conv.py``) builds the student denoiser from the base model with their classes
  (``SD15ConvModel`` / ``SDXLConvModel`` / ``PixArtConv2DModel``: diffusers' module tree with every converted
  block's ``attn1`` replaced by ``conv1``, a ``PyramidConvBlockTriton``), then loads the file with RainbowNeko's
  ``auto_ckpt_loader`` into the denoiser (``KeyMapper('denoiser -> model')``): keys are the denoiser's own state-dict
  names, e.g. ``down_blocks.1.attentions.0.transformer_blocks.0.conv1.conv_up.weight``; every key of the file must
  be a key of that denoiser (their loader indexes the denoiser's state dict with it); keys the file lacks keep the
  base model's values (the load is non-strict).
* Training saves ``LAYERS_TRAINABLE`` of ``target_module='denoiser'`` (only the ``conv1`` modules train), so a file
  of trained weights only. The hub listing agrees for PixArt-Σ: 320 MB is 79.85 M float32 parameters, exactly
  28 blocks of 13×13, 2-stage ΔConv at C = 1152.
* Their SD1.5 student is distilled from DreamShaper (``Lykon/DreamShaper``; training and inference configs), not
  from SD1.5. Their PixArt-Σ configs build the denoiser from the **512** transformer (``PixArt-Sigma-XL-2-512-MS``)
  for both the 512 and the 1024 px runs (``pixart_dist_1024.yaml`` trains at 1024 px buckets from it; the 1024
  inference workflow takes only VAE / T5 / scheduler from the 1024 repo).
* ``.safetensors`` files are read with ``safe_open``, nested keys folded at ``:`` (a state saved as
  ``{"base": {...}}`` is stored as ``base:<key>``); other suffixes (``.ckpt``, ``.pt``) with ``torch.load``; a top
  level ``"base"`` entry is unwrapped (``"base_ema"`` when asked for EMA weights).

Unknown here (the files cannot be downloaded on this machine; every form their loader can read is accepted):

* **What the U-Net files hold.** The listed sizes (SD1.5 1.26 GB, SDXL 1.53 GB) are far above their ΔConv weights
  in float32 (SD1.5 25.4 M parameters = 0.10 GB, SDXL 211 M = 0.85 GB) and below a whole U-Net: the files also
  carry other tensors of the denoiser. Their loader would copy every such tensor into the base denoiser, so
  ``load_official`` does the same (``load_base=True``) after checking each one's name and shape.
* **Key prefix.** Their loader reads un-prefixed keys (and ``base:``/``base_ema:`` nesting); a file saved from the
  training wrapper would carry ``denoiser.`` (or ``model.``/``module.``): accepted when every key has it.
* **dtype.** float32 for PixArt-Σ by the listed size; not known for the U-Nets: any float dtype is cast to the
  pipeline's.
* **A diffusers folder.** None is listed (their README's "with diffusers" section says "coming soon").
* **pixart1024-laion** is listed at 368 MB, not the 320 MB of the key set above: its tensors have other shapes
  (a third pyramid stage of 13×13 would give 367 MB). ``load_official`` reads the number of stages and the
  kernel size from the tensors; a stage count other than 2 needs ``scales=`` (the file does not record them).
* **Licence.** The repository shows no model card and no licence file; the base models' licences
  (CreativeML OpenRAIL-M for SD1.5 / DreamShaper, OpenRAIL++-M for SDXL and PixArt-Σ) apply to derivatives.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["KEY_PREFIXES", "NESTED_STATES", "OFFICIAL_HUB_ID", "OFFICIAL_MODULE", "OFFICIAL_SETTINGS",
           "OFFICIAL_TENSORS", "RELEASED_CHECKPOINTS", "ReleasedCheckpoint", "TensorRule", "official_block_prefix",
           "official_tensor_shapes", "released_checkpoint", "released_for", "released_path"]

#: the hub repository of the released students
OFFICIAL_HUB_ID = "7eu7d7/ConvFusion"
#: the module that replaces ``attn1`` in their transformer blocks (``BasicConvFormerBlock.conv1``)
OFFICIAL_MODULE = "conv1"
#: key prefixes accepted when EVERY key of a file carries the same one ("" is what their loader reads)
KEY_PREFIXES = ("", "denoiser.", "model.", "module.")
#: top-level entries their loader unwraps (``{"base": state}``; stored as ``base:<key>`` in safetensors)
NESTED_STATES = ("base", "base_ema")


@dataclass(frozen=True)
class TensorRule:
    """One tensor of their ``PyramidConvBlockTriton`` (``{s}``: pyramid stage index).

    Attributes:
        theirs: name under ``<block>.conv1.``.
        ours: name under our ``DeltaConvBlock`` (None: no counterpart; see ``note``).
        shape: their shape from (C = dim, C·r = inner, K, S = number of stages).
        note: what the row means; layouts are the same on both sides unless said here.
        required: a converted block without it is incomplete.
    """

    theirs: str
    ours: Optional[str]
    shape: Callable[[int, int, int, int], tuple]
    note: str = ""
    required: bool = True


#: The one tensor-name table (their ``pyramid_dwconv/conv_block.py`` and ``dwconv_triton.py``). Correct it here.
OFFICIAL_TENSORS: tuple[TensorRule, ...] = (
    TensorRule("conv_up.weight", "in_proj.weight", lambda c, i, k, s: (i, c), "nn.Linear C -> C·r (r = 0.5)"),
    TensorRule("conv_up.bias", "in_proj.bias", lambda c, i, k, s: (i,)),
    TensorRule("gates.{s}.conv_spatial.weight", "stages.{s}.weight", lambda c, i, k, s: (k, k, i),
               "depthwise K×K, channels-last [K, K, C·r] (OptimizedDepthwiseConv2d), the layout ours has"),
    TensorRule("gates.{s}.conv_spatial.bias", None, lambda c, i, k, s: (i,),
               "depthwise bias of older code versions; ours has none: accepted only if all zero", required=False),
    TensorRule("conv_out.weight", "out_proj.weight", lambda c, i, k, s: (c, s * (i // 2)),
               "nn.Linear S·C·r/2 -> C over the concatenated stages"),
    TensorRule("conv_out.bias", "out_proj.bias", lambda c, i, k, s: (c,)),
    TensorRule("conv_pool.weight", "pool_proj.weight", lambda c, i, k, s: (c, c), "nn.Linear C -> C, pool branch"),
    TensorRule("conv_pool.bias", "pool_proj.bias", lambda c, i, k, s: (c,)),
)

#: Per architecture (``family.kind``): their block's settings. Kernel sizes are the family's
#: ``official_kernel_sizes`` (their UNet classes' ``*_conv1_kernel_size(s)`` config keys; PixArt 13).
#: U-Nets: ``simple=True`` (a·g/(C·r/2)^(-1/2), i.e. ``gate_scale="multiply"``); PixArt: ``simple=False`` (sigmoid).
OFFICIAL_SETTINGS: dict[str, dict] = {
    "sd15": dict(gate="scaled", gate_scale="multiply", scales=(1.0, 0.5), ratio=0.5, bias=True),
    "sdxl": dict(gate="scaled", gate_scale="multiply", scales=(1.0, 0.5), ratio=0.5, bias=True),
    "pixart": dict(gate="sigmoid", gate_scale="divide", scales=(1.0, 0.5), ratio=0.5, bias=True),
}

_LICENCE = ("not stated (no model card or licence file in the repository); the base model's licence applies to "
            "derivatives")


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """One released file of :data:`OFFICIAL_HUB_ID`.

    Attributes:
        name: our name, e.g. ``"convfusion-sd15-mjv5"``.
        model: the registry model whose architecture (and book chapters) it belongs to.
        filename: the file in the hub repository.
        base: hub id of the denoiser the student was distilled from (its frozen weights).
        base_pipeline: what to load for a pipeline with that denoiser (a registry name or a hub id).
        data: ``"mjv5"`` (distilled on midjourney-v5, as their training configs do) or ``"laion"`` (by its name, after
            the paper's fine-tuning on 4K LAION images; not in the released configs).
        size: the size the hub lists.
        licence: see the module docstring.
    """

    name: str
    model: str
    filename: str
    base: str
    base_pipeline: str
    data: str
    size: str
    hub_id: str = OFFICIAL_HUB_ID
    licence: str = _LICENCE

    @property
    def source(self) -> str:
        """``hub_id/filename``: what :func:`~aconvlib.mixers.official.load_official` accepts for it."""
        return f"{self.hub_id}/{self.filename}"


_DREAMSHAPER = "Lykon/DreamShaper"
_SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
_PIXART_512 = "PixArt-alpha/PixArt-Sigma-XL-2-512-MS"

#: the released files (hub listing of 7eu7d7/ConvFusion); the ``mjv5`` ones first: they match the released
#: training configs and are what the book uses by default
RELEASED_CHECKPOINTS: dict[str, ReleasedCheckpoint] = {c.name: c for c in (
    ReleasedCheckpoint("convfusion-sd15-mjv5", "sd15", "ConvFusion-sd15-mjv5.safetensors", _DREAMSHAPER, _DREAMSHAPER,
                       "mjv5", "1.26 GB"),
    ReleasedCheckpoint("convfusion-sdxl-mjv5", "sdxl", "ConvFusion-sdxl-mjv5.safetensors", _SDXL, "sdxl", "mjv5",
                       "1.53 GB"),
    ReleasedCheckpoint("convfusion-pixart512-mjv5", "pixart-sigma-512", "ConvFusion-pixart512-mjv5.safetensors",
                       _PIXART_512, "pixart-sigma-512", "mjv5", "320 MB"),
    ReleasedCheckpoint("convfusion-pixart1024-mjv5", "pixart-sigma-1024", "ConvFusion-pixart1024-mjv5.safetensors",
                       _PIXART_512, "pixart-sigma-512", "mjv5", "320 MB"),
    ReleasedCheckpoint("convfusion-sd15-laion", "sd15", "ConvFusion-sd15-laion.safetensors", _DREAMSHAPER,
                       _DREAMSHAPER, "laion", "1.26 GB"),
    ReleasedCheckpoint("convfusion-sdxl-laion", "sdxl", "ConvFusion-sdxl-laion.safetensors", _SDXL, "sdxl", "laion",
                       "1.53 GB"),
    ReleasedCheckpoint("convfusion-pixart512-laion", "pixart-sigma-512", "ConvFusion-pixart512-laion.safetensors",
                       _PIXART_512, "pixart-sigma-512", "laion", "320 MB"),
    ReleasedCheckpoint("convfusion-pixart1024-laion", "pixart-sigma-1024", "ConvFusion-pixart1024-laion.safetensors",
                       _PIXART_512, "pixart-sigma-512", "laion", "368 MB"),
)}


def released_checkpoint(name: str) -> ReleasedCheckpoint:
    """The released file called ``name`` (ours, e.g. ``"convfusion-sd15-mjv5"``, or its file name); KeyError listing
    the known otherwise."""
    key = str(name).strip()
    for c in RELEASED_CHECKPOINTS.values():
        if key in (c.name, c.filename, c.source):
            return c
    raise KeyError(f"no released ConvFusion checkpoint {name!r}; known: {', '.join(RELEASED_CHECKPOINTS)}")


def released_for(model: str, data: str = "mjv5") -> Optional[ReleasedCheckpoint]:
    """The released student of registry model ``model`` trained on ``data`` (None if the authors published none)."""
    return next((c for c in RELEASED_CHECKPOINTS.values() if c.model == model and c.data == data), None)


def released_path(ckpt: ReleasedCheckpoint) -> Optional[str]:
    """The file's path in the local Hugging Face cache, or None when it is not there (nothing is downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(ckpt.hub_id, ckpt.filename)
    except Exception:  # noqa: BLE001 - no cache folder at all
        return None
    return path if isinstance(path, str) else None


def official_block_prefix(layer_name: str) -> str:
    """Their module path of the mixer that replaced self-attention layer ``layer_name`` (``...attn1`` → ``...conv1``).
    Only transformer blocks' ``attn1`` map there: the U-Net's ResNet ``conv1`` convolutions keep their own names."""
    if not layer_name.endswith("attn1"):
        raise ValueError(f"{layer_name!r} is not a self-attention (attn1) layer")
    return layer_name[: -len("attn1")] + OFFICIAL_MODULE


def official_tensor_shapes(dim: int, kernel_size: int, stages: int = 2, ratio: float = 0.5) -> dict[str, tuple]:
    """``{their name under conv1: shape}`` of one block as their code builds it (required tensors only)."""
    inner = int(dim * ratio)
    out = {}
    for rule in OFFICIAL_TENSORS:
        if not rule.required:
            continue
        names = [rule.theirs.format(s=s) for s in range(stages)] if "{s}" in rule.theirs else [rule.theirs]
        for n in names:
            out[n] = tuple(rule.shape(dim, inner, kernel_size, stages))
    return out
