"""The latency benchmarks of Table 2: one harness, two programs (``aconv bench-mixers``, ``aconv bench-blocks``).

**The harness** (:func:`bench_mixers`) times one module call (batch 2: classifier-free guidance) of every token
mixer of the paper's Table 2 on the paper's module shapes (:data:`MODELS`, read from the shipped configs: SD1.5's
top self-attention layer and PixArt-Σ's layers, with the paper's K), forward (no grad) and forward + backward:
SDPA self-attention (diffusers ``Attention``, ``AttnProcessor2_0``), neighborhood attention (NA: NATTEN's
``na2d`` on CUDA when installed, else the dense masked reference of :mod:`~aconvlib.mixers.neighborhood`),
DiTFastAttn-style window attention (1-D band of ``window`` keys, default K_NA² = 169; dense SDPA with a mask, so
its time is that of masked dense attention), LinFusion-style linear attention (hidden ratio 1) and the ΔConvBlock
at K = 13 and 25, plain PyTorch and Triton. Each row holds every method's ms, peak extra memory (CUDA) and
``SDPA ms / method ms`` from the same run. Sizes are "H×W" frames (default on CUDA: the paper's 512², 1024²,
1440×2560, 2160×3840; on CPU: 256² and 512²). Writes ``bench_mixers_<tag>.json`` / ``.md`` with the machine,
versions, load average and command line::

    aconv bench-mixers --device cpu --sizes 256 512

**The blocks benchmark** (:func:`bench_blocks`, ``aconv bench-blocks``) is the same harness restricted to SDPA
and the ΔConvBlock at each model's own K (torch, Triton), on SD1.5's top layer, PixArt-Σ's and FLUX.1's
double-stream layer (``--models flux``: C = 3072, SDPA over the image tokens only), on square frames (default 512,
1024, 2048, 4096 px on CUDA; 512 and 1024 on CPU), with ``--check`` adding the Triton-vs-torch differences
(:func:`~aconvlib.mixers.timing.check_triton`); its rows keep the columns of the stored ``bench_<device>.json``
(``sdpa_ms``, ``torch_ms``, ``triton_ms``, ``speedup_*``, the paper's ms). Paper (RTX 4090, fp16, per module):
1024 px self-attention 5.91 ms vs ΔConv+Triton 1.71 ms (K = 13); 4K 1077.98 ms vs 26.32 ms.
Tables and Markdown: :mod:`aconvlib.book.benchmark_tables`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..mixers import kernels
from ..mixers.deltaconv import DeltaConvBlock
from ..mixers.timing import (MIXER_IMPLS, build_mixers, check_triton, make_attention, parse_size, time_module)
from ..models import paper_table
from ..utils import parse_dtype
from .module_shapes import BENCH_MODELS, MODELS, STORED_BENCH_MODELS, module_shape

__all__ = ["CPU_FLOP_LIMIT", "MIXER_IMPLS", "MODELS", "PAPER_MS", "bench_blocks", "bench_mixers", "machine_meta",
           "main", "main_mixers", "module_shape", "triton_output_share"]

PAPER_MS = {("pixart-sigma", 512): (0.78, 0.71), ("pixart-sigma", 1024): (5.91, 1.71),
            ("pixart-sigma", 2048): (67.49, 6.69), ("pixart-sigma", 4096): (1077.98, 26.32)}
CPU_FLOP_LIMIT = 2.5e11  # skip shapes whose attention costs more than this on CPU (minutes per call)


def machine_meta(device, dtype, batch) -> dict:
    """The machine, versions, load average and date of a benchmark run."""
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    import diffusers

    meta = {"device": dev_name, "device_type": device.type, "dtype": str(dtype).replace("torch.", ""), "batch": batch,
            "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for name in ("triton", "natten"):
        try:
            meta[name] = getattr(__import__(name), "__version__", "installed")
        except ImportError:
            meta[name] = None
    return meta


def _check_sizes(models, sizes) -> None:
    for model in models:   # before any work: a size below one token would time an empty grid
        f = MODELS[model]["px_per_token"]
        small = [f"{h}x{w}" for h, w in sizes if h < f or w < f]
        if small:
            raise ValueError(f"{', '.join(small)} px is smaller than one token of {model} ({f} px per token)")


def bench_mixers(models=("pixart-sigma", "sd15-top"), sizes=None, modes=("fwd", "fwdbwd"), impls=MIXER_IMPLS,
                 kernels_k=(13, 25), na_kernel: int = 13, window: int | None = None, batch: int = 2, device=None,
                 dtype=None, out=None, tag=None, command: str | None = None, cpu_flop_limit: float = CPU_FLOP_LIMIT,
                 quiet: bool = False, check: bool = False, on_row=None) -> dict:
    """Time every token mixer of the paper's Table 2 on each model shape and size (module docstring).

    Returns ``{"meta", "rows", "notes"}`` (one row per model, size and mode: ``<key>_ms``, ``<key>_peak_mib``,
    ``<key>_vs_sdpa`` = SDPA ms / that ms); with ``out`` also writes ``bench_mixers_<tag>.json`` / ``.md``
    after every row (partial results survive a crash). ``kernels_k``: ΔConv K, or ``{model: Ks}``. ``check``:
    Triton-vs-torch differences of the first ΔConv block in the forward+backward rows. ``on_row(result)``:
    called after every row.
    """
    from ..mixers.neighborhood import natten_available

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = parse_dtype(dtype, default="float16" if device.type == "cuda" else "float32")
    window = na_kernel ** 2 if window is None else int(window)
    if sizes is None:
        sizes = [tuple(s) for s in paper_table("table2_latency_ms")["sizes"]] if device.type == "cuda" else [(256, 256), (512, 512)]
    sizes = [parse_size(s) for s in sizes]
    _check_sizes(models, sizes)
    bad = [i for i in impls if i not in MIXER_IMPLS]
    if bad:
        raise ValueError(f"unknown mixer implementations {bad}; choose from {MIXER_IMPLS}")
    per_model_k = kernels_k if isinstance(kernels_k, Mapping) else {m: kernels_k for m in models}
    na_backend = "natten" if device.type == "cuda" and natten_available() else "torch"
    meta = machine_meta(device, dtype, batch)
    meta.update(command=command, na_kernel=na_kernel, na_backend=na_backend, window=window, window_mode="1d",
                kernels=(list(kernels_k) if not isinstance(kernels_k, Mapping)
                         else sorted({int(k) for ks in kernels_k.values() for k in ks})), linear_hidden_ratio=1.0)
    if not quiet:
        print(f"# bench_mixers on {meta['device']}, {meta['dtype']}, batch {batch}", flush=True)
    rows, notes = [], []

    def note(text):
        if text not in notes:
            notes.append(text)

    result = {"meta": meta, "rows": rows, "notes": notes}
    triton_ok = device.type == "cuda" or kernels.interpreter_mode()
    torch.manual_seed(0)
    for model in models:
        spec = MODELS[model]
        c, f = spec["channels"], spec["px_per_token"]
        for (hpx, wpx) in sizes:
            grid = (hpx // f, wpx // f)
            n = grid[0] * grid[1]
            attn_cost = 4 * batch * n * n * c
            mixers = build_mixers(spec, grid, impls, per_model_k[model], na_kernel, window, dtype, device, na_backend)
            x = torch.randn(batch, n, c, device=device, dtype=dtype)
            for mode in modes:
                row = {"model": model, "size": f"{hpx}x{wpx}", "px": max(hpx, wpx), "grid": f"{grid[0]}x{grid[1]}",
                       "tokens": n, "channels": c, "mode": mode}
                for key, (module, call) in mixers.items():
                    dense = key == "sdpa" or key.startswith(("na_", "window_"))
                    if key.endswith("_triton") and not triton_ok:
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
                        ms, mem = time_module(module, call, x, mode, device)
                    except torch.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        ms, mem = None, None
                        note(f"{key} {model} {hpx}x{wpx} {mode}: out of memory")
                    row[f"{key}_ms"], row[f"{key}_peak_mib"] = ms, mem
                base = row.get("sdpa_ms")
                for key in mixers:
                    if key != "sdpa" and base and row.get(f"{key}_ms"):
                        row[f"{key}_vs_sdpa"] = base / row[f"{key}_ms"]
                blocks = [m for k, (m, _) in mixers.items() if k.startswith("deltaconv_")]
                if check and mode == "fwdbwd" and triton_ok and blocks:
                    backend = blocks[0].backend
                    row.update(check_triton(blocks[0], x, grid))
                    blocks[0].backend = backend
                rows.append(row)
                if out is not None:
                    _save_mixers(result, out, tag or device.type)
                if on_row is not None:
                    on_row(result)
                if not quiet:
                    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                                   if not k.endswith("peak_mib")), flush=True)
            del x, mixers
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if "na" in impls and na_backend == "torch":
        note(f"NA: dense masked reference (SDPA with a K×K-window mask, O(N²)); "
             f"{'NATTEN is not installed' if not natten_available() else 'NATTEN runs forward-only on CPU'}")
    if "window" in impls:
        note(f"Window attention: dense SDPA with a 1-D band mask of {window} keys (its time does not depend on the "
             "window; DiTFastAttn uses a sliding-window FlashAttention kernel)")
    if out is not None:
        _save_mixers(result, out, tag or device.type)
    return result


def _save_mixers(result: dict, out, tag: str) -> Path:
    from .benchmark_tables import mixers_markdown

    return _write(result, Path(out) / f"bench_mixers_{tag}.json", mixers_markdown)


def _write(result: dict, path: Path, markdown) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    path.with_suffix(".md").write_text(markdown(result))
    return path


# ----------------------------------------------------------------------------------------------
# the blocks benchmark: SDPA vs the ΔConvBlock at the model's own K
# ----------------------------------------------------------------------------------------------
_BLOCK_IMPLS = {"sdpa": "sdpa", "torch": "deltaconv-torch", "triton": "deltaconv-triton"}
_CHECK_KEYS = ("relerr_out", "relerr_grad_x", "relerr_grad_w0", "relerr_stages", "stage_share")


def _block_row(row: dict, k: int) -> dict:
    """A harness row in the columns of the stored blocks benchmark."""
    out = {"model": row["model"], "px": row["px"], "grid": row["grid"], "tokens": row["tokens"],
           "channels": row["channels"], "kernel_size": k, "mode": row["mode"]}
    for name, impl in _BLOCK_IMPLS.items():
        key = "sdpa" if impl == "sdpa" else f"deltaconv_k{k}_{impl.split('-')[1]}"
        for part in ("ms", "peak_mib"):
            if f"{key}_{part}" in row:
                out[f"{name}_{part}"] = row[f"{key}_{part}"]
    for impl in ("torch", "triton"):
        if out.get("sdpa_ms") and out.get(f"{impl}_ms"):
            out[f"speedup_{impl}"] = out["sdpa_ms"] / out[f"{impl}_ms"]
    out.update({c: row[c] for c in _CHECK_KEYS if c in row})
    if (row["model"], row["px"]) in PAPER_MS and row["mode"] == "fwd":
        out["paper_sdpa_ms"], out["paper_triton_ms"] = PAPER_MS[(row["model"], row["px"])]
    return out


def bench_blocks(models=tuple(BENCH_MODELS), sizes=None, modes=("fwd", "fwdbwd"), impls=("sdpa", "torch", "triton"),
                 batch: int = 2, device=None, dtype=None, check: bool = False, out=None, tag=None,
                 quiet: bool = False) -> dict:
    """SDPA vs the ΔConvBlock (torch, Triton) at each model's own K on square ``sizes`` (px): :func:`bench_mixers`
    restricted to those mixers, rows in the columns of ``bench_<tag>.json`` (written after every row with ``out``)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = list(sizes or ([512, 1024, 2048, 4096] if device.type == "cuda" else [512, 1024]))
    ks = {m: (MODELS[m]["kernel_size"],) for m in models}
    result = {}

    def view(res):
        result.update(meta=res["meta"], notes=res["notes"],
                      rows=[_block_row(r, ks[r["model"]][0]) for r in res["rows"]])
        if out is not None:
            from .benchmark_tables import to_markdown

            _write(result, Path(out) / f"bench_{tag or device.type}.json", to_markdown)

    res = bench_mixers(models, [(px, px) for px in sizes], modes, [_BLOCK_IMPLS[i] for i in impls], ks,
                       batch=batch, device=device, dtype=dtype, quiet=quiet, check=check, on_row=view)
    view(res)
    return result


