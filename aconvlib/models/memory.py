"""Memory estimates of a model run, before any work: weights in their dtype plus working memory.

Denoiser parameters are counted exactly from the shipped architecture config (on the ``meta`` device,
no allocation). The other pipeline components (text encoders, VAE, safety checker) are not shipped as
configs; their parameter counts are the published checkpoints' (``ModelSpec.other_params``, rounded).
Working memory is a documented rule of thumb (see :func:`estimate_run_bytes`), not a measurement.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..utils import parse_dtype

from .families import family_of
from .layers import self_attention_layers
from .registry import get_spec, load_denoiser

__all__ = ["RunEstimate", "cached_params", "denoiser_params", "dtype_bytes", "estimate_run_bytes"]

# Parameters of the published non-denoiser components (text encoder(s), VAE, safety checker), millions.
OTHER_PARAMS_M = {
    "sd15": 123.1 + 83.7 + 304.3,        # CLIP ViT-L/14 text encoder, SD VAE, safety checker
    "sdxl": 123.1 + 694.7 + 83.7,        # CLIP ViT-L/14, OpenCLIP ViT-bigG/14 (with projection), SDXL VAE
    "pixart-sigma-512": 4762.3 + 83.7,   # T5-v1.1-XXL encoder, SDXL VAE
    "pixart-sigma-1024": 4762.3 + 83.7,
    "flux-schnell": 123.1 + 4762.3 + 83.8,   # CLIP ViT-L/14 text encoder, T5-v1.1-XXL encoder, 16-channel VAE
    "flux-dev": 123.1 + 4762.3 + 83.8,
    "sd3.5-medium": 123.7 + 694.7 + 4762.3 + 83.8,   # CLIP-L and CLIP-G (with projections), T5-XXL, 16-channel VAE
    "sd3.5-large": 123.7 + 694.7 + 4762.3 + 83.8,
}
# The largest of those components (millions): with ``pipe.enable_model_cpu_offload()`` one component at a time sits
# on the device, so the peak is the largest component (the denoiser or this) plus the working memory.
LARGEST_OTHER_M = {"sd15": 304.3, "sdxl": 694.7, "pixart-sigma-512": 4762.3, "pixart-sigma-1024": 4762.3,
                   "flux-schnell": 4762.3, "flux-dev": 4762.3, "sd3.5-medium": 4762.3, "sd3.5-large": 4762.3}


def dtype_bytes(dtype) -> int:
    return torch.empty((), dtype=parse_dtype(dtype)).element_size()


def cached_params(repo_id: str, exclude: tuple = ()) -> int | None:
    """Parameters of a checkpoint in the local Hugging Face cache, counted from its safetensors headers
    (non-variant files; top-level folders in ``exclude`` skipped; None if the repo is not cached)."""
    from huggingface_hub import scan_cache_dir
    from safetensors import safe_open

    try:
        repo = next((r for r in scan_cache_dir().repos if r.repo_id == repo_id), None)
    except Exception:  # no cache folder
        return None
    if repo is None or not repo.revisions:
        return None
    snap = max(repo.revisions, key=lambda r: r.last_modified).snapshot_path
    total = 0
    for f in snap.rglob("*.safetensors"):
        if f.name.count(".") > 1:  # variant files (*.fp16.safetensors) duplicate the plain ones
            continue
        if f.relative_to(snap).parts[0] in exclude:
            continue
        with safe_open(str(f), "pt") as st:
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total


@functools.lru_cache(maxsize=None)
def denoiser_params(model: str) -> int:
    """Exact parameter count of a registered model's denoiser (from its config, nothing allocated)."""
    den = load_denoiser(model, weights=False, device="meta")
    return sum(p.numel() for p in den.parameters())


