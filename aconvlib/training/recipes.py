"""Distilling a real model in one call, and recipes (YAML files with the paper's settings per model).

    from aconvlib.training import DataConfig, DistillConfig, RunConfig, distill_model
    distill_model("sd15", "runs/sd15", cfg=DistillConfig(batch=16, steps=20_000),
                  run=RunConfig(mixed_precision="bf16"), data=DataConfig(data="photos/"))

    recipe = load_recipe("recipes/sd15.yaml", variant="single-gpu")   # {"model", "distill", "run", "data"}

:func:`distill_model` validates everything it can before loading any weight — the data source (every
image opened and decoded, every caption read; :class:`~aconvlib.training.data.DataError` naming the
file), the bucket table against the model's latent grid, the prompt file, and, when resuming, that
``<out>/ckpt.pt`` belongs to the same model, data and loss settings (:class:`ResumeError`) — then loads
the pipeline (frozen weights in the run's weight dtype; the VAE stays fp32 under fp16, whose range the
SDXL VAE overflows), fills the cache (:mod:`aconvlib.training.encoding` for images,
:mod:`aconvlib.training.teacher_data` for prompts; both resumable and reused when unchanged), encodes the
preview prompts, moves the text encoders off the device (they are not needed any more) and runs an
:class:`~aconvlib.training.accelerated.AcceleratedDistiller`. Under ``accelerate launch`` / ``torchrun``
every process runs this same call; caches are split between processes by batch.

Recipe files (``recipes/<model>.yaml`` in the repository)::

    model: sd15
    distill: {batch: 16, lr: 3.0e-4, ...}        # DistillConfig fields
    run: {mixed_precision: bf16, ...}           # RunConfig fields
    data: {buckets: model, ...}                 # DataConfig fields
    variants:
      single-gpu: {run: {grad_accum: 4, gradient_checkpointing: true}}
    estimates: {...}                            # documentation only (memory, time per 1k steps, basis)

``load_recipe`` merges a variant over the base and checks every key (an unknown section or field is an
error naming the file). Command-line flags override recipe values.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .accelerated import AcceleratedDistiller, PreviewSampler, ResumeError, RunConfig, check_resume, resolve_weight_dtype
from .data import DataError
from .distill import DistillConfig
from .encoding import PipelineEncoder, build_image_cache, cached_batches, open_source, parse_buckets
from .prompts import load_prompts, prompts_fingerprint
from .teacher_data import generate_teacher_data

__all__ = ["DataConfig", "RecipeError", "ResumeError", "distill_model", "load_recipe", "recipe_sections",
           "validate_data"]


class RecipeError(ValueError):
    """A recipe file cannot be used (unreadable, unknown section or field, unknown variant)."""


@dataclass
class DataConfig:
    """Where a real-model distillation run gets its data and how it caches it."""

    data: str | None = None             # image folder, manifest (.jsonl/.json/.csv/.tsv) or tar shards
    prompts: str | None = None          # prompt file: teacher-generated data instead of images
    prompt_column: str | None = None    # field/column of a JSONL/CSV prompt file
    max_prompts: int = 0                # use the first N prompts (0: all)
    cache_dir: str | None = None        # default <out>/cache
    buckets: str = "model"              # model | square | HxW,HxW,...
    px: int = 0                         # teacher data / square bucket size (0: the model's native size)
    encode_batch: int = 8               # images per VAE call when caching
    cache_dtype: str = "fp16"           # storage dtype of cached latents and text states
    latents: str = "mean"               # mean | sample of the VAE posterior
    image_modes: str = "convert"        # convert (every mode to RGB) | same (refuse mixed modes)
    teacher_batch: int = 4              # prompts per teacher sampling call
    teacher_steps: int | None = None    # teacher sampler steps (default: the pipeline's)
    teacher_guidance: float | None = None  # teacher CFG scale (default: the pipeline's)
    sample_prompts: str | None = None   # prompt file of the previews (default: the first data captions)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.data and self.prompts:
            raise ValueError("give data (images) or prompts (teacher-generated data), not both")
        for name in ("encode_batch", "teacher_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.max_prompts < 0 or self.px < 0:
            raise ValueError(f"max_prompts and px must be >= 0, got {self.max_prompts}, {self.px}")
        if self.cache_dtype not in ("fp16", "bf16", "fp32"):
            raise ValueError(f"cache_dtype must be fp16, bf16 or fp32, got {self.cache_dtype!r}")
        if self.latents not in ("mean", "sample"):
            raise ValueError(f"latents must be 'mean' or 'sample', got {self.latents!r}")
        if self.image_modes not in ("convert", "same"):
            raise ValueError(f"image_modes must be 'convert' or 'same', got {self.image_modes!r}")


SECTIONS = {"distill": DistillConfig, "run": RunConfig, "data": DataConfig}


def recipe_sections() -> dict[str, list[str]]:
    """Section → its field names."""
    return {k: [f.name for f in fields(c)] for k, c in SECTIONS.items()}


def _check_sections(where: str, obj: dict, allow_meta: bool) -> None:
    known = recipe_sections()
    for key, value in obj.items():
        if key in known:
            if not isinstance(value, dict):
                raise RecipeError(f"{where}: section {key!r} must be a mapping of fields")
            bad = sorted(set(value) - set(known[key]))
            if bad:
                raise RecipeError(f"{where}: unknown {key} field(s) {', '.join(bad)} (fields: {', '.join(known[key])})")
        elif not allow_meta or key not in ("model", "variants", "estimates", "notes", "paper"):
            raise RecipeError(f"{where}: unknown section {key!r} (sections: model, {', '.join(known)}, variants, "
                              "estimates, notes, paper)")


def load_recipe(path: str | os.PathLike, variant: str | None = None) -> dict[str, Any]:
    """``{"model", "distill", "run", "data", "variant"}`` of a recipe file, ``variant`` merged over the base."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise RecipeError(f"recipe {path}: expected a mapping at the top level")
    _check_sections(str(path), doc, allow_meta=True)
    out = {"model": doc.get("model"), "variant": variant,
           **{k: dict(doc.get(k) or {}) for k in SECTIONS}}
    if variant:
        variants = doc.get("variants") or {}
        if variant not in variants:
            raise RecipeError(f"recipe {path} has no variant {variant!r} (variants: {', '.join(variants) or 'none'})")
        over = variants[variant] or {}
        _check_sections(f"{path}, variant {variant}", over, allow_meta=False)
        for k in SECTIONS:
            out[k].update(over.get(k) or {})
    for k, cls in SECTIONS.items():   # types and values checked now, before any work
        for f in fields(cls):
            if f.name in out[k] and isinstance(out[k][f.name], list):
                out[k][f.name] = tuple(out[k][f.name])
        try:
            cls(**out[k])
        except (TypeError, ValueError) as e:
            raise RecipeError(f"recipe {path}{f', variant {variant}' if variant else ''}: {k}: {e}") from None
    return out


