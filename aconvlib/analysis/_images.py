"""Images → model inputs for the metrics of :mod:`aconvlib.analysis.metrics`: batching of PIL images, arrays and
tensors, value-range checks, and the processor call."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["preprocess_images"]


def _is_pil(x) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


def _is_single_image(x) -> bool:
    return _is_pil(x) or (isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim in (2, 3))


def _chunk(batch, size: int):
    n = len(batch)
    for i in range(0, n, size):
        yield batch[i:i + size]


def _iter_image_batches(images, batch_size: int) -> Iterator:
    """Yield batches (a 4-D tensor/array or a list of single images) of at most ``batch_size``."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if _is_single_image(images):
        yield [images]
        return
    if isinstance(images, (torch.Tensor, np.ndarray)):
        if images.ndim != 4:
            raise ValueError(f"an image batch must be 4-D [B, C, H, W], got shape {tuple(images.shape)}")
        yield from _chunk(images, batch_size)
        return
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)) and len(images) > 0 \
            and all(_is_single_image(x) for x in images):
        yield from _chunk(list(images), batch_size)
        return
    if isinstance(images, (str, bytes)) or not isinstance(images, Iterable):
        raise TypeError(f"unsupported images input of type {type(images).__name__}")
    for batch in images:  # an iterable of batches
        yield from _iter_image_batches(batch, batch_size)


def _count_images(images) -> int | None:
    if _is_single_image(images):
        return 1
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return int(images.shape[0]) if images.ndim == 4 else None
    if isinstance(images, Sequence) and len(images) > 0 and all(_is_single_image(x) for x in images):
        return len(images)
    return None


def _image_processor(processor):
    return getattr(processor, "image_processor", processor)


def _to_processor_input(batch) -> tuple[Any, dict]:
    """A batch → (what the image processor accepts, extra kwargs). Float images must be in [0, 1]."""
    items = list(batch) if not isinstance(batch, (torch.Tensor, np.ndarray)) else None
    if items is not None and all(_is_pil(x) for x in items):
        return items, {}
    if items is not None:
        if any(_is_pil(x) for x in items):
            raise TypeError("do not mix PIL images and arrays/tensors in one batch")
        arrays = [torch.as_tensor(np.asarray(x)) if isinstance(x, np.ndarray) else x for x in items]
        floats = {bool(a.is_floating_point()) for a in arrays}
        if len(floats) > 1:
            raise TypeError("do not mix float and integer images in one batch")
        return _check_range(arrays, floats.pop())
    t = torch.as_tensor(batch) if isinstance(batch, np.ndarray) else batch
    if t.ndim == 4 and t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return _check_range(list(t), bool(t.is_floating_point()))


def _check_range(arrays: list, is_float: bool) -> tuple[list, dict]:
    out = []
    for a in arrays:
        a = a.detach().cpu()
        if is_float:
            a = a.float()
            lo, hi = float(a.min()), float(a.max())
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ValueError(f"float images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
                                 "(for diffusion outputs in [-1, 1] pass (x + 1) / 2)")
            a = a.clamp(0, 1)
        elif a.dtype != torch.uint8:
            raise TypeError(f"integer images must be uint8 (0-255), got {a.dtype}")
        out.append(a.numpy())
    return out, ({"do_rescale": False} if is_float else {})


def preprocess_images(processor, batch) -> torch.Tensor:
    """One batch of images → ``pixel_values`` [B, 3, h, w] (float32, CPU), through the checkpoint's
    image processor (``processor`` may be an image processor or a multimodal processor with
    ``.image_processor``). Float tensors/arrays are taken as [0, 1] (``do_rescale=False``), uint8
    and PIL images as 0–255: the same pixels give the same output in every form."""
    inputs, extra = _to_processor_input(batch if not _is_single_image(batch) else [batch])
    out = _image_processor(processor)(images=inputs, return_tensors="pt", **extra)
    return out["pixel_values"].float()
