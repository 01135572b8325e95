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

Joint text-image attention (FLUX, SD3; layers whose ``block_type`` is not ``"self"``), as CLEAR does for FLUX: every
**image query** attends to the K×K neighbourhood of image keys around it (the same shifted windows) plus **every
text key**, in one softmax; **text queries** keep full attention over all keys (:class:`JointNeighborhoodProcessor`).
q, k, v are the processor's own (:func:`~aconvlib.models.families.joint.joint_qkv`: projections, RMS norms, RoPE)
and the output goes through the processor's own output projections, so with K covering the grid the layer computes
what it did before. ``"natten"`` passes the text tokens as ``natten.na2d``'s ``additional_keys``/
``additional_values`` (merged into the neighbourhood's softmax); ``"torch"`` masks a dense [N, N + L] softmax. Joint
transformers have one grid: K must be odd and at most its shorter side (else :class:`KernelSizeError`, one line).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..models import LatentTracker, family_of, get_denoiser, self_attention_layers
from ..models.families.joint import JointLayout, joint_output, joint_qkv

__all__ = ["JointNeighborhoodProcessor", "KernelSizeError", "NeighborhoodAttnProcessor", "check_joint_kernel",
           "clip_kernel", "natten_available", "neighborhood_attention", "neighborhood_mask"]


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


class KernelSizeError(ValueError):
    """A neighborhood kernel size that joint attention cannot use (even, or larger than the image grid)."""


def check_joint_kernel(kernel_size: int, grid: tuple[int, int], where: str = "") -> int:
    """``kernel_size`` if it is odd and fits the image grid ``(H', W')``, else :class:`KernelSizeError`."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise KernelSizeError(f"neighborhood attention needs an odd kernel size >= 1, got {kernel_size!r}")
    if kernel_size > min(grid):
        top = min(grid) if min(grid) % 2 else min(grid) - 1
        raise KernelSizeError(f"neighborhood attention K={kernel_size} is larger than the {grid[0]}x{grid[1]} image "
                              f"token grid{' of ' + where if where else ''}: use an odd K <= {top} or a larger image")
    return kernel_size


def _pad_pow2(t: torch.Tensor, d: int) -> torch.Tensor:
    dp = 1 << (d - 1).bit_length()
    return F.pad(t, (0, dp - d)) if dp != d else t


class JointNeighborhoodProcessor:
    """A diffusers attention processor for one joint layer: image queries K×K + text keys, text queries full."""

    def __init__(self, kernel_size: int, layout: JointLayout, backend: str = "torch", tracker=None, name: str = "",
                 grid: tuple[int, int] | None = None):
        self.kernel_size, self.layout, self.backend, self.tracker, self.name = kernel_size, layout, backend, tracker, name
        self.fixed_grid = grid

    @property
    def grid(self):
        return self.fixed_grid if self.tracker is None else self.tracker.grid(0)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 **kwargs):
        if attention_mask is not None:
            raise ValueError(f"{self.name}: joint neighborhood attention takes no attention mask")
        if self.grid is None:
            raise RuntimeError("neighborhood attention needs the token grid: call the denoiser itself")
        h, w = self.grid
        n_img = h * w
        k_size = check_joint_kernel(self.kernel_size, (h, w), self.name)
        q, k, v, n_text = joint_qkv(attn, self.layout, hidden_states, encoder_hidden_states, image_rotary_emb)
        b, seq, heads, d = q.shape
        if self.layout.block_type == "single":
            n_text = seq - n_img
        if n_text < 0 or n_text + n_img != seq:
            raise ValueError(f"{self.name}: {seq} tokens do not hold the {h}x{w} image grid and {n_text} text tokens")
        img, txt = self.layout.image_slice(n_text, n_img), self.layout.text_slice(n_text, n_img)
        out = torch.empty_like(q)
        scale = d ** -0.5
        if n_text:   # text queries: full attention over every key
            out[:, txt] = F.scaled_dot_product_attention(q[:, txt].transpose(1, 2), k.transpose(1, 2),
                                                         v.transpose(1, 2), scale=scale).transpose(1, 2)
        qi, ki, vi = q[:, img], k[:, img], v[:, img]
        kt, vt = k[:, txt], v[:, txt]
        if self.backend == "natten":
            import natten

            pad = lambda t: _pad_pow2(t, d)   # noqa: E731
            extra = dict(additional_keys=pad(kt), additional_values=pad(vt)) if n_text else {}
            o = natten.na2d(pad(qi).reshape(b, h, w, heads, -1), pad(ki).reshape(b, h, w, heads, -1),
                            pad(vi).reshape(b, h, w, heads, -1), kernel_size=k_size, scale=scale, **extra)
            out[:, img] = o.reshape(b, n_img, heads, -1)[..., :d].to(q.dtype)
        else:
            mask = torch.cat([neighborhood_mask((h, w), k_size, q.device),
                              torch.ones(n_img, n_text, dtype=torch.bool, device=q.device)], dim=1)   # [N, N + L]
            out[:, img] = F.scaled_dot_product_attention(
                qi.transpose(1, 2), torch.cat([ki, kt], 1).transpose(1, 2), torch.cat([vi, vt], 1).transpose(1, 2),
                attn_mask=mask, scale=scale).transpose(1, 2)
        return joint_output(attn, self.layout, out.flatten(2).to(q.dtype), n_text, encoder_hidden_states is not None)


@contextmanager
def neighborhood_attention(target, kernel_size: int = 13, backend: str | None = None):
    """Inside the block every ``attn1`` of the pipeline's / denoiser's layers runs K×K neighborhood attention.

    Args:
        target: a diffusers pipeline or denoiser (U-Net, PixArt DiT, or a joint-attention transformer: FLUX, SD3).
        kernel_size: K (clipped per layer to its grid, see :func:`clip_kernel`; joint layers: at most the image
            grid's shorter side, else :class:`KernelSizeError` when the denoiser is called).
        backend: ``"natten"`` or ``"torch"`` (dense masked reference). Default: NATTEN on CUDA when
            installed, else ``"torch"`` — on CPU NATTEN's uncompiled Flex backend materializes the full
            score matrix anyway and measured 7× slower than the dense reference on mini-sd (same outputs,
            tested).

    The token grid of each layer is read from the latent size before every denoiser call; the
    original processors are restored on exit, also after an exception.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise KernelSizeError(f"neighborhood attention needs an odd kernel size >= 1, got {kernel_size}")
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
    fam = family_of(den)
    procs = {layer.name: (JointNeighborhoodProcessor(kernel_size, fam.layout(den, layer.name), backend, tracker,
                                                     layer.name) if layer.joint else
                          NeighborhoodAttnProcessor(kernel_size, backend, tracker, layer.level)) for layer in layers}
    new = dict(originals)
    new.update({f"{name}.processor": p for name, p in procs.items()})
    den.set_attn_processor(new)
    try:
        yield procs
    finally:
        tracker.remove()
        den.set_attn_processor(dict(originals))
