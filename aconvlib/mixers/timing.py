"""Timing one token-mixer call, and the mixers a latency benchmark builds for one module shape.

Functions only; the benchmark programs, their model shapes (read from the shipped configs), tables and
Markdown are the book's (:mod:`aconvlib.book.benchmarks`).

- :func:`time_call`: median ms and peak extra memory (CUDA) of a callable over adaptive repetitions.
- :func:`time_module`: one module call forward (no grad) or forward + backward, timed.
- :func:`make_attention`: a diffusers ``Attention`` (SDPA processor) of a module shape.
- :func:`mixer_keys` / :func:`build_mixers`: every mixer of the paper's Table 2 for one shape, keyed by method.
- :func:`check_triton`: Triton-vs-torch differences of a ΔConvBlock (same weights).
- :func:`parse_size`: ``512`` or ``"1440x2560"`` as (H, W) px.
"""
from __future__ import annotations

import re
import time

import torch

from .deltaconv import DeltaConvBlock

__all__ = ["MIXER_IMPLS", "build_mixers", "check_triton", "make_attention", "mixer_keys", "parse_size", "time_call",
           "time_module"]

#: the mixer implementations a benchmark can time (ΔConv in plain PyTorch and with the Triton kernels)
MIXER_IMPLS = ("sdpa", "na", "window", "linear", "deltaconv-torch", "deltaconv-triton")


