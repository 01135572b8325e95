"""Chapter 7 on the real models: teacher samples, and the distilled ΔConv student where one exists.

The embedded models ship their distilled adapters; for the real ones (SD1.5, SDXL, PixArt-Σ) the authors released
their students (``7eu7d7/ConvFusion``, :mod:`aconvlib.models.released`). :func:`evaluate_real_adapters` takes a
mapping ``model → adapter`` (a local folder written by ``save_deltaconv``, a hub id, or a file in the authors' format
/ a released name); a model the mapping leaves out gets the authors' ``mjv5`` student when that file is in the
Hugging Face cache (:func:`student_for`; ``"none"`` opts out). Per model it generates from the same prompts and
noise with the student's teacher — the stock pipeline, or for a released student the model it was distilled from
(DreamShaper for SD1.5) — and with the ΔConv student; it says plainly which models have no student and shows what it
can measure on them (the teacher's samples and timing).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from ..mixers.variants import Method
from .tables import RowsReport

__all__ = ["RealAdapterReport", "STUDENT", "Student", "TEACHER", "evaluate_real_adapters", "resolve_adapter",
           "student_for"]

#: the two rows of the report (keys of ``images[model]``); their labels are made by :meth:`RealAdapterReport.plot`
TEACHER, STUDENT = Method.TEACHER, Method.DELTACONV


class RealAdapterReport(RowsReport):
    """What :func:`evaluate_real_adapters` measured.

    Attributes:
        rows: one dict per model (model, adapter, prompts, size, steps, seconds per image, RMSE student vs
            teacher and, for scale, teacher vs another prompt's teacher image).
        images: model → :data:`TEACHER` / :data:`STUDENT` → uint8 [P, H, W, 3].
        prompts: model → prompts; ``lines``: the plain-language summary, one line per model.
    """

    def plot(self, model: str, n_show: Optional[int] = None):
        from ..mini.compare import Variant
        from .labels import variant_label
        from .plotting import plot_image_rows

        rows = {variant_label(Variant(k, student="given")): v[:n_show] for k, v in self.images[model].items()}
        prompts = self.prompts[model][:n_show]
        title = (f"{model}: teacher vs ΔConv student, same prompts and noise" if STUDENT in self.images[model]
                 else f"{model}: teacher samples (no distilled ΔConv adapter available)")
        return plot_image_rows(rows, prompts, title=title)


def resolve_adapter(value, base: Optional[Path] = None) -> tuple[Optional[str], str]:
    """``(location, why)`` of an adapter given as a local folder (relative to ``base``) or a hub id.

    ``location`` is None when the adapter is not available here; ``why`` says what was looked for.
    """
    if value in (None, ""):
        return None, "no adapter given"
    p = Path(os.path.expanduser(str(value)))
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    if (p / "config.json").is_file():
        return str(p), f"local folder {p}"
    text = str(value)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(text), f"hub id {text}"
        except Exception as err:  # noqa: BLE001 - offline, unknown repo, no network: all mean "not here"
            return None, f"hub id {text} not available ({type(err).__name__})"
    return None, f"no adapter at {p} (no config.json)"


@dataclass
class Student:
    """Where a model's ΔConv student comes from: ``location`` (None: no student), ``why`` (what was looked for),
    ``official`` (the released entry when it is one of the authors' students), ``pipeline`` (what to load as its
    teacher: the model itself, or the released student's base)."""

    location: Optional[str]
    why: str
    pipeline: str
    official: object = None


def student_for(model: str, value=None, base: Optional[Path] = None, data: str = "mjv5") -> Student:
    """The ΔConv student of registry ``model``: ``value`` as :func:`resolve_adapter` reads it, or a file in the
    authors' format / released name; ``value`` None: the authors' released ``data`` student when its file is in the
    Hugging Face cache (nothing is downloaded); ``"none"``: no student."""
    from ..mixers.official import is_official_source, resolve_official_source
    from ..models.released import released_checkpoint, released_for, released_path

    if isinstance(value, str) and value.strip().lower() == "none":
        return Student(None, "real_adapters says none", model)
    if value in (None, ""):
        ckpt = released_for(model, data)
        if ckpt is None:
            return Student(None, "no adapter given, and the authors released no student of this model", model)
        path = released_path(ckpt)
        if path is None:
            return Student(None, f"no adapter given; the authors' {ckpt.name} is not in the Hugging Face cache "
                                 f"(huggingface-cli download {ckpt.hub_id} {ckpt.filename})", model)
        return Student(path, f"the authors' released {ckpt.name} ({ckpt.source}, distilled from {ckpt.base})",
                       ckpt.base_pipeline, ckpt)
    local = Path(os.path.expanduser(str(value)))
    if not local.is_absolute() and base is not None and (Path(base) / local).exists():
        local = Path(base) / local
    if is_official_source(value) and not (local / "config.json").is_file():
        try:
            path, ckpt = resolve_official_source(str(local) if local.exists() else str(value), local_files_only=True)
        except Exception as err:  # noqa: BLE001 - not cached / no such file: "not here", with the reason
            return Student(None, f"{value}: {str(err).splitlines()[0]}", model)
        if ckpt is None:
            try:
                ckpt = released_checkpoint(str(value))
            except KeyError:
                pass
        return Student(path, f"{value} (the authors' format)", ckpt.base_pipeline if ckpt else model, ckpt)
    location, why = resolve_adapter(value, base)
    return Student(location, why, model)


def _generate(pipe, prompts, *, steps, guidance_scale, height, width, seed, batch_size, **call) -> np.ndarray:
    import torch

    from .studies import generation_kwargs

    out = []
    for i in range(0, len(prompts), batch_size):
        gen = torch.Generator("cpu").manual_seed(seed + i)
        res = pipe(list(prompts[i:i + batch_size]), num_inference_steps=steps, guidance_scale=guidance_scale,
                   generator=gen, height=height, width=width, **generation_kwargs(pipe), **call)
        out += [np.asarray(im.convert("RGB")) for im in res.images]
    return np.stack(out)


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Pixel RMSE in [0, 1] units of two uint8 image stacks."""
    return float(np.sqrt((((a.astype(np.float64) - b.astype(np.float64)) / 255.0) ** 2).mean()))


def _load_teacher(model: str, student: Student, device, dtype, lines: list, scheduler: Optional[str] = None):
    """``(pipeline, its name)`` of the student's teacher; ``(None, None)`` when a released student's base is not
    here (a line says so; the caller then runs the model's own pipeline without the student)."""
    from ..models import MissingWeightsError
    from .studies import load_study_pipeline

    if student.pipeline == model:
        return load_study_pipeline(model, device, dtype, scheduler=scheduler), model
    try:
        return load_study_pipeline(student.pipeline, device, dtype, scheduler=scheduler), student.pipeline
    except MissingWeightsError as err:
        lines.append(f"{model}: {student.why} is in the cache, but its base {student.pipeline} is not "
                     f"({str(err).splitlines()[0][:160]}); its student is not evaluated.")
        return None, None


def evaluate_real_adapters(models: Sequence[str], adapters: Optional[Mapping[str, str]] = None, *, n_prompts: int = 4,
                           steps: int = 20, guidance_scale: float = 4.5, height: Optional[int] = None,
                           width: Optional[int] = None, seed: int = 0, device: str = "cpu", dtype: str = "float32",
                           batch_size: int = 1, adapter_base: Optional[Path] = None,
                           prompts: Optional[Sequence[str]] = None) -> RealAdapterReport:
    """Teacher samples of every real model in ``models`` and, where ``adapters`` has one, its ΔConv student's.

    Memory is checked for all models before any work (:func:`aconvlib.book.budget.check_memory`). Sampling is the
    studies' (DPM-Solver++, :func:`aconvlib.book.studies.load_study_pipeline`; a model with its own sampler, FLUX.1
    and SD3.5, takes its scheduler, steps and guidance from its spec, :func:`~aconvlib.book.studies.
    model_generation`); teacher and student use the same
    prompts and the same initial noise. Adapters: ``model → local folder (relative to adapter_base) or hub id``.
    """
    import torch

    from ..mixers.variants import mounted
    from ..models import get_spec
    from .budget import check_memory
    from .studies import default_prompts, load_study_pipeline, model_generation

    report = RealAdapterReport()
    models = list(models or [])
    adapters = dict(adapters or {})
    unknown = sorted(set(adapters) - set(models))
    if unknown:
        raise ValueError(f"real_adapters names {unknown}, which are not in real_models {models}")
    if not models:
        report.lines.append("No real model selected under this profile (real_models is empty): the sections above "
                            "are the whole measurement. The `full` profile runs this part on SD1.5, SDXL and PixArt-Σ.")
        return report
    check_memory(models, device, dtype, height=height, width=width, batch_size=batch_size, capture=False)
    for m in models:
        spec = get_spec(m)
        h, w = height or spec.default_px, width or spec.default_px
        texts = list(prompts) if prompts is not None else default_prompts(m, n_prompts)
        student = student_for(m, adapters.get(m), adapter_base)
        location, why = student.location, student.why
        own = model_generation(m, dict(steps=steps, guidance_scale=guidance_scale))
        pipe, teacher = _load_teacher(m, student, device, dtype, report.lines, scheduler=own.get("scheduler"))
        if pipe is None:
            location, teacher, why = None, m, f"{why}, but its base {student.pipeline} is not cached"
            pipe = load_study_pipeline(m, device, dtype, scheduler=own.get("scheduler"))
        kw = dict(steps=own["steps"], guidance_scale=own["guidance_scale"], height=h, width=w, seed=seed,
                  batch_size=batch_size, **({"max_sequence_length": own["max_sequence_length"]}
                                            if "max_sequence_length" in own else {}))
        images, seconds = {}, {}
        for method in (TEACHER, STUDENT) if location is not None else (TEACHER,):
            t0 = time.perf_counter()
            with mounted(pipe, method, adapter=location):
                images[method] = _generate(pipe, texts, **kw)
            seconds[method] = round((time.perf_counter() - t0) / len(texts), 3)
        shown = student.official.name if student.official is not None and location else location
        row = dict(model=m, teacher=teacher, adapter=shown or "none", prompts=len(texts), size=f"{h}x{w}",
                   steps=kw["steps"], teacher_s_per_image=seconds[TEACHER])
        if location is not None:
            row["student_s_per_image"] = seconds[STUDENT]
            row["rmse_student_vs_teacher"] = _rmse(images[STUDENT], images[TEACHER])
            report.lines.append(f"{m}: ΔConv student from {why} evaluated against its teacher ({teacher}) on "
                                f"{len(texts)} prompt(s), same noise, {h}x{w} px, {kw['steps']} steps.")
        else:
            report.lines.append(f"{m}: no distilled ΔConv student available ({why}); shown: the teacher's samples only. "
                                f"Download the authors' (README, GPU section) or distill one with "
                                f"aconvlib.training.distill and pass real_adapters={{{m}: <folder or hub id>}}.")
        if len(texts) > 1:
            row["rmse_teacher_vs_other_prompt"] = _rmse(images[TEACHER], np.roll(images[TEACHER], 1, axis=0))
        report.rows.append(row)
        report.images[m] = images
        report.prompts[m] = texts
        del pipe
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
    return report
