"""Shared plumbing of the locality chapters: generate with capture, cache on disk, analyze per layer.

One *capture study* = one model, a list of prompts, one sampler setting: the images it generated
and, for every self-attention layer, the [N, N] map averaged over heads, the selected sampling
steps, the prompts and the conditional CFG branch (:mod:`aconvlib.analysis.capture`). Studies are cached
under ``output_dir/captures/`` keyed by their parameters, so chapters 02–05 reuse one capture, and
per-layer analyses (:mod:`aconvlib.analysis.locality`) are cached next to them.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..analysis import locality as L
from ..analysis.capture import capture_self_attention
from ..models import get_spec
from ..utils import fingerprint, parse_dtype

__all__ = ["CaptureStudy", "analyze_study", "capture_study", "default_prompts", "generation_kwargs", "layer_label",
           "load_study_pipeline", "model_generation", "window_share"]

# Generic prompts for the real models (the paper uses Text2Image-Multi-Prompt; any varied set works).
REAL_PROMPTS = [
    "a photograph of a red fox sitting in a snowy forest",
    "a bowl of ramen on a wooden table, studio lighting",
    "a lighthouse on a rocky coast at sunset, oil painting",
    "portrait of an old fisherman with a grey beard",
    "a futuristic city skyline at night with neon lights",
    "a cat sleeping on a windowsill next to potted plants",
    "a vintage bicycle leaning against a brick wall",
    "an astronaut riding a horse on the moon, digital art",
]

def default_prompts(model: str, n: int, seed: int = 1234) -> list[str]:
    """``n`` prompts: held-out captions of the mini grammar for embedded models, else generic ones."""
    if model.lower().startswith("mini"):
        from ..mini.dataset import prompts

        return prompts(n, split="heldout", seed=seed)
    return [REAL_PROMPTS[i % len(REAL_PROMPTS)] for i in range(n)]


SCHEDULERS = ("dpm", "pipeline")


def model_generation(model: str, gen: dict) -> dict:
    """The generation settings of ``model`` in a chapter whose settings are ``gen``: unchanged for a model without
    its own sampler (the chapter's steps and guidance: the paper's DPM-Solver++ setting), while a model whose spec
    carries :class:`~aconvlib.models.sampling.Sampling` (FLUX.1, SD3.5: distilled or trained for their own
    sampler) takes its steps, guidance scale, scheduler and ``max_sequence_length`` from there."""
    own = get_spec(model).sampling
    if own is None:
        return dict(gen)
    out = {**gen, "steps": int(own.steps), "guidance_scale": float(own.guidance_scale), "scheduler": own.scheduler}
    if own.max_sequence_length is not None:
        out["max_sequence_length"] = int(own.max_sequence_length)
    return out


def _default_scheduler(model: str) -> str:
    """The model's own scheduler choice (:attr:`ModelSpec.sampling`); ``"dpm"`` for a model without one, and for a
    hub id or folder the registry does not know (e.g. a released student's base, ``Lykon/DreamShaper``)."""
    from ..models import UnknownModelError, lookup_spec

    try:
        own = lookup_spec(model).sampling
    except UnknownModelError:
        return "dpm"
    return "dpm" if own is None else own.scheduler


def generation_kwargs(pipe) -> dict:
    """Extra call arguments so that ``pipe`` generates exactly the requested height and width.

    PixArt pipelines snap sizes to their aspect-ratio bins (and resize the result back) unless
    ``use_resolution_binning=False``; a capture at a snapped size would not match the requested token grid.
    """
    import inspect

    call = getattr(type(pipe), "__call__", None)
    try:
        params = inspect.signature(call).parameters if call is not None else {}
    except (TypeError, ValueError):
        params = {}
    return {"use_resolution_binning": False} if "use_resolution_binning" in params else {}


def load_study_pipeline(model: str, device="cpu", dtype="float32", weights: str = "trained",
                        scheduler: Optional[str] = None):
    """A text-to-image pipeline for ``model``; ``weights="random"`` builds an untrained mini model (tests only).

    ``scheduler="dpm"`` samples with DPM-Solver++ (multistep), as the paper does for every model, built from
    the pipeline's own scheduler config (its noise schedule and prediction type); ``"pipeline"`` keeps the
    scheduler the checkpoint ships (PNDM for SD1.5, Euler for SDXL, DPM-Solver for PixArt-Σ); None: the model's own
    (:attr:`ModelSpec.sampling`, FLUX.1 and SD3.5 keep their flow-matching scheduler), else ``"dpm"``. A
    flow-matching pipeline with ``"dpm"`` is refused (DPM-Solver++ built from its config would sample a different
    noise schedule without saying so).
    """
    scheduler = _default_scheduler(model) if scheduler is None else scheduler
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    dtype = parse_dtype(dtype)
    if weights == "trained":
        from ..models import load_pipeline

        pipe = load_pipeline(model, device=device, dtype=dtype)
    elif weights == "random" and model.lower() in ("mini-sd", "mini-dit"):
        from ..mini.models import build_denoiser, build_text_encoder, make_scheduler
        from ..mini.pipeline import MiniPipeline
        from ..mini.tokenizer import WordTokenizer

        torch.manual_seed(0)
        tok = WordTokenizer.for_grammar()
        den = build_denoiser("unet" if model.lower() == "mini-sd" else "dit").eval()
        pipe = MiniPipeline(den, build_text_encoder(tok.vocab_size).eval(), tok, make_scheduler("dpm"))
        pipe.to(device, dtype)
    else:
        raise ValueError(f"weights must be 'trained' (or 'random' for mini-sd / mini-dit), got {weights!r}")
    if scheduler == "dpm" and "FlowMatch" in type(pipe.scheduler).__name__:
        raise ValueError(f"{model} samples with its flow-matching scheduler ({type(pipe.scheduler).__name__}): "
                         "use scheduler='pipeline' (or None, the model's own), not 'dpm'")
    if scheduler == "dpm" and type(pipe.scheduler).__name__ != "DPMSolverMultistepScheduler":
        from diffusers import DPMSolverMultistepScheduler

        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def layer_label(name: str, block_type: str = "self") -> str:
    """Short label of a layer path: ``down0.1``, ``mid``, ``up2.0`` (U-Net), ``block 3`` (DiT); joint-attention
    transformers (``block_type`` from the layer): ``double 3`` / ``single 12`` (FLUX), ``joint 3`` (SD3), ``self 3``
    (SD3.5's image-only ``attn2``)."""
    m = re.match(r"^(?:single_)?transformer_blocks\.(\d+)\.attn2?$", name)
    if m and block_type in ("double", "single", "joint") or (m and name.endswith(".attn2")):
        return f"{block_type} {m.group(1)}"
    m = re.match(r"^(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn1$", name)
    if m:
        lbl = f"{m.group(1)}{m.group(2)}.{m.group(3)}"
        return lbl if m.group(4) == "0" else f"{lbl}.{m.group(4)}"
    m = re.match(r"^mid_block\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn1$", name)
    if m:
        return "mid" if m.group(2) == "0" else f"mid.{m.group(2)}"
    m = re.match(r"^transformer_blocks\.(\d+)\.attn1$", name)
    if m:
        return f"block {m.group(1)}"
    return name


@dataclass
class CaptureStudy:
    """Result of :func:`capture_study`.

    Attributes:
        model, weights, family: what produced it (``weights`` is ``"trained"`` or ``"random"``).
        prompts: the prompts; ``images``: uint8 [P, H, W, 3], one generated image per prompt.
        layers: per self-attention layer (module order): name, label, level, grid, heads.
        maps: name → [N, N] fp32 averaged map; ``grids``: name → (H', W').
        params: the generation / capture parameters (the cache key); ``seconds``: generation time.
        joint: joint-attention layers only (name → dict): ``block_type``, ``text_share`` [N] (each image query's
            mean mass on the text keys), ``padding_share`` [N] (on the prompt's padding tokens), ``text_key_mass``
            [L] (the mass each text key receives); ``maps`` of these layers are the image→image part renormalized
            over the image keys (:mod:`aconvlib.analysis.joint_capture`).
    """

    model: str
    weights: str
    family: str
    prompts: list
    images: np.ndarray
    layers: list
    maps: dict
    grids: dict
    params: dict
    seconds: float = 0.0
    path: Optional[str] = field(default=None, compare=False)
    parts: list = field(default_factory=list, compare=False, repr=False)   # per-prompt studies of a pooled one
    joint: dict = field(default_factory=dict, repr=False)

    def names(self, level: Optional[int] = None) -> list[str]:
        return [d["name"] for d in self.layers if level is None or d["level"] == level]

    @property
    def levels(self) -> list[int]:
        return sorted({d["level"] for d in self.layers})

    def describe(self) -> str:
        p = self.params
        return (f"{self.model} ({self.weights} weights, {self.family}), {len(self.prompts)} prompt(s), "
                f"{p['height']}x{p['width']} px, {p['steps']} steps, CFG {p['guidance_scale']}, "
                f"{len(self.maps)} self-attention layers")


def _weights_identity(spec, weights: str) -> str:
    """Identifies the weights in the cache key: size and mtime of an embedded model's files, else the hub id."""
    if weights != "trained":
        return weights
    if spec.embedded:
        folder = spec.config_path.parent
        files = sorted(folder.glob("*")) if folder.is_dir() else []
        return ";".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files) or "missing"
    return str(spec.hub_id)


