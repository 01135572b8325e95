"""The course guide's chapter timings: measured on a CPU, recorded with the machine they ran on, shown by the guide.

The runner stamps every executed chapter's records file with its wall time (``executed_s``) and the machine's state
while it ran (``run_machine``: CPU count, the kernel's CPU seconds, the 1-minute load average at start and end;
:func:`aconvlib.book.runner.execute_chapter`). :func:`collect_times` gathers those stamps from a folder of executed
chapters into one JSON document with the machine's facts (committed as ``benchmarks/results/chapter_times_cpu.json``
by ``python scripts/chapter_times.py``); :func:`write_course_times` renders it as the table the guide includes
(``book/course_times.md``, written by every build).

The Colab GPU column is an **estimate**, never a measurement: :func:`colab_gpu_estimate` states its rule.
"""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from ..utils import atomic_write, atomic_write_json, cpu_name

__all__ = ["COURSE_TIMES", "TIMES_FILE", "collect_times", "colab_gpu_estimate", "save_times", "times_markdown",
           "write_course_times"]

TIMES_FILE = Path("benchmarks") / "results" / "chapter_times_cpu.json"   # relative to the checkout
COURSE_TIMES = "course_times.md"                                          # in book/, included by guide.md
FORMAT = "aconv-chapter-times/1"

#: the estimate's assumptions, stated once (see colab_gpu_estimate)
FIXED_S = 20.0        # kernel start, imports, loading the embedded models: no faster on a GPU
GPU_SPEEDUP = 5.0     # assumed speed-up of the remaining work on a Colab T4 over 2 CPU threads (not measured)


def _memory_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None
    return None


def collect_times(chapters_dir: Path, profile: str = "smoke") -> dict:
    """The timing stamps of every chapter executed under ``profile`` in ``chapters_dir`` (``*.records.json``), with
    the machine's facts. Raises FileNotFoundError when none is there."""
    rows = {}
    for sidecar in sorted(Path(chapters_dir).glob("[0-9][0-9]_*.records.json")):
        doc = json.loads(sidecar.read_text())
        if doc.get("profile") != profile or "executed_s" not in doc:
            continue
        run = doc.get("run_machine") or {}
        rows[doc["chapter"]] = {"seconds": doc["executed_s"], "status": doc.get("status"),
                                "written": doc.get("written"), "torch_threads": (doc.get("environment") or {}).get(
                                    "torch_threads"), **{k: run[k] for k in ("kernel_cpu_s", "load_1min_start",
                                                                              "load_1min_end") if k in run}}
    if not rows:
        raise FileNotFoundError(f"no chapter executed under profile {profile!r} in {chapters_dir}: "
                                f"`aconv book --profile {profile} --no-build` first")
    import os

    machine = {"cpu": cpu_name(), "cpus": os.cpu_count(), "memory_gib": _memory_gib(),
               "platform": f"{platform.system()} {platform.machine()}", "python": platform.python_version()}
    try:
        import torch

        machine["torch"] = torch.__version__
    except ImportError:
        pass
    return {"format": FORMAT, "profile": profile, "collected": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine, "chapters": rows,
            "note": "wall seconds of `aconv book <chapter> --profile smoke --no-build` (papermill, kernel start "
                    "included), each chapter's last execution in this checkout, with the caches of runs/smoke (the "
                    "attention captures and evaluations chapters 2-5, 8 and 10 share) filled by earlier runs; "
                    "kernel_cpu_s: the chapter kernel's CPU seconds; load_1min_*: the machine's 1-minute load average "
                    "when the chapter started and ended (other work shared its CPUs when it exceeds the CPU count)"}


def colab_gpu_estimate(seconds: float) -> float:
    """Estimated seconds of a chapter on a Colab T4 GPU (``-p device=cuda``) from its CPU seconds (the kernel's, which
    do not depend on the machine's load; else the wall time): a fixed part (:data:`FIXED_S`: kernel, imports, model
    loading) plus the rest divided by :data:`GPU_SPEEDUP`. An assumption for planning a class, not a measurement: the
    embedded models are small enough that a GPU is far from fully used."""
    return min(seconds, FIXED_S) + max(0.0, seconds - FIXED_S) / GPU_SPEEDUP


