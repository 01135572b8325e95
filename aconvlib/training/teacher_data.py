"""Teacher-generated distillation data (the data-free path): prompts → the teacher's own latents.

    prompts = load_prompts("prompts.txt")
    data = generate_teacher_data(pipe, PipelineEncoder(pipe), prompts, "cache/teacher", height=512, width=512)
    batches = cached_batches(data, "sd15", batch=16)          # then distill as from real images

Batch ``k`` holds prompts ``k·B … k·B+B−1``; the teacher samples them with its own pipeline call and
default sampler (the scheduler it ships with, its default number of steps and guidance scale, unless
``num_inference_steps`` / ``guidance_scale`` are given), from ``torch.Generator("cpu").manual_seed(seed + k)``,
and returns latents (``output_type="latent"``: the denoiser's latent space, VAE scaling included, nothing
decoded). PixArt's resolution binning is switched off so that the latents have exactly ``height``×``width``.
The latents are written with the prompts' text encodings (:class:`~aconvlib.training.encoding.PipelineEncoder`,
the same as for real images; SDXL's time ids are (H, W, 0, 0, H, W), what the pipeline itself used) as
shards of a :class:`~aconvlib.training.encoding.CacheSet` (one :class:`~aconvlib.training.latent_cache.LatentCache`
part per process), so that distillation reads them exactly like cached real images.

Resumable: every batch is one shard written atomically; a rerun skips the finished ones (a killed
generation continues where it stopped). The cache key is the encoders' fingerprint plus the denoiser's
(sampled bytes), the scheduler config and the sampling settings; the dataset key is the prompt list's
fingerprint: a different teacher, sampler or prompt list regenerates. Several processes of a
data-parallel run generate different batches (batch ``k`` on process ``k mod W``).
"""
from __future__ import annotations

import inspect
import json
import os
from typing import Callable, Sequence

import torch

from ..models import get_denoiser
from .encoding import CacheSet, PipelineEncoder, build_cache_parts
from .latent_cache import model_fingerprint
from .prompts import PromptError, prompts_fingerprint

__all__ = ["TeacherBatches", "generate_teacher_data", "teacher_call_defaults"]


def teacher_call_defaults(pipe) -> dict:
    """The pipeline's own ``num_inference_steps`` and ``guidance_scale`` defaults (from its ``__call__``)."""
    params = inspect.signature(type(pipe).__call__).parameters
    out = {}
    for k in ("num_inference_steps", "guidance_scale"):
        if k in params and params[k].default is not inspect.Parameter.empty:
            out[k] = params[k].default
    return out


class TeacherBatches(Sequence):
    """Batch ``k`` = the teacher's latents for prompts ``k·B …`` (generated when indexed), with captions and,
    for SDXL, micro-conditioning; a Sequence so that a resumed build skips finished batches unseen."""

    def __init__(self, pipe, encoder: PipelineEncoder, prompts: Sequence[str], *, height: int, width: int,
                 batch_size: int, seed: int, num_inference_steps: int, guidance_scale: float):
        self.pipe, self.encoder, self.prompts = pipe, encoder, list(prompts)
        self.height, self.width, self.batch_size, self.seed = height, width, batch_size, seed
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale
        params = inspect.signature(type(pipe).__call__).parameters
        self.extra = {"use_resolution_binning": False} if "use_resolution_binning" in params else {}

    def __len__(self) -> int:
        return -(-len(self.prompts) // self.batch_size)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if not 0 <= k < len(self):
            raise IndexError(k)
        caps = self.prompts[k * self.batch_size:(k + 1) * self.batch_size]
        gen = torch.Generator("cpu").manual_seed(self.seed + k)
        with torch.no_grad():
            out = self.pipe(caps, num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                            generator=gen, height=self.height, width=self.width, output_type="latent",
                            **self.extra)
        lat = out.images if hasattr(out, "images") else out[0]
        n = len(caps)
        batch = {"latents": lat.float().cpu(), "bucket": f"{self.height}x{self.width}", "captions": caps,
                 "keys": [f"prompt-{k * self.batch_size + i}" for i in range(n)]}
        if self.encoder.conditioning.pooled_and_time_ids:   # SDXL's micro-conditioning
            batch["original_size"] = [[self.height, self.width]] * n
            batch["crop_top_left"] = [[0, 0]] * n
            batch["target_size"] = [[self.height, self.width]] * n
        return batch


def generate_teacher_data(pipe, encoder: PipelineEncoder, prompts: Sequence[str], out_dir: str | os.PathLike, *,
                          height: int | None = None, width: int | None = None, batch_size: int = 4, seed: int = 0,
                          num_inference_steps: int | None = None, guidance_scale: float | None = None,
                          dtype="float16", process_index: int = 0, num_processes: int = 1,
                          barrier: Callable[[], None] | None = None, progress: bool = True) -> CacheSet:
    """Sample the teacher's latents for ``prompts`` into ``out_dir`` (resumable, reused when unchanged; see the
    module docstring) and return them as a :class:`~aconvlib.training.encoding.CacheSet`."""
    prompts = list(prompts)
    if not prompts:
        raise PromptError("no prompts to generate teacher data from")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    height = int(height or encoder.native_px)
    width = int(width or encoder.native_px)
    m = encoder.multiple
    if height % m or width % m:
        raise ValueError(f"teacher data size {height}x{width}: sides must be multiples of {m} for this model")
    call = teacher_call_defaults(pipe)
    steps = int(num_inference_steps or call.get("num_inference_steps", 20))
    guidance = float(guidance_scale if guidance_scale is not None else call.get("guidance_scale", 4.5))
    settings = {"teacher": "v1", "height": height, "width": width, "batch_size": batch_size, "seed": seed,
                "steps": steps, "guidance_scale": guidance, "scheduler": type(pipe.scheduler).__name__,
                "scheduler_config": {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}}
    fp = model_fingerprint(encoder.fingerprint(), get_denoiser(pipe), json.dumps(settings, sort_keys=True, default=str),
                           full=False)
    batches = TeacherBatches(pipe, encoder, prompts, height=height, width=width, batch_size=batch_size, seed=seed,
                             num_inference_steps=steps, guidance_scale=guidance)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return build_cache_parts(out_dir, fp, prompts_fingerprint(prompts), batches, None, encoder.encode_text,
                             dtype=dtype, process_index=process_index, num_processes=num_processes, barrier=barrier,
                             progress=progress)