def triton_output_share(models=None, grid_side: int = 16, batch: int = 2, seed: int = 0) -> dict[str, float]:
    """For the blocks of the stored blocks benchmark (``models``, default :data:`STORED_BENCH_MODELS`; rebuilt with
    its seed sequence on the CPU: ``torch.manual_seed(0)``, then per model the SDPA ``Attention`` and the
    ``DeltaConvBlock``, so the weights are the stored run's), the share of the output's largest magnitude that
    comes from the pyramid stages (the Triton-computed part): max |out_proj(stages) − bias| / max |output| on
    random tokens ``N(0, 1)`` on a ``grid_side``² grid, float32. The rest is the out_proj bias and the pool
    branch, computed by PyTorch in both."""
    models = list(models or STORED_BENCH_MODELS)
    torch.manual_seed(seed)
    blocks = {}
    # the stored run built its models' blocks in this order (same seeds); other shapes are built after them
    for model in [*STORED_BENCH_MODELS, *(m for m in models if m not in STORED_BENCH_MODELS)]:
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


# ----------------------------------------------------------------------------------------------
# the programs
# ----------------------------------------------------------------------------------------------
def _size_arg(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _square_px_arg(text: str) -> int:
    """argparse type of ``bench-blocks --sizes``: one positive px (square frames)."""
    h, w = _size_arg(text)
    if h != w:
        raise argparse.ArgumentTypeError(f"bench-blocks times square frames: give one px, got {text!r}")
    return h


def _common_args(ap: argparse.ArgumentParser, size_type, sizes_help: str, models_default) -> None:
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: float16 on CUDA, float32 on CPU")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--sizes", nargs="+", default=None, type=size_type, help=sizes_help)
    ap.add_argument("--models", nargs="+", default=list(models_default), choices=list(BENCH_MODELS))
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])


