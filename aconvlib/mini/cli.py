"""``aconv train`` / ``aconv generate`` / ``aconv evaluate``: the embedded models from the command line."""
from __future__ import annotations

import json


#: TrainConfig fields settable from ``aconv train`` (flag = field with "-" for "_"), with their types
TRAIN_OPTIONS = {"steps": int, "batch": int, "lr": float, "seed": int, "ckpt_every": int, "sample_every": int,
                 "max_minutes": float, "warmup": int, "ema_decay": float, "init_from": str, "min_snr_gamma": float,
                 "high_noise_frac": float, "high_noise_min": int, "text_encoder_lr_mult": float,
                 "position_word_norm": float}


def _train(args) -> None:
    from .train import train

    kw = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None}
    out = args.out or f"runs/{args.model}"
    print(json.dumps(train(args.model, out=out, device=args.device, resume=args.resume, **kw)))


def _generate(args) -> None:
    import torch

    from aconvlib.models import load_pipeline

    from .models import make_scheduler

    pipe = load_pipeline(args.model, device=args.device)
    if args.scheduler != "dpm":
        pipe.scheduler = make_scheduler(args.scheduler, dict(pipe.scheduler.config))
    g = torch.Generator("cpu").manual_seed(args.seed)
    out = pipe([args.prompt] * args.n, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
               generator=g, height=args.px, width=args.px, output_type="pt")
    from aconvlib.data import image_grid

    image_grid(out.images, nrow=min(args.n, 8), pad=0 if args.n == 1 else 2).save(args.out)
    print(args.out)


def _evaluate(args) -> None:
    from aconvlib.models import load_pipeline

    from .evaluate import evaluate_model

    pipe = load_pipeline(args.model, device=args.device)
    res = evaluate_model(pipe, args.n_prompts, num_inference_steps=args.steps, guidance_scale=args.guidance_scale)
    print(json.dumps({"model": args.model, **res}, indent=1))


def register_cli(sub) -> None:
    p = sub.add_parser("train", help="train an embedded model (mini-sd, mini-dit) or the attribute classifier")
    p.add_argument("--model", default="mini-sd", choices=["mini-sd", "mini-dit", "classifier"])
    p.add_argument("--out", default=None, help="run folder (default runs/<model>)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true", help="continue from <out>/ckpt.pt if it exists")
    for name, typ in TRAIN_OPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=None)
    p.set_defaults(func=_train)
    g = sub.add_parser("generate", help="generate images with an embedded (or any registered) model")
    g.add_argument("--model", default="mini-sd")
    g.add_argument("--prompt", required=True)
    g.add_argument("--out", default="out.png")
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--guidance-scale", type=float, default=4.5)
    g.add_argument("--scheduler", default="dpm", choices=["dpm", "ddim"])
    g.add_argument("--px", type=int, default=64)
    g.add_argument("--n", type=int, default=1, help="images (tiled into one PNG)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu")
    g.set_defaults(func=_generate)
    e = sub.add_parser("evaluate", help="prompt adherence and FDD analogue of an embedded model")
    e.add_argument("--model", default="mini-sd")
    e.add_argument("--n-prompts", type=int, default=64)
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--guidance-scale", type=float, default=4.5)
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=_evaluate)
