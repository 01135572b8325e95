"""Triton kernels of the ΔConvBlock stages: forward and backward, channels-last, fp32 accumulation.

All tensors are contiguous ``[B, H, W, C]`` (C fastest), so every load is a run of channels.
Kernels tile (pixels × channels); pixels are flattened over the batch (``p = (b·H + y)·W + x``).

* depthwise K×K conv: forward; input gradient = the same kernel with the flipped filter;
  weight gradient = per-chunk fp32 partial sums ``[chunks, K·K, C]`` reduced by torch (deterministic).
* adaptive average pooling down (torch's windows ``floor(i·H/h) .. ceil((i+1)·H/h)``, h ≤ H):
  forward gathers its window; backward gathers the (at most 2×2) windows that hold an input pixel.
* bilinear upsampling (``align_corners=False``, h ≤ H): forward reads 4 neighbours; backward
  gathers, for each input pixel, the output pixels whose interpolation touched it (no atomics).

Wrapped in ``torch.autograd.Function``s: :func:`dwconv2d`, :func:`avg_pool_down`, :func:`bilinear_up`.
Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

BLOCK_P = 32
BLOCK_P_CONV = 64


def _block_c(c: int) -> int:
    return max(16, min(64, triton.next_power_of_2(c)))


@triton.jit
def _tile(P, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's (pixels × channels) tile: pixel offsets (int64), channel offsets, their masks."""
    offs_p = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return offs_p, offs_c, offs_p < P, offs_c < C


@triton.jit
def _unravel(p, H, W):
    """Flattened pixel index ``(b·H + y)·W + x`` -> ``(b, y, x)``."""
    return p // (W * H), (p // W) % H, p % W


@triton.jit
def _store_tile(ptr, acc, offs_p, offs_c, mask_p, mask_c, C):
    """Write an fp32 tile to the channels-last tensor at ``ptr`` in its dtype."""
    tl.store(ptr + offs_p[:, None] * C + offs_c[None, :], acc.to(ptr.dtype.element_ty),
             mask=mask_p[:, None] & mask_c[None, :])


