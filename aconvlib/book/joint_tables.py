"""Joint-attention transformers (FLUX.1, SD3.5) in the locality chapters: per block type, and where the mass goes.

In a joint layer every image query attends over the text keys and the image keys together. The locality measures
of chapters 2–5 (ASM, high-pass, prior/context, ERF) take the image→image part renormalized over the image keys
(:mod:`aconvlib.analysis.joint_capture`), so they compare with a U-Net's or PixArt's self-attention; what the
renormalization removes is reported next to them, per layer:

- ``text share``: the mean mass an image query puts on the text keys, split into the prompt's own tokens
  (``prompt share``) and the padding tokens the T5 prompt is padded with (``padding share``);
- the most attended text key (its position in the text sequence and its mean share);
- image sinks: image keys that draw at least ``ratio`` times the uniform share 1/N of the renormalized map
  (:func:`aconvlib.analysis.joint_capture.sinks`), their number and the strongest one.

Layers are grouped by block type (FLUX: ``double`` / ``single`` streams; SD3: ``joint``, and SD3.5's image-only
``self`` attention in its dual-attention blocks), because one grid level holds every layer of these models.

Functions here take what :func:`aconvlib.book.studies.capture_study` / :func:`~aconvlib.book.studies.analyze_study`
return (studies with ``study.joint``, their analysis frames) and know no model by name.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..analysis.joint_capture import sinks
from ..analysis.locality import uniform_asm

__all__ = ["BLOCK_ORDER", "block_type_table", "fig2_layers", "joint_studies", "layer_block_types",
           "layers_by_block_type", "sink_table"]

#: the order block types are shown in (FLUX's streams in their order of execution, then SD3's)
BLOCK_ORDER = ("double", "single", "joint", "self")


def joint_studies(studies: dict) -> dict:
    """The studies (model → study) of joint-attention models: those whose capture kept a text side."""
    return {m: s for m, s in studies.items() if getattr(s, "joint", None)}


def layer_block_types(study) -> dict[str, str]:
    """Layer name → block type (``"self"`` for layers that attend over image tokens only)."""
    return {d["name"]: d.get("block_type", "self") for d in study.layers}


def _order(kinds) -> list[str]:
    kinds = set(kinds)
    return [k for k in BLOCK_ORDER if k in kinds] + sorted(kinds - set(BLOCK_ORDER))


def layers_by_block_type(study, per_type: int = 3) -> list[str]:
    """Up to ``per_type`` layer names of each block type (first, last and evenly spaced between), block types in
    :data:`BLOCK_ORDER`, layers in module order: the rows of chapter 2's per-block-type overlays."""
    if per_type < 1:
        raise ValueError(f"per_type must be a positive integer, got {per_type}")
    kinds = layer_block_types(study)
    out = []
    for kind in _order(kinds.values()):
        names = [d["name"] for d in study.layers if kinds[d["name"]] == kind]
        idx = np.unique(np.round(np.linspace(0, len(names) - 1, min(per_type, len(names)))).astype(int))
        out += [names[i] for i in idx]
    return out


