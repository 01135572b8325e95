"""``aconv train`` / ``aconv generate`` / ``aconv evaluate``: the embedded models from the command line."""
from __future__ import annotations

import json
from pathlib import Path

from .options import (UsageError, add_config_flags, config_from_args, device_arg, image_path, known_model,
                      non_negative, positive)


def _train(args) -> None:
    from ..mini.train import TRAINERS, TrainConfig

    cfg = config_from_args(TrainConfig, args, args.config_fields, model=args.model)  # validated before any work
    out = args.out or f"runs/{args.model}"
    print(json.dumps(TRAINERS[args.model](cfg, out, args.device, args.resume).run()))


def _generate(args) -> None:
    import sys
    import warnings

    import torch

    from ..mini.dataset import image_grid
    from ..mini.models import make_scheduler
    from ..mini.pipeline import PromptWarning, prompt_problems
    from ..models import load_pipeline

    _check_px(args.model, args.px)
    _check_memory(args.model, args.device, args.px, args.n)
    pipe = load_pipeline(args.model, device=args.device)
    problems = prompt_problems(pipe.tokenizer, [args.prompt]) if hasattr(pipe, "unknown_words") else []
    if problems and not args.allow_unknown_words:
        raise UsageError(f"--prompt: {'; '.join(problems)}. Pass --allow-unknown-words to generate anyway.")
    if args.scheduler != "dpm":
        pipe.scheduler = make_scheduler(args.scheduler, dict(pipe.scheduler.config))
    g = torch.Generator("cpu").manual_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptWarning)   # said once below, not as a Python warning
        out = pipe([args.prompt] * args.n, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                   generator=g, height=args.px, width=args.px, output_type="pt")
    for p in problems:
        print(f"aconv generate: warning: {p}", file=sys.stderr)
    image_grid(out.images, nrow=min(args.n, 8), pad=0 if args.n == 1 else 2).save(args.out)
    print(args.out)


def _check_px(model: str, px: int) -> None:
    """Refuse, before loading anything, a size the model cannot take or whose run cannot fit in memory."""
    from ..models import get_spec
    from ..models.registry import UnknownModelError

    try:
        spec = get_spec(model)
    except UnknownModelError:   # a hub id or folder: the pipeline checks its own sizes
        return
    if spec.embedded:
        from ..mini.models import LATENT_FACTOR

        mult = LATENT_FACTOR * (spec.patch_size or 1)
        if px % mult:
            raise UsageError(f"--px: {model} takes sizes that are multiples of {mult} px, got {px} "
                             f"(e.g. {max(mult, px // mult * mult)} or {(px // mult + 1) * mult})")


def _check_memory(model: str, device: str, px: int, n: int) -> None:
    """Refuse a registered model's run whose estimated memory exceeds what the device can give (before loading)."""
    from ..analysis.capture import MemoryBudgetError
    from ..book.budget import check_memory
    from ..models import get_spec
    from ..models.registry import UnknownModelError

    try:
        get_spec(model)
    except UnknownModelError:
        return
    dtype = "float32" if str(device) == "cpu" else "float16"
    try:
        check_memory([model], device, dtype, height=px, width=px, batch_size=n, capture=False)
    except MemoryBudgetError as e:   # said in this command's words
        raise UsageError(f"--px {px} / --n {n}: {e}") from None


def _evaluate(args) -> None:
    from ..mini.evaluate import evaluate_model
    from ..models import get_spec, load_pipeline

    if not get_spec(args.model).embedded:
        raise UsageError(f"the evaluator scores the embedded models (mini-sd, mini-dit), not {args.model!r}")
    pipe = load_pipeline(args.model, device=args.device)
    res = evaluate_model(pipe, args.n_prompts, num_inference_steps=args.steps, guidance_scale=args.guidance_scale)
    for k in ("features", "per_image", "prompts"):   # per-image results: for intervals in Python (aconvlib.mini.intervals)
        res.pop(k)
    print(json.dumps({"model": args.model, **res}, indent=1))


def register(sub) -> None:
    from ..mini.train import TrainConfig

    p = sub.add_parser("train", help="train an embedded model (mini-sd, mini-dit) or the attribute classifier")
    p.add_argument("--model", default="mini-sd", choices=["mini-sd", "mini-dit", "classifier"])
    p.add_argument("--out", default=None, help="run folder (default runs/<model>)")
    p.add_argument("--device", default="cpu", type=device_arg())
    p.add_argument("--resume", action="store_true", help="continue from <out>/ckpt.pt if it exists")
    p.set_defaults(func=_train, config_fields=add_config_flags(p, TrainConfig, exclude=("model", "total_steps")))
    g = sub.add_parser("generate", help="generate images with an embedded (or any registered) model")
    g.add_argument("--model", default="mini-sd", type=known_model)
    g.add_argument("--prompt", required=True)
    g.add_argument("--out", default="out.png", type=image_path, help="image file (.png, .jpg, ...)")
    g.add_argument("--steps", type=positive(), default=20)
    g.add_argument("--guidance-scale", type=non_negative(), default=4.5, help="classifier-free guidance (<= 1: off)")
    g.add_argument("--scheduler", default="dpm", choices=["dpm", "ddim"])
    g.add_argument("--px", type=positive(), default=64)
    g.add_argument("--n", type=positive(), default=1, help="images (tiled into one PNG)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu", type=device_arg())
    g.add_argument("--allow-unknown-words", action="store_true",
                   help="embedded models: generate even if the prompt has words outside their vocabulary "
                        "(they are dropped); without it such a prompt is an error")
    g.set_defaults(func=_generate)
    e = sub.add_parser("evaluate", help="prompt adherence and FDD analogue of an embedded model")
    e.add_argument("--model", default="mini-sd", choices=["mini-sd", "mini-dit"])
    e.add_argument("--n-prompts", type=positive(), default=64)
    e.add_argument("--steps", type=positive(), default=20)
    e.add_argument("--guidance-scale", type=non_negative(), default=4.5)
    e.add_argument("--device", default="cpu", type=device_arg())
    e.set_defaults(func=_evaluate)
