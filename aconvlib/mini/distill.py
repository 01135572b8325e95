"""Distillation of the embedded models: their data stream, the one-call run, the shipped adapters.

The distiller itself is generic (:mod:`aconvlib.training.distill`); this module feeds it the
procedural dataset and knows where the embedded models' adapters ship.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..models import get_denoiser, get_spec, load_pipeline, models_dir
from ..training.accelerated import Distiller
from ..training.distill import DistillConfig, make_student, prediction_gap
from . import dataset
from .models import to_latent

__all__ = ["adapter_dir", "check_image_sizes", "distill_batches", "distill_mini", "mini_prediction_gap", "read_log"]


def distill_batches(pipe, batch: int, seed: int = 0, caption_dropout: float = 0.1, device="cpu",
                    start_step: int = 0, image_sizes: Sequence[int] = (64,)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(x0 latents, text states)`` batches of the embedded dataset for a mini pipeline.

    Batch ``s`` holds dataset indices ``s·B … s·B+B−1`` rendered at ``image_sizes[s % len(image_sizes)]``
    px (deterministic, so a resumed run sees the batches it had not seen yet).
    """
    check_image_sizes(image_sizes)   # now, not at the first batch (a generator would check it lazily)
    return _batches(pipe, batch, seed, caption_dropout, device, start_step, tuple(image_sizes))


def check_image_sizes(image_sizes: Sequence[int]) -> None:
    """Refuse image sizes the embedded models cannot take (ValueError, one line)."""
    if not image_sizes or any(int(px) <= 0 or int(px) % 16 for px in image_sizes):
        raise ValueError(f"image_sizes must be positive multiples of 16 px (the mini models' latent and patch), "
                         f"got {tuple(image_sizes)!r}")


def _batches(pipe, batch, seed, caption_dropout, device, start_step, image_sizes):
    gen = torch.Generator("cpu").manual_seed(seed + 7)
    step = start_step
    while True:
        px = int(image_sizes[step % len(image_sizes)])
        b = dataset.make_batch(range(step * batch, (step + 1) * batch), seed, "train", size=px, device=device)
        drop = (torch.rand(batch, generator=gen) < caption_dropout).tolist()
        caps = ["" if d else c for c, d in zip(b["captions"], drop)]
        with torch.no_grad():
            text = pipe.encode_prompt(caps)
        yield to_latent(b["pixel_values"]), text
        step += 1


def distill_mini(model: str = "mini-sd", out="runs/distill-mini-sd", device="cpu", resume: bool = False,
                 quiet: bool = False, run=None, state=None, **overrides) -> dict:
    """Distill an embedded model's self-attention into ΔConv blocks (see :class:`DistillConfig`).

    ``run``: a :class:`~aconvlib.training.accelerated.RunConfig` runs it with the
    :class:`~aconvlib.training.accelerated.AcceleratedDistiller` (many processes, mixed precision,
    accumulation, EMA, previews; what ``aconv distill`` does); None keeps the plain
    :class:`~aconvlib.training.distill.Distiller` (the one the shipped adapters were distilled with).
    """
    spec = get_spec(model)
    if not spec.embedded:
        raise ValueError(f"distill_mini works on the embedded models (mini-sd, mini-dit), not {model!r}; "
                         "for real models use aconvlib.training.distill_model (aconv distill --data/--prompts)")
    cfg = DistillConfig(**overrides)
    check_image_sizes(cfg.image_sizes)
    if run is None:
        teacher = load_pipeline(model, device=device)
        student = make_student(teacher, cfg.kernel_sizes, seed=cfg.seed, init_adapter=cfg.init_adapter, kind=cfg.mixer,
                               init=cfg.init)
        batches = lambda start: distill_batches(teacher, cfg.batch, cfg.seed, cfg.caption_dropout, device, start,  # noqa: E731
                                                cfg.image_sizes)
        return Distiller(teacher, student, batches, cfg, out, device, resume, quiet).run()

    from ..training.accelerated import AcceleratedDistiller

    if state is None:
        from accelerate import PartialState

        state = PartialState(cpu=torch.device(device).type == "cpu")
    dev = torch.device(device) if state.num_processes == 1 else torch.device(state.device)
    teacher = load_pipeline(model, device=dev)
    batches = lambda start: distill_batches(teacher, cfg.batch, cfg.seed, cfg.caption_dropout, dev, start,  # noqa: E731
                                            cfg.image_sizes)
    preview = None
    if run.sample_every:
        prompts = dataset.prompts(run.num_samples, split="heldout", seed=cfg.seed)
        px = run.sample_px or int(cfg.image_sizes[0])

        def preview(den, autocast):
            pipe = teacher
            if get_denoiser(pipe) is not den:   # not sharing weights: sample with the student copy
                pipe = copy.copy(teacher)
                setattr(pipe, teacher.denoiser_name, den)
            with autocast():
                return pipe(prompts, num_inference_steps=run.sample_steps, height=px, width=px,
                            generator=torch.Generator("cpu").manual_seed(cfg.seed)).images

    return AcceleratedDistiller(teacher, batches, cfg, out, run=run, state=state, device=dev, resume=resume,
                                quiet=quiet, identity={"model": model, "data": "procedural"}, preview=preview).run()


def mini_prediction_gap(teacher_pipe, student_pipe, px: int = 64, timesteps=(900, 500, 100), n: int = 8,
                        seed: int = 0) -> dict[int, float]:
    """:func:`~aconvlib.training.distill.prediction_gap` on ``n`` held-out images rendered at ``px``×``px``
    with their captions' text states."""
    b = dataset.make_batch(range(n), seed, "heldout", size=px, device=teacher_pipe.device)
    return prediction_gap(teacher_pipe, student_pipe, to_latent(b["pixel_values"]),
                          teacher_pipe.encode_prompt(b["captions"]), timesteps, seed)


def adapter_dir(model: str) -> Path:
    """Where the distilled ΔConv adapter of an embedded model ships: ``models/<model>-deltaconv`` (package data)."""
    return models_dir() / f"{model}-deltaconv"


def read_log(path) -> list[dict]:
    """The step records of a ``distill_log.jsonl`` (summary lines dropped)."""
    path = Path(path)
    if path.is_dir():
        path = path / "distill_log.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no distillation log at {path}; run `aconv distill` first")
    return [r for r in map(json.loads, path.read_text().splitlines()) if "step" in r and "loss" in r]
