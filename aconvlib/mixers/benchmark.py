"""Module-level latency and peak memory: self-attention (diffusers SDPA) vs ΔConvBlock (torch, Triton).

Shapes: SD1.5's top self-attention layer (C = 320, 8 heads × 40, grid = px/8, K = 9) and PixArt-Σ's
layers (C = 1152, 16 heads × 72, grid = px/16, K = 13), at 512, 1024, 2048 and 4096 px, batch 2
(classifier-free guidance), forward (inference, no grad) and forward+backward (input and parameter
gradients). Self-attention is diffusers' ``Attention`` module with its default ``AttnProcessor2_0``
(``F.scaled_dot_product_attention``). Peak memory = the allocator's peak during one call minus
what was allocated before it (inputs and weights), CUDA only.

    python benchmarks/bench_blocks.py                      # CUDA if available, else a small CPU set
    python benchmarks/bench_blocks.py --device cpu --sizes 512 1024
    aconv bench-blocks --out benchmarks/results            # the same (this module is the benchmark)

Writes ``bench_<device>.json`` and ``bench_<device>.md`` to ``--out``. With ``--check`` (CUDA) it
also records the Triton-vs-torch difference of the block's output and input gradient at each shape.
Paper (RTX 4090, fp16, per module): 1024 px self-attention 5.91 ms vs ΔConv+Triton 1.71 ms (K = 13);
4K 1077.98 ms vs 26.32 ms.

**Every token mixer of the paper's Table 2** (:func:`bench_mixers`, ``aconv bench-mixers``,
``benchmarks/bench_mixers.py``): on the same module shapes, in one run, SDPA self-attention, neighborhood
attention (NA, K = 13: NATTEN's ``na2d`` on CUDA when installed, else the dense masked reference of
:mod:`~aconvlib.mixers.neighborhood`), DiTFastAttn-style window attention (:mod:`~aconvlib.mixers.window_attention`,
1-D band of ``window`` keys, default K_NA² = 169 keys per query like NA; implemented as *dense* SDPA with a
boolean mask, so its time is that of masked dense attention, not of a sliding-window kernel), LinFusion-style
linear attention (:mod:`~aconvlib.mixers.linear_attention`, hidden ratio 1) and the ΔConvBlock at K = 13 and
25, plain PyTorch and Triton. Forward and forward+backward; each row holds every method's ms and its ratio
``SDPA ms / method ms`` (> 1: faster than self-attention) from the same run. Sizes are "H×W" frames (default
on CUDA: the paper's 512², 1024², 1440×2560, 2160×3840; on CPU: 256² and 512²). Writes
``bench_mixers_<device>.json`` / ``.md`` with the machine, versions, load average and command line.
"""
from __future__ import annotations

import argparse
import re
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..models import paper_table
from . import kernels
from .deltaconv import DeltaConvBlock

MODELS = {
    "sd15-top": dict(channels=320, heads=8, head_dim=40, qkv_bias=False, px_per_token=8, kernel_size=9),
    "pixart-sigma": dict(channels=1152, heads=16, head_dim=72, qkv_bias=True, px_per_token=16, kernel_size=13),
}
PAPER_MS = {("pixart-sigma", 512): (0.78, 0.71), ("pixart-sigma", 1024): (5.91, 1.71),
            ("pixart-sigma", 2048): (67.49, 6.69), ("pixart-sigma", 4096): (1077.98, 26.32)}
CPU_FLOP_LIMIT = 2.5e11  # skip shapes whose attention costs more than this on CPU (minutes per call)


