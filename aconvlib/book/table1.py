"""The paper's Table 1 next to our FLOP counts (the book's table; the counts are :mod:`aconvlib.mixers.flops`).

:func:`paper_table1` reads the paper's entries; :func:`table1_module` the module each row measures, from the
shipped configs (heads and q/k/v bias of PixArt-Σ's layers and SD1.5's top layer); :func:`table1_comparison`
sets our numbers beside the paper's with the display columns the chapters show; :func:`table1_attention_conventions`
shows how the self-attention row depends on the counting convention.
"""
from __future__ import annotations

import functools

from ..mixers.flops import (attention_flops, attention_flops_2mac, deltaconv_flops, ditfastattn_window, joint_flops,
                            linear_attention_flops, window_attention_flops)
from ..models import paper_table

__all__ = ["TABLE1_JOINT_MODEL", "TABLE1_MODELS", "paper_table1", "table1_attention_conventions", "table1_comparison",
           "table1_joint", "table1_module"]

#: Table 1's model keys -> the registered model whose module the row measures
TABLE1_MODELS = {"pixart": "pixart-sigma-1024", "sd15": "sd15"}
#: the joint-attention model whose rows Table 1 gains (no paper entry: attention vs the ΔConv hybrid, ours only)
TABLE1_JOINT_MODEL = "flux-dev"


def table1_module(key: str) -> dict:
    """The module a Table-1 row measures (``"pixart"``: any PixArt-Σ layer; ``"sd15"``: SD1.5's top layer), read
    from the shipped config: ``heads`` (PixArt-Σ 16 of 72, SD1.5 8 of 40), ``qkv_bias`` (PixArt-Σ biased q/k/v,
    SD1.5 not; both have a biased output projection) and the rest of :func:`~aconvlib.book.module_shapes.module_shape`."""
    from .module_shapes import module_shape

    return module_shape(TABLE1_MODELS[key])


# ----------------------------------------------------------------------------------------------
# the paper's Table 1
# ----------------------------------------------------------------------------------------------
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