def main(argv=None, prog=None):
    """``aconv bench-blocks`` / ``python benchmarks/bench_blocks.py``: see :func:`bench_blocks`."""
    ap = argparse.ArgumentParser(prog=prog, description="Module-level latency and peak memory: self-attention "
                                                        "(diffusers SDPA) vs ΔConvBlock (torch, Triton).")
    _common_args(ap, _square_px_arg, "px; default 512 1024 2048 4096 (CPU: 512 1024)", BENCH_MODELS)
    ap.add_argument("--impls", nargs="+", default=["sdpa", "torch", "triton"], choices=["sdpa", "torch", "triton"])
    ap.add_argument("--check", action="store_true", help="also record Triton-vs-torch errors (CUDA)")
    ap.add_argument("--out", default=str(Path("benchmarks") / "results"), help="default: benchmarks/results")
    ap.add_argument("--tag", default=None, help="file name suffix (default: the device type)")
    args = ap.parse_args(argv)
    if args.batch < 1:
        ap.error(f"--batch: expected a positive int, got {args.batch}")
    try:
        _check_sizes(args.models, [(px, px) for px in args.sizes or []])
    except ValueError as e:
        ap.error(f"--sizes: {e}")
    from .benchmark_tables import to_markdown

    result = bench_blocks(args.models, args.sizes, args.modes, args.impls, args.batch, args.device, args.dtype,
                          args.check, args.out, args.tag)
    print(to_markdown(result))
    print(f"wrote {Path(args.out) / f'bench_{args.tag or torch.device(args.device).type}.json'} and .md")
    return result


