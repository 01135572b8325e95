"""aconvlib: companion library of The ΔConv Book.

Locality studies of self-attention in diffusers models and ΔConvBlock replacements
(Dong et al., "Can We Achieve Efficient Diffusion without Self-Attention?", ICCV 2025).

The everyday names are importable from here and load their subpackage on first use (PEP 562, as diffusers does),
so ``import aconvlib`` imports neither torch nor diffusers and changes no global state::

    from aconvlib import load_pipeline, capture_self_attention, asm_curve, to_deltaconv

Subpackages, lowest layer first: ``models`` (registry, families), ``analysis``, ``mixers``, ``training``,
``mini`` (the embedded models), ``book``, ``cli``; ``utils`` holds the shared small utilities.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: top-level name -> the module (under aconvlib) that defines it
_LAZY = {
    "list_models": "models",
    "load_denoiser": "models",
    "load_pipeline": "models",
    "capture_self_attention": "analysis",
    "asm_curve": "analysis",
    "DeltaConvBlock": "mixers",
    "to_deltaconv": "mixers.convert",
    "save_deltaconv": "mixers.convert",
    "load_deltaconv": "mixers.convert",
    "load_official": "mixers.official",
    "neighborhood_attention": "mixers",
    "distill_model": "training",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value   # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