# --------------------------------------------------------------------------------------------------
# Validation before any work
# --------------------------------------------------------------------------------------------------

def _model_facts(model: str):
    """(factors, native px) of a registered real model from its shipped config (no weights), else None."""
    from ..models import get_spec
    from ..models.registry import UnknownModelError

    try:
        spec = get_spec(model)
    except UnknownModelError:
        return None
    if spec.embedded:
        raise ValueError(f"{model} is an embedded model: it distills on its procedural dataset "
                         f"(aconv distill --model {model} without --data/--prompts)")
    return spec.grid_factors, spec.default_px


def validate_data(model: str, data: DataConfig, progress: bool = True) -> dict:
    """Check the data of a run before any weight is loaded; return what was opened and its identity.

    Returns ``{"source"?, "prompts"?, "table"?, "identity": {...}}``. Raises DataError / PromptError /
    ValueError with one-line messages naming the problem.
    """
    if not data.data and not data.prompts:
        raise DataError("no data: give data (an image folder, manifest or tar shards) or prompts (a prompt file "
                         "for teacher-generated data)")
    facts = _model_facts(model)
    out: dict[str, Any] = {"facts": facts}
    if data.prompts:
        prompts = load_prompts(data.prompts, data.prompt_column, limit=data.max_prompts or None)
        out["prompts"] = prompts
        if facts is not None and data.px:
            m = facts[0][0] * facts[0][1] * facts[0][2]
            if data.px % m:
                raise DataError(f"px={data.px}: the teacher's image size must be a multiple of {m} for {model}")
        out["identity"] = {"data": f"prompts:{prompts_fingerprint(prompts)}",
                           "teacher": [data.px, data.teacher_batch, data.teacher_steps, data.teacher_guidance]}
    else:
        src = open_source(data.data, image_modes=data.image_modes, progress=progress)
        out["source"] = src
        if facts is not None:
            out["table"] = parse_buckets(data.buckets, model, facts[0], data.px or facts[1])
        out["identity"] = {"data": f"images:{src.fingerprint()}", "buckets": data.buckets, "px": data.px}
    if data.sample_prompts:
        out["sample_prompts"] = load_prompts(data.sample_prompts)
    return out


# --------------------------------------------------------------------------------------------------
# The one call
# --------------------------------------------------------------------------------------------------

