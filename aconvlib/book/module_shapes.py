"""The module shapes the benchmarks and Table 1 measure, read from the shipped configs (no weights).

:func:`module_shape` of a registered model: its first (finest) self-attention layer's width, heads, head width and
q/k/v bias, the pixels per token and the paper's kernel size. :data:`MODELS` keys them as the benchmarks do.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

__all__ = ["BENCH_MODELS", "MODELS", "STORED_BENCH_MODELS", "module_shape"]

#: benchmark model key -> the registered model whose first (finest) self-attention layer it times. ``flux``: a
#: FLUX.1 double-stream layer's shape (C = 3072, 24 heads, K = 13), timed as SDPA over its image tokens against the
#: ΔConvBlock (the image-image part the hybrid replaces; the hybrid's text attention is not in the timing).
BENCH_MODELS = {"sd15-top": "sd15", "pixart-sigma": "pixart-sigma-1024", "flux": "flux-dev"}
#: the shapes of the stored block benchmark runs (benchmarks/results/bench_*.json), built in this order
STORED_BENCH_MODELS = ("sd15-top", "pixart-sigma")


@functools.lru_cache(maxsize=None)
def module_shape(model: str) -> dict:
    """The module shape of a registered model's first self-attention layer, from its shipped config (no
    weights): ``channels``, ``heads``, ``head_dim``, ``qkv_bias``, ``px_per_token`` and the paper's ``kernel_size``."""
    from ..mixers.convert import resolve_kernel_sizes
    from ..models import get_spec, load_denoiser, self_attention_layers

    spec = get_spec(model)
    den = load_denoiser(model, weights=False, device="meta")
    top = self_attention_layers(den)[0]
    attn = top.module
    return dict(channels=int(attn.query_dim), heads=int(attn.heads), head_dim=int(attn.inner_dim // attn.heads),
                qkv_bias=attn.to_q.bias is not None, px_per_token=spec.latent_factor * spec.patch_size,
                kernel_size=int(resolve_kernel_sizes(den, "paper")[top.name]))


class _Shapes(Mapping):
    """``MODELS[key]``: the module shape of a benchmark model (:func:`module_shape`), read when first asked."""

    def __getitem__(self, key):
        return module_shape(BENCH_MODELS[key])

    def __iter__(self):
        return iter(BENCH_MODELS)

    def __len__(self):
        return len(BENCH_MODELS)


#: the module shapes the benchmarks time, keyed by benchmark model
MODELS = _Shapes()