def make_attention(shape: dict, dtype, device):
    """A diffusers ``Attention`` with the SDPA processor, of ``shape`` (``channels``, ``heads``, ``head_dim``,
    ``qkv_bias``; a biased output projection)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    attn = Attention(query_dim=shape["channels"], heads=shape["heads"], dim_head=shape["head_dim"],
                     bias=shape["qkv_bias"], out_bias=True, processor=AttnProcessor2_0())
    return attn.to(device=device, dtype=dtype)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device, min_time=0.25, max_reps=20, warmup=2):
    """Median ms of ``fn()`` and its peak extra memory (MiB, CUDA) over adaptive repetitions."""
    for _ in range(warmup):
        fn()
    _sync(device)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    total = 0.0
    while len(times) < 3 or (total < min_time and len(times) < max_reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            t = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            fn()
            t = (time.perf_counter() - t0) * 1e3
        times.append(t)
        total += t / 1e3
        if total > 20 * min_time and len(times) >= 1:  # very slow call: one is enough
            break
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    times.sort()
    return times[len(times) // 2], peak


def time_module(module, call, x, mode: str, device):
    """``(median ms, peak MiB)`` of ``call(module, x)``: ``"fwd"`` under no_grad, ``"fwdbwd"`` with the input and
    parameter gradients of a unit-scale output gradient."""
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                call(module, x)
    else:
        xg = x.detach().requires_grad_(True)
        gy = torch.randn_like(x)

        def fn():
            xg.grad = None
            module.zero_grad(set_to_none=True)
            call(module, xg).backward(gy)
    return time_call(fn, device)


def check_triton(block, x, grid):
    """Max |triton − torch| / max |torch| (same weights) of: the block output (``relerr_out``), its input
    gradient (``relerr_grad_x``), the stage-0 filter gradient (``relerr_grad_w0``) and the pyramid stages'
    output before ``out_proj`` (``relerr_stages``: the only part the Triton kernels compute); and
    ``stage_share``, max |out_proj(stages) − bias| / max |output| of the torch run.

    Why ``relerr_stages``: the output also holds the out_proj bias and the pool branch, which both backends
    compute with the same PyTorch ops. With random weights the stages' contribution is a small part of the
    output (``stage_share``), so in fp16 a kernel difference of about one ulp of the stages is far below half an
    ulp of the output and rounds away: ``relerr_out`` can be exactly 0.0 while the kernels differ.
    ``relerr_stages`` compares what the kernels produce.
    """
    res = {}
    outs = {}
    gy = torch.randn_like(x)  # unit-scale output gradient (a mean-square loss would underflow in fp16)
    for be in ("torch", "triton"):
        block.backend = be
        block.zero_grad(set_to_none=True)
        xg = x.detach().requires_grad_(True)
        y = block(xg, grid)
        y.backward(gy)
        with torch.no_grad():
            st = torch.cat(block.forward_stages(x, grid), dim=-1)
            local = block.out_proj(st.view(x.shape[0], x.shape[1], -1))
            if block.out_proj.bias is not None:
                local = local - block.out_proj.bias
        outs[be] = (y.detach().float(), xg.grad.float(), block.stages[0].weight.grad.float().clone(), st.float())
        if be == "torch":
            res["stage_share"] = float(local.float().abs().max() / y.detach().float().abs().max().clamp_min(1e-12))
    block.zero_grad(set_to_none=True)
    block.backend = None
    for i, name in enumerate(("out", "grad_x", "grad_w0", "stages")):
        a, b = outs["triton"][i], outs["torch"][i]
        res[f"relerr_{name}"] = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
    return res


def parse_size(size) -> tuple[int, int]:
    """``512`` or ``"512"`` -> (512, 512); ``"1440x2560"`` -> (1440, 2560) (H×W px)."""
    if isinstance(size, (tuple, list)):
        h, w = size
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(?:[x×]\s*(\d+))?\s*", str(size).lower())
        if m is None:
            raise ValueError(f"a size is px (512) or H×W px (1440x2560), got {size!r}")
        h, w = m.group(1), m.group(2) or m.group(1)
    h, w = int(h), int(w)
    if h < 1 or w < 1:
        raise ValueError(f"sizes must be positive, got {size!r}")
    return h, w


def mixer_keys(impls, kernels_k, na_kernel: int, window: int) -> list[tuple[str, str, int | None]]:
    """``(column key, impl, K or window)`` of every method the run times, in table order."""
    keys = []
    for impl in impls:
        if impl == "sdpa" or impl == "linear":
            keys.append((impl, impl, None))
        elif impl == "na":
            keys.append((f"na_k{na_kernel}", impl, na_kernel))
        elif impl == "window":
            keys.append((f"window_w{window}", impl, window))
        else:
            backend = impl.split("-")[1]
            keys += [(f"deltaconv_k{k}_{backend}", impl, k) for k in kernels_k]
    return keys


def build_mixers(shape: dict, grid: tuple[int, int], impls, kernels_k, na_kernel: int, window: int, dtype, device,
                 na_backend: str, attn=None) -> dict[str, tuple[object, object]]:
    """``{key: (module, call)}`` for one shape: ``call(module, x)`` runs the mixer on tokens ``x``.

    The attention-based mixers share one set of q/k/v/out weights (``attn``, default a random diffusers
    ``Attention`` of ``shape``)."""
    from .linear_attention import GeneralizedLinearAttention
    from .neighborhood import NeighborhoodAttnProcessor
    from .window_attention import WindowAttention

    attn = make_attention(shape, dtype, device) if attn is None else attn
    out = {}
    for key, impl, k in mixer_keys(impls, kernels_k, na_kernel, window):
        if impl == "sdpa":
            out[key] = (attn, lambda m, x: m(x))
        elif impl == "na":
            na = make_attention(shape, dtype, device)
            na.load_state_dict(attn.state_dict())
            na.set_processor(NeighborhoodAttnProcessor(k, na_backend, grid=grid))
            out[key] = (na, lambda m, x: m(x))
        elif impl == "window":
            out[key] = (WindowAttention.from_attention(attn, k, "1d"), lambda m, x: m(x, grid=grid))
        elif impl == "linear":
            out[key] = (GeneralizedLinearAttention.from_attention(attn).to(device=device, dtype=dtype),
                        lambda m, x: m(x, grid=grid))
        else:
            block = DeltaConvBlock(shape["channels"], k).to(device=device, dtype=dtype)
            block.backend = impl.split("-")[1]
            out[key] = (block, lambda m, x: m(x, grid))
    return out
