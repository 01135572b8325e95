"""Neighborhood attention in place of self-attention (paper Sec. 3.3, Fig. 6), training-free.

Every self-attention ``attn1`` of a diffusers ``UNet2DConditionModel`` or ``PixArtTransformer2DModel``
gets a :class:`NeighborhoodAttnProcessor`: the layer's own q/k/v/out projections, but each query
attends only to the K×K keys around it (NATTEN's ``na2d``; windows at the borders are shifted inwards
so every query sees K×K keys). Where K exceeds the token grid the window is clipped to the grid,
which is full attention along that axis.

    with neighborhood_attention(pipe, kernel_size=13):
        images = pipe(prompt).images

NATTEN on CPU (flex backend) supports the forward pass only and head dims that are powers of two:
other head dims are zero-padded (which changes neither q·k nor the value average) with the softmax
scale of the true head dim.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from .convert import GridContext, get_denoiser
from .models.layers import self_attention_layers


def _natten():
    try:
        import natten
    except ImportError as e:  # pragma: no cover - natten is part of the standard set-up
        raise ImportError("neighborhood attention needs NATTEN: `pip install --no-build-isolation natten` "
                          "after torch") from e
    return natten


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, scale: float) -> torch.Tensor:
    """Neighborhood attention on [B, H, W, heads, d] tensors; kernel clipped to the grid; same shape out."""
    natten = _natten()
    H, W, d = q.shape[1], q.shape[2], q.shape[-1]
    ks = (min(kernel_size, H), min(kernel_size, W))
    if q.device.type == "cpu" and d != _next_pow2(d):
        pad = _next_pow2(d) - d
        q, k, v = (torch.nn.functional.pad(t, (0, pad)) for t in (q, k, v))
    dtype = q.dtype
    if q.device.type == "cpu" and dtype not in (torch.float32,):
        q, k, v = q.float(), k.float(), v.float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex attention warns that it runs uncompiled on CPU
        out = natten.na2d(q.contiguous(), k.contiguous(), v.contiguous(), kernel_size=ks, scale=scale)
    return out[..., :d].to(dtype)


class NeighborhoodAttnProcessor:
    """diffusers attention processor: the layer's projections with K×K neighborhood attention.

    Args:
        kernel_size: window side K (keys per query: K×K, clipped to the grid).
        context: the :class:`~aconvlib.convert.GridContext` that knows the current latent size.
        level: the layer's resolution level (U-Net), 0 for a DiT.
    """

    def __init__(self, kernel_size: int, context: GridContext, level: int = 0):
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be positive, got {kernel_size}")
        self.kernel_size, self.context, self.level = int(kernel_size), context, level

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if encoder_hidden_states is not None:
            raise ValueError("neighborhood attention replaces self-attention only (got encoder_hidden_states)")
        if hidden_states.ndim != 3:
            raise ValueError(f"expected tokens [B, N, C], got {tuple(hidden_states.shape)}")
        B, N, _ = hidden_states.shape
        grid = self.context.grid(self.level)
        if grid is None or grid[0] * grid[1] != N:
            raise RuntimeError(f"unknown or mismatched token grid {grid} for N = {N} tokens: call the denoiser "
                               "itself so that its pre-hook records the latent size")
        heads = attn.heads
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        d = q.shape[-1] // heads
        if getattr(attn, "norm_q", None) is not None:
            q = attn.norm_q(q.view(B, N, heads, d)).view(B, N, -1)
        if getattr(attn, "norm_k", None) is not None:
            k = attn.norm_k(k.view(B, N, heads, d)).view(B, N, -1)
        q, k, v = (t.view(B, grid[0], grid[1], heads, d) for t in (q, k, v))
        out = na2d(q, k, v, self.kernel_size, attn.scale).reshape(B, N, heads * d)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def neighborhood_attention(pipe_or_denoiser, kernel_size: int = 13):
    """Within the block, every ``attn1`` runs K×K neighborhood attention; the original processors return on exit."""
    den = get_denoiser(pipe_or_denoiser)
    layers = self_attention_layers(den)
    if not layers:
        raise ValueError(f"no self-attention layers in the {type(den).__name__}")
    _natten()
    ctx = GridContext(den)
    originals = {l.name: l.module.processor for l in layers}
    try:
        for l in layers:
            l.module.set_processor(NeighborhoodAttnProcessor(kernel_size, ctx, l.level))
        yield pipe_or_denoiser
    finally:
        ctx.handle.remove()
        for l in layers:
            l.module.set_processor(originals[l.name])
