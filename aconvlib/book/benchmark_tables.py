"""Tables and Markdown of the latency benchmarks (:mod:`aconvlib.book.benchmarks`): the blocks benchmark's
Markdown (:func:`to_markdown`) and the frames chapter 6 states (:func:`block_frame`, :func:`output_check_frame`),
the token-mixer benchmark's Markdown (:func:`mixers_markdown`) and its Table-2-like frame (:func:`mixer_frame`).
"""
from __future__ import annotations

from ..models import paper_table
from .module_shapes import MODELS

__all__ = ["MIXER_TITLES", "PAPER_TABLE2_KEYS", "block_frame", "mixer_frame", "mixers_markdown", "output_check_frame",
           "to_markdown"]

def _f(v, fmt="{:.2f}"):
    return "–" if v is None else fmt.format(v)


def to_markdown(result) -> str:
    """A markdown table of a result dict (as written to JSON)."""
    m = result["meta"]
    load = f", 1-min load average {m['load_avg_1min']:.1f}" if m.get("load_avg_1min") is not None else ""
    lines = [f"Module latency, batch {m['batch']}, {m['dtype']}, on {m['device']} "
             f"(torch {m['torch']}, triton {m['triton']}, diffusers {m['diffusers']}, {m['date']}{load}).", "",
             "| model | px | grid | mode | SDPA ms | ΔConv torch ms | ΔConv Triton ms | SDPA/torch | SDPA/Triton "
             "| peak MiB SDPA / torch / Triton |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        mem = " / ".join(_f(r.get(f"{i}_peak_mib"), "{:.0f}") for i in ("sdpa", "torch", "triton"))
        lines.append(f"| {r['model']} (K={r['kernel_size']}) | {r['px']} | {r['grid']} | {r['mode']} | {_f(r.get('sdpa_ms'))} "
                     f"| {_f(r.get('torch_ms'))} | {_f(r.get('triton_ms'))} | {_f(r.get('speedup_torch'), '{:.1f}×')} "
                     f"| {_f(r.get('speedup_triton'), '{:.1f}×')} | {mem} |")
    checks = [r for r in result["rows"] if "relerr_out" in r]
    if checks:
        stages = all("relerr_stages" in r for r in checks)
        lines += ["", "Triton vs torch (same weights, fwd+bwd), max |Δ| / max |torch|:", "",
                  "| model | px | output | grad x | grad dw-filter (stage 0) |" + (" stages (Triton part) | stage share of output |" if stages else ""),
                  "|---|---|---|---|---|" + ("---|---|" if stages else "")]
        lines += [f"| {r['model']} | {r['px']} | {r['relerr_out']:.1e} | {r['relerr_grad_x']:.1e} | "
                  f"{r['relerr_grad_w0']:.1e} |" + (f" {r['relerr_stages']:.1e} | {r['stage_share']:.3f} |" if stages else "")
                  for r in checks]
    if result.get("notes"):
        lines += [""] + [f"- {n}" for n in result["notes"]]
    lines += ["", "Paper (RTX 4090, fp16, PixArt-Σ, per module): 512 px 0.78 vs 0.71 ms, 1024 px 5.91 vs 1.71 ms, "
              "2K 67.49 vs 6.69 ms, 4K 1077.98 vs 26.32 ms (self-attention vs ΔConv+Triton, K = 13)."]
    return "\n".join(lines) + "\n"


MIXER_TITLES = {"sdpa": "Self-attention (SDPA)", "na": "Neighborhood attention", "window": "Window attention (DiTFastAttn-style)",
                "linear": "LinFusion (linear attention)", "deltaconv-torch": "ΔConv", "deltaconv-triton": "ΔConv* (Triton)"}
# the paper's Table 2 rows, by our method keys
PAPER_TABLE2_KEYS = {"sdpa": "self_attention", "window": "ditfastattn", "linear": "linfusion",
                     "deltaconv_k13_torch": "deltaconv_k13_torch", "deltaconv_k13_triton": "deltaconv_k13_triton",
                     "deltaconv_k25_torch": "deltaconv_k25_torch", "deltaconv_k25_triton": "deltaconv_k25_triton"}


def block_frame(result: dict):
    """A stored block benchmark (``bench_<device>.json`` of :func:`main`) as a frame indexed by (model, px, mode):
    SDPA and Triton ms, Triton's speed-up over SDPA, its peak memory relative to SDPA's, and its speed-up over
    the plain PyTorch block (the quantities chapter 6 states), rounded to 4 significant digits."""
    import pandas as pd

    rows = []
    for r in result["rows"]:
        if not (r.get("sdpa_ms") and r.get("triton_ms")):
            continue
        rows.append({"model": r["model"], "px": int(r["px"]), "mode": r["mode"], "sdpa_ms": r["sdpa_ms"],
                     "triton_ms": r["triton_ms"], "triton_speedup": r["sdpa_ms"] / r["triton_ms"],
                     "triton_peak_vs_sdpa": (r["triton_peak_mib"] / r["sdpa_peak_mib"]
                                             if r.get("triton_peak_mib") and r.get("sdpa_peak_mib") else float("nan")),
                     "triton_over_torch": r["torch_ms"] / r["triton_ms"] if r.get("torch_ms") else float("nan")})
    if not rows:
        raise ValueError("the benchmark result has no row with both SDPA and Triton timings")
    frame = pd.DataFrame(rows).set_index(["model", "px", "mode"]).sort_index()
    return frame.apply(lambda c: c.map(lambda v: float(f"{v:.4g}")))


def _method_label(key: str) -> str:
    if key == "sdpa":
        return MIXER_TITLES["sdpa"]
    if key == "linear":
        return MIXER_TITLES["linear"]
    if key.startswith("na_k"):
        return f"NA K={key[4:]}"
    if key.startswith("window_w"):
        return f"Window attention, {key[8:]} keys (1-D, dense mask)"
    k, backend = key[len("deltaconv_k"):].split("_")
    return f"ΔConv{'*' if backend == 'triton' else ''} K={k}"


def _ratio_cell(row: dict, key: str) -> float:
    """SDPA ms / method ms of one stored row; NaN (missing) where either was not measured, so a skipped SDPA
    never prints as a ratio of 1."""
    nan = float("nan")
    if key == "sdpa":
        return 1.0 if row.get("sdpa_ms") else nan
    v = row.get(f"{key}_vs_sdpa")
    return nan if v is None or not row.get("sdpa_ms") else v


def mixer_frame(result: dict, mode: str = "fwd", model: str | None = None, ratios: bool = False):
    """The stored result as a Table-2-like pandas frame: one row per method, one column per size (ms, or the
    ratio SDPA ms / method ms with ``ratios``) for one ``mode`` and ``model`` (default: the first one)."""
    import pandas as pd

    rows = [r for r in result["rows"] if r["mode"] == mode and (model is None or r["model"] == model)]
    if not rows:
        return pd.DataFrame()
    model = rows[0]["model"]
    rows = [r for r in rows if r["model"] == model]
    keys = [k[:-3] for k in rows[0] if k.endswith("_ms")]
    data = {}
    for r in rows:
        col = f"{r['size'].replace('x', '×')}"
        data[col] = {_method_label(k): _ratio_cell(r, k) if ratios else r.get(f"{k}_ms") for k in keys}
    frame = pd.DataFrame(data)
    frame.index.name = f"{model} {mode} ({'SDPA ms / method ms' if ratios else 'ms'})"
    return frame


def mixers_markdown(result: dict) -> str:
    """Markdown: the machine and command, then per model and mode a table of ms (× = SDPA ms / method ms)."""
    m = result["meta"]
    load = f", 1-min load average {m['load_avg_1min']:.1f}" if m.get("load_avg_1min") is not None else ""
    lines = [f"Token-mixer latency per module call, batch {m['batch']}, {m['dtype']}, on {m['device']} "
             f"(torch {m['torch']}, triton {m.get('triton')}, natten {m.get('natten')}, diffusers {m['diffusers']}, "
             f"{m['date']}{load}).", ""]
    if m.get("command"):
        lines += [f"Command: `{m['command']}`", ""]
    lines += [f"NA K = {m.get('na_kernel')} ({m.get('na_backend')}); window attention {m.get('window')} keys "
              f"({m.get('window_mode')}); ΔConv K = {', '.join(map(str, m.get('kernels', [])))}. "
              "Each cell: ms (SDPA ms / method ms, > 1 = faster than self-attention).", ""]
    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    for model in models:
        for mode in ("fwd", "fwdbwd"):
            rows = [r for r in result["rows"] if r["model"] == model and r["mode"] == mode]
            if not rows:
                continue
            keys = [k[:-3] for k in rows[0] if k.endswith("_ms")]
            spec = MODELS[model]
            lines += [f"### {model} (C = {spec['channels']}, {spec['px_per_token']} px per token), "
                      f"{'forward' if mode == 'fwd' else 'forward + backward'}", "",
                      "| method | " + " | ".join(f"{r['size'].replace('x', '×')} ({r['grid'].replace('x', '×')})"
                                                for r in rows) + " |",
                      "|---|" + "---|" * len(rows)]
            for k in keys:
                cells = []
                for r in rows:
                    ms = r.get(f"{k}_ms")
                    ratio = r.get(f"{k}_vs_sdpa")
                    cells.append("–" if ms is None else (f"{ms:.2f}" + (f" ({ratio:.2f}×)" if ratio else "")))
                lines.append(f"| {_method_label(k)} | " + " | ".join(cells) + " |")
            lines.append("")
    if result.get("notes"):
        lines += [f"- {n}" for n in result["notes"]] + [""]
    t2 = paper_table("table2_latency_ms")
    lines += ["Paper, Table 2 (one RTX 4090, fp16, per token-mixer call; sizes "
              + ", ".join(f"{h}×{w}" for h, w in t2["sizes"]) + "):", "",
              "| method | " + " | ".join(str(r) for r in t2["resolutions"]) + " |", "|---|" + "---|" * len(t2["resolutions"])]
    for ours, key in PAPER_TABLE2_KEYS.items():
        lines.append(f"| {_method_label(ours) if ours != 'window' else 'DiTFastAttn'} | "
                     + " | ".join(f"{v:.2f}" for v in t2[key]) + " |")
    return "\n".join(lines) + "\n"


def output_check_frame(result: dict):
    """The stored Triton-vs-torch check of a block benchmark as a frame indexed by (model, px): the relative
    differences of output, input gradient, filter gradient, and of the stages where the run recorded them."""
    import pandas as pd

    rows = [{"model": r["model"], "px": int(r["px"]),
             **{k: r[k] for k in ("relerr_out", "relerr_grad_x", "relerr_grad_w0", "relerr_stages", "stage_share")
                if k in r}} for r in result["rows"] if "relerr_out" in r]
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).set_index(["model", "px"])
