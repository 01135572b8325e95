"""The book's FLOP tables: per model and image size, as pandas frames with display columns.

The counts are :mod:`aconvlib.mixers.flops`' (typed rows, formulas); this module names models, builds their
architecture-only denoisers (``meta`` device, no weights) and turns rows into the frames chapters 0, 6 and 7 and
``aconv convert`` show: :func:`self_attention_table`, :func:`flops_vs_resolution`, :func:`dominant_terms`,
:func:`growth_per_doubling`, :func:`mixer_table_frame`, :func:`deltaconv_table_frame`.
"""
from __future__ import annotations

from ..mixers.flops import ConversionRow, MixerRow, attention_flops_table, attention_terms
from ..models import get_spec, load_denoiser, self_attention_layers

__all__ = ["deltaconv_table_frame", "dominant_terms", "flops_vs_resolution", "growth_per_doubling",
           "joint_conversion_table", "mixer_table_frame", "self_attention_table"]


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


def _models_and_sizes(models, sizes):
    """``(model, meta denoiser, height, width, latent grid)`` for every model and image size."""
    for model in models:
        spec = get_spec(model)
        den = load_denoiser(model, weights=False, device="meta")
        for size in sizes:
            h, w = _hw(size)
            yield model, den, h, w, spec.latent_grid(h, w)


def flops_vs_resolution(models, sizes):
    """Long table: model, image size, number of self-attention layers, total and mean attention GFLOPs.

    ``sizes`` are sides (square images) or ``(height, width)`` pairs, e.g. ``(2160, 3840)`` for 4K.
    Totals are per denoiser call at batch 1 (no CFG doubling).
    """
    import pandas as pd

    out = []
    for model, den, h, w, latent in _models_and_sizes(models, sizes):
        table = attention_flops_table(den, latent)
        total = sum(l.flops for l in table)
        out.append({"model": model, "size": f"{h}x{w}", "height": h, "width": w, "px": (h * w) ** 0.5,
                        "layers": len(table), "total_GFLOPs": total / 1e9, "mean_GFLOPs": total / len(table) / 1e9})
    return pd.DataFrame(out)


def dominant_terms(models, sizes):
    """Per model and image size, the self-attention FLOPs of one denoiser call (batch 1, paper's formula) split
    into the projection term 4NC'² and the N² terms 4N²C' + 4N², summed over every ``attn1`` layer, and which
    part is larger (``dominant``: ``"N² terms"`` or ``"projections"``), with the number of layers where the N²
    terms are larger. A pandas DataFrame, one row per (model, size)."""
    import pandas as pd

    out = []
    for model, den, h, w, latent in _models_and_sizes(models, sizes):
        layers = self_attention_layers(den, latent)
        terms = [attention_terms(l.tokens, l.channels) for l in layers]
        proj = sum(t["projections"] for t in terms)
        quad = sum(t["quadratic"] for t in terms)
        out.append({"model": model, "px": (h * w) ** 0.5, "size": f"{h}x{w}", "layers": len(layers),
                    "projections_GFLOPs": proj / 1e9, "quadratic_GFLOPs": quad / 1e9,
                    "quadratic_share": quad / (proj + quad),
                    "dominant": "N² terms" if quad > proj else "projections",
                    "layers_N2_dominant": sum(t["quadratic"] > t["projections"] for t in terms)})
    return pd.DataFrame(out)


def growth_per_doubling(frame, value: str = "total_GFLOPs"):
    """From :func:`flops_vs_resolution` (or :func:`dominant_terms`): per model, the factor by which ``value``
    grows from each size to the next one whose side is twice as large (``px`` doubles). A DataFrame with
    ``model``, ``from_px``, ``to_px``, ``factor``. A pure N² law gives 16 per doubling, a linear one 4."""
    import pandas as pd

    rows = []
    for model, f in frame.groupby("model", sort=False):
        by_px = dict(zip(f["px"].round(6), f[value]))
        for px, v in by_px.items():
            nxt = round(2 * px, 6)
            if nxt in by_px:
                rows.append({"model": model, "from_px": px, "to_px": nxt, "factor": by_px[nxt] / v})
    return pd.DataFrame(rows, columns=["model", "from_px", "to_px", "factor"])


def _frame_with_total(records: list[dict], not_summed: list[str]):
    """A DataFrame of ``records`` plus a TOTAL row summing the numeric columns (``not_summed`` left blank)."""
    import pandas as pd

    df = pd.DataFrame(records)
    total = df.select_dtypes("number").sum()
    total[not_summed] = float("nan")
    text = {c: "" for c in df.columns if c not in total.index}
    df.loc[len(df)] = {**text, "layer": "TOTAL", **total.to_dict()}
    return df