def fig2_layers(study, n_layers: int = 6) -> list[str]:
    """``n_layers`` layer names evenly spaced over the whole network in module order (FLUX: across its double- and
    single-stream blocks), the columns of a row of the paper's Fig. 2."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be a positive integer, got {n_layers}")
    names = study.names()
    idx = np.unique(np.round(np.linspace(0, len(names) - 1, min(n_layers, len(names)))).astype(int))
    return [names[i] for i in idx]


def _ratio3(row) -> float:
    ks = list(row["ks"])
    if 3 not in ks:
        return float("nan")
    u = float(uniform_asm(tuple(row["grid"]), ks)[ks.index(3)])
    return float(row["asm"][ks.index(3)]) / u


def _share_at(curve, ks, k: int) -> float:
    ks = list(ks)
    return float(curve[ks.index(k)]) if k in ks else float("nan")


def sink_table(studies: dict, frames: dict, ratio: float = 3.0, window: int = 11) -> pd.DataFrame:
    """One row per layer of every joint-attention model: its locality numbers next to where the rest of each image
    query's attention goes.

    Columns: model, layer (label), block type, grid, ``ratio3`` (ASM(3) of the renormalized image→image map /
    the uniform map's), ``hp{window}`` (high-pass mass inside ``window``×``window``), ``erf`` (tokens),
    ``text_share`` / ``prompt_share`` / ``padding_share`` (mean over image queries; NaN for image-only layers),
    ``top_text_key`` (position of the most attended text key in the text sequence, -1 for image-only layers) and
    ``top_text_key_share`` (its mean share), ``image_sinks`` (image keys drawing ≥ ``ratio`` × 1/N),
    ``top_sink`` ("row, col" of the strongest, "" if none) and ``top_sink_ratio`` (its multiple of 1/N).
    """
    if ratio <= 0:
        raise ValueError(f"ratio must be positive, got {ratio}")
    columns = ["model", "layer", "block type", "grid", "ratio3", f"hp{window}", "erf", "text_share", "prompt_share",
               "padding_share", "top_text_key", "top_text_key_share", "image_sinks", "top_sink", "top_sink_ratio"]
    rows = []
    for m, study in joint_studies(studies).items():
        df = frames[m].set_index("name")
        kinds = layer_block_types(study)
        for info in study.layers:
            name, grid = info["name"], tuple(info["grid"])
            r = df.loc[name]
            side = study.joint.get(name)
            found = sinks(study.maps[name], grid, ratio)
            row = {"model": m, "layer": info["label"], "block type": kinds[name], "grid": f"{grid[0]}×{grid[1]}",
                   "ratio3": _ratio3(r), f"hp{window}": _share_at(r["hp"], r["ks"], window), "erf": float(r["erf"]),
                   "text_share": np.nan, "prompt_share": np.nan, "padding_share": np.nan,
                   "top_text_key": -1, "top_text_key_share": np.nan, "image_sinks": len(found),
                   "top_sink": f"{found[0]['row']}, {found[0]['col']}" if found else "",
                   "top_sink_ratio": found[0]["ratio"] if found else float(r["sink_ratio"])}
            if side is not None:
                text, pad, keys = (side[k].double() for k in ("text_share", "padding_share", "text_key_mass"))
                row.update(text_share=float(text.mean()), padding_share=float(pad.mean()),
                           prompt_share=float((text - pad).mean()), top_text_key=int(keys.argmax()),
                           top_text_key_share=float(keys.max()))
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def block_type_table(table: pd.DataFrame, columns: Sequence[str] = ("ratio3", "erf", "text_share", "prompt_share",
                                                                     "padding_share", "image_sinks"),
                     frames: Optional[dict] = None) -> pd.DataFrame:
    """Medians over the layers of each (model, block type) of a :func:`sink_table`: ``layers`` and ``columns``.

    ``frames`` (model → :func:`~aconvlib.book.studies.analyze_study` frame, the ``name``/``label`` columns) adds
    any other per-layer analysis column named in ``columns`` (e.g. ``prior_tv_uniform``, ``erf_context_pos``)."""
    columns = list(columns)
    if table.empty:
        return pd.DataFrame(columns=["model", "block type", "grid", "layers", *columns])
    table = table.copy()
    missing = [c for c in columns if c not in table.columns]
    if missing and frames is None:
        raise KeyError(f"{missing} are not sink_table columns: pass frames= to read them from the analysis frames")
    for c in missing:
        lookup = {(m, lab): v for m, df in frames.items() if c in df.columns
                  for lab, v in zip(df["label"], df[c])}
        if not any(m == k[0] for k in lookup for m in table["model"].unique()):
            raise KeyError(f"column {c!r} is in neither the sink table nor the analysis frames")
        table[c] = [lookup.get((m, lab), np.nan) for m, lab in zip(table["model"], table["layer"])]
    rows = []
    for m in table["model"].unique():
        t = table[table["model"] == m]
        for kind in _order(t["block type"].unique()):
            g = t[t["block type"] == kind]
            rows.append({"model": m, "block type": kind, "grid": g["grid"].iloc[0], "layers": len(g),
                         **{c: float(np.nanmedian(g[c].astype(float))) if g[c].notna().any() else np.nan
                            for c in columns}})
    return pd.DataFrame(rows, columns=["model", "block type", "grid", "layers", *columns])
