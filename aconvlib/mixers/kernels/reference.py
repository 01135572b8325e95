"""Pure-PyTorch reference ops of the ΔConvBlock stages, channels-last.

Every op takes and returns channels-last tensors ``[B, H, W, C]``. They are the CPU path of the block
and the ground truth the Triton kernels (:mod:`aconvlib.kernels.triton_ops`) are tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)  # a view; its memory is channels_last


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def dwconv2d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise K×K convolution, zero padding K//2, no bias.

    Args:
        x: ``[B, H, W, C]``.
        weight: ``[K, K, C]`` (K odd).

    Returns:
        ``[B, H, W, C]``.
    """
    k, c = weight.shape[0], weight.shape[-1]
    return _nhwc(F.conv2d(_nchw(x), weight.permute(2, 0, 1).unsqueeze(1), padding=k // 2, groups=c))


def avg_pool_down(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling ``[B, H, W, C] -> [B, h, w, C]`` (torch's windows:
    rows ``floor(i·H/h) .. ceil((i+1)·H/h)``), which is exact 2×2 averaging when H = 2h."""
    return _nhwc(F.adaptive_avg_pool2d(_nchw(x), tuple(size)))


def bilinear_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize ``[B, h, w, C] -> [B, H, W, C]`` with ``align_corners=False`` (half-pixel centres)."""
    return _nhwc(F.interpolate(_nchw(x), size=tuple(size), mode="bilinear", align_corners=False))
