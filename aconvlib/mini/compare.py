"""The paper's comparison (Tables 2–3, Figs. 6 and 9) on the embedded models: every token mixer, one evaluator.

Variants of one embedded model (:func:`comparison_variants`), all scored by the attribute classifier
(:func:`~aconvlib.mini.evaluate.evaluate_model`: prompt adherence and the FDD analogue) on the same held-out
prompts and the same initial noise:

- ``teacher``: the model's own self-attention;
- ``deltaconv`` (shipped): the ΔConv student distilled on an H100 (``data/models/<model>-deltaconv``);
- ``deltaconv`` / ``linear`` at the **CPU budget**: ΔConv and LinFusion-style students distilled from scratch with
  the same steps, batch, seed, data and hyper-parameters (``data/models/<model>-<mixer>-cpu``,
  ``scripts/distill_cpu_comparison.sh``); LinFusion starts from the teacher's q/k/v/out, ΔConv from fresh blocks,
  as in the methods themselves;
- ``window``: DiTFastAttn-style window attention on the teacher's own weights (training-free, 1-D band);
- ``na``: neighborhood attention K×K on the teacher's own weights (training-free, paper Fig. 6).

:func:`control_variants` are the rows that let those ablations mean something (issue 20): self-attention
removed (``none``) and uniform attention (``uniform``) next to NA with the paper's K scaled to the grid
(:func:`paper_scaled_kernel`) and the chapter's K, the shipped ΔConv student, the CPU-budget ΔConv students at
the paper's K and at the scaled small K, and the CPU-budget LinFusion students from the teacher's weights and
from scratch (the same start as ΔConv); ``scripts/eval_controls.py`` scores them with intervals.

:func:`na_sweep` scores NA for a range of K (Fig. 6 extended) and :func:`smallest_kernel_keeping` reads off the
smallest K whose adherence stays within a tolerance of the teacher's. :func:`mini_receptive_fields` measures the
gradient ERF of every token mixer (:mod:`aconvlib.analysis.receptive_field`) on noised held-out images (Fig. 9).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from ..analysis.locality import erf
from ..analysis.receptive_field import ReceptiveField, receptive_fields
from ..mixers.neighborhood import clip_kernel
from ..mixers.variants import Method, mounted
from ..models import get_denoiser, load_pipeline, models_dir, self_attention_layers
from . import dataset
from .distill import adapter_dir
from .evaluate import evaluate_model
from .models import to_latent

__all__ = ["CHAPTER_NA_KERNEL", "Method", "PAPER_K_FRACTION", "Variant", "adapter_kernel_sizes",
           "comparison_variants", "control_variants", "describe_smallest_kernel", "evaluate_variants",
           "finest_grid_side", "keep_tolerance", "mini_receptive_fields", "mount_variant", "na_sweep",
           "paper_scaled_kernel", "per_model", "score_variants", "smallest_kernel_keeping", "student_dir",
           "student_info", "variant_pipeline"]

QUALITY_COLUMNS = ("n_prompts", "prompt_adherence", "shape", "color", "size", "position", "fdd")
#: the evaluator's per-image results a row keeps for its intervals (:mod:`aconvlib.mini.intervals`)
PER_IMAGE_COLUMNS = ("per_image", "features")
#: the paper's NA / ΔConv kernel against its grid: K = 13 on SD's 64-token side (Fig. 6, Sec. 5.1)
PAPER_K_FRACTION = 13 / 64
#: the K the chapters use for NA on the embedded models (chapter 5 and 8: ≈ 0.2 of the finest grid side)
CHAPTER_NA_KERNEL = {"mini-sd": 7, "mini-dit": 5}
#: the finest token-grid side of each embedded model at 64 px (mini-sd's top U-Net level, mini-dit's patch grid)
_FINEST_SIDE = {"mini-sd": 32, "mini-dit": 16}


def student_dir(model: str, mixer: str, budget: str = "cpu") -> Path:
    """Where a comparison student ships: ``models/<model>-<mixer>-<budget>`` (package data); the shipped
    (GPU-budget) ΔConv student is :func:`~aconvlib.mini.distill.adapter_dir`."""
    return models_dir() / f"{model}-{mixer}-{budget}"


def student_info(folder: Path) -> dict:
    """Budget of a distilled student folder: steps, batch, samples seen, wall time and machine (from its
    ``config.json`` and ``distill_log.jsonl``)."""
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg = cfg.get("distill", cfg)
    info = {"steps": cfg.get("steps"), "batch": cfg.get("batch"), "lr": cfg.get("lr"), "seed": cfg.get("seed"),
            "feature_weight": cfg.get("feature_weight"), "init_adapter": cfg.get("init_adapter")}
    if info["steps"] and info["batch"]:
        info["samples"] = info["steps"] * info["batch"]
    log = folder / "distill_log.jsonl"
    if log.exists():
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        summaries = [x["summary"] for x in lines if "summary" in x]
        steps = [x for x in lines if "loss" in x]
        if summaries:
            info["minutes"] = sum(s.get("seconds", 0.0) for s in summaries) / 60
        if steps:
            info["first_logged_loss"] = steps[0]["loss"]
            info["final_loss"] = steps[-1]["loss"]
    meta = folder / "run.json"
    if meta.exists():
        info.update(json.loads(meta.read_text()))
    return info


@dataclass
class Variant:
    """One row of the comparison, typed: which mixer, with which K / window / student. Its display label,
    training and setting columns are the book's (:mod:`aconvlib.book.labels`)."""

    method: Method
    kernel: Optional[int] = None          # K of NA rows and of single-K ΔConv students
    window: Optional[int] = None          # keys per query of window attention (1-D band)
    student: Optional[str] = None         # distilled rows: "shipped" (H100 budget) | "cpu" (CPU budget) | "given"
    start: Optional[str] = None           # a student's start: "scratch" | "teacher"
    names_start: bool = False             # the row is told apart by its start (the controls)
    roles: tuple = ()                     # NA / small-K rows: "paper-scaled" and/or "chapter" (the chapter's K)
    folder: Optional[Path] = None         # a student's folder (adapter in ``folder/"adapter"``)
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.method = Method(self.method)

    @property
    def kernels(self) -> tuple:
        """The distinct kernel sizes of a ΔConv student's layers (from its saved adapter), else ()."""
        return adapter_kernel_sizes(self.folder) if self.folder is not None else ()

    @property
    def info(self) -> dict:
        """A student's budget (:func:`student_info`), else {}."""
        return student_info(self.folder) if self.folder is not None else {}


