"""Chapter 6's verdicts on the paper's Tables 1 and 2, computed from the architectures and the stored GPU run.

- :func:`flops_per_call`: self-attention vs ΔConv FLOPs of every ``attn1`` of one denoiser call (2 FLOPs per
  multiply-add, batch 1), per model and image size, from the architecture alone (no weights).
- :func:`table1_verdicts`: "ΔConv costs a fraction of self-attention's FLOPs at every resolution" per real
  architecture: holds when the ΔConv count is below self-attention's at every size tested.
- :func:`table2_verdicts`: "ΔConv (Triton) is faster than self-attention from 1024 px" per model of the stored
  block benchmark, allowing the run-to-run spread ``noise_ms`` in the most favourable direction:
  *fails* where, at some size ≥ 1024 px, even (SDPA + noise) / (ΔConv − noise) is below the paper's speed-up
  there (PixArt-Σ, the model of the paper's Table 2) or below 1; *holds* where at every size ≥ 1024 px even
  (SDPA − noise) / (ΔConv + noise) exceeds 1 (and the paper's ratio where it gives one); otherwise not testable.
- :func:`savings_range`: the smallest and largest attention / ΔConv ratio of Table 1's rows, with where they are.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

__all__ = ["flops_per_call", "savings_range", "table1_verdicts", "table2_verdicts"]

PAPER_TABLE2_MODEL = "pixart-sigma"     # the paper's Table 2 times PixArt-Σ's module (K = 13)


def flops_per_call(models: Sequence[str], sizes: Sequence[int] = (512, 1024, 2048, 4096), kernel_sizes="paper"):
    """A DataFrame (model, px, layers, attn_GFLOPs, deltaconv_GFLOPs, ratio): every ``attn1`` of one call."""
    import pandas as pd

    from ..mixers.flops import deltaconv_table
    from ..models import get_spec, load_denoiser

    rows = []
    for m in models:
        den, spec = load_denoiser(m, weights=False, device="meta"), get_spec(m)
        for px in sizes:
            t = deltaconv_table(den, spec.latent_grid(px, px), kernel_sizes=kernel_sizes)
            a, d = sum(r.attn_flops_2mac for r in t), sum(r.deltaconv_flops for r in t)
            rows.append({"model": m, "px": int(px), "layers": len(t), "attn_GFLOPs": a / 1e9,
                         "deltaconv_GFLOPs": d / 1e9, "ratio": a / d})
    return pd.DataFrame(rows)


def table1_verdicts(per_call, chapter: str = "06_deltaconv_block") -> list:
    """One :class:`~aconvlib.analysis.evidence.Verdict` per model of :func:`flops_per_call`'s frame."""
    from ..analysis.evidence import FAILS, HOLDS, Verdict

    out = []
    for m, f in per_call.groupby("model", sort=False):
        ok = bool((f["ratio"] > 1).all())
        cells = ", ".join(f"{r.ratio:.1f}× at {r.px} px" for r in f.itertuples())
        out.append(Verdict(
            claim="Table 1", model=m, verdict=HOLDS if ok else FAILS,
            deciding=f"self-attention / ΔConv FLOPs of every attn1 of one denoiser call (2/MAC, batch 1): {cells} "
                     "(architecture, no weights)",
            baseline="self-attention of the same architecture", chapter=chapter,
            numbers={f"ratio@{r.px}": float(r.ratio) for r in f.itertuples()}))
    return out


def savings_range(t1) -> dict:
    """Smallest and largest ``attn/ΔConv ours`` (and the paper's) over Table 1's rows
    (:func:`~aconvlib.book.table1.table1_comparison`), with the model and size of each."""
    lo, hi = t1["attn/ΔConv ours"].idxmin(), t1["attn/ΔConv ours"].idxmax()
    plo, phi = t1["attn/ΔConv paper"].idxmin(), t1["attn/ΔConv paper"].idxmax()
    return {"ours_min": float(t1.loc[lo, "attn/ΔConv ours"]), "ours_min_at": f"{t1.loc[lo, 'model']} {t1.loc[lo, 'size']}",
            "ours_max": float(t1.loc[hi, "attn/ΔConv ours"]), "ours_max_at": f"{t1.loc[hi, 'model']} {t1.loc[hi, 'size']}",
            "paper_min": float(t1.loc[plo, "attn/ΔConv paper"]), "paper_min_at": f"{t1.loc[plo, 'model']} {t1.loc[plo, 'size']}",
            "paper_max": float(t1.loc[phi, "attn/ΔConv paper"]), "paper_max_at": f"{t1.loc[phi, 'model']} {t1.loc[phi, 'size']}"}


def table2_verdicts(frame, paper: Mapping, device: str, noise_ms: float = 0.2, mode: str = "fwd",
                    chapter: str = "06_deltaconv_block", paper_model: str = PAPER_TABLE2_MODEL) -> list:
    """Verdicts from a stored block benchmark (:func:`~aconvlib.book.benchmark_tables.block_frame`) and the paper's
    Table 2 (``paper_table("table2_latency_ms")``); see the module docstring for the rule."""
    from ..analysis.evidence import FAILS, HOLDS, NOT_TESTABLE, Verdict

    pr = {int(r): paper["self_attention"][i] / paper["deltaconv_k13_triton"][i] for i, r in enumerate(paper["resolutions"])}
    out = []
    for model in dict.fromkeys(frame.index.get_level_values("model")):
        f = frame.xs((model, mode), level=("model", "mode"))
        f = f[f.index >= 1024]
        cells, fails, holds = [], False, True
        for px, r in f.iterrows():
            best = (r["sdpa_ms"] + noise_ms) / max(r["triton_ms"] - noise_ms, 1e-9)
            worst = (r["sdpa_ms"] - noise_ms) / (r["triton_ms"] + noise_ms)
            target = pr.get(int(px)) if model == paper_model else None
            need = max(1.0, target or 1.0)
            fails |= best < need
            holds &= worst > need
            cells.append(f"{r['triton_speedup']:.1f}× at {px} px ({r['sdpa_ms']:.2f} vs {r['triton_ms']:.2f} ms"
                         + (f"; paper {target:.1f}×" if target else "") + ")")
        verdict = FAILS if fails else HOLDS if holds else NOT_TESTABLE
        out.append(Verdict(
            claim="Table 2", model=model, verdict=verdict,
            deciding=f"SDPA ms / ΔConv* (Triton) ms, {mode}, batch 2, fp16 on {device}: " + "; ".join(cells)
                     + f"; run-to-run spread ±{noise_ms:g} ms allowed",
            baseline=f"diffusers self-attention (SDPA) on the same {device}; the paper's Table 2 is PixArt-Σ on an RTX 4090",
            how_to_test="" if verdict != NOT_TESTABLE else f"repeat `aconv bench-blocks --check` on {device} (more runs)",
            chapter=chapter, numbers={f"speedup@{px}": float(r["triton_speedup"]) for px, r in f.iterrows()}))
    return out