def _key(params: dict) -> str:
    return fingerprint(params, 12, default=str)


def capture_study(model: str, prompts: Optional[Sequence[str]] = None, *, n_prompts: int = 4, steps: int = 20,
                  guidance_scale: float = 4.0, height: Optional[int] = None, width: Optional[int] = None,
                  seed: int = 0, device="cpu", dtype="float32", capture_steps=None, layers=None,
                  batch_size: int = 4, memory_budget_gb: float = 8.0, output_dir=None, weights: str = "trained",
                  cache: bool = True, pipe=None, verbose: bool = True, scheduler: Optional[str] = None,
                  max_sequence_length: Optional[int] = None, accelerator=None) -> CaptureStudy:
    """Generate one image per prompt with ``model`` while capturing every self-attention map.

    Args:
        model: registry name (``mini-sd``, ``mini-dit``, ``sd15``, ``sdxl``, ``pixart-sigma-512``, ...).
        prompts: the prompts, or a prompt file (:func:`aconvlib.training.prompts.load_prompts`: text, JSONL,
            JSON or CSV) (default: :func:`default_prompts` with ``n_prompts``).
        steps, guidance_scale, height, width, seed: sampler settings (height/width default to the
            model's native size); prompt batch ``i`` uses ``torch.Generator().manual_seed(seed + i)``.
        capture_steps: step indices to average (default: all), see :func:`capture_self_attention`.
        layers: layer selection (default: all self-attention layers).
        output_dir: cache folder (``<output_dir>/captures``); None disables caching.
        pipe: an already loaded pipeline for ``model`` (skips loading).
        scheduler: ``"dpm"`` (the paper's DPM-Solver++) or ``"pipeline"`` (the checkpoint's own); None (default):
            the model's own where its spec has one (FLUX.1, SD3.5), else ``"dpm"``; see :func:`load_study_pipeline`.
        max_sequence_length: joint-attention models: the prompt's T5 tokens (None: the pipeline's default). Their
            captures also keep each layer's text side (``study.joint``: text share split into the prompt's tokens
            and padding with :func:`~aconvlib.models.families.joint.prompt_token_mask`).
        accelerator: an accelerate ``Accelerator``/``PartialState`` of a data-parallel run (``accelerate launch``,
            ``torchrun``): the prompt batches are dealt round-robin to the processes (each batch keeps its
            generator seed), the accumulators are summed once at the end
            (:meth:`~aconvlib.analysis.capture.AttentionCapture.reduce`), the images gathered, and the main
            process writes the cache; every process returns the whole study, the same as one process's.
    """
    spec = get_spec(model)
    height = height or spec.default_px
    width = width or spec.default_px
    if isinstance(prompts, (str, os.PathLike)):
        from ..training.prompts import load_prompts

        prompts = load_prompts(prompts)
    prompts = list(prompts) if prompts is not None else default_prompts(model, n_prompts)
    params = dict(model=spec.name, weights=weights, prompts=prompts, steps=steps, guidance_scale=guidance_scale,
                  height=height, width=width, seed=seed, dtype=str(parse_dtype(dtype)).replace("torch.", ""),
                  capture_steps=None if capture_steps is None else list(capture_steps), layers=layers,
                  batch_size=batch_size, fingerprint=_weights_identity(spec, weights))
    scheduler = _default_scheduler(spec.name) if scheduler is None else scheduler
    if scheduler != "dpm":  # the default keeps the cache keys of earlier runs
        params["scheduler"] = scheduler
    call = {}
    if max_sequence_length is not None:
        params["max_sequence_length"] = call["max_sequence_length"] = int(max_sequence_length)
    path = None
    if output_dir is not None:
        path = Path(output_dir) / "captures" / f"{spec.name}-{_key(params)}.pt"
        if cache and path.exists():
            study = CaptureStudy(**torch.load(path, weights_only=False))
            study.path = str(path)
            if verbose:
                print(f"[studies] loaded cached capture {path}")
            return study
    if pipe is None:
        from .budget import check_memory   # refuse an over-budget run before loading anything

        check_memory([spec.name], device, str(parse_dtype(dtype)).replace("torch.", ""), height=height, width=width,
                     batch_size=min(batch_size, len(prompts)), capture=True)
    pipe = pipe or load_study_pipeline(spec.name, device, dtype, weights, scheduler)
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator is not None else (1, 0)
    batches: dict[int, list] = {}
    t0 = time.time()
    latent_hw = spec.latent_grid(height, width)
    with capture_self_attention(pipe, layers, steps=capture_steps, memory_budget_gb=memory_budget_gb,
                                latent_hw=latent_hw) as cap:
        joint = any(lay.joint for lay in cap.layers)
        for i in list(range(0, len(prompts), batch_size))[rank::world]:
            gen = torch.Generator("cpu").manual_seed(seed + i)
            if joint:   # which text tokens are the prompt's and which are padding, for this batch
                from ..models.families.joint import prompt_token_mask

                cap.text_mask = prompt_token_mask(pipe, prompts[i:i + batch_size], max_sequence_length)
            out = pipe(prompts[i:i + batch_size], num_inference_steps=steps, guidance_scale=guidance_scale,
                       generator=gen, height=height, width=width, **generation_kwargs(pipe), **call)
            batches[i] = [np.asarray(im.convert("RGB")) for im in out.images]
    seconds = time.time() - t0
    if world > 1:
        import torch.distributed as dist

        cap.reduce()
        parts = [None] * world
        dist.all_gather_object(parts, (batches, seconds))
        batches = {i: ims for part, _ in parts for i, ims in part.items()}
        seconds = max(sec for _, sec in parts)
    images = [im for i in sorted(batches) for im in batches[i]]
    layer_info = [dict(name=lay.name, label=layer_label(lay.name, lay.block_type), level=lay.level,
                       grid=cap.grids[lay.name], heads=lay.heads, **({"block_type": lay.block_type} if joint else {}))
                  for lay in cap.layers]
    study = CaptureStudy(model=spec.name, weights=weights, family=spec.family, prompts=prompts,
                         images=np.stack(images), layers=layer_info, maps=cap.maps, grids=cap.grids,
                         params=params, seconds=seconds, joint=_joint_side(cap) if joint else {})
    if path is not None:
        if rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v for k, v in study.__dict__.items() if k not in ("path", "parts")}, path)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        study.path = str(path)
    if verbose and rank == 0:
        print(f"[studies] {study.describe()}: generated and captured in {seconds:.1f} s")
    return study


