"""Refuse a run whose estimated memory exceeds what the device can give it, before any work (chapters 2–5 and 7).

On the CPU the figure is the kernel's ``MemAvailable`` (``/proc/meminfo``): free memory plus the page cache
and other memory the kernel can reclaim. ``MemFree`` (``os.sysconf("SC_AVPHYS_PAGES")``) is not it: on Linux
the page cache soon fills most of RAM (reading a few checkpoints is enough), so MemFree falls to a few GiB
while most of the machine is still available. A cgroup (container) limit lower than that is honoured too.
Every figure carries its source, and the refusal names it.

Used by :mod:`aconvlib.book.setup` (re-exported there), :mod:`aconvlib.book.studies`,
:mod:`aconvlib.book.real_adapters` and ``aconv doctor``; a module of its own so that none of them imports
another in a cycle.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Sequence

__all__ = ["MemoryFigure", "available_bytes", "available_memory", "check_memory", "host_available_memory"]


class MemoryFigure(NamedTuple):
    """Bytes a run can use, and where that figure comes from (printed in every refusal)."""

    bytes: int
    source: str


def _meminfo(path: Path) -> dict[str, int]:
    """``/proc/meminfo``-format fields in bytes (``MemAvailable: 123 kB`` → ``{"MemAvailable": 123 * 1024}``)."""
    out = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1)
    return out


def _cgroup_headroom(root: Path) -> Optional[int]:
    """``memory.max - memory.current`` of a cgroup-v2 folder, or None when unlimited or unreadable."""
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def host_available_memory(meminfo: str | Path = "/proc/meminfo",
                          cgroup: str | Path | None = "/sys/fs/cgroup") -> MemoryFigure:
    """Host memory a new run can use: ``MemAvailable``, capped by a cgroup-v2 limit.

    Args:
        meminfo: a ``/proc/meminfo``-format file (tests pass a fake one).
        cgroup: a cgroup-v2 folder with ``memory.max`` / ``memory.current``, or None to ignore limits.

    Where the kernel gives no ``MemAvailable`` (not Linux, or a kernel older than 3.14), psutil's figure is used
    when installed, else free memory, and the source says so.
    """
    import os

    figure = None
    try:
        info = _meminfo(Path(meminfo))
        if "MemAvailable" in info:
            figure = MemoryFigure(info["MemAvailable"], f"MemAvailable in {meminfo}")
    except OSError:
        pass
    if figure is None:
        try:
            import psutil

            figure = MemoryFigure(int(psutil.virtual_memory().available), "psutil.virtual_memory().available")
        except ImportError:
            pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
            figure = MemoryFigure(pages * os.sysconf("SC_PAGE_SIZE") if pages else 0,
                                  "free memory (no MemAvailable here; the page cache is not counted)")
    if cgroup is not None:
        head = _cgroup_headroom(Path(cgroup))
        if head is not None and head < figure.bytes:
            figure = MemoryFigure(head, f"the container's limit ({cgroup}/memory.max minus memory.current)")
    return figure


def available_memory(device: str) -> MemoryFigure:
    """Memory a run on ``device`` can use: the GPU's free memory on CUDA, the host's available memory on CPU."""
    import torch

    if str(device).startswith("cuda"):
        return MemoryFigure(torch.cuda.mem_get_info(torch.device(device))[0], "free GPU memory (cudaMemGetInfo)")
    return host_available_memory()


def available_bytes(device: str) -> int:
    """``available_memory(device).bytes``."""
    return available_memory(device).bytes


def check_memory(models: Sequence[str], device: str, dtype: str, *, height: Optional[int] = None,
                 width: Optional[int] = None, batch_size: int = 1, capture: bool = True,
                 available: Optional[int | MemoryFigure] = None) -> dict:
    """Refuse, before any work, a run whose estimated memory exceeds what ``device`` can give it.

    Estimates come from :func:`aconvlib.models.memory.estimate_run_bytes` (weights in ``dtype`` +
    activations + attention-capture accumulators). ``available`` overrides the measured figure (bytes or a
    :class:`MemoryFigure`). Returns ``{model: RunEstimate}``.

    Raises:
        MemoryBudgetError: naming the model, both numbers, which memory figure was used and the parameters that
            lower the need.
    """
    from ..analysis.capture import MemoryBudgetError
    from ..models.memory import estimate_run_bytes

    if available is None:
        figure = available_memory(device)
    elif isinstance(available, MemoryFigure):
        figure = available
    else:
        figure = MemoryFigure(int(available), "the figure passed as `available`")
    out = {}
    for m in models:
        est = estimate_run_bytes(m, dtype, height, width, batch=batch_size, capture=capture)
        if est.total > figure.bytes:
            raise MemoryBudgetError(
                f"{m} on {device} in {dtype} needs about {est.describe()}, but {figure.bytes / 2**30:.1f} GiB are "
                f"available ({figure.source}). Lower batch_size (now {batch_size}) or height/width, use dtype "
                f"float16, select fewer models, or run on a larger device (see `aconv doctor` and the README's "
                f"memory table).")
        out[m] = est
    return out
