"""Analytic FLOP counts of token mixers.

Self-attention, by the paper's formula (Sec. 3.1), for N = H'·W' tokens of C' channels:

    FLOPs_attn = 4·N·C'^2  (q, k, v, out projections)
               + 4·N^2·C'  (QKᵀ and A·V)
               + 4·N^2     (scaling and softmax)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..models import (default_latent_hw, family_of, get_denoiser, get_spec, load_denoiser, paper_table,
                      self_attention_layers)
from .convert import deltaconv_layers, resolve_kernel_sizes
from .deltaconv import stage_grid


def attention_flops(tokens: int, channels: int) -> int:
    """FLOPs of one self-attention core over ``tokens`` tokens of ``channels`` channels (paper's formula)."""
    if tokens <= 0 or channels <= 0:
        raise ValueError(f"tokens and channels must be positive, got {tokens}, {channels}")
    n, c = int(tokens), int(channels)
    return 4 * n * c * c + 4 * n * n * c + 4 * n * n


@dataclass(frozen=True)
class LayerFlops:
    """One self-attention layer's attention-core FLOPs at a given image size."""

    name: str
    grid: tuple[int, int]
    heads: int
    head_dim: int
    channels: int
    flops: int


def attention_flops_table(denoiser: torch.nn.Module, latent_hw: tuple[int, int]) -> list[LayerFlops]:
    """Per self-attention layer of ``denoiser``: grid, heads, head dim and attention-core FLOPs."""
    return [LayerFlops(l.name, l.grid, l.heads, l.head_dim, l.channels, attention_flops(l.tokens, l.channels))
            for l in self_attention_layers(denoiser, latent_hw)]


def self_attention_table(model: str, resolutions=(512, 1024)):
    """One row per self-attention layer of ``model`` (architecture only, no weights).

    Columns: layer, heads, head_dim, channels, and for each resolution ``px`` the token grid
    ``grid@px`` and the attention-core FLOPs ``GFLOPs@px`` (paper's formula).
    """
    import pandas as pd

    spec = get_spec(model)
    den = load_denoiser(model, weights=False, device="meta")
    rows: dict[str, dict] = {}
    for px in resolutions:
        for l in attention_flops_table(den, spec.latent_grid(px, px)):
            r = rows.setdefault(l.name, {"layer": l.name, "heads": l.heads, "head_dim": l.head_dim,
                                         "channels": l.channels})
            r[f"grid@{px}"] = f"{l.grid[0]}x{l.grid[1]}"
            r[f"GFLOPs@{px}"] = l.flops / 1e9
    return pd.DataFrame(list(rows.values()))


def _hw(size) -> tuple[int, int]:
    """An image size given as ``side`` (square) or ``(height, width)``."""
    if isinstance(size, (int, float)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def flops_vs_resolution(models, sizes):
    """Long table: model, image size, number of self-attention layers, total and mean attention GFLOPs.

    ``sizes`` are sides (square images) or ``(height, width)`` pairs, e.g. ``(2160, 3840)`` for 4K.
    Totals are per denoiser call at batch 1 (no CFG doubling).
    """
    import pandas as pd

    out = []
    for model in models:
        spec = get_spec(model)
        den = load_denoiser(model, weights=False, device="meta")
        for size in sizes:
            h, w = _hw(size)
            table = attention_flops_table(den, spec.latent_grid(h, w))
            total = sum(l.flops for l in table)
            out.append({"model": model, "size": f"{h}x{w}", "height": h, "width": w, "px": (h * w) ** 0.5,
                        "layers": len(table), "total_GFLOPs": total / 1e9, "mean_GFLOPs": total / len(table) / 1e9})
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------------
# ΔConvBlock FLOPs and parameters, and the per-layer comparison with self-attention
# ----------------------------------------------------------------------------------------------
def attention_flops_2mac(tokens: int, channels: int) -> int:
    """Self-attention FLOPs counting 2 per multiply-add everywhere: 8·N·C'^2 + 4·N^2·C' + 4·N^2.

    The paper's formula (:func:`attention_flops`) counts the four projections at one FLOP per
    multiply-add; this variant uses the same convention as :func:`deltaconv_flops`.
    """
    n, c = int(tokens), int(channels)
    return 8 * n * c * c + 4 * n * n * c + 4 * n * n


def deltaconv_flops(grid: tuple[int, int], channels: int, kernel_size: int | list[int] = 9, ratio: float = 0.5,
                    scales=(1.0, 0.5), gate: str = "scaled") -> int:
    """FLOPs of one ΔConvBlock on a ``grid`` = (H, W) of C = ``channels`` (2 per multiply-add, 1 per other op).

    In-proj 2·N·C·Ci (+bias), per stage at n = ⌊H·s⌋·⌊W·s⌋ cells: pooling N·Ci, depthwise 2·n·K²·Ci,
    gate 1 (sigmoid: 4) per output element, bilinear 8·N·Ci/2; out-proj 2·N·(S·Ci/2)·C; pool branch
    N·C + 2·C² + N·C. Ci = C·r.
    """
    h, w = grid
    n, c = h * w, int(channels)
    ci = int(c * ratio)
    ks = [kernel_size] * len(scales) if isinstance(kernel_size, int) else list(kernel_size)
    f = 2 * n * c * ci + n * ci
    for k, s in zip(ks, scales):
        sh, sw = stage_grid((h, w), s)
        m = sh * sw
        if (sh, sw) != (h, w):
            f += n * ci + 8 * n * (ci // 2)
        f += 2 * m * k * k * ci + (1 if gate == "scaled" else 4) * m * (ci // 2)
    f += 2 * n * (len(scales) * ci // 2) * c + n * c
    f += n * c + 2 * c * c + c + n * c
    return int(f)


def deltaconv_params(channels: int, kernel_size: int | list[int] = 9, ratio: float = 0.5, scales=(1.0, 0.5),
                     bias: bool = True) -> int:
    """Parameters of one ΔConvBlock (in-proj, depthwise filters, out-proj, pool-branch projection)."""
    c = int(channels)
    ci = int(c * ratio)
    ks = [kernel_size] * len(scales) if isinstance(kernel_size, int) else list(kernel_size)
    b = 1 if bias else 0
    return c * ci + b * ci + sum(k * k * ci for k in ks) + (len(scales) * ci // 2) * c + b * c + c * c + b * c


@dataclass(frozen=True)
class ConversionRow:
    """One self-attention layer vs its ΔConvBlock: parameters and FLOPs (per sample) at one latent size."""

    name: str
    level: int
    grid: tuple[int, int]
    channels: int
    kernel_size: int
    attn_params: int
    deltaconv_params: int
    attn_flops: int
    attn_flops_2mac: int
    deltaconv_flops: int


def deltaconv_table(denoiser: torch.nn.Module, latent_hw: tuple[int, int] | None = None, kernel_sizes="paper",
                    ratio: float = 0.5, scales=(1.0, 0.5), gate: str = "scaled") -> list[ConversionRow]:
    """Per layer: self-attention vs ΔConvBlock parameters and FLOPs.

    ``denoiser`` is either a stock denoiser (the ΔConv side is computed for ``kernel_sizes`` etc.,
    nothing is converted) or one converted with :func:`aconvlib.convert.to_deltaconv` (its blocks are
    read). ``latent_hw`` defaults to the config's sample size. Attention FLOPs by the paper's formula
    (``attn_flops``) and at 2 FLOPs per multiply-add (``attn_flops_2mac``, the ΔConv convention).
    """
    den = get_denoiser(denoiser)
    latent_hw = tuple(latent_hw or default_latent_hw(den))
    converted = deltaconv_layers(den)
    rows = []
    if converted:
        grids = family_of(den).level_grids(den, latent_hw)
        for name, m in converted:
            b = m.block
            grid = grids[m.level]
            n = grid[0] * grid[1]
            rows.append(ConversionRow(
                name, m.level, grid, b.dim, b.kernel_size, m.attn_params, sum(p.numel() for p in b.parameters()),
                attention_flops(n, b.dim), attention_flops_2mac(n, b.dim),
                deltaconv_flops(grid, b.dim, b.kernel_sizes, b.ratio, b.scales, b.gate)))
        return rows
    layers = self_attention_layers(den, latent_hw)
    ks = resolve_kernel_sizes(den, kernel_sizes, layers)
    for l in layers:
        k = ks[l.name]
        rows.append(ConversionRow(
            l.name, l.level, l.grid, l.channels, k, sum(p.numel() for p in l.module.parameters()),
            deltaconv_params(l.channels, k, ratio, scales), attention_flops(l.tokens, l.channels),
            attention_flops_2mac(l.tokens, l.channels), deltaconv_flops(l.grid, l.channels, k, ratio, scales, gate)))
    return rows


def deltaconv_table_frame(rows: list[ConversionRow]):
    """The rows as a pandas DataFrame (parameters in M, FLOPs in GFLOPs) with a TOTAL row."""
    import pandas as pd

    df = pd.DataFrame([{
        "layer": r.name, "level": r.level, "grid": f"{r.grid[0]}×{r.grid[1]}", "C": r.channels, "K": r.kernel_size,
        "attn params (M)": r.attn_params / 1e6, "ΔConv params (M)": r.deltaconv_params / 1e6,
        "attn GFLOPs (paper formula)": r.attn_flops / 1e9, "attn GFLOPs (2/MAC)": r.attn_flops_2mac / 1e9,
        "ΔConv GFLOPs": r.deltaconv_flops / 1e9} for r in rows])
    total = df.select_dtypes("number").sum()
    total[["level", "C", "K"]] = float("nan")
    df.loc[len(df)] = {"layer": "TOTAL", "grid": "", **total.to_dict()}
    return df


# The paper's Table 1 (mean GFLOPs per module at inference) and the image sizes that reproduce its
# self-attention rows exactly with 2 FLOPs per multiply-add and batch 2 (classifier-free guidance):
# PixArt-Σ = any of its 28 layers (C = 1152, patch grid px/16); SD1.5 = its top layer (C = 320, px/8).
# "2K" is 2048×2048 for PixArt but 2560×1440 for SD1.5; 4K = 4096×2160, 8K = 7680×4320, 16K = 15360×8640.
@functools.lru_cache(maxsize=None)
def paper_table1() -> dict:
    """Table 1 of the paper, keyed by model, with sizes as ``{label: (H, W)}`` (from ``data/paper/tables.yml``)."""
    t = paper_table("table1_mean_flops_G")
    out = {}
    for model in ("pixart", "sd15"):
        m = dict(t[model])
        m["sizes"] = {label: tuple(hw) for label, hw in zip(t["labels"], m["sizes"])}
        m["attention"] = m.pop("self_attention")
        out[model] = m
    return out


def table1_comparison(batch: int = 2, ratio: float = 0.5, scales=(1.0, 0.5)):
    """Our per-module GFLOPs next to the paper's Table 1 (a pandas DataFrame).

    Self-attention by :func:`attention_flops_2mac`, ΔConv by :func:`deltaconv_flops`, both × ``batch``,
    on the module shapes and image sizes of :func:`paper_table1`.
    """
    import pandas as pd

    rows = []
    for model, t in paper_table1().items():
        c, f, k = t["channels"], t["px_per_token"], t["kernel_size"]
        for i, (label, (h, w)) in enumerate(t["sizes"].items()):
            grid = (h // f, w // f)
            n = grid[0] * grid[1]
            sa, dc = batch * attention_flops_2mac(n, c) / 1e9, batch * deltaconv_flops(grid, c, k, ratio, scales) / 1e9
            rows.append({"model": model, "size": label, "pixels": f"{w}×{h}", "grid": f"{grid[0]}×{grid[1]}",
                         "attn ours": sa, "attn paper": t["attention"][i], "attn ours/paper": sa / t["attention"][i],
                         "ΔConv ours": dc, "ΔConv paper": t["deltaconv"][i], "ΔConv ours/paper": dc / t["deltaconv"][i],
                         "attn/ΔConv ours": sa / dc, "attn/ΔConv paper": t["attention"][i] / t["deltaconv"][i]})
    return pd.DataFrame(rows)


__all__ = ["ConversionRow", "LayerFlops", "attention_flops", "attention_flops_2mac", "attention_flops_table",
           "deltaconv_flops", "deltaconv_params", "deltaconv_table", "deltaconv_table_frame", "flops_vs_resolution",
           "paper_table1", "self_attention_table", "table1_comparison"]