def main_mixers(argv=None, prog: str = "python benchmarks/bench_mixers.py"):
    """``aconv bench-mixers`` / ``python benchmarks/bench_mixers.py``: see :func:`bench_mixers`."""
    ap = argparse.ArgumentParser(prog=prog, description="latency of every token mixer of the paper's Table 2 (one run, "
                                                        "ratios to SDPA)")
    _common_args(ap, _size_arg, "px or HxW frames; default: the paper's 512² 1024² 1440x2560 2160x3840 (CPU: 256 512)",
                 ["pixart-sigma", "sd15-top"])
    ap.add_argument("--impls", nargs="+", default=list(MIXER_IMPLS), choices=list(MIXER_IMPLS))
    ap.add_argument("--kernels", type=int, nargs="+", default=[13, 25], help="ΔConv K (default 13 25)")
    ap.add_argument("--na-kernel", type=int, default=13)
    ap.add_argument("--window", type=int, default=None, help="window attention keys per query (default na_kernel²)")
    ap.add_argument("--check", action="store_true", help="also record Triton-vs-torch errors of ΔConv (CUDA)")
    ap.add_argument("--out", default=str(Path("benchmarks") / "results"))
    ap.add_argument("--tag", default=None, help="file name suffix (default: the device type)")
    args = ap.parse_args(argv)
    from .benchmark_tables import mixers_markdown

    cmd = f"{prog} " + " ".join(sys.argv[1:] if argv is None else list(argv))
    result = bench_mixers(args.models, args.sizes, args.modes, args.impls, args.kernels, args.na_kernel, args.window,
                          args.batch, args.device, args.dtype, args.out, args.tag, command=cmd.strip(),
                          check=args.check)
    print(mixers_markdown(result))
    print(f"wrote {Path(args.out) / f'bench_mixers_{args.tag or torch.device(args.device).type}.json'} and .md")
    return result


if __name__ == "__main__":
    main()
