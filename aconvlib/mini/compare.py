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
from ..mixers.convert import load_mixer, mixer_applied
from ..mixers.neighborhood import clip_kernel, neighborhood_attention
from ..models import get_denoiser, load_pipeline, models_dir, self_attention_layers
from . import dataset
from .distill import adapter_dir
from .evaluate import evaluate_model
from .models import to_latent

__all__ = ["CHAPTER_NA_KERNEL", "PAPER_K_FRACTION", "Variant", "comparison_variants", "control_variants",
           "describe_smallest_kernel", "evaluate_variants", "finest_grid_side", "keep_tolerance", "mini_receptive_fields",
           "na_sweep", "paper_scaled_kernel", "per_model", "smallest_kernel_keeping", "student_dir", "student_info",
           "variant_pipeline"]

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
    """One row of the comparison: how its pipeline is made and what it cost."""

    label: str            # e.g. "LinFusion (CPU budget)"
    method: str           # "self-attention" | "deltaconv" | "linear" | "window" | "na" | "none" | "uniform"
    training: str         # "teacher" | "distilled: …" | "training-free"
    setting: str = ""     # "K=9", "169 keys", …
    folder: Optional[Path] = None
    options: dict = field(default_factory=dict)
    kernel: Optional[int] = None   # K of NA / ΔConv rows (one K for every layer), else None


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
    out = [Variant("self-attention (teacher)", "self-attention", "teacher")]
    notes = []
    if shipped:
        d = adapter_dir(model)
        if (d / "adapter" / "config.json").exists():
            i = student_info(d)
            out.append(Variant("ΔConv (shipped, H100 budget)", "deltaconv", "distilled on an H100 (see chapter 7)",
                               "K=" + str(_kernel_of(d)), d))
        else:
            notes.append(f"{model}: no shipped ΔConv student in {d}")
    if cpu_budget:
        for mixer, title in (("deltaconv", "ΔConv"), ("linear", "LinFusion")):
            d = student_dir(model, mixer)
            if not (d / "adapter" / "config.json").exists():
                notes.append(f"{model}: no CPU-budget {title} student in {d} (scripts/distill_cpu_comparison.sh)")
                continue
            i = student_info(d)
            budget = f"{i.get('steps')} steps × batch {i.get('batch')}"
            start = "from fresh blocks" if mixer == "deltaconv" else "from the teacher's attn1 weights"
            out.append(Variant(f"{title} (CPU budget)", mixer, f"distilled on the CPU, {budget}, {start}",
                               "K=" + str(_kernel_of(d)) if mixer == "deltaconv" else "hidden ratio 1", d))
    out.append(Variant(f"window attention ({window} keys)", "window", "training-free", f"1-D band, {window} keys",
                       options={"window": window, "mode": "1d"}))
    out.append(Variant(f"NA K={na_kernel}", "na", "training-free", f"K={na_kernel}", options={"kernel_size": na_kernel}))
    return out, notes


