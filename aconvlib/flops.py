"""Analytic FLOP counts of token mixers.

Self-attention, by the paper's formula (Sec. 3.1), for N = H'·W' tokens of C' channels:

    FLOPs_attn = 4·N·C'^2  (q, k, v, out projections)
               + 4·N^2·C'  (QKᵀ and A·V)
               + 4·N^2     (scaling and softmax)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .models.layers import self_attention_layers


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


def paper_table(name: str) -> dict:
    """A table transcribed from the paper (``data/paper/tables.yml``), e.g. ``"table1_mean_flops_G"``."""
    import yaml

    from .models.registry import DATA_DIR

    tables = yaml.safe_load((DATA_DIR / "paper" / "tables.yml").read_text())
    if name not in tables:
        raise KeyError(f"no paper table {name!r}; tables: {', '.join(tables)}")
    return tables[name]


def self_attention_table(model: str, resolutions=(512, 1024)):
    """One row per self-attention layer of ``model`` (architecture only, no weights).

    Columns: layer, heads, head_dim, channels, and for each resolution ``px`` the token grid
    ``grid@px`` and the attention-core FLOPs ``GFLOPs@px`` (paper's formula).
    """
    import pandas as pd

    from .models import get_spec, load_denoiser

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

    from .models import get_spec, load_denoiser

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


def plot_flops_vs_resolution(df, ax=None, value: str = "total_GFLOPs"):
    """Log-log plot of attention FLOPs per denoiser call against image size, one line per model."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for model, g in df.groupby("model", sort=False):
        ax.plot(g["px"], g[value], marker="o", label=model)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("image side √(H·W) (px)")
    ax.set_ylabel(value.replace("_", " "))
    ax.set_title("Self-attention cost per denoiser call")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return ax