def _joint_side(cap) -> dict:
    """The text side of a capture's joint layers (see :attr:`CaptureStudy.joint`)."""
    text, pad, keys, kinds = cap.text_share, cap.padding_share, cap.text_key_mass, cap.block_types
    return {n: {"block_type": kinds[n], "text_share": text[n], "padding_share": pad[n], "text_key_mass": keys[n]}
            for n in text}


def per_prompt_study(model: str, prompts: Optional[Sequence[str]] = None, *, n_prompts: int = 4, **gen) -> CaptureStudy:
    """One capture per prompt (each cached on its own, each generated with ``seed``), pooled: the returned study's
    maps are the mean of the per-prompt maps (the same estimand as one capture over all prompts) and
    ``study.parts`` holds the per-prompt studies, so a chapter can bootstrap over prompts. Chapter 2's per-image
    captures with the same settings are the same cache entries."""
    prompts = list(prompts) if prompts is not None else default_prompts(model, n_prompts)
    gen = {k: v for k, v in gen.items() if k not in ("n_prompts",)}
    parts = [capture_study(model, [p], **gen) for p in prompts]
    return pool_studies(parts)


def pool_studies(parts: Sequence[CaptureStudy]) -> CaptureStudy:
    """A study whose maps are the mean of ``parts``' maps (same model, layers and settings), keeping ``parts``."""
    first = parts[0]
    if any(p.model != first.model or [d["name"] for d in p.layers] != [d["name"] for d in first.layers]
           for p in parts):
        raise ValueError("pool_studies needs studies of one model with the same layers")
    maps = {name: torch.stack([p.maps[name].float() for p in parts]).mean(0) for name in first.maps}
    joint = {name: {k: (v if isinstance(v, str) else torch.stack([p.joint[name][k].float() for p in parts]).mean(0))
                    for k, v in side.items()} for name, side in first.joint.items()}
    prompts = [q for p in parts for q in p.prompts]
    return CaptureStudy(model=first.model, weights=first.weights, family=first.family, prompts=prompts,
                        images=np.concatenate([p.images for p in parts]), layers=first.layers, maps=maps,
                        grids=first.grids, params={**first.params, "prompts": prompts, "pooled": len(parts)},
                        seconds=sum(p.seconds for p in parts), parts=list(parts), joint=joint)


