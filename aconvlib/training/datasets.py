"""Compatibility module: the image–caption data path now lives in :mod:`aconvlib.training.data` (one module per
concern). Everything public is re-exported here, plus the bucket tables that moved to
:mod:`aconvlib.models.buckets` and ``MODEL_GRIDS`` (each registered model's ``ModelSpec.grid_factors``)."""
from __future__ import annotations

from ..models.buckets import SDXL_BUCKETS, area_buckets, pixart_bins
from .data import *  # noqa: F401,F403
from .data import __all__ as _data_all

__all__ = [*_data_all, "MODEL_GRIDS", "SDXL_BUCKETS", "area_buckets", "pixart_bins"]


def __getattr__(name: str):
    if name == "MODEL_GRIDS":   # (latent factor, patch size, down-sampling) of every model with a bucket table
        from ..models import list_models

        return {s.name: s.grid_factors for s in list_models() if s.buckets is not None}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
