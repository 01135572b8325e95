"""The chapters' common setup, in one place: seeds, deterministic algorithms, CPU threads, display options,
output folder, the locality studies shared by chapters 02–05, and the paper's numeric thresholds."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..models import paper_table
from .budget import available_bytes, check_memory   # noqa: F401 - the chapters' memory check, re-exported here

__all__ = ["check_memory", "locality_studies", "paper_thresholds", "prompt_frames", "setup_chapter"]


def setup_chapter(chapter: str, output_dir: str, seed: int = 0, threads: Optional[int] = None) -> Path:
    """Seed torch, ask for deterministic algorithms (warn, not fail, where an op has none), set the CPU
    thread count (None: torch's default), pandas float display (4 significant digits), name the chapter for its records
    (:mod:`aconvlib.book.records`); return ``output_dir/chapter`` (created)."""
    import os
    import warnings

    import pandas as pd
    import torch

    from . import records

    records.set_chapter(chapter)
    # In Jupyter without ipywidgets, tqdm.auto (imported by diffusers and by our training loops) falls back to
    # text bars with a warning on every chapter; the text bars are what we want (offline HTML).
    warnings.filterwarnings("ignore", message="IProgress not found")
    torch.manual_seed(seed)
    # Same numbers on a rerun where that is cheap (the regression records, `aconv regress`); cuBLAS needs
    # its workspace setting before CUDA starts. Ops without a deterministic version only warn.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        if int(threads) < 1:
            raise ValueError(f"threads must be a positive integer or None, got {threads}")
        torch.set_num_threads(int(threads))
    pd.set_option("display.float_format", "{:.4g}".format)  # 4 significant digits: 0.0003 stays 0.0003
    pd.set_option("display.max_rows", 120)
    from .tables import use_reading_tables

    use_reading_tables()   # every table a cell shows: no index column, rounding for reading, names unbroken
    out = Path(output_dir) / chapter
    out.mkdir(parents=True, exist_ok=True)
    return out


def locality_studies(models: Sequence[str], *, cutoff: float = 0.1, order: int = 2,
                     artifact_ratio: Optional[float] = None, **gen):
    """Capture (or reuse from the cache) one study per model and analyse it per layer.

    ``gen`` goes to :func:`aconvlib.book.studies.capture_study` (prompts, steps, sizes, device, dtype,
    weights, output_dir, ...); a model with its own sampler takes its steps, guidance and scheduler from its spec
    (:func:`aconvlib.book.studies.model_generation`). Returns ``(studies, frames)``, dicts keyed by model; prints each study.
    """
    from .studies import analyze_study, model_generation, per_prompt_study

    check_memory(models, gen.get("device", "cpu"), gen.get("dtype", "float32"), height=gen.get("height"),
                 width=gen.get("width"), batch_size=gen.get("batch_size", 1))
    # one capture per prompt (cached under output_dir/captures, shared by chapters 02-05), pooled by the mean map;
    # studies[m].parts are the per-prompt studies (bootstrap over prompts: prompt_frames)
    # each model's own sampler where its spec has one (FLUX.1, SD3.5: steps, guidance, scheduler), else gen's
    studies = {m: per_prompt_study(m, **model_generation(m, gen)) for m in models}
    extra = {} if artifact_ratio is None else {"artifact_ratio": artifact_ratio}
    frames = {m: analyze_study(s, cutoff=cutoff, order=order, **extra) for m, s in studies.items()}
    for s in studies.values():
        print(s.describe())
    return studies, frames


def prompt_frames(studies: dict, **analysis) -> dict:
    """Per-prompt analysis frames of pooled studies: model → [analyze_study(part) for each prompt] (cached)."""
    from .studies import analyze_study

    return {m: [analyze_study(p, **analysis) for p in s.parts] for m, s in studies.items()}


def paper_thresholds() -> dict:
    """The paper's numeric criteria (``thresholds`` in ``data/paper/tables.yml``)."""
    return dict(paper_table("thresholds"))
