"""Stage ops of the ΔConvBlock with two backends: Triton kernels (CUDA) and pure PyTorch (everywhere).

Ops (channels-last ``[B, H, W, C]`` in and out):

* :func:`dwconv2d` — depthwise K×K convolution, weight ``[K, K, C]``;
* :func:`avg_pool_down` — adaptive average pooling to a smaller grid;
* :func:`bilinear_up` — bilinear upsampling (``align_corners=False``) to a larger grid.

Backend choice, per call (``backend=``), else the global one: :func:`set_backend` /
:func:`use_backend`, or the environment variable ``ACONV_KERNELS`` (``auto`` | ``torch`` | ``triton``).
``auto`` (default) runs Triton on CUDA tensors when Triton imports, torch otherwise. ``triton`` on CPU
tensors needs ``TRITON_INTERPRET=1`` set before Triton is first imported (used by the tests).
"""
from __future__ import annotations

import contextlib
import os

import torch

from . import reference

BACKENDS = ("auto", "torch", "triton")
_state = {"backend": os.environ.get("ACONV_KERNELS", "auto").lower()}
_triton_ops = None


def _check(name: str) -> str:
    name = str(name).lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {BACKENDS}")
    return name


def set_backend(name: str) -> None:
    """Set the global backend: ``"auto"`` (Triton on CUDA, torch elsewhere), ``"torch"`` or ``"triton"``."""
    _state["backend"] = _check(name)


def get_backend() -> str:
    """The global backend name."""
    return _check(_state["backend"])


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: run the block ops with ``name``'s backend inside the ``with``."""
    old = _state["backend"]
    _state["backend"] = _check(name)
    try:
        yield
    finally:
        _state["backend"] = old


def triton_available() -> bool:
    """True if the Triton kernels import (Triton installed)."""
    try:
        _load_triton()
    except ImportError:
        return False
    return True


def interpreter_mode() -> bool:
    """True if ``TRITON_INTERPRET=1`` (Triton kernels then also run on CPU tensors, slowly)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def _load_triton():
    global _triton_ops
    if _triton_ops is None:
        from . import triton_ops  # imports triton

        _triton_ops = triton_ops
    return _triton_ops


def resolve_backend(x: torch.Tensor, backend: str | None = None) -> str:
    """The backend (``"torch"`` or ``"triton"``) that runs for tensor ``x``."""
    name = _check(backend) if backend is not None else get_backend()
    if name == "auto":
        return "triton" if x.is_cuda and triton_available() else "torch"
    if name == "triton":
        if not triton_available():
            raise RuntimeError("kernel backend 'triton' was requested but Triton is not installed "
                               "(pip install 'aconvlib[kernels]'), use backend 'torch'")
        if not x.is_cuda and not interpreter_mode():
            raise RuntimeError(f"the Triton kernels need CUDA tensors (got {x.device}); set TRITON_INTERPRET=1 "
                               "before importing triton to run them on CPU, or use backend 'torch'")
    return name


def _ops(x: torch.Tensor, backend: str | None):
    return _load_triton() if resolve_backend(x, backend) == "triton" else reference


def dwconv2d(x: torch.Tensor, weight: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Depthwise K×K convolution (padding K//2, no bias): ``[B, H, W, C]``, weight ``[K, K, C]`` -> ``[B, H, W, C]``."""
    return _ops(x, backend).dwconv2d(x, weight)


def avg_pool_down(x: torch.Tensor, size: tuple[int, int], backend: str | None = None) -> torch.Tensor:
    """Adaptive average pooling ``[B, H, W, C] -> [B, h, w, C]`` with h ≤ H, w ≤ W."""
    return _ops(x, backend).avg_pool_down(x, size)


def bilinear_up(x: torch.Tensor, size: tuple[int, int], backend: str | None = None) -> torch.Tensor:
    """Bilinear upsampling ``[B, h, w, C] -> [B, H, W, C]`` with ``align_corners=False``."""
    return _ops(x, backend).bilinear_up(x, size)


__all__ = ["BACKENDS", "avg_pool_down", "bilinear_up", "dwconv2d", "get_backend", "interpreter_mode",
           "resolve_backend", "set_backend", "triton_available", "use_backend"]
