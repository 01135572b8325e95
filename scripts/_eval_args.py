"""The arguments the stored evaluations of the embedded models share (``eval_comparison.py``, ``eval_controls.py``)."""
from pathlib import Path


def add_common_arguments(ap, out: Path) -> None:
    """Prompts, models, sampling, the FDD reference, the bootstrap, threads and the output folder (``out``)."""
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--models", nargs="+", default=["mini-sd", "mini-dit"], choices=["mini-sd", "mini-dit"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance-scale", type=float, default=4.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-real", type=int, default=1000)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=out)
