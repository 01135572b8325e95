"""One forward pre-hook that tells token mixers and probes the latent size of the denoiser's current call.

Self-attention layers receive tokens [B, N, C] without their grid; the grid follows from the latent
the denoiser was called with. Capture (:mod:`aconvlib.analysis.capture`), neighborhood attention
and ΔConv conversion (:mod:`aconvlib.mixers`) all read it from a :class:`LatentTracker`.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch

from .families import family_of


class LatentTracker:
    """Records, before every call of ``denoiser``, the latent (h, w), the timestep and the batch size.

    Args:
        denoiser: a supported denoiser.
        on_call: optional ``f(tracker, sample, timestep)`` run in the pre-hook after the update
            (e.g. to check a memory budget or select the CFG branch).

    Attributes:
        latent_hw: (h, w) of the current (or last) call's latent; None before the first call.
        timestep: the call's timestep as a float (nan if not passed), batch: its batch size.
    """

    def __init__(self, denoiser: torch.nn.Module, on_call: Optional[Callable] = None):
        self.denoiser = denoiser
        self.family = family_of(denoiser)
        self.on_call = on_call
        self.latent_hw: Optional[tuple[int, int]] = None
        self.timestep: float = float("nan")
        self.batch: int = 0
        self._grid_cache: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self.handle = denoiser.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample = self.family.call_sample(args, kwargs)
        hw = self.family.call_latent_hw(self.denoiser, args, kwargs)   # FLUX: packed tokens + img_ids
        if hw is None:
            return None
        t = self.family.call_timestep(args, kwargs)
        self.timestep = float(t.flatten()[0]) if torch.is_tensor(t) else (float(t) if t is not None else float("nan"))
        self.batch = int(sample.shape[0])
        self.latent_hw = (int(hw[0]), int(hw[1]))
        if self.on_call is not None:
            self.on_call(self, sample, t)
        return None

    def grids(self, latent_hw: Optional[tuple[int, int]] = None) -> Optional[list[tuple[int, int]]]:
        """Token grid per level for ``latent_hw`` (default: the current call's); None if unknown."""
        hw = latent_hw or self.latent_hw
        if hw is None:
            return None
        if hw not in self._grid_cache:
            self._grid_cache[hw] = self.family.level_grids(self.denoiser, hw)
        return self._grid_cache[hw]

    def grid(self, level: int = 0) -> Optional[tuple[int, int]]:
        """Token grid of a layer at ``level`` for the current latent (None if unknown)."""
        g = self.grids()
        return None if g is None else g[level]

    @contextlib.contextmanager
    def override(self, latent_hw: tuple[int, int]):
        """Set the latent size by hand (to call transformer blocks outside the denoiser's forward)."""
        old, self.latent_hw = self.latent_hw, tuple(latent_hw)
        try:
            yield self
        finally:
            self.latent_hw = old

    def remove(self) -> None:
        """Remove the hook (idempotent)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def __enter__(self) -> "LatentTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