def adapter_kernel_sizes(folder) -> tuple:
    """The distinct kernel sizes of the ΔConv layers of the adapter saved in ``folder/"adapter"``, ascending."""
    cfg = json.loads((Path(folder) / "adapter" / "config.json").read_text())
    return tuple(sorted({int(layer["kernel_size"]) for layer in cfg.get("layers", []) if "kernel_size" in layer}))


def _has_adapter(folder: Path) -> bool:
    return (Path(folder) / "adapter" / "config.json").exists()


def per_model(value, model: str):
    """``value[model]`` for a dict (per-model settings), else ``value``."""
    if isinstance(value, dict):
        if model not in value:
            raise KeyError(f"no setting for {model!r} in {value!r}")
        return value[model]
    return value


def comparison_variants(model: str, na_kernel=7, window=49, cpu_budget: bool = True,
                        shipped: bool = True) -> tuple[list[Variant], list[str]]:
    """The variants of :mod:`this module's docstring <aconvlib.mini.compare>` for ``model`` and the notes
    naming what is missing (a student folder that does not exist is left out and named). ``na_kernel`` and
    ``window`` are an int or a dict ``{model: value}``."""
    na_kernel, window = int(per_model(na_kernel, model)), int(per_model(window, model))
    out = [Variant(Method.TEACHER)]
    notes = []
    if shipped:
        d = adapter_dir(model)
        if _has_adapter(d):
            out.append(Variant(Method.DELTACONV, student="shipped", start="scratch", folder=d))
        else:
            notes.append(f"{model}: no shipped ΔConv student in {d}")
    if cpu_budget:
        for method, title, start in ((Method.DELTACONV, "ΔConv", "scratch"), (Method.LINEAR, "LinFusion", "teacher")):
            d = student_dir(model, method.value)
            if not _has_adapter(d):
                notes.append(f"{model}: no CPU-budget {title} student in {d} (scripts/distill_cpu_comparison.sh)")
                continue
            out.append(Variant(method, student="cpu", start=start, folder=d))
    out.append(Variant(Method.WINDOW, window=window, options={"window": window, "mode": "1d"}))
    out.append(Variant(Method.NA, kernel=na_kernel))
    return out, notes


