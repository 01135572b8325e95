"""``aconv distill``: distill an embedded model's self-attention into ΔConv blocks.

Every field of :class:`~aconvlib.training.distill.DistillConfig` is a flag (generated from it).
"""
from __future__ import annotations

import json
from pathlib import Path

from .options import UsageError, add_config_flags, config_from_args

HELP = {"feature_weight": "β of the feature loss", "kernel_sizes": "paper | official | an odd integer",
        "init_adapter": "start from this saved adapter folder (re-distillation)",
        "image_sizes": "px of the training batches, comma-separated, cycled per step",
        "betas": "AdamW betas, comma-separated"}


def _run(a) -> None:
    from ..mini.distill import distill_mini
    from ..training.distill import DistillConfig

    cfg = config_from_args(DistillConfig, a, a.config_fields)  # validated before any work
    if cfg.init_adapter and not (Path(cfg.init_adapter) / "config.json").exists():
        raise UsageError(f"--init-adapter: no saved adapter (config.json) in {cfg.init_adapter}")
    kw = {k: getattr(cfg, k) for k in a.config_fields}
    summary = distill_mini(a.model, a.out or f"runs/distill-{a.model}", a.device, a.resume, **kw)
    print(json.dumps(summary))


def register(sub) -> None:
    from ..training.distill import DistillConfig

    p = sub.add_parser("distill", help="distill an embedded model's self-attention into ΔConv blocks")
    p.add_argument("--model", default="mini-sd", choices=["mini-sd", "mini-dit"])
    p.add_argument("--out", default=None, help="run folder (default runs/distill-<model>)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true", help="continue from <out>/ckpt.pt")
    p.set_defaults(func=_run, config_fields=add_config_flags(p, DistillConfig, help=HELP))