def make_attention(spec, dtype, device):
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    attn = Attention(query_dim=spec["channels"], heads=spec["heads"], dim_head=spec["head_dim"],
                     bias=spec["qkv_bias"], out_bias=True, processor=AttnProcessor2_0())
    return attn.to(device=device, dtype=dtype)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device, min_time=0.25, max_reps=20, warmup=2):
    """Median ms of ``fn()`` and its peak extra memory (MiB, CUDA) over adaptive repetitions."""
    for _ in range(warmup):
        fn()
    _sync(device)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    total = 0.0
    while len(times) < 3 or (total < min_time and len(times) < max_reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            t = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            fn()
            t = (time.perf_counter() - t0) * 1e3
        times.append(t)
        total += t / 1e3
        if total > 20 * min_time and len(times) >= 1:  # very slow call: one is enough
            break
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    times.sort()
    return times[len(times) // 2], peak


def run_case(impl, module, x, grid, mode, device):
    if impl == "sdpa":
        call = lambda inp: module(inp)  # noqa: E731
    else:
        call = lambda inp: module(inp, grid)  # noqa: E731
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                call(x)
    else:
        xg = x.detach().requires_grad_(True)
        gy = torch.randn_like(x)

        def fn():
            xg.grad = None
            module.zero_grad(set_to_none=True)
            call(xg).backward(gy)
    return time_call(fn, device)


def check_triton(block, x, grid):
    """Max |triton − torch| / max |torch| (same weights) of: the block output (``relerr_out``), its input
    gradient (``relerr_grad_x``), the stage-0 filter gradient (``relerr_grad_w0``) and the pyramid stages'
    output before ``out_proj`` (``relerr_stages``: the only part the Triton kernels compute); and
    ``stage_share``, max |out_proj(stages) − bias| / max |output| of the torch run.

    Why ``relerr_stages``: the output also holds the out_proj bias and the pool branch, which both backends
    compute with the same PyTorch ops. With random weights the stages' contribution is a small part of the
    output (``stage_share``; :func:`triton_output_share`), so in fp16 a kernel difference of about one ulp of
    the stages is far below half an ulp of the output and rounds away: ``relerr_out`` can be exactly 0.0 while
    the kernels differ. ``relerr_stages`` compares what the kernels produce.
    """
    res = {}
    outs = {}
    gy = torch.randn_like(x)  # unit-scale output gradient (a mean-square loss would underflow in fp16)
    for be in ("torch", "triton"):
        block.backend = be
        block.zero_grad(set_to_none=True)
        xg = x.detach().requires_grad_(True)
        y = block(xg, grid)
        y.backward(gy)
        with torch.no_grad():
            st = torch.cat(block.forward_stages(x, grid), dim=-1)
            local = block.out_proj(st.view(x.shape[0], x.shape[1], -1))
            if block.out_proj.bias is not None:
                local = local - block.out_proj.bias
        outs[be] = (y.detach().float(), xg.grad.float(), block.stages[0].weight.grad.float().clone(), st.float())
        if be == "torch":
            res["stage_share"] = float(local.float().abs().max() / y.detach().float().abs().max().clamp_min(1e-12))
    block.zero_grad(set_to_none=True)
    block.backend = None
    for i, name in enumerate(("out", "grad_x", "grad_w0", "stages")):
        a, b = outs["triton"][i], outs["torch"][i]
        res[f"relerr_{name}"] = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
    return res


def triton_output_share(models=None, grid_side: int = 16, batch: int = 2, seed: int = 0) -> dict[str, float]:
    """For the blocks :func:`main` benchmarks (rebuilt with its seed sequence on the CPU: ``torch.manual_seed(0)``,
    then per model the SDPA ``Attention`` and the ``DeltaConvBlock``, so the weights are the stored run's), the
    share of the output's largest magnitude that comes from the pyramid stages (the Triton-computed part):
    max |out_proj(stages) − bias| / max |output| on random tokens ``N(0, 1)`` on a ``grid_side``² grid, float32.
    The rest is the out_proj bias and the pool branch, computed by PyTorch in both backends."""
    models = list(models or MODELS)
    torch.manual_seed(seed)
    blocks = {}
    for model in MODELS:                       # main() builds them in MODELS order
        spec = MODELS[model]
        make_attention(spec, torch.float32, "cpu")
        blocks[model] = DeltaConvBlock(spec["channels"], spec["kernel_size"])
    out = {}
    g = torch.Generator().manual_seed(seed)
    for model in models:
        blk = blocks[model]
        x = torch.randn(batch, grid_side * grid_side, blk.dim, generator=g)
        with torch.no_grad(), kernels.use_backend("torch"):
            y = blk(x, (grid_side, grid_side))
            st = torch.cat(blk.forward_stages(x, (grid_side, grid_side)), dim=-1).view(batch, grid_side * grid_side, -1)
            local = blk.out_proj(st) - blk.out_proj.bias
        out[model] = float(local.abs().max() / y.abs().max())
    return out


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


def main(argv=None, prog=None):
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: float16 on CUDA, float32 on CPU")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--sizes", type=_square_px_arg, nargs="+", default=None,
                    help="px; default 512 1024 2048 4096 (CPU: 512 1024)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    ap.add_argument("--impls", nargs="+", default=["sdpa", "torch", "triton"], choices=["sdpa", "torch", "triton"])
    ap.add_argument("--check", action="store_true", help="also record Triton-vs-torch errors (CUDA)")
    ap.add_argument("--out", default=str(Path("benchmarks") / "results"), help="default: benchmarks/results")
    ap.add_argument("--tag", default=None, help="file name suffix (default: the device type)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    sizes = args.sizes or ([512, 1024, 2048, 4096] if device.type == "cuda" else [512, 1024])
    for model in args.models:   # before any work: a size below one token would time an empty grid
        f = MODELS[model]["px_per_token"]
        small = [str(px) for px in sizes if px < f]
        if small:
            ap.error(f"--sizes: {', '.join(small)} px is smaller than one token of {model} ({f} px per token)")
    if args.batch < 1:
        ap.error(f"--batch: expected a positive int, got {args.batch}")
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    meta = {"device": dev_name, "load_avg_1min": load, "device_type": device.type, "dtype": str(dtype).replace("torch.", ""),
            "batch": args.batch, "torch": torch.__version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    import diffusers

    meta["diffusers"] = diffusers.__version__
    print(f"# bench_blocks on {dev_name}, {meta['dtype']}, batch {args.batch}", flush=True)
    rows, notes = [], []
    torch.manual_seed(0)
    for model in args.models:
        spec = MODELS[model]
        c = spec["channels"]
        attn = make_attention(spec, dtype, device) if "sdpa" in args.impls else None
        block = DeltaConvBlock(c, spec["kernel_size"]).to(device=device, dtype=dtype)
        for px in sizes:
            g = px // spec["px_per_token"]
            grid, n = (g, g), g * g
            x = torch.randn(args.batch, n, c, device=device, dtype=dtype)
            attn_cost = 4 * args.batch * n * n * c
            for mode in args.modes:
                row = {"model": model, "px": px, "grid": f"{g}x{g}", "tokens": n, "channels": c,
                       "kernel_size": spec["kernel_size"], "mode": mode}
                for impl in args.impls:
                    key = impl
                    if impl == "triton" and device.type != "cuda" and not kernels.interpreter_mode():
                        row[f"{key}_ms"] = None
                        note = "Triton: skipped on CPU (kernels need CUDA; interpreter mode is for tests only)"
                        notes.append(note) if note not in notes else None
                        continue
                    if impl == "sdpa" and device.type == "cpu" and attn_cost * (3 if mode == "fwdbwd" else 1) > CPU_FLOP_LIMIT:
                        row[f"{key}_ms"] = None
                        notes.append(f"SDPA {model} {px}px {mode}: skipped on CPU (≈{attn_cost / 1e9:.0f} GFLOPs "
                                     "per call in the N² terms alone)")
                        continue
                    try:
                        if impl == "sdpa":
                            ms, mem = run_case(impl, attn, x, grid, mode, device)
                        else:
                            block.backend = impl
                            ms, mem = run_case(impl, block, x, grid, mode, device)
                            block.backend = None
                    except torch.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        ms, mem = None, None
                        notes.append(f"{impl} {model} {px}px {mode}: out of memory")
                    row[f"{key}_ms"], row[f"{key}_peak_mib"] = ms, mem
                for impl in ("torch", "triton"):
                    if row.get("sdpa_ms") and row.get(f"{impl}_ms"):
                        row[f"speedup_{impl}"] = row["sdpa_ms"] / row[f"{impl}_ms"]
                triton_ok = device.type == "cuda" or kernels.interpreter_mode()
                if args.check and mode == "fwdbwd" and triton_ok and "triton" in args.impls:
                    row.update(check_triton(block, x, grid))
                if (model, px) in PAPER_MS and mode == "fwd":
                    row["paper_sdpa_ms"], row["paper_triton_ms"] = PAPER_MS[(model, px)]
                rows.append(row)
                save(args, device, {"meta": meta, "rows": rows, "notes": notes})  # partial results survive a crash
                print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
            del x
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result = {"meta": meta, "rows": rows, "notes": notes}
    path = save(args, device, result)
    print(to_markdown(result))
    print(f"wrote {path} and .md")
    return result


def save(args, device, result) -> Path:
    """Write ``bench_<tag>.json`` and ``.md`` under ``args.out``; return the JSON path."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or device.type
    (out / f"bench_{tag}.json").write_text(json.dumps(result, indent=1))
    (out / f"bench_{tag}.md").write_text(to_markdown(result))
    return out / f"bench_{tag}.json"


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



# ----------------------------------------------------------------------------------------------
# every token mixer of the paper's Table 2, in one run
# ----------------------------------------------------------------------------------------------
MIXER_IMPLS = ("sdpa", "na", "window", "linear", "deltaconv-torch", "deltaconv-triton")
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


def parse_size(size) -> tuple[int, int]:
    """``512`` or ``"512"`` -> (512, 512); ``"1440x2560"`` -> (1440, 2560) (H×W px)."""
    if isinstance(size, (tuple, list)):
        h, w = size
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(?:[x×]\s*(\d+))?\s*", str(size).lower())
        if m is None:
            raise ValueError(f"a size is px (512) or H×W px (1440x2560), got {size!r}")
        h, w = m.group(1), m.group(2) or m.group(1)
    h, w = int(h), int(w)
    if h < 1 or w < 1:
        raise ValueError(f"sizes must be positive, got {size!r}")
    return h, w


def _square_px_arg(text: str) -> int:
    """argparse type of ``bench-blocks --sizes``: one positive px (square frames)."""
    h, w = _size_arg(text)
    if h != w:
        raise argparse.ArgumentTypeError(f"bench-blocks times square frames: give one px, got {text!r}")
    return h


def _size_arg(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def mixer_keys(impls, kernels_k, na_kernel: int, window: int) -> list[tuple[str, str, int | None]]:
    """``(column key, impl, K or window)`` of every method the run times, in table order."""
    keys = []
    for impl in impls:
        if impl == "sdpa" or impl == "linear":
            keys.append((impl, impl, None))
        elif impl == "na":
            keys.append((f"na_k{na_kernel}", impl, na_kernel))
        elif impl == "window":
            keys.append((f"window_w{window}", impl, window))
        else:
            backend = impl.split("-")[1]
            keys += [(f"deltaconv_k{k}_{backend}", impl, k) for k in kernels_k]
    return keys


def build_mixers(spec: dict, grid: tuple[int, int], impls, kernels_k, na_kernel: int, window: int, dtype, device,
                 na_backend: str) -> dict[str, tuple[object, object]]:
    """``{key: (module, call)}`` for one shape: ``call(module, x)`` runs the mixer on tokens ``x``.

    The attention-based mixers share one set of q/k/v/out weights (a random diffusers ``Attention``)."""
    from .linear_attention import GeneralizedLinearAttention
    from .neighborhood import NeighborhoodAttnProcessor
    from .window_attention import WindowAttention

    attn = make_attention(spec, dtype, device)
    out = {}
    for key, impl, k in mixer_keys(impls, kernels_k, na_kernel, window):
        if impl == "sdpa":
            out[key] = (attn, lambda m, x: m(x))
        elif impl == "na":
            na = make_attention(spec, dtype, device)
            na.load_state_dict(attn.state_dict())
            na.set_processor(NeighborhoodAttnProcessor(k, na_backend, grid=grid))
            out[key] = (na, lambda m, x: m(x))
        elif impl == "window":
            out[key] = (WindowAttention.from_attention(attn, k, "1d"), lambda m, x: m(x, grid=grid))
        elif impl == "linear":
            out[key] = (GeneralizedLinearAttention.from_attention(attn).to(device=device, dtype=dtype),
                        lambda m, x: m(x, grid=grid))
        else:
            block = DeltaConvBlock(spec["channels"], k).to(device=device, dtype=dtype)
            block.backend = impl.split("-")[1]
            out[key] = (block, lambda m, x: m(x, grid))
    return out


def _time_mixer(module, call, x, mode, device):
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                call(module, x)
    else:
        xg = x.detach().requires_grad_(True)
        gy = torch.randn_like(x)

        def fn():
            xg.grad = None
            module.zero_grad(set_to_none=True)
            call(module, xg).backward(gy)
    return time_call(fn, device)


def bench_mixers(models=("pixart-sigma", "sd15-top"), sizes=None, modes=("fwd", "fwdbwd"), impls=MIXER_IMPLS,
                 kernels_k=(13, 25), na_kernel: int = 13, window: int | None = None, batch: int = 2, device=None,
                 dtype=None, out=None, tag=None, command: str | None = None, cpu_flop_limit: float = CPU_FLOP_LIMIT,
                 quiet: bool = False) -> dict:
    """Time every token mixer of the paper's Table 2 on each model shape and size (module docstring).

    Returns ``{"meta", "rows", "notes"}`` (one row per model, size and mode: ``<key>_ms``, ``<key>_peak_mib``,
    ``<key>_vs_sdpa`` = SDPA ms / that ms); with ``out`` also writes ``bench_mixers_<tag>.json`` / ``.md``
    after every row (partial results survive a crash).
    """
    from .neighborhood import natten_available

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype or ("float16" if device.type == "cuda" else "float32"))
    window = na_kernel ** 2 if window is None else int(window)
    if sizes is None:
        sizes = [tuple(s) for s in paper_table("table2_latency_ms")["sizes"]] if device.type == "cuda" else [(256, 256), (512, 512)]
    sizes = [parse_size(s) for s in sizes]
    for model in models:
        f = MODELS[model]["px_per_token"]
        small = [f"{h}x{w}" for h, w in sizes if h < f or w < f]
        if small:
            raise ValueError(f"{', '.join(small)} px is smaller than one token of {model} ({f} px per token)")
    bad = [i for i in impls if i not in MIXER_IMPLS]
    if bad:
        raise ValueError(f"unknown mixer implementations {bad}; choose from {MIXER_IMPLS}")
    na_backend = "natten" if device.type == "cuda" and natten_available() else "torch"
    meta = _machine_meta(device, dtype, batch)
    meta.update(command=command, na_kernel=na_kernel, na_backend=na_backend, window=window, window_mode="1d",
                kernels=list(kernels_k), linear_hidden_ratio=1.0)
    if not quiet:
        print(f"# bench_mixers on {meta['device']}, {meta['dtype']}, batch {batch}", flush=True)
    rows, notes = [], []

    def note(text):
        if text not in notes:
            notes.append(text)

    result = {"meta": meta, "rows": rows, "notes": notes}
    torch.manual_seed(0)
    for model in models:
        spec = MODELS[model]
        c, f = spec["channels"], spec["px_per_token"]
        for (hpx, wpx) in sizes:
            grid = (hpx // f, wpx // f)
            n = grid[0] * grid[1]
            attn_cost = 4 * batch * n * n * c
            mixers = build_mixers(spec, grid, impls, kernels_k, na_kernel, window, dtype, device, na_backend)
            x = torch.randn(batch, n, c, device=device, dtype=dtype)
            for mode in modes:
                row = {"model": model, "size": f"{hpx}x{wpx}", "px": max(hpx, wpx), "grid": f"{grid[0]}x{grid[1]}",
                       "tokens": n, "channels": c, "mode": mode}
                for key, (module, call) in mixers.items():
                    impl = key if key in ("sdpa", "linear") else ("na" if key.startswith("na_") else
                                                                 "window" if key.startswith("window_") else key)
                    dense = key == "sdpa" or key.startswith(("na_", "window_"))
                    if key.endswith("_triton") and device.type != "cuda" and not kernels.interpreter_mode():
                        row[f"{key}_ms"] = None
                        note("ΔConv Triton: skipped on CPU (the kernels need CUDA)")
                        continue
                    if dense and device.type == "cpu" and attn_cost * (3 if mode == "fwdbwd" else 1) > cpu_flop_limit:
                        row[f"{key}_ms"] = None
                        note(f"{key} {model} {hpx}x{wpx} {mode}: skipped on CPU (≈{attn_cost / 1e9:.0f} GFLOPs per call "
                             "in the N² terms alone)")
                        continue
                    if key.startswith("na_") and na_backend == "natten" and mode == "fwdbwd" and device.type != "cuda":
                        row[f"{key}_ms"] = None
                        continue
                    try:
                        ms, mem = _time_mixer(module, call, x, mode, device)
                    except torch.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        ms, mem = None, None
                        note(f"{key} {model} {hpx}x{wpx} {mode}: out of memory")
                    row[f"{key}_ms"], row[f"{key}_peak_mib"] = ms, mem
                base = row.get("sdpa_ms")
                for key in mixers:
                    if key != "sdpa" and base and row.get(f"{key}_ms"):
                        row[f"{key}_vs_sdpa"] = base / row[f"{key}_ms"]
                rows.append(row)
                if out is not None:
                    save_mixers(result, out, tag or device.type)
                if not quiet:
                    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                                   if not k.endswith("peak_mib")), flush=True)
            del x, mixers
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if na_backend == "torch":
        note(f"NA: dense masked reference (SDPA with a K×K-window mask, O(N²)); "
             f"{'NATTEN is not installed' if not natten_available() else 'NATTEN runs forward-only on CPU'}")
    note(f"Window attention: dense SDPA with a 1-D band mask of {window} keys (its time does not depend on the window; "
         "DiTFastAttn uses a sliding-window FlashAttention kernel)")
    if out is not None:
        save_mixers(result, out, tag or device.type)
    return result


def _machine_meta(device, dtype, batch) -> dict:
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    import diffusers

    meta = {"device": dev_name, "device_type": device.type, "dtype": str(dtype).replace("torch.", ""), "batch": batch,
            "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    try:
        import natten

        meta["natten"] = getattr(natten, "__version__", "installed")
    except ImportError:
        meta["natten"] = None
    return meta


def save_mixers(result: dict, out, tag: str) -> Path:
    """Write ``bench_mixers_<tag>.json`` and ``.md`` under ``out``; return the JSON path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_mixers_{tag}.json").write_text(json.dumps(result, indent=1))
    (out / f"bench_mixers_{tag}.md").write_text(mixers_markdown(result))
    return out / f"bench_mixers_{tag}.json"


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


def main_mixers(argv=None, prog: str = "python benchmarks/bench_mixers.py"):
    """``aconv bench-mixers`` / ``python benchmarks/bench_mixers.py``: see :func:`bench_mixers`."""
    ap = argparse.ArgumentParser(prog=prog, description="latency of every token mixer of the paper's Table 2 (one run, ratios to SDPA)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: float16 on CUDA, float32 on CPU")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--sizes", nargs="+", default=None, type=_size_arg,
                    help="px or HxW frames; default: the paper's 512² 1024² 1440x2560 2160x3840 (CPU: 256 512)")
    ap.add_argument("--models", nargs="+", default=["pixart-sigma", "sd15-top"], choices=list(MODELS))
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    ap.add_argument("--impls", nargs="+", default=list(MIXER_IMPLS), choices=list(MIXER_IMPLS))
    ap.add_argument("--kernels", type=int, nargs="+", default=[13, 25], help="ΔConv K (default 13 25)")
    ap.add_argument("--na-kernel", type=int, default=13)
    ap.add_argument("--window", type=int, default=None, help="window attention keys per query (default na_kernel²)")
    ap.add_argument("--out", default=str(Path("benchmarks") / "results"))
    ap.add_argument("--tag", default=None, help="file name suffix (default: the device type)")
    args = ap.parse_args(argv)
    cmd = f"{prog} " + " ".join(sys.argv[1:] if argv is None else list(argv))
    result = bench_mixers(args.models, args.sizes, args.modes, args.impls, args.kernels, args.na_kernel, args.window,
                          args.batch, args.device, args.dtype, args.out, args.tag, command=cmd.strip())
    print(mixers_markdown(result))
    print(f"wrote {Path(args.out) / f'bench_mixers_{args.tag or torch.device(args.device).type}.json'} and .md")
    return result


if __name__ == "__main__":
    main()