def finest_grid_side(model: str) -> int:
    """The finest token-grid side of an embedded model at 64 px (mini-sd 32: its top U-Net level; mini-dit 16)."""
    if model not in _FINEST_SIDE:
        raise ValueError(f"no finest grid side known for {model!r}; choose one of {sorted(_FINEST_SIDE)}")
    return _FINEST_SIDE[model]


def paper_scaled_kernel(side: int, fraction: float = PAPER_K_FRACTION) -> int:
    """The paper's K = 13 on 64 tokens scaled to a ``side``-token grid: the odd K nearest ``fraction · side``
    (ties up): 16 -> 3 (3.25), 32 -> 7 (6.5), 64 -> 13."""
    x = float(fraction) * int(side)
    return max(1, 2 * int(x // 2) + 1)


def control_variants(model: str, na_kernels: Optional[Sequence[int]] = None,
                     small_kernel: Optional[int] = None) -> tuple[list[Variant], list[str]]:
    """The control rows of issue 20 for ``model`` (see the module docstring) and the notes naming what is missing.

    ``na_kernels``: the NA rows' K (default: the paper-scaled K, then the chapter's K when it differs);
    ``small_kernel``: K of the small-K ΔConv student (default: the paper-scaled K; its folder is
    ``student_dir(model, f"deltaconv-k{K}")``). Every row has ``kernel`` set where it has one K.
    """
    side = finest_grid_side(model)
    scaled = paper_scaled_kernel(side)
    small = int(small_kernel or scaled)
    if na_kernels is None:
        na_kernels = [scaled] + ([CHAPTER_NA_KERNEL[model]] if CHAPTER_NA_KERNEL[model] != scaled else [])
    out = [Variant(Method.TEACHER), Variant(Method.NONE), Variant(Method.UNIFORM)]
    notes = []
    for k in na_kernels:
        roles = tuple(r for r, kk in (("paper-scaled", scaled), ("chapter", CHAPTER_NA_KERNEL[model])) if kk == int(k))
        out.append(Variant(Method.NA, kernel=int(k), roles=roles))
    d = adapter_dir(model)
    if _has_adapter(d):
        out.append(Variant(Method.DELTACONV, kernel=_single_kernel(d), student="shipped", start="scratch", folder=d))
    else:
        notes.append(f"{model}: no shipped ΔConv student in {d}")
    students = [("deltaconv", Method.DELTACONV, "scratch", ()),
                (f"deltaconv-k{small}", Method.DELTACONV, "scratch", ("paper-scaled",)),
                ("linear", Method.LINEAR, "teacher", ()), ("linear-scratch", Method.LINEAR, "scratch", ())]
    for name, method, start, roles in students:
        d = student_dir(model, name)
        if not _has_adapter(d):
            script = "distill_cpu_comparison.sh" if name in ("deltaconv", "linear") else "distill_cpu_controls.sh"
            notes.append(f"{model}: no CPU-budget student {name!r} in {d} (scripts/{script})")
            continue
        kernel = _single_kernel(d) if method is Method.DELTACONV else None
        out.append(Variant(method, kernel=kernel, student="cpu", start=start, names_start=True, roles=roles, folder=d))
    return out, notes


def _single_kernel(folder: Path) -> Optional[int]:
    ks = adapter_kernel_sizes(folder)
    return ks[0] if len(ks) == 1 else None


def mount_variant(pipe, variant: Variant):
    """:func:`aconvlib.mixers.variants.mounted` with ``variant``'s mixer on ``pipe`` (a ``with`` block)."""
    adapter = Path(variant.folder) / "adapter" if variant.folder is not None else None
    return mounted(pipe, variant.method, kernel=variant.kernel, adapter=adapter, **variant.options)


@contextlib.contextmanager
def variant_pipeline(model: str, variant: Variant, device="cpu", teacher=None) -> Iterator:
    """The pipeline of ``variant``: ``teacher`` (loaded when not given) with the variant mounted, restored on exit."""
    teacher = teacher if teacher is not None else load_pipeline(model, device=device)
    with mount_variant(teacher, variant) as pipe:
        yield pipe


def score_variants(model: str, variants: Sequence[Variant], prompts, *, steps: int = 20,
                   guidance_scale: float = 4.5, seed: int = 0, device="cpu", n_real: int = 500,
                   return_images: bool = False, teacher=None) -> Iterator[tuple[Variant, dict]]:
    """``(variant, evaluator result)`` for every variant of ``model``, in order, on the same prompts and noise
    (one teacher pipeline, each variant mounted on it in turn); the result keeps ``images`` when asked."""
    teacher = teacher if teacher is not None else load_pipeline(model, device=device)
    for v in variants:
        with mount_variant(teacher, v) as pipe:
            yield v, evaluate_model(pipe, prompts, num_inference_steps=steps, guidance_scale=guidance_scale,
                                    seed=seed, n_real=n_real, return_images=return_images)


def evaluate_variants(models: Sequence[str], prompts, *, steps: int = 20, guidance_scale: float = 4.5, seed: int = 0,
                      na_kernel=7, window=49, device="cpu", n_real: int = 500, cpu_budget: bool = True,
                      shipped: bool = True, return_images: bool = False):
    """Table 3 on the embedded models: every variant of every model on the same prompts and noise.

    ``na_kernel`` / ``window``: an int or ``{model: value}``. Returns ``(results, notes)``: ``results`` is one
    ``(model, variant, evaluator result)`` per model and variant (the result holds ``images`` when
    ``return_images``), ``notes`` those of :func:`comparison_variants`. The book's
    :func:`aconvlib.book.comparison.table3_live` makes the labelled table.
    """
    results, notes = [], []
    for m in models:
        variants, missing = comparison_variants(m, na_kernel, window, cpu_budget, shipped)
        notes += missing
        for v, r in score_variants(m, variants, prompts, steps=steps, guidance_scale=guidance_scale, seed=seed,
                                   device=device, n_real=n_real, return_images=return_images):
            results.append((m, v, r))
    return results, notes


def na_sweep(model: str, kernels: Sequence[int], prompts, *, steps: int = 20, guidance_scale: float = 4.5,
             seed: int = 0, device="cpu", n_real: int = 500, teacher=None, known: Optional[dict] = None):
    """Prompt adherence and FDD analogue of ``model`` with every ``attn1`` as K×K neighborhood attention, per K
    (training-free, paper Fig. 6), plus the teacher (``K = None``, full attention). One row per K: ``model``,
    ``K``, ``grid`` (the finest layer's token grid), ``K/grid``, ``K_per_level`` (K after clipping to each
    level's grid) and the evaluator's columns. ``known``: ``{K or None: evaluator result}`` already measured on
    the same prompts, noise and settings (e.g. the teacher and NA rows of :func:`evaluate_variants`), not recomputed."""
    import pandas as pd

    pipe = teacher if teacher is not None else load_pipeline(model, device=device)
    layers = self_attention_layers(get_denoiser(pipe))
    grids = sorted({lay.grid for lay in layers}, reverse=True)
    kw = dict(num_inference_steps=steps, guidance_scale=guidance_scale, seed=seed, n_real=n_real)
    known = dict(known or {})
    full = known[None] if None in known else evaluate_model(pipe, prompts, **kw)
    rows = [{"model": model, "K": None, "grid": grids[0][0], "K/grid": float("nan"), "K_per_level": "full",
             **{k: v for k, v in full.items() if k in QUALITY_COLUMNS + PER_IMAGE_COLUMNS}}]
    for k in kernels:
        if int(k) in known:
            r = known[int(k)]
        else:
            with mounted(pipe, Method.NA, kernel=int(k)):
                r = evaluate_model(pipe, prompts, **kw)
        rows.append({"model": model, "K": int(k), "grid": grids[0][0], "K/grid": int(k) / grids[0][0],
                     "K_per_level": "/".join(str(clip_kernel(int(k), g)) for g in grids),
                     **{c: r.get(c) for c in QUALITY_COLUMNS + PER_IMAGE_COLUMNS}})
    return pd.DataFrame(rows)


def keep_tolerance(sweep, tolerance: float = 0.05) -> float:
    """How far below the teacher a K may score and still "keep its quality" on this sweep: ``tolerance``, or one
    prompt's share (1/n) when that is larger, since a share measured on n prompts moves in steps of 1/n (with 16
    prompts a 5% tolerance would otherwise mean "no prompt lost")."""
    n = int(sweep["n_prompts"].iloc[0]) if "n_prompts" in sweep and len(sweep) else 0
    return max(float(tolerance), 1.0 / n) if n > 0 else float(tolerance)


def smallest_kernel_keeping(sweep, tolerance: float = 0.05, column: str = "prompt_adherence") -> Optional[int]:
    """The smallest K of a :func:`na_sweep` frame (one model) from which on every larger K keeps ``column``
    within :func:`keep_tolerance` of the teacher's (the ``K = None`` row); None if no K does."""
    teacher = float(sweep.loc[sweep["K"].isna(), column].iloc[0])
    ks = sweep.dropna(subset=["K"]).sort_values("K")
    ok = (ks[column] >= teacher - keep_tolerance(sweep, tolerance) - 1e-9).tolist()
    for i, k in enumerate(ks["K"].astype(int).tolist()):
        if all(ok[i:]):
            return k
    return None


def describe_smallest_kernel(sweep, k: Optional[int], column: str = "prompt_adherence") -> str:
    """One phrase for the text about ``k`` (:func:`smallest_kernel_keeping` of ``sweep``): ``"7 (0.22 of the
    32-token side)"``, or, when no K kept the teacher's quality, the Ks tried and the largest one's score."""
    side = int(sweep["grid"].iloc[0])
    if k is not None:
        return f"{k} ({k / side:.2f} of the {side}-token side)"
    teacher = float(sweep.loc[sweep["K"].isna(), column].iloc[0])
    ks = sweep.dropna(subset=["K"]).sort_values("K")
    last = ks.iloc[-1]
    return (f"none of K = {', '.join(str(int(x)) for x in ks['K'])} (K = {int(last['K'])} scores "
            f"{float(last[column]):.0%} against the teacher's {teacher:.0%})")


def mini_receptive_fields(pipe, n: int = 4, px: int = 64, timesteps: Sequence[int] = (700, 300),
                          positions=3, seed: int = 0, threshold: float = 0.8) -> list[ReceptiveField]:
    """Gradient ERF of every token mixer of a mini pipeline on ``n`` held-out images noised at each timestep.

    The images (held-out split, rendered at ``px``) are encoded, noised with the scheduler's
    ``add_noise`` at every timestep in ``timesteps`` (one draw of noise, ``seed``), and each layer's ERF is
    measured on the tokens it receives (conditional branch, the images' own captions). ASM curves and maps
    are averaged over timesteps before the ERF is read. Returns one :class:`ReceptiveField` per layer (module order).
    """
    den = get_denoiser(pipe)
    dev = next(den.parameters()).device
    b = dataset.make_batch(range(n), seed, "heldout", size=px, device=dev)
    x0 = to_latent(b["pixel_values"])
    with torch.no_grad():
        text = pipe.encode_prompt(b["captions"])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(dev)
    per_t = []
    for t in timesteps:
        tt = torch.full((n,), int(t), dtype=torch.long, device=dev)
        xt = pipe.scheduler.add_noise(x0, noise, tt)
        per_t.append(receptive_fields(den, xt, tt, text, positions=positions, threshold=threshold))
    out = []
    for layer_rfs in zip(*per_t):
        first = layer_rfs[0]
        curve = torch.stack([r.curve for r in layer_rfs]).mean(0)
        maps = torch.stack([r.maps for r in layer_rfs]).mean(0)
        out.append(ReceptiveField(name=first.name, grid=first.grid, positions=first.positions,
                                  erf=float(erf(curve, first.kernel_sizes, threshold)), curve=curve,
                                  kernel_sizes=first.kernel_sizes, maps=maps, threshold=threshold,
                                  info={**first.info, "timesteps": list(timesteps), "per_timestep_erf":
                                        [r.erf for r in layer_rfs]}))
    return out
