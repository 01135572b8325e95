"""``aconv distill``: distill a model's self-attention into trainable token mixers (ΔConv blocks by default).

    aconv distill --model mini-sd                                   # embedded model, procedural data
    aconv distill --model sd15 --data photos/ --device cuda         # images (folder, manifest, tar shards)
    aconv distill --model sdxl --prompts prompts.txt --device cuda  # teacher-generated data
    aconv distill --recipe recipes/sd15.yaml --variant single-gpu --data photos/
    accelerate launch --multi_gpu --num_processes 8 -m aconvlib distill --recipe recipes/sdxl.yaml --data ...
    torchrun --nproc_per_node 2 -m aconvlib distill --model sd15 --data photos/ --device cpu   # 2 CPU processes

Every field of :class:`~aconvlib.training.distill.DistillConfig` (the loss),
:class:`~aconvlib.training.accelerated.RunConfig` (precision, accumulation, EMA, previews) and
:class:`~aconvlib.training.recipes.DataConfig` (data and caches) is a flag, generated from them; flags
override the recipe's values. Everything is validated before any work (bad data, a bucket table that
does not fit the model, a checkpoint of another run: one line, exit 1). Under a launcher every process
runs the same command; ``--device`` then only says cpu or not.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from .options import UsageError, add_config_flags, config_from_args, device_arg, known_model

HELP = {"feature_weight": "β of the feature loss", "kernel_sizes": "paper | official | an odd integer",
        "init_adapter": "start from this saved adapter folder (re-distillation)",
        "image_sizes": "mini models: px of the training batches, comma-separated, cycled per step",
        "betas": "AdamW betas, comma-separated", "batch": "global batch (all processes and accumulation steps)",
        "mixer": "deltaconv | linear",
        "init": "fresh mixers start from: scratch | teacher (default: ΔConv scratch, linear teacher's attn1 q/k/v/out)",
        "mixed_precision": "no | bf16 | fp16", "weight_dtype": "frozen weights: auto | fp32 | bf16 | fp16",
        "data": "image folder, manifest (.jsonl/.json/.csv/.tsv) or tar shards (d-{000..009}.tar)",
        "prompts": "prompt file (.txt/.jsonl/.json/.csv): distill on teacher-generated latents",
        "buckets": "model | square | HxW,HxW,...", "cache_dir": "latent cache folder (default <out>/cache)"}


def _device(name: str | None) -> str:
    if name in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _run(a) -> None:
    from ..mini.distill import distill_mini
    from ..training.accelerated import ResumeError, RunConfig
    from ..training.data import DataError
    from ..training.distill import DistillConfig
    from ..training.latent_cache import CacheError
    from ..training.prompts import PromptError
    from ..training.recipes import DataConfig, RecipeError, distill_model, load_recipe

    try:
        recipe = load_recipe(a.recipe, a.variant) if a.recipe else {"model": None, "distill": {}, "run": {}, "data": {}}
    except RecipeError as e:
        raise UsageError(str(e)) from None
    if a.variant and not a.recipe:
        raise UsageError("--variant needs --recipe")
    model = a.model or recipe["model"] or "mini-sd"
    try:
        known_model(model)
    except Exception as e:  # argparse.ArgumentTypeError
        raise UsageError(f"--model: {e}") from None
    cfg = config_from_args(DistillConfig, a, a.distill_fields, base=recipe["distill"])   # validated before any work
    run = config_from_args(RunConfig, a, a.run_fields, base=recipe["run"])
    data = config_from_args(DataConfig, a, a.data_fields, base=recipe["data"])
    if cfg.init_adapter and not (Path(cfg.init_adapter) / "config.json").exists():
        raise UsageError(f"--init-adapter: no saved adapter (config.json) in {cfg.init_adapter}")
    out = a.out or f"runs/distill-{re.sub(r'[^A-Za-z0-9_.-]+', '-', model).strip('-')}"
    device = _device(a.device)

    from ..models import get_spec
    from ..models.registry import UnknownModelError

    try:
        embedded = get_spec(model).embedded
    except UnknownModelError:
        embedded = False
    try:
        if embedded:
            if data.data or data.prompts:
                raise UsageError(f"{model} distills on its procedural dataset: drop --data/--prompts "
                                 "(they are for real models: sd15, sdxl, pixart-sigma-*, hub ids)")
            from ..mini.distill import check_image_sizes

            try:
                check_image_sizes(cfg.image_sizes)
            except ValueError as e:
                raise UsageError(f"--image-sizes: {e}") from None
            summary = distill_mini(model, out, device, a.resume, run=run, **asdict(cfg))
        else:
            summary = distill_model(model, out, cfg=cfg, run=run, data=data, device=device, resume=a.resume)
    except (DataError, PromptError, CacheError, ResumeError, RecipeError) as e:
        raise UsageError(str(e)) from None
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(summary))


def register(sub) -> None:
    from ..training.accelerated import RunConfig
    from ..training.distill import DistillConfig
    from ..training.recipes import DataConfig

    p = sub.add_parser("distill", help="distill a model's self-attention into ΔConv blocks (or another trainable mixer)")
    p.add_argument("--model", default=None, type=str,
                   help="mini-sd | mini-dit | sd15 | sdxl | pixart-sigma-512 | pixart-sigma-1024 | a hub id or "
                        "local pipeline folder (default: the recipe's, else mini-sd)")
    p.add_argument("--recipe", default=None, help="recipe file (recipes/<model>.yaml); flags override it")
    p.add_argument("--variant", default=None, help="a variant of the recipe (e.g. single-gpu)")
    p.add_argument("--out", default=None, help="run folder (default runs/distill-<model>)")
    p.add_argument("--device", default="auto", type=device_arg(allow_auto=True), help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/ckpt.pt")
    p.set_defaults(func=_run, distill_fields=add_config_flags(p, DistillConfig, help=HELP),
                   run_fields=add_config_flags(p, RunConfig, help=HELP),
                   data_fields=add_config_flags(p, DataConfig, help=HELP))