def window_share(curve, kernel_sizes, k: int) -> float:
    """ASM at window size ``k`` (odd) read from a curve."""
    ks = list(kernel_sizes)
    return float(curve[ks.index(k)]) if k in ks else float("nan")


def analyze_study(study: CaptureStudy, *, cutoff: float = 0.1, order: int = 2, norm: str = "abs",
                  threshold: float = 0.8, artifact_ratio: float = 3.0, cache: bool = True):
    """Every :mod:`aconvlib.analysis.locality` measure for every layer of ``study``, as a pandas DataFrame.

    Columns: name, label, level, grid, ks (odd K up to the grid), asm, asm_grad, hp (high-pass ASM,
    Butterworth ``cutoff``/``order``, normalization ``norm``), hp_grad, erf, erf_hp, prior (b as
    [H', W']), prior_mass, context_mass, prior_tv_uniform, context_asm, erf_context, context_pos_asm,
    erf_context_pos (ASM / ERF of the positive part of R), sink_share,
    sink_pos, sink_ratio, artifact (``sink_ratio ≥ artifact_ratio``: the average query gives the key at least that
    multiple of the uniform share 1/N; an absolute share would mean 6.4× uniform on 8×8 and 102× on 32×32). Cached
    next to the capture.
    """
    import pandas as pd

    settings = dict(cutoff=cutoff, order=order, norm=norm, threshold=threshold, artifact_ratio=artifact_ratio,
                    columns=2)   # bump when the columns change (the cache is keyed by the settings)
    cache_path = None
    if study.path is not None:
        cache_path = Path(study.path).with_suffix(f".analysis-{_key(settings)}.pt")
        if cache and cache_path.exists():
            return pd.DataFrame(torch.load(cache_path, weights_only=False))
    rows = []
    for info in study.layers:
        name, grid = info["name"], tuple(info["grid"])
        A = study.maps[name]
        ks = L.odd_kernel_sizes(grid)
        asm = L.asm_curve(A, grid, ks)
        hp = L.highpass_asm_curve(A, grid, ks, cutoff, order, norm=norm)
        dec = L.decompose(A, grid, ks)
        sink = L.attention_sink(A, grid)
        rows.append(dict(
            name=name, label=info["label"], level=info["level"], grid=grid, tokens=grid[0] * grid[1], ks=ks,
            asm=asm.numpy(), asm_grad=L.asm_gradient(asm, ks).numpy(), hp=hp.numpy(),
            hp_grad=L.asm_gradient(hp, ks).numpy(), erf=float(L.erf(asm, ks, threshold)),
            erf_hp=float(L.erf(hp, ks, threshold)), prior=dec.prior_image.numpy(), prior_mass=dec.prior_mass,
            context_mass=dec.context_mass, prior_tv_uniform=dec.prior_tv_uniform,
            context_asm=dec.context_asm.numpy(), erf_context=float(L.erf(dec.context_asm, ks, threshold)),
            context_pos_asm=dec.context_pos_asm.numpy(),
            erf_context_pos=float(L.erf(dec.context_pos_asm, ks, threshold)),
            sink_share=sink.share, sink_pos=sink.position, sink_ratio=sink.ratio_to_uniform,
            artifact=sink.ratio_to_uniform >= artifact_ratio))
    if cache_path is not None:
        torch.save(rows, cache_path)
    return pd.DataFrame(rows)