@dataclass(frozen=True)
class RunEstimate:
    """Bytes of one run, by part; ``total`` is their sum."""

    weights: int
    activations: int
    capture: int
    largest_component: int = 0   # bytes of the largest pipeline component (0: not known)

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.capture

    @property
    def offloaded_total(self) -> int:
        """The peak with ``pipe.enable_model_cpu_offload()`` (one component on the device at a time): the largest
        component plus the working memory (``total`` when the largest component is not known)."""
        if not self.largest_component:
            return self.total
        return self.largest_component + self.activations + self.capture

    def advice(self, available_bytes: int) -> str:
        """How the run fits ``available_bytes``: ``"fits"``, ``"fits with pipe.enable_model_cpu_offload()"`` or
        ``"does not fit"`` (with what it needs)."""
        g = 2 ** 30
        if self.total <= available_bytes:
            return "fits"
        if self.offloaded_total <= available_bytes:
            return (f"does not fit without offload ({self.total / g:.1f} GiB); fits with "
                    f"pipe.enable_model_cpu_offload() ({self.offloaded_total / g:.1f} GiB)")
        return (f"does not fit ({self.total / g:.1f} GiB; {self.offloaded_total / g:.1f} GiB with "
                f"pipe.enable_model_cpu_offload()): use pipe.enable_sequential_cpu_offload() or a smaller dtype")

    def describe(self) -> str:
        g = 2 ** 30
        off = (f"; with pipe.enable_model_cpu_offload() {self.offloaded_total / g:.1f} GiB"
               if self.largest_component and self.offloaded_total < self.total else "")
        return (f"{self.total / g:.1f} GiB (weights {self.weights / g:.1f}, activations ~{self.activations / g:.1f}, "
                f"attention capture {self.capture / g:.1f}){off}")


def estimate_run_bytes(model: str, dtype="float16", height: int | None = None, width: int | None = None,
                       batch: int = 1, cfg: bool = True, capture: bool = False) -> RunEstimate:
    """Estimate the device memory of generating ``batch`` images of ``height``×``width`` with ``model``.

    - weights: all components in ``dtype``: counted from the checkpoint's files when it is in the local
      cache, else the denoiser from its shipped config and the others from published sizes;
    - activations: ``6 ×`` the largest self-attention layer's tokens × channels × (batch, ×2 with CFG), in
      ``dtype``, for the residual stream and the projections, plus the dense attention scores of one head
      (N² per item, fp32) as the upper bound of an SDPA math fallback; and the VAE decode at full size
      (256 channels at H×W, 2 tensors); joint-attention layers count their text tokens too (the pipeline's
      default ``max_sequence_length``);
    - ``largest_component``: the denoiser or the largest other component (see :attr:`RunEstimate.offloaded_total`).
    - capture: one fp32 [N, N] accumulator per self-attention layer plus a 256 MiB workspace, when ``capture``.
    """
    spec = get_spec(model)
    h, w = height or spec.default_px, width or spec.default_px
    b = dtype_bytes(dtype)
    # a denoiser-only repo's companion pipeline holds a denoiser too, which this model replaces: not counted
    cached = None if spec.embedded else [cached_params(spec.hub_id)] + (
        [cached_params(spec.components_from, exclude=(spec.denoiser_subfolder,))] if spec.components_from else [])
    if spec.embedded:
        n_params = sum(p.numel() for p in load_denoiser(spec.name).parameters())
    elif cached and all(c is not None for c in cached):
        n_params = sum(cached)
    else:
        n_params = denoiser_params(spec.name) + int(1e6 * OTHER_PARAMS_M.get(spec.name, 0.0))
    den = load_denoiser(spec.name, weights=False, device="meta") if not spec.embedded else load_denoiser(spec.name)
    layers = self_attention_layers(den, spec.latent_grid(h, w))
    items = batch * (2 if cfg else 1)
    big = max(layers, key=lambda l: l.tokens)
    fam = family_of(den)
    seq = big.tokens + (fam.text_tokens(den) if any(l.joint for l in layers) else 0)
    act = 6 * items * seq * big.channels * b + items * seq ** 2 * 4 + 2 * batch * 256 * h * w * b
    cap = sum(4 * l.tokens ** 2 for l in layers) + 3 * 256 * 2 ** 20 if capture else 0
    den_params = denoiser_params(spec.name) if not spec.embedded else sum(p.numel() for p in den.parameters())
    largest = max(den_params, int(1e6 * LARGEST_OTHER_M.get(spec.name, 0.0))) * b
    return RunEstimate(n_params * b, act, cap, largest)