# ----------------------------------------------------------------------------------------------
# depthwise convolution
# ----------------------------------------------------------------------------------------------
@triton.jit
def _dwconv_fwd_kernel(x_ptr, w_ptr, y_ptr, P, H, W, C,
                       K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_p, offs_c, mask_p, mask_c = _tile(P, C, BLOCK_P, BLOCK_C)
    _, y_idx, x_idx = _unravel(offs_p, H, W)
    # neighbour (dy, dx) of pixel p is pixel p + dy·W + dx of the same image: one scalar offset per tap
    base = x_ptr + offs_p[:, None] * C + offs_c[None, :]
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in range(K):
        yy = y_idx + (i - K // 2)
        ok_y = mask_p & (yy >= 0) & (yy < H)
        for j in range(K):
            xx = x_idx + (j - K // 2)
            ok = ok_y & (xx >= 0) & (xx < W)
            shift = ((i - K // 2) * W + (j - K // 2)) * C
            xv = tl.load(base + shift, mask=ok[:, None] & mask_c[None, :], other=0.0)
            wv = tl.load(w_ptr + (i * K + j) * C + offs_c, mask=mask_c, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    _store_tile(y_ptr, acc, offs_p, offs_c, mask_p, mask_c, C)


@triton.jit
def _dwconv_wgrad_kernel(x_ptr, go_ptr, part_ptr, P, H, W, C,
                         K: tl.constexpr, SUBTILES: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # program (chunk, channel block, filter row i): partial sums over the chunk's pixels of
    # go[p] · x[p + (i - K//2)·W + (j - K//2)] for the K taps of row i -> part[chunk, i·K + j, c]
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    i = tl.program_id(2)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    start = pid * (SUBTILES * BLOCK_P)  # each program sums SUBTILES·BLOCK_P pixels (compile-time trip count)
    for j in range(K):
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for sub in range(SUBTILES):
            offs_p = (start + sub * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
            mask_p = offs_p < P
            _, y_idx, x_idx = _unravel(offs_p, H, W)
            yy = y_idx + (i - K // 2)
            xx = x_idx + (j - K // 2)
            ok = mask_p & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            m = ok[:, None] & mask_c[None, :]
            pix = offs_p[:, None] * C + offs_c[None, :]
            g = tl.load(go_ptr + pix, mask=m, other=0.0)
            xv = tl.load(x_ptr + pix + ((i - K // 2) * W + (j - K // 2)) * C, mask=m, other=0.0)
            acc += g.to(tl.float32) * xv.to(tl.float32)
        tl.store(part_ptr + (pid * K * K + i * K + j) * C + offs_c, tl.sum(acc, axis=0), mask=mask_c)


def _dwconv_fwd(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    b, h, wd, c = x.shape
    k = w.shape[0]
    y = torch.empty_like(x)
    p = b * h * wd
    bc = _block_c(c)
    grid = (triton.cdiv(p, BLOCK_P_CONV), triton.cdiv(c, bc))
    _dwconv_fwd_kernel[grid](x, w, y, p, h, wd, c, K=k, BLOCK_P=BLOCK_P_CONV, BLOCK_C=bc)
    return y


def _dwconv_wgrad(x: torch.Tensor, go: torch.Tensor, k: int) -> torch.Tensor:
    b, h, wd, c = x.shape
    p = b * h * wd
    bc = _block_c(c)
    # about 256 pixel chunks; a power-of-two number of BLOCK_P tiles each (few compiled variants)
    subtiles = min(64, max(4, triton.next_power_of_2(triton.cdiv(p, 256 * BLOCK_P))))
    chunks = triton.cdiv(p, subtiles * BLOCK_P)
    part = torch.empty((chunks, k * k, c), device=x.device, dtype=torch.float32)
    _dwconv_wgrad_kernel[(chunks, triton.cdiv(c, bc), k)](x, go, part, p, h, wd, c,
                                                          K=k, SUBTILES=subtiles, BLOCK_P=BLOCK_P, BLOCK_C=bc)
    return part.sum(0).view(k, k, c)


class _DWConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        x, weight = x.contiguous(), weight.contiguous()
        ctx.save_for_backward(x, weight)
        return _dwconv_fwd(x, weight)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = _dwconv_fwd(grad_out, weight.flip(0, 1).contiguous())
        if ctx.needs_input_grad[1]:
            gw = _dwconv_wgrad(x, grad_out, weight.shape[0]).to(weight.dtype)
        return gx, gw


# ----------------------------------------------------------------------------------------------
# adaptive average pooling (down-sampling)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _pool_fwd_kernel(x_ptr, y_ptr, P, H, W, OH, OW, C,
                     KH: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_p, offs_c, mask_p, mask_c = _tile(P, C, BLOCK_P, BLOCK_C)
    b, oy, ox = _unravel(offs_p, OH, OW)
    ys = (oy * H) // OH
    ye = ((oy + 1) * H + OH - 1) // OH
    xs = (ox * W) // OW
    xe = ((ox + 1) * W + OW - 1) // OW
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for di in range(KH):
        yy = ys + di
        ok_y = mask_p & (yy < ye)
        for dj in range(KW):
            xx = xs + dj
            ok = ok_y & (xx < xe)
            src = ((b * H + yy) * W + xx) * C
            v = tl.load(x_ptr + src[:, None] + offs_c[None, :], mask=ok[:, None] & mask_c[None, :], other=0.0)
            acc += v.to(tl.float32)
    area = ((ye - ys) * (xe - xs)).to(tl.float32)
    _store_tile(y_ptr, acc / area[:, None], offs_p, offs_c, mask_p, mask_c, C)


@triton.jit
def _pool_bwd_kernel(go_ptr, gx_ptr, P, H, W, OH, OW, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # gather: input row y lies in output windows oy0 = floor(y·OH/H) and possibly oy0 + 1 (OH ≤ H)
    offs_p, offs_c, mask_p, mask_c = _tile(P, C, BLOCK_P, BLOCK_C)
    b, y_idx, x_idx = _unravel(offs_p, H, W)
    oy0 = (y_idx * OH) // H
    ox0 = (x_idx * OW) // W
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for dy in range(2):
        oy = oy0 + dy
        ys = (oy * H) // OH
        ye = ((oy + 1) * H + OH - 1) // OH
        ok_y = mask_p & (oy < OH) & (ys <= y_idx) & (y_idx < ye)
        for dx in range(2):
            ox = ox0 + dx
            xs = (ox * W) // OW
            xe = ((ox + 1) * W + OW - 1) // OW
            ok = ok_y & (ox < OW) & (xs <= x_idx) & (x_idx < xe)
            inv_area = 1.0 / ((ye - ys) * (xe - xs)).to(tl.float32)
            src = ((b * OH + oy) * OW + ox) * C
            g = tl.load(go_ptr + src[:, None] + offs_c[None, :], mask=ok[:, None] & mask_c[None, :], other=0.0)
            acc += g.to(tl.float32) * inv_area[:, None]
    _store_tile(gx_ptr, acc, offs_p, offs_c, mask_p, mask_c, C)


def _max_window(n_in: int, n_out: int) -> int:
    return max(((o + 1) * n_in + n_out - 1) // n_out - (o * n_in) // n_out for o in range(n_out))


class _AvgPoolDown(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size):
        x = x.contiguous()
        b, h, w, c = x.shape
        oh, ow = size
        y = torch.empty((b, oh, ow, c), device=x.device, dtype=x.dtype)
        p, bc = b * oh * ow, _block_c(c)
        _pool_fwd_kernel[(triton.cdiv(p, BLOCK_P), triton.cdiv(c, bc))](
            x, y, p, h, w, oh, ow, c, KH=_max_window(h, oh), KW=_max_window(w, ow), BLOCK_P=BLOCK_P, BLOCK_C=bc)
        ctx.in_shape = x.shape
        return y

    @staticmethod
    def backward(ctx, grad_out):
        grad_out = grad_out.contiguous()
        b, h, w, c = ctx.in_shape
        oh, ow = grad_out.shape[1:3]
        gx = torch.empty((b, h, w, c), device=grad_out.device, dtype=grad_out.dtype)
        p, bc = b * h * w, _block_c(c)
        _pool_bwd_kernel[(triton.cdiv(p, BLOCK_P), triton.cdiv(c, bc))](
            grad_out, gx, p, h, w, oh, ow, c, BLOCK_P=BLOCK_P, BLOCK_C=bc)
        return gx, None


# ----------------------------------------------------------------------------------------------
# bilinear upsampling (align_corners=False)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _source_index(dst, scale, n_in):
    # torch's area_pixel_compute_source_index (align_corners=False), then the two taps and the weight
    src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    i0 = src.to(tl.int64)  # trunc == floor for src >= 0
    i1 = tl.where(i0 < n_in - 1, i0 + 1, i0)
    lam = src - i0.to(tl.float32)
    return i0, i1, lam


@triton.jit
def _bilinear_fwd_kernel(x_ptr, y_ptr, P, IH, IW, OH, OW, C, scale_h, scale_w,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_p, offs_c, mask_p, mask_c = _tile(P, C, BLOCK_P, BLOCK_C)
    m = mask_p[:, None] & mask_c[None, :]
    b, oy, ox = _unravel(offs_p, OH, OW)
    y0, y1, ly = _source_index(oy, scale_h, IH)
    x0, x1, lx = _source_index(ox, scale_w, IW)
    base = b * IH
    c = offs_c[None, :]
    v00 = tl.load(x_ptr + (((base + y0) * IW + x0) * C)[:, None] + c, mask=m, other=0.0).to(tl.float32)
    v01 = tl.load(x_ptr + (((base + y0) * IW + x1) * C)[:, None] + c, mask=m, other=0.0).to(tl.float32)
    v10 = tl.load(x_ptr + (((base + y1) * IW + x0) * C)[:, None] + c, mask=m, other=0.0).to(tl.float32)
    v11 = tl.load(x_ptr + (((base + y1) * IW + x1) * C)[:, None] + c, mask=m, other=0.0).to(tl.float32)
    ly = ly[:, None]
    lx = lx[:, None]
    out = (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)
    _store_tile(y_ptr, out, offs_p, offs_c, mask_p, mask_c, C)


@triton.jit
def _bilinear_bwd_kernel(go_ptr, gx_ptr, P, IH, IW, OH, OW, C, scale_h, scale_w, inv_h, inv_w,
                         RY: tl.constexpr, RX: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # gather over the output pixels whose forward interpolation used input pixel (iy, ix): for each
    # candidate output row/col recompute the forward taps and weights exactly, keep the matching ones.
    offs_p, offs_c, mask_p, mask_c = _tile(P, C, BLOCK_P, BLOCK_C)
    b, iy, ix = _unravel(offs_p, IH, IW)
    oy_lo = tl.maximum(tl.floor((iy.to(tl.float32) - 0.5) * inv_h - 0.5), 0.0).to(tl.int64)
    ox_lo = tl.maximum(tl.floor((ix.to(tl.float32) - 0.5) * inv_w - 0.5), 0.0).to(tl.int64)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for ty in range(RY):
        oy = oy_lo + ty
        y0, y1, ly = _source_index(oy, scale_h, IH)
        wy = tl.where(y0 == iy, 1.0 - ly, 0.0) + tl.where(y1 == iy, ly, 0.0)
        ok_y = mask_p & (oy < OH) & (wy != 0.0)
        for tx in range(RX):
            ox = ox_lo + tx
            x0, x1, lx = _source_index(ox, scale_w, IW)
            wx = tl.where(x0 == ix, 1.0 - lx, 0.0) + tl.where(x1 == ix, lx, 0.0)
            ok = ok_y & (ox < OW) & (wx != 0.0)
            src = ((b * OH + oy) * OW + ox) * C
            g = tl.load(go_ptr + src[:, None] + offs_c[None, :], mask=ok[:, None] & mask_c[None, :], other=0.0)
            acc += g.to(tl.float32) * (wy * wx)[:, None]
    _store_tile(gx_ptr, acc, offs_p, offs_c, mask_p, mask_c, C)


class _BilinearUp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size):
        x = x.contiguous()
        b, ih, iw, c = x.shape
        oh, ow = size
        y = torch.empty((b, oh, ow, c), device=x.device, dtype=x.dtype)
        p, bc = b * oh * ow, _block_c(c)
        _bilinear_fwd_kernel[(triton.cdiv(p, BLOCK_P), triton.cdiv(c, bc))](
            x, y, p, ih, iw, oh, ow, c, ih / oh, iw / ow, BLOCK_P=BLOCK_P, BLOCK_C=bc)
        ctx.in_shape = x.shape
        return y

    @staticmethod
    def backward(ctx, grad_out):
        grad_out = grad_out.contiguous()
        b, ih, iw, c = ctx.in_shape
        oh, ow = grad_out.shape[1:3]
        gx = torch.empty((b, ih, iw, c), device=grad_out.device, dtype=grad_out.dtype)
        p, bc = b * ih * iw, _block_c(c)
        ry, rx = math.ceil(2 * oh / ih) + 4, math.ceil(2 * ow / iw) + 4
        _bilinear_bwd_kernel[(triton.cdiv(p, BLOCK_P), triton.cdiv(c, bc))](
            grad_out, gx, p, ih, iw, oh, ow, c, ih / oh, iw / ow, oh / ih, ow / iw,
            RY=ry, RX=rx, BLOCK_P=BLOCK_P, BLOCK_C=bc)
        return gx, None


# ----------------------------------------------------------------------------------------------
# public ops
# ----------------------------------------------------------------------------------------------
def dwconv2d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise K×K conv (padding K//2, no bias): x ``[B, H, W, C]``, weight ``[K, K, C]`` -> ``[B, H, W, C]``."""
    return _DWConv2d.apply(x, weight)


def avg_pool_down(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling ``[B, H, W, C] -> [B, h, w, C]`` (h ≤ H, w ≤ W), torch's windows."""
    oh, ow = int(size[0]), int(size[1])
    if not (0 < oh <= x.shape[1] and 0 < ow <= x.shape[2]):
        raise ValueError(f"avg_pool_down only down-samples: {tuple(x.shape[1:3])} -> {(oh, ow)}")
    return _AvgPoolDown.apply(x, (oh, ow))


def bilinear_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize ``[B, h, w, C] -> [B, H, W, C]`` (H ≥ h, W ≥ w), ``align_corners=False``."""
    oh, ow = int(size[0]), int(size[1])
    if not (oh >= x.shape[1] and ow >= x.shape[2]):
        raise ValueError(f"bilinear_up only up-samples: {tuple(x.shape[1:3])} -> {(oh, ow)}")
    return _BilinearUp.apply(x, (oh, ow))
