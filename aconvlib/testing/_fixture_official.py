"""Hub fixtures of the authors' released students (``7eu7d7/ConvFusion``) and of the SD1.5 student's base
(``Lykon/DreamShaper``), for :mod:`aconvlib.testing.hub_fixtures`.

``7eu7d7/ConvFusion`` as listed on the hub: ``.gitattributes`` and one ``ConvFusion-<model>-<data>.safetensors`` per
released student (no model card, no config). Each fixture file holds what the authors' training saver writes
(``LAYERS_TRAINABLE`` of the denoiser: every converted block's ``conv1`` tensors, float32, un-prefixed keys; names and
shapes from :mod:`aconvlib.models.released`) for the FIXTURE denoiser of its model (the shrunk configs of
:mod:`._fixture_configs`), with the authors' kernel sizes, seeded random values. Not reproduced, because not known
here: the other denoiser tensors the published U-Net files evidently also carry (their sizes), and
``ConvFusion-pixart1024-laion.safetensors``, whose listed size says its shapes differ from the others' (it is left
out rather than guessed).

``Lykon/DreamShaper``: the SD1.5 fixture's layout (the published repo's own layout was not checked here) with its
own U-Net weights.
"""
from __future__ import annotations

from ..models import family_of, self_attention_layers
from ..models.released import (OFFICIAL_HUB_ID, RELEASED_CHECKPOINTS, official_block_prefix, official_tensor_shapes)

__all__ = ["CONVFUSION", "DREAMSHAPER", "convfusion_files", "fixture_denoiser_config"]

CONVFUSION = OFFICIAL_HUB_ID
DREAMSHAPER = "Lykon/DreamShaper"
#: released files the fixture does not reproduce (see the module docstring)
_LEFT_OUT = ("ConvFusion-pixart1024-laion.safetensors",)


def fixture_denoiser_config(model: str) -> dict:
    """The fixture denoiser config of registry model ``model`` (what the hub fixtures publish for it)."""
    from ._fixture_configs import _pixart_transformer_config, _sd15_unet_config, _sdxl_unet_config

    configs = {"sd15": _sd15_unet_config, "sdxl": _sdxl_unet_config,
               "pixart-sigma-512": lambda: _pixart_transformer_config(512),
               "pixart-sigma-1024": lambda: _pixart_transformer_config(1024)}
    return configs[model]()


def _official_kernel(den, layer) -> int:
    fam = family_of(den)
    table = fam.official_kernel_sizes(den)
    return table if isinstance(table, int) else table[(fam.layer_part(layer.name), layer.level)]


def _student_tensors(model: str, seed_key: str, seeded) -> dict:
    import diffusers
    import torch

    cfg = fixture_denoiser_config(model)
    with torch.device("meta"):
        den = getattr(diffusers, cfg["_class_name"]).from_config({k: v for k, v in cfg.items()
                                                                   if not k.startswith("_")})
    tensors = {}
    with seeded(seed_key):
        for layer in self_attention_layers(den):
            k = _official_kernel(den, layer)
            prefix = official_block_prefix(layer.name)
            for name, shape in official_tensor_shapes(layer.channels, k).items():
                # PyTorch-default-like scale: uniform(±1/√fan_in) with fan_in = the last dim (K² for the dwconv)
                fan_in = shape[0] * shape[1] if len(shape) == 3 else shape[-1]
                tensors[f"{prefix}.{name}"] = (torch.rand(shape) * 2 - 1) / fan_in ** 0.5
    return tensors


def convfusion_files(gitattributes: bytes, seeded) -> dict[str, bytes]:
    """The files of the ``7eu7d7/ConvFusion`` fixture (``seeded(key)``: the builders' per-component seeding)."""
    import safetensors.torch

    files = {".gitattributes": gitattributes}
    for c in RELEASED_CHECKPOINTS.values():
        if c.filename in _LEFT_OUT:
            continue
        files[c.filename] = safetensors.torch.save(_student_tensors(c.model, f"convfusion/{c.name}", seeded))
    return files
