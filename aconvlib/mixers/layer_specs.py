"""Per-layer options of a conversion: which kind of model, and one value per self-attention layer from an int, a dict
(layer name or fnmatch pattern), a callable or a named table (ΔConv kernel sizes: ``"paper"`` / ``"official"``)."""
from __future__ import annotations

import fnmatch

from torch import nn

from ..models import SelfAttentionLayer, family_of, self_attention_layers

__all__ = ["model_kind", "per_layer", "resolve_kernel_sizes"]


# ----------------------------------------------------------------------------------------------
# finding the denoiser and describing it
# ----------------------------------------------------------------------------------------------
def model_kind(denoiser: nn.Module) -> str:
    """``"pixart"``, ``"sdxl"`` (a U-Net with SDXL's text-time conditioning) or ``"sd15"`` (other U-Nets)."""
    return family_of(denoiser).kind(denoiser)


def per_layer(value, layers: list[SelfAttentionLayer], what: str, symbol: str) -> dict[str, object]:
    """``{layer name: value}`` from an int (every layer), a dict ``{name or fnmatch pattern: value}``
    (exact names first, then the first matching pattern) or a callable ``layer -> value``."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, a dict or a callable, got {value!r}")
    if isinstance(value, int):
        return {l.name: value for l in layers}
    if isinstance(value, dict):
        out, missing = {}, []
        for l in layers:
            if l.name in value:
                out[l.name] = value[l.name]
                continue
            hit = next((v for pat, v in value.items() if fnmatch.fnmatchcase(l.name, pat)), None)
            if hit is None:
                missing.append(l.name)
            out[l.name] = hit
        if missing:
            raise ValueError(f"{what} names no {symbol} for {len(missing)} layer(s), e.g. {missing[:3]}; "
                             "add them or a pattern like '*attn1'")
        return out
    if callable(value):
        return {l.name: int(value(l)) for l in layers}
    raise ValueError(f"{what} must be an int, a dict or a callable, got {value!r}")


def resolve_kernel_sizes(denoiser: nn.Module, kernel_sizes="paper",
                         layers: list[SelfAttentionLayer] | None = None) -> dict[str, int]:
    """Kernel size K of every self-attention layer: ``{layer name: K}`` (see the module docstring)."""
    layers = self_attention_layers(denoiser) if layers is None else layers
    fam = family_of(denoiser)   # the paper's facts per architecture live with the family
    kind = fam.kind(denoiser)
    if isinstance(kernel_sizes, bool):
        raise TypeError("kernel_sizes must be 'paper', 'official', an int, a dict or a callable")
    if kernel_sizes == "paper":
        return {l.name: fam.paper_kernel_size(denoiser) for l in layers}
    if kernel_sizes == "official":
        table, out = fam.official_kernel_sizes(denoiser), {}
        if isinstance(table, int):   # one K for every layer (PixArt)
            return {l.name: table for l in layers}
        for l in layers:
            key = (fam.layer_part(l.name), l.level)
            if key not in table:
                raise ValueError(f"the authors' kernel-size table ({kind}) has no entry for {l.name} "
                                 f"({key[0]} level {l.level}); this U-Net's layout differs from {kind.upper()}: "
                                 "pass kernel_sizes='paper', an int, a dict or a callable")
            out[l.name] = table[key]
        return out
    if isinstance(kernel_sizes, (int, dict)) or callable(kernel_sizes):
        return per_layer(kernel_sizes, layers, "kernel_sizes", "K")
    raise ValueError(f"kernel_sizes must be 'paper', 'official', an int, a dict or a callable, got {kernel_sizes!r}")