def _fmt(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def times_markdown(doc: dict, titles: Optional[dict] = None) -> str:
    """The guide's timing table from a :func:`collect_times` document."""
    m = doc["machine"]
    lines = [f"Measured with the `{doc['profile']}` profile on {m.get('cpu', 'a CPU')} ({m.get('cpus')} cores, "
             f"{m.get('memory_gib')} GiB; torch {m.get('torch', '?')}), collected {doc['collected'][:10]}. "
             "The load column is the machine's 1-minute load average at the chapter's start and end: above the "
             "core count, other work shared the CPU and the wall time is longer than on an idle laptop. The kernel's "
             "CPU seconds do not depend on that load: on an idle 2-core machine a chapter takes between half of them "
             "and all of them, plus a few seconds to start the kernel.", "",
             "| chapter | CPU, measured (wall) | kernel CPU seconds | load (start → end) | Colab T4 GPU (**estimate**) |",
             "|---|---|---|---|---|"]
    def basis(r: dict) -> float:
        return r.get("kernel_cpu_s", r["seconds"])

    total = 0.0
    for ch, r in doc["chapters"].items():
        total += r["seconds"]
        load = (f"{r['load_1min_start']:.1f} → {r['load_1min_end']:.1f}" if "load_1min_start" in r else "—")
        name = (titles or {}).get(ch, ch)
        flag = "" if r.get("status") == "complete" else f" ({r.get('status')})"
        cpu = f"{r['kernel_cpu_s']:.0f} s" if "kernel_cpu_s" in r else "—"
        lines.append(f"| {name} | {_fmt(r['seconds'])}{flag} | {cpu} | {load} | "
                     f"≈ {_fmt(colab_gpu_estimate(basis(r)))} (estimate) |")
    est = sum(colab_gpu_estimate(basis(r)) for r in doc["chapters"].values())
    cpu_total = sum(r.get("kernel_cpu_s", 0.0) for r in doc["chapters"].values())
    lines += [f"| **all {len(doc['chapters'])} chapters** | **{_fmt(total)}** | {cpu_total:.0f} s | | "
              f"≈ {_fmt(est)} (estimate) |", "",
              f"*Estimate* (not measured; no GPU run of the smoke profile exists), from the kernel's CPU seconds: the "
              f"first {FIXED_S:.0f} s of a chapter (kernel, imports, loading the models) as on the CPU, the rest "
              f"{GPU_SPEEDUP:.0f}× faster. The embedded models are tiny (64 px images, grids of at most 32×32 "
              "tokens), so a GPU runs them far below its peak; Colab's CPU runtime (2 cores) is close to the "
              "measured column."]
    return "\n".join(lines) + "\n"


def write_course_times(book_path: Path, root: Optional[Path] = None) -> Path:
    """Write ``book/course_times.md`` (included by the guide) from the checkout's timing file (``root``, default the
    book's parent folder); without one, a note, unless an earlier table is there (a copy of the book, e.g. the
    student edition's source, keeps the table it was copied with)."""
    book_path = Path(book_path)
    src = Path(root or book_path.parent) / TIMES_FILE
    out = book_path / COURSE_TIMES
    if not src.exists() and out.exists():
        return out
    if src.exists():
        titles = {}
        for nb in sorted((Path(root or book_path.parent) / "notebooks").glob("[0-9][0-9]_*.ipynb")):
            cells = json.loads(nb.read_text()).get("cells", [])
            first = "".join(cells[0]["source"]).splitlines()[0] if cells else ""
            titles[nb.stem] = first.lstrip("# ").strip() or nb.stem
        text = times_markdown(json.loads(src.read_text()), titles)
    else:
        text = (f"No timing file in this checkout ({TIMES_FILE}): `python scripts/chapter_times.py` writes it from "
                "the chapters executed under `smoke`.\n")
    atomic_write(out, text)
    return out


def save_times(doc: dict, path: Path) -> Path:
    """Write a :func:`collect_times` document (the committed timing file)."""
    return atomic_write_json(path, doc, indent=1, ensure_ascii=False)
