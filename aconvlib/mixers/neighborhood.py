"""Replace every self-attention layer of a denoiser by K×K neighborhood attention (paper Sec. 3.3, Fig. 6).

Neighborhood attention (NA) of a query at grid position (i, j) attends only to the keys of a K×K
window around it; at the borders the window is *shifted* inwards so that it always holds K×K keys
(NATTEN's convention, unlike the clipped windows of :mod:`aconvlib.locality`):
rows ``clamp(i − ⌊K/2⌋, 0, H' − K) … + K − 1``, columns likewise. With K ≥ the grid side NA equals
full attention along that axis. K is clipped per layer to its grid: ``K_l = min(K, H', W')``, made odd.

Backends: ``"natten"`` calls ``natten.na2d`` ([B, H', W', heads, d] layout). On CPU NATTEN runs
its Flex backend, forward only, and needs a power-of-two head dim: q, k, v are zero-padded to the
next power of two (which changes no dot product) and the original ``d^{-1/2}`` scale is passed.
``"torch"`` is a dense masked-softmax reference (O(N²) memory, fine for small grids) used when NATTEN
is missing and in the tests.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..models import LatentTracker, get_denoiser, self_attention_layers

__all__ = ["NeighborhoodAttnProcessor", "clip_kernel", "natten_available", "neighborhood_attention",
           "neighborhood_mask"]


def natten_available() -> bool:
    try:
        import natten  # noqa: F401
    except ImportError:
        return False
    return True


def clip_kernel(kernel_size: int, grid: tuple[int, int]) -> int:
    """``min(K, H', W')``, reduced by one if even (NA windows are centred)."""
    k = min(kernel_size, *grid)
    return k if k % 2 else k - 1


def neighborhood_mask(grid: tuple[int, int], kernel_size: int, device=None) -> torch.Tensor:
    """Boolean [N, N]: True where key k is in query q's shifted K×K window (raster order)."""
    h, w = grid
    k = kernel_size
    r = torch.arange(h, device=device)
    c = torch.arange(w, device=device)
    r0 = (r - k // 2).clamp(0, max(h - k, 0))
    c0 = (c - k // 2).clamp(0, max(w - k, 0))
    in_r = (r[None, :] >= r0[:, None]) & (r[None, :] < r0[:, None] + k)   # [query row, key row]
    in_c = (c[None, :] >= c0[:, None]) & (c[None, :] < c0[:, None] + k)
    return (in_r[:, None, :, None] & in_c[None, :, None, :]).reshape(h * w, h * w)


class NeighborhoodAttnProcessor:
    """A diffusers attention processor computing NA over the layer's token grid (set per call)."""

    def __init__(self, kernel_size: int, backend: str = "natten", tracker: LatentTracker | None = None,
                 level: int = 0, grid: tuple[int, int] | None = None):
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"neighborhood attention needs an odd kernel size >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.backend = backend
        self.tracker, self.level = tracker, level
        self.fixed_grid = None if grid is None else (int(grid[0]), int(grid[1]))

    @property
    def grid(self) -> tuple[int, int] | None:
        """The layer's token grid for the denoiser's current call (or the fixed ``grid`` given, for a module
        called on its own, e.g. in the module benchmark)."""
        return self.fixed_grid if self.tracker is None else self.tracker.grid(self.level)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("neighborhood attention replaces self-attention only (no context, no mask)")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, ch, hh, ww = hidden_states.shape
            hidden_states = hidden_states.view(b, ch, hh * ww).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        bsz, n, _ = hidden_states.shape
        if self.grid is None:
            raise RuntimeError("neighborhood attention needs the token grid: call the denoiser itself")
        h, w = self.grid
        if h * w != n:
            raise ValueError(f"{n} tokens do not match the grid {self.grid}")
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = attn.heads
        d = q.shape[-1] // heads
        q, k, v = (t.view(bsz, n, heads, d) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        ks = clip_kernel(self.kernel_size, (h, w))
        if self.backend == "natten":
            import natten

            dp = 1 << (d - 1).bit_length()
            pad = (lambda t: F.pad(t, (0, dp - d))) if dp != d else (lambda t: t)
            out = natten.na2d(pad(q).view(bsz, h, w, heads, dp), pad(k).view(bsz, h, w, heads, dp),
                              pad(v).view(bsz, h, w, heads, dp), kernel_size=ks, scale=attn.scale)
            out = out.reshape(bsz, n, heads, dp)[..., :d]
        else:
            mask = neighborhood_mask((h, w), ks, q.device)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=mask, scale=attn.scale).transpose(1, 2)
        hidden_states = out.reshape(bsz, n, heads * d).to(q.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, ch, hh, ww)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def neighborhood_attention(target, kernel_size: int = 13, backend: str | None = None):
    """Inside the block every ``attn1`` of the pipeline's / denoiser's layers runs K×K neighborhood attention.

    Args:
        target: a diffusers pipeline or denoiser (U-Net or PixArt DiT).
        kernel_size: K (clipped per layer to its grid, see :func:`clip_kernel`).
        backend: ``"natten"`` or ``"torch"`` (dense masked reference). Default: NATTEN on CUDA when
            installed, else ``"torch"`` — on CPU NATTEN's uncompiled Flex backend materializes the full
            score matrix anyway and measured 7× slower than the dense reference on mini-sd (same outputs,
            tested).

    The token grid of each layer is read from the latent size before every denoiser call; the
    original processors are restored on exit, also after an exception.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"neighborhood attention needs an odd kernel size >= 1, got {kernel_size}")
    den = get_denoiser(target)
    layers = self_attention_layers(den)
    if not layers:
        raise ValueError(f"this {type(den).__name__} has no self-attention (attn1) layer left to replace "
                         "(already converted to ΔConv?); neighborhood attention would change nothing")
    on_cuda = next(den.parameters()).device.type == "cuda"
    backend = backend or ("natten" if natten_available() and on_cuda else "torch")
    if backend not in ("natten", "torch"):
        raise ValueError(f"backend must be 'natten' or 'torch', got {backend!r}")
    if backend == "natten" and not natten_available():
        raise ImportError("natten is not installed: `pip install --no-build-isolation natten`, or backend='torch'")
    originals = dict(den.attn_processors)
    tracker = LatentTracker(den)
    procs = {layer.name: NeighborhoodAttnProcessor(kernel_size, backend, tracker, layer.level) for layer in layers}
    new = dict(originals)
    new.update({f"{name}.processor": p for name, p in procs.items()})
    den.set_attn_processor(new)
    try:
        yield procs
    finally:
        tracker.remove()
        den.set_attn_processor(dict(originals))