def _kernel_of(folder: Path) -> str:
    cfg = json.loads((Path(folder) / "adapter" / "config.json").read_text())
    ks = sorted({layer["kernel_size"] for layer in cfg.get("layers", []) if "kernel_size" in layer})
    return "/".join(map(str, ks)) or "?"


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
    out = [Variant("self-attention (teacher)", "self-attention", "teacher"),
           Variant("no self-attention", "none", "training-free (control)", "every attn1 outputs 0"),
           Variant("uniform attention", "uniform", "training-free (control)", "every query: mean of all values")]
    notes = []
    for k in na_kernels:
        roles = [r for r, kk in (("paper-scaled", scaled), ("chapter's K", CHAPTER_NA_KERNEL[model])) if kk == int(k)]
        out.append(Variant(f"NA K={k}" + (f" ({', '.join(roles)})" if roles else ""), "na", "training-free",
                           f"K={k}", options={"kernel_size": int(k)}, kernel=int(k)))
    d = adapter_dir(model)
    if (d / "adapter" / "config.json").exists():
        out.append(Variant("ΔConv (shipped, H100 budget)", "deltaconv", "distilled on an H100 (see chapter 7)",
                           "K=" + _kernel_of(d), d, kernel=_single_kernel(d)))
    else:
        notes.append(f"{model}: no shipped ΔConv student in {d}")
    students = [("deltaconv", "ΔConv (CPU budget, from scratch)", "from fresh blocks"),
                (f"deltaconv-k{small}", f"ΔConv K={small} (CPU budget, from scratch, paper-scaled K)", "from fresh blocks"),
                ("linear", "LinFusion (CPU budget, from the teacher's weights)", "from the teacher's attn1 weights"),
                ("linear-scratch", "LinFusion (CPU budget, from scratch)", "from fresh weights")]
    for name, title, start in students:
        d = student_dir(model, name)
        if not (d / "adapter" / "config.json").exists():
            script = "distill_cpu_comparison.sh" if name in ("deltaconv", "linear") else "distill_cpu_controls.sh"
            notes.append(f"{model}: no CPU-budget student {title!r} in {d} (scripts/{script})")
            continue
        i = student_info(d)
        method = "linear" if name.startswith("linear") else "deltaconv"
        kernel = _single_kernel(d) if method == "deltaconv" else None
        out.append(Variant(title, method, f"distilled on the CPU, {i.get('steps')} steps × batch {i.get('batch')}, "
                                          f"{start}", "K=" + _kernel_of(d) if method == "deltaconv" else "hidden ratio 1",
                           d, kernel=kernel))
    return out, notes


def _single_kernel(folder: Path) -> Optional[int]:
    ks = _kernel_of(folder)
    return int(ks) if ks.isdigit() else None


@contextlib.contextmanager
def variant_pipeline(model: str, variant: Variant, device="cpu", teacher=None) -> Iterator:
    """The pipeline of ``variant`` (the teacher converted in place for training-free variants, restored on exit;
    a fresh pipeline with the student's adapter for distilled ones)."""
    teacher = teacher if teacher is not None else load_pipeline(model, device=device)
    if variant.method == "self-attention":
        yield teacher
    elif variant.method == "na":
        with neighborhood_attention(teacher, variant.options["kernel_size"]):
            yield teacher
    elif variant.method in ("window", "none", "uniform"):   # training-free kinds of the one conversion mechanism
        with mixer_applied(teacher, variant.method, **variant.options):
            yield teacher
    else:
        yield load_mixer(load_pipeline(model, device=device), str(Path(variant.folder) / "adapter"), kind=variant.method)


def evaluate_variants(models: Sequence[str], prompts, *, steps: int = 20, guidance_scale: float = 4.5, seed: int = 0,
                      na_kernel=7, window=49, device="cpu", n_real: int = 500, cpu_budget: bool = True,
                      shipped: bool = True, return_images: bool = False):
    """Table 3 on the embedded models: every variant of every model on the same prompts and noise.

    ``na_kernel`` / ``window``: an int or ``{model: value}``. Returns ``(frame, notes, images)``: one row per model and variant (``model``, ``method``, ``variant``,
    ``training``, ``setting``, the evaluator's columns and its per-image ``per_image`` / ``features``, from which
    :func:`aconvlib.book.comparison.with_intervals` adds intervals), the notes of :func:`comparison_variants`, and
    ``{(model, label): images}`` when ``return_images``.
    """
    import pandas as pd

    rows, notes, images = [], [], {}
    for m in models:
        variants, missing = comparison_variants(m, na_kernel, window, cpu_budget, shipped)
        notes += missing
        teacher = load_pipeline(m, device=device)
        for v in variants:
            with variant_pipeline(m, v, device, teacher) as pipe:
                r = evaluate_model(pipe, prompts, num_inference_steps=steps, guidance_scale=guidance_scale, seed=seed,
                                   n_real=n_real, return_images=return_images)
            if return_images:
                images[(m, v.label)] = r.pop("images")
            rows.append({"model": m, "variant": v.label, "method": v.method, "training": v.training,
                         "setting": v.setting, **{k: r[k] for k in QUALITY_COLUMNS + PER_IMAGE_COLUMNS}})
    return pd.DataFrame(rows), notes, images


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
            with neighborhood_attention(pipe, int(k)):
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
