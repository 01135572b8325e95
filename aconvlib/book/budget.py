"""Refuse a run whose estimated memory exceeds the device's free memory, before any work (chapters 2–5 and 7).

Used by :mod:`aconvlib.book.setup` (re-exported there), :mod:`aconvlib.book.studies` and
:mod:`aconvlib.book.real_adapters`; a module of its own so that none of them imports another in a cycle.
"""
from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["available_bytes", "check_memory"]


def available_bytes(device: str) -> int:
    """Free memory of ``device``: the GPU's free memory on CUDA, the host's available memory on CPU."""
    import os

    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(models: Sequence[str], device: str, dtype: str, *, height: Optional[int] = None,
                 width: Optional[int] = None, batch_size: int = 1, capture: bool = True,
                 available: Optional[int] = None) -> dict:
    """Refuse, before any work, a run whose estimated memory exceeds the device's free memory.

    Estimates come from :func:`aconvlib.models.memory.estimate_run_bytes` (weights in ``dtype`` +
    activations + attention-capture accumulators). Returns ``{model: RunEstimate}``.

    Raises:
        MemoryBudgetError: naming the model, both numbers and the parameters that lower the need.
    """
    from ..analysis.capture import MemoryBudgetError
    from ..models.memory import estimate_run_bytes

    free = available_bytes(device) if available is None else available
    out = {}
    for m in models:
        est = estimate_run_bytes(m, dtype, height, width, batch=batch_size, capture=capture)
        if est.total > free:
            raise MemoryBudgetError(
                f"{m} on {device} in {dtype} needs about {est.describe()}, but {free / 2**30:.1f} GiB are free. "
                f"Lower batch_size (now {batch_size}) or height/width, use dtype float16, select fewer models, "
                f"or run on a larger device (see `aconv doctor` and the README's memory table).")
        out[m] = est
    return out