def table1_comparison(batch: int = 2, ratio: float = 0.5, scales=(1.0, 0.5), baselines: bool = True,
                      linfusion_hidden_ratio: float = 1.0):
    """Our per-module GFLOPs next to the paper's Table 1 (a pandas DataFrame, one row per model and size).

    Self-attention by :func:`attention_flops_2mac`, ΔConv by :func:`deltaconv_flops`, both × ``batch``,
    on the module shapes and image sizes of :func:`paper_table1`. With ``baselines`` (default) also:

    **LinFusion** (both models). ``LinFusion ours``: :func:`linear_attention_flops` (2/MAC) with
    LinFusion's released default hidden width m = C (``linfusion_hidden_ratio``; its code's
    ``projection_mid_dim=None``) and the module's real heads (:func:`table1_module`), × ``batch``.
    It comes out at 0.80 (PixArt) / 0.82 (SD1.5) of the paper. The paper's LinFusion entries are
    exactly linear in N and all twelve fit 2·N·(20.25·C² + 15·C) within their rounding (≤ 0.022%;
    PixArt 2K at N = 14,400, see below), i.e. their leading term does not depend on the head
    width. ``LinFusion ours (1 head)`` counts the linear-attention state as one C×C head (d = C:
    4·N·C² instead of 4·N·C·d) and reproduces the paper to 1.1–1.2% (0.988–0.990), so the paper
    evidently counted it that way; the remaining ~0.25·N·C² is not accounted for by any operation
    of the module (the paper does not state LinFusion's hidden width m or its counting rules).
    ``LinFusion paper tokens``: the N implied by the paper's own linear scaling from its
    512 entry; at PixArt "2K" it is 14,400 (2560×1440), not the 16,384 (2048²) of the
    self-attention column, so the paper's LinFusion (and ΔConv) PixArt-2K entries use another
    frame and our ratio there is 16384/14400 = 1.138 higher than at the other sizes.

    **DiTFastAttn** (PixArt only). Its window choice is calibrated per layer and timestep (window
    attention with residual caching, sharing across steps and CFG), so it cannot be recomputed from
    first principles; what can be done is back-solving (:func:`ditfastattn_window`): the share ρ of
    the N² work the paper's entry keeps (projections unchanged; 0.90 at 512, 0.78 at 1024,
    0.72 from 2K on) and the uniform 1-D window w that gives exactly that. ``DiTFastAttn ours`` is
    :func:`window_attention_flops` (2/MAC, 1d) at that w × ``batch``; it matches the paper to
    < 0.01% by construction. The w found is about the sequence length (w/N ≈ 1.35 at 512, ≈ 0.95
    from 2K on): the paper's DiTFastAttn saves 10% (512), 22% (1024) and from 2K on a constant ~28%
    of the quadratic term, not what a fixed local window would do (its cost would grow linearly in N).
    """
    import pandas as pd

    rows = []
    for model, t in paper_table1().items():
        c, f, k = t["channels"], t["px_per_token"], t["kernel_size"]
        h0, w0 = t["sizes"]["512"]
        n512 = (h0 // f) * (w0 // f)
        for i, (label, (h, w)) in enumerate(t["sizes"].items()):
            grid = (h // f, w // f)
            n = grid[0] * grid[1]
            sa, dc = batch * attention_flops_2mac(n, c) / 1e9, batch * deltaconv_flops(grid, c, k, ratio, scales) / 1e9
            row = {"model": model, "size": label, "pixels": f"{w}×{h}", "grid": f"{grid[0]}×{grid[1]}",
                   "tokens": n, "attn ours": sa, "attn paper": t["attention"][i], "attn ours/paper": sa / t["attention"][i],
                   "ΔConv ours": dc, "ΔConv paper": t["deltaconv"][i], "ΔConv ours/paper": dc / t["deltaconv"][i],
                   "attn/ΔConv ours": sa / dc, "attn/ΔConv paper": t["attention"][i] / t["deltaconv"][i]}
            if baselines:
                lf_paper = t["linfusion"][i]
                kw = dict(convention="2mac", qkv_bias=table1_module(model)["qkv_bias"])
                lf = batch * linear_attention_flops(n, c, linfusion_hidden_ratio, heads=table1_module(model)["heads"], **kw) / 1e9
                lf1 = batch * linear_attention_flops(n, c, linfusion_hidden_ratio, heads=1, **kw) / 1e9
                row.update({"LinFusion ours": lf, "LinFusion ours (1 head)": lf1, "LinFusion paper": lf_paper,
                            "LinFusion ours/paper": lf / lf_paper, "LinFusion ours (1 head)/paper": lf1 / lf_paper,
                            "LinFusion paper tokens": round(lf_paper / t["linfusion"][0] * n512)})
                nan = float("nan")
                dfa = {"DiTFastAttn paper": nan, "DiTFastAttn kept N² share": nan, "DiTFastAttn window (1d)": nan,
                       "DiTFastAttn ours": nan, "DiTFastAttn ours/paper": nan}
                if "ditfastattn" in t:
                    paper = t["ditfastattn"][i]
                    rho, win = ditfastattn_window(n, c, paper * 1e9, batch)
                    ours = batch * window_attention_flops(n, c, win, "1d", "2mac") / 1e9
                    dfa = {"DiTFastAttn paper": paper, "DiTFastAttn kept N² share": rho,
                           "DiTFastAttn window (1d)": win, "DiTFastAttn ours": ours, "DiTFastAttn ours/paper": ours / paper}
                row.update(dfa)
            rows.append(row)
    return pd.DataFrame(rows)


def table1_attention_conventions():
    """How the paper's Table 1 self-attention row depends on the counting convention: per model and size,
    our count / the paper's entry under

    * ``paper formula, batch 1``: Sec. 3.1's 4NC'² + 4N²C' + 4N² for one sample, at the frames of
      :func:`paper_table1`;
    * ``8NC'², batch 2, 4K = 3840×2160``: 2 FLOPs per multiply-add in the projections, the CFG batch, and 4K
      as the paper's text defines it (Sec. 5.2: "4K (e.g., 3840x2160)");
    * ``8NC'², batch 2, 4K = 4096×2160``: the same with the 4K frame that reproduces the row (our convention,
      :func:`table1_comparison`).

    Only the 4K rows differ between the last two. A pandas DataFrame."""
    import pandas as pd

    rows = []
    for model, t in paper_table1().items():
        c, f = t["channels"], t["px_per_token"]
        for i, (label, (h, w)) in enumerate(t["sizes"].items()):
            paper = t["attention"][i] * 1e9
            n = (h // f) * (w // f)
            n_text = (2160 // f) * (3840 // f) if label == "4K" else n
            rows.append({"model": model, "size": label, "pixels (fit)": f"{w}×{h}", "attn paper (G)": paper / 1e9,
                         "paper formula, batch 1": attention_flops(n, c) / paper,
                         "8NC'², batch 2, 4K = 3840×2160": 2 * attention_flops_2mac(n_text, c) / paper,
                         "8NC'², batch 2, 4K = 4096×2160": 2 * attention_flops_2mac(n, c) / paper})
    return pd.DataFrame(rows)


def table1_joint(model: str = TABLE1_JOINT_MODEL, batch: int = 1, text_tokens=None, ratio: float = 0.5,
                 scales=(1.0, 0.5)):
    """Table 1's rows for a joint-attention transformer (the paper has none): one double-stream (joint) layer's
    attention against the ΔConv hybrid that replaces it (:func:`aconvlib.mixers.flops.joint_flops`), in GFLOPs
    per module call × ``batch``, at the PixArt-Σ rows' frames (the same 16 px per token): 512², 1024², 2048²,
    4096×2160, 7680×4320, 15360×8640.

    The module is read from the shipped config (:func:`~aconvlib.book.module_shapes.module_shape`: FLUX.1 has
    C = 3072, 24 heads, K = 13); ``text_tokens`` (default: the model's own ``max_sequence_length``, FLUX.1 [dev]
    512 T5 tokens) are part of every joint sequence. ``batch`` 1: FLUX.1 samples without classifier-free guidance
    (its guidance is an input of the transformer). Columns: model, size, pixels, grid, image tokens, text tokens,
    ``attn ours``, ``hybrid ours``, ``attn/hybrid ours``, and the hybrid's parts (``hybrid: projections``,
    ``hybrid: text attention``, ``hybrid: ΔConv``) and ``N² share of attn`` (the image-image part the hybrid
    removes, as a share of the layer's attention)."""
    import pandas as pd

    from ..models import get_spec
    from .module_shapes import module_shape

    shape, spec = module_shape(model), get_spec(model)
    if text_tokens is None:
        text_tokens = spec.sampling.max_sequence_length if spec.sampling and spec.sampling.max_sequence_length else 512
    c, f, k = shape["channels"], shape["px_per_token"], shape["kernel_size"]
    rows = []
    for label, (h, w) in paper_table1()["pixart"]["sizes"].items():
        grid = (h // f, w // f)
        j = joint_flops(grid, text_tokens, c, k, ratio, scales)
        g = {key: batch * v / 1e9 for key, v in j.items()}
        rows.append({"model": model, "size": label, "pixels": f"{w}×{h}", "grid": f"{grid[0]}×{grid[1]}",
                     "image tokens": grid[0] * grid[1], "text tokens": int(text_tokens), "attn ours": g["attention"],
                     "hybrid ours": g["hybrid"], "attn/hybrid ours": j["attention"] / j["hybrid"],
                     "hybrid: projections": g["projections"],
                     "hybrid: text attention": g["text_queries"] + g["image_to_text"], "hybrid: ΔConv": g["deltaconv"],
                     "N² share of attn": j["image_quadratic"] / j["attention"]})
    return pd.DataFrame(rows)
