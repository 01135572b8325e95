"""``aconv convert`` (ΔConv conversion table / fresh adapter) ``aconv bench-blocks`` and ``aconv bench-mixers`` (module benchmarks)."""
from __future__ import annotations

from .options import latent_grid, UsageError, known_model, positive


def _kernel_sizes(value: str):
    if value in ("paper", "official"):
        return value
    if value.isdigit() and int(value) % 2 == 1:
        return int(value)
    raise UsageError(f"--kernel-sizes must be 'paper', 'official' or an odd positive integer, got {value!r}")


def _convert(args) -> None:
    import pandas as pd

    from ..mixers.convert import save_mixer, to_mixer
    from ..book.flops_tables import deltaconv_table_frame
    from ..mixers.flops import deltaconv_table
    from ..models import get_spec, load_denoiser

    ks = _kernel_sizes(args.kernel_sizes)
    spec = get_spec(args.model)
    px = args.px or spec.default_px
    grid = latent_grid(spec, px)  # bad sizes fail before the model is built
    den = load_denoiser(args.model, weights=False, device="cpu" if args.out else "meta")
    to_mixer(den, "deltaconv", kernel_sizes=ks, gate=args.gate, gate_scale=args.gate_scale, seed=args.seed)
    df = deltaconv_table_frame(deltaconv_table(den, grid))
    with pd.option_context("display.width", 250, "display.max_rows", 200, "display.precision", 3):
        print(f"{args.model} at {px}×{px} px, kernel sizes {args.kernel_sizes!r} (FLOPs per sample)")
        print(df.to_string(index=False))
    if args.out:
        save_mixer(den, args.out)
        print(f"saved a freshly initialised ΔConv adapter to {args.out} (load with aconvlib.mixers.load_mixer)")


def _bench(args) -> None:
    from ..book.benchmarks import main

    main(_forwarded(args.bench_args), prog="aconv bench-blocks")


def _forwarded(argv: list[str]) -> list[str]:
    """The benchmark's own arguments (an optional leading ``--`` separator dropped)."""
    return argv[1:] if argv[:1] == ["--"] else argv


def _bench_mixers(args) -> None:
    from ..book.benchmarks import main_mixers

    main_mixers(_forwarded(args.bench_args), prog="aconv bench-mixers")


def register(sub) -> None:
    p = sub.add_parser("convert", help="ΔConv conversion of a model: per-layer parameters/FLOPs, optional fresh adapter")
    p.add_argument("model", type=known_model, help="registry name (sd15, sdxl, pixart-sigma-1024, mini-sd, ...)")
    p.add_argument("--kernel-sizes", default="paper", help="paper | official | an odd integer (default: paper)")
    p.add_argument("--gate", default="scaled", choices=["scaled", "sigmoid"])
    p.add_argument("--gate-scale", default="divide", choices=["divide", "multiply"])
    p.add_argument("--px", type=positive(), default=None, help="image size for the FLOPs table (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="save the freshly initialised adapter here (safetensors + config)")
    p.set_defaults(func=_convert)
    b = sub.add_parser("bench-blocks", add_help=False,
                       help="latency/memory of SDPA vs ΔConvBlock (torch, Triton); every argument goes to "
                            "aconvlib.book.benchmarks.main (e.g. --device cpu --sizes 512; --help lists them)")
    b.set_defaults(pass_through="bench_args")
    b.set_defaults(func=_bench)
    bm = sub.add_parser("bench-mixers", help="latency of every token mixer of the paper's Table 2 (SDPA, NA, window, "
                        "LinFusion, ΔConv K=13/25 torch/Triton), ratios to SDPA in the same run; arguments go to "
                        "aconvlib.book.benchmarks.main_mixers (e.g. --device cpu --sizes 256 512; --help lists them)",
                        add_help=False)
    bm.set_defaults(pass_through="bench_args")
    bm.set_defaults(func=_bench_mixers)