def _validate_on_main(state, model: str, data: DataConfig, progress: bool) -> dict:
    """:func:`validate_data` on the main process only (it decodes every image), shared with the others; an error
    there is raised on every process."""
    if state.num_processes == 1:
        return validate_data(model, data, progress)
    import torch.distributed as dist

    payload: list = [None]
    if state.is_main_process:
        try:
            checked = validate_data(model, data, progress)
            src = checked.get("source")
            payload = [{"checked": {k: v for k, v in checked.items() if k != "source"},
                        "captions": [r.caption for r in src.records if r.caption] if src is not None else None}]
        except Exception as e:  # noqa: BLE001 - re-raised on every process below
            payload = [{"error": e}]
    dist.broadcast_object_list(payload, src=0)
    if "error" in payload[0]:
        raise payload[0]["error"]
    checked = payload[0]["checked"]
    if payload[0]["captions"] is not None:
        checked["captions"] = payload[0]["captions"]
    if state.is_main_process:
        checked = {**checked, "source": src}
    return checked


def _text_encoders_off(pipe) -> None:
    for name in ("text_encoder", "text_encoder_2"):
        m = getattr(pipe, name, None)
        if m is not None:
            m.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def distill_model(model: str, out: str | os.PathLike, *, cfg: DistillConfig | None = None, run: RunConfig | None = None,
                  data: DataConfig | None = None, device=None, resume: bool = False, quiet: bool = False, state=None,
                  load_kwargs: dict | None = None) -> dict:
    """Distill a real model's self-attention (``model``: registry name, hub id or local pipeline folder) into the
    mixers of ``cfg.mixer`` with the data of ``data``; see the module docstring. Returns the run's summary."""
    from ..models import load_pipeline

    cfg, run, data = cfg or DistillConfig(), run or RunConfig(), data or DataConfig()
    out = Path(out)
    if state is None:
        from accelerate import PartialState

        state = PartialState(cpu=device is not None and torch.device(device).type == "cpu")
    main = state.is_main_process
    checked = _validate_on_main(state, model, data, progress=not quiet and main)
    identity = {"model": str(model), **checked["identity"]}
    ckpt_path = out / "ckpt.pt"
    if resume and ckpt_path.exists():
        check_resume(torch.load(ckpt_path, map_location="cpu", weights_only=False), identity, cfg, run, str(ckpt_path))

    # -- the pipeline ------------------------------------------------------------------------------
    wdtype = resolve_weight_dtype(run)
    dev = torch.device(device) if device is not None and state.num_processes == 1 else torch.device(state.device)
    pipe = load_pipeline(model, device=dev, dtype=wdtype, **(load_kwargs or {}))
    if wdtype == torch.float16:
        pipe.vae.to(torch.float32)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    encoder = PipelineEncoder(pipe, latents=data.latents, device=dev, seed=cfg.seed)
    cache_dir = Path(data.cache_dir) if data.cache_dir else out / "cache"
    dist = dict(process_index=state.process_index, num_processes=state.num_processes,
                barrier=state.wait_for_everyone, progress=not quiet and main)
    if data.prompts:
        px = data.px or encoder.native_px
        cache = generate_teacher_data(pipe, encoder, checked["prompts"], cache_dir / "teacher", height=px, width=px,
                                      batch_size=data.teacher_batch, seed=cfg.seed,
                                      num_inference_steps=data.teacher_steps, guidance_scale=data.teacher_guidance,
                                      dtype=data.cache_dtype, **dist)
        captions = checked["prompts"]
    else:
        table = checked.get("table") or parse_buckets(data.buckets, model, encoder.factors, data.px or encoder.native_px)
        cache = build_image_cache(encoder, data.data, cache_dir, model=model, buckets=table,
                                  encode_batch=data.encode_batch, dtype=data.cache_dtype, source=checked.get("source"),
                                  **dist)
        captions = checked.get("captions") or [r.caption for r in checked["source"].records if r.caption]
        px = data.px or encoder.native_px

    preview = None
    if run.sample_every and main:
        prompts = (checked.get("sample_prompts") or captions or ["a photograph"])[:run.num_samples]
        preview = PreviewSampler(pipe, encoder, prompts, px=run.sample_px or px, steps=run.sample_steps, seed=cfg.seed)
    _text_encoders_off(pipe)
    batches = cached_batches(cache, encoder.kind, cfg.batch, cfg.seed, cfg.caption_dropout)
    distiller = AcceleratedDistiller(pipe, batches, cfg, out, run=run, state=state, device=dev, resume=resume,
                                     quiet=quiet, identity=identity, preview=preview)
    summary = distiller.run()
    return {**summary, "model": str(model), "cache": str(cache_dir)}
