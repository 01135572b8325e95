"""``aconv convert`` (ΔConv conversion table / fresh adapter) and ``aconv bench-blocks`` (module benchmark)."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _kernel_sizes(value: str):
    return int(value) if value.isdigit() else value


def _convert(args) -> None:
    import pandas as pd

    from .convert import save_deltaconv, to_deltaconv
    from .flops import deltaconv_table, deltaconv_table_frame
    from .models import get_spec, load_denoiser

    den = load_denoiser(args.model, weights=False, device="cpu" if args.out else "meta")
    to_deltaconv(den, _kernel_sizes(args.kernel_sizes), gate=args.gate, gate_scale=args.gate_scale, seed=args.seed)
    spec = get_spec(args.model)
    px = args.px or spec.default_px
    df = deltaconv_table_frame(deltaconv_table(den, spec.latent_grid(px, px)))
    with pd.option_context("display.width", 250, "display.max_rows", 200, "display.precision", 3):
        print(f"{args.model} at {px}×{px} px, kernel sizes {args.kernel_sizes!r} (FLOPs per sample)")
        print(df.to_string(index=False))
    if args.out:
        save_deltaconv(den, args.out)
        print(f"saved a freshly initialised ΔConv adapter to {args.out} (load with aconvlib.convert.load_deltaconv)")


def _bench(args) -> None:
    script = ROOT / "benchmarks" / "bench_blocks.py"
    if not script.exists():
        raise FileNotFoundError(f"{script} not found (bench-blocks runs from a source checkout)")
    argv = sys.argv
    sys.argv = [str(script), *args.bench_args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv


def register_cli(sub) -> None:
    p = sub.add_parser("convert", help="ΔConv conversion of a model: per-layer parameters/FLOPs, optional fresh adapter")
    p.add_argument("model", help="registry name (sd15, sdxl, pixart-sigma-1024, mini-sd, ...)")
    p.add_argument("--kernel-sizes", default="paper", help="paper | official | an odd integer (default: paper)")
    p.add_argument("--gate", default="scaled", choices=["scaled", "sigmoid"])
    p.add_argument("--gate-scale", default="divide", choices=["divide", "multiply"])
    p.add_argument("--px", type=int, default=None, help="image size for the FLOPs table (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="save the freshly initialised adapter here (safetensors + config)")
    p.set_defaults(func=_convert)
    b = sub.add_parser("bench-blocks", help="latency/memory of SDPA vs ΔConvBlock (torch, Triton); "
                       "arguments go to benchmarks/bench_blocks.py")
    b.add_argument("bench_args", nargs="*", help="e.g. -- --device cpu --sizes 512")
    b.set_defaults(func=_bench)
