"""Token mixers (above analysis, below training): the ΔConvBlock (:mod:`~aconvlib.mixers.deltaconv`)
and its Triton kernels (:mod:`~aconvlib.mixers.kernels`), one-line conversion of a diffusers
denoiser and its save/load (:mod:`~aconvlib.mixers.convert`), neighborhood attention in place of
self-attention (:mod:`~aconvlib.mixers.neighborhood`), the baselines of the paper's comparison,
FLOP counts (:mod:`~aconvlib.mixers.flops`) and the per-module benchmark.
"""
from .convert import (DeltaConvAdapter, DeltaConvSelfAttention, build_adapter, deltaconv_layers, get_adapter,
                      latent_size, load_deltaconv, resolve_kernel_sizes, save_deltaconv, to_deltaconv)
from .deltaconv import DeltaConvBlock, receptive_field, stage_grid
from .neighborhood import NeighborhoodAttnProcessor, natten_available, neighborhood_attention, neighborhood_mask

__all__ = ["DeltaConvAdapter", "DeltaConvBlock", "DeltaConvSelfAttention", "NeighborhoodAttnProcessor", "build_adapter",
           "deltaconv_layers", "get_adapter", "latent_size", "load_deltaconv", "natten_available",
           "neighborhood_attention", "neighborhood_mask", "receptive_field", "resolve_kernel_sizes", "save_deltaconv",
           "stage_grid", "to_deltaconv"]