def mixer_table_frame(rows: list[MixerRow]):
    """The rows as a pandas DataFrame (parameters in M, FLOPs in GFLOPs) with a TOTAL row."""
    return _frame_with_total([{
        "layer": r.name, "kind": r.kind, "level": r.level, "grid": f"{r.grid[0]}×{r.grid[1]}", "C": r.channels,
        "setting": r.detail, "attn params (M)": r.attn_params / 1e6, "mixer params (M)": r.mixer_params / 1e6,
        "attn GFLOPs (paper formula)": r.attn_flops / 1e9, "attn GFLOPs (2/MAC)": r.attn_flops_2mac / 1e9,
        "mixer GFLOPs (2/MAC)": r.mixer_flops / 1e9, "formula": r.formula} for r in rows], ["level", "C"])


def deltaconv_table_frame(rows: list[ConversionRow]):
    """The rows as a pandas DataFrame (parameters in M, FLOPs in GFLOPs) with a TOTAL row."""
    return _frame_with_total([{
        "layer": r.name, "level": r.level, "grid": f"{r.grid[0]}×{r.grid[1]}", "C": r.channels, "K": r.kernel_size,
        "attn params (M)": r.attn_params / 1e6, "ΔConv params (M)": r.deltaconv_params / 1e6,
        "attn GFLOPs (paper formula)": r.attn_flops / 1e9, "attn GFLOPs (2/MAC)": r.attn_flops_2mac / 1e9,
        "ΔConv GFLOPs": r.deltaconv_flops / 1e9} for r in rows], ["level", "C", "K"])


def joint_conversion_table(model: str, px: int = 1024, text_tokens=None, kernel_sizes="paper", ratio: float = 0.5,
                           scales=(1.0, 0.5)):
    """What ``to_deltaconv`` makes of a joint-attention transformer (FLUX.1, SD3.5), per layer, from the shipped
    architecture (``meta`` device: no weights, nothing converted or allocated).

    Joint layers become the ΔConv hybrid (:class:`~aconvlib.mixers.adapter_base.JointMixerAttention`: a ΔConvBlock
    and one text-gate logit per head); SD3.5's image-only ``attn2`` becomes a plain ΔConv layer. Per layer at a
    ``px``×``px`` image with ``text_tokens`` text tokens (default: the model's own ``max_sequence_length``, else the
    family's pipeline default): block type, grid, C, heads, K, the attention module's parameters and the new
    ones, GFLOPs of the layer's attention and of its replacement per sample at 2 FLOPs per multiply-add
    (:func:`aconvlib.mixers.flops.joint_flops`; image-only layers :func:`attention_flops_2mac` vs the block), with a
    TOTAL row. (SD3's last block drops its text output; it is counted with its text output projection, L·C²
    multiply-adds more than it runs.)"""
    from ..mixers.flops import attention_flops_2mac, deltaconv_flops, deltaconv_params, joint_flops
    from ..mixers.layer_specs import resolve_kernel_sizes
    from ..models import family_of

    spec = get_spec(model)
    den = load_denoiser(model, weights=False, device="meta")
    if text_tokens is None:
        own = spec.sampling.max_sequence_length if spec.sampling is not None else None
        text_tokens = own or family_of(den).text_tokens(den)
    layers = self_attention_layers(den, spec.latent_grid(px, px))
    ks = resolve_kernel_sizes(den, kernel_sizes, layers)
    rows = []
    for l in layers:
        k = ks[l.name]
        new = deltaconv_params(l.channels, k, ratio, scales)
        if l.joint:
            f = joint_flops(l.grid, text_tokens, l.channels, k, ratio, scales,
                            out_projection=not getattr(l.module, "pre_only", False))
            attn, mixer, new = f["attention"], f["hybrid"], new + l.heads
        else:
            attn, mixer = attention_flops_2mac(l.tokens, l.channels), deltaconv_flops(l.grid, l.channels, k, ratio,
                                                                                        scales)
        rows.append({"layer": l.name, "block type": l.block_type, "grid": f"{l.grid[0]}×{l.grid[1]}",
                     "C": l.channels, "heads": l.heads, "K": k, "text tokens": text_tokens if l.joint else 0,
                     "attn params (M)": sum(p.numel() for p in l.module.parameters()) / 1e6,
                     "new params (M)": new / 1e6, "attn GFLOPs (2/MAC)": attn / 1e9, "replacement GFLOPs": mixer / 1e9})
    return _frame_with_total(rows, ["C", "heads", "K", "text tokens"])
