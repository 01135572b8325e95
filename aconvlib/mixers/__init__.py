"""Token mixers (above analysis, below training): the ΔConvBlock (:mod:`~aconvlib.mixers.deltaconv`)
and its Triton kernels (:mod:`~aconvlib.mixers.kernels`), the paper's baselines — LinFusion-style
linear attention (:mod:`~aconvlib.mixers.linear_attention`) and DiTFastAttn-style window attention
(:mod:`~aconvlib.mixers.window_attention`) —, the controls (self-attention removed, uniform attention:
:mod:`~aconvlib.mixers.controls`), one conversion machinery that mounts any of them in
place of every ``attn1`` of a diffusers denoiser, with save/load and restore
(:mod:`~aconvlib.mixers.convert`: ``to_mixer``, ``to_deltaconv``, ``restore_attention``, ``mixer_applied``), neighborhood
attention in place of self-attention (:mod:`~aconvlib.mixers.neighborhood`), FLOP counts
(:mod:`~aconvlib.mixers.flops`) and the per-module benchmark.
"""
from .controls import NoAttention, UniformAttention
from .convert import (LINEAR_INITS, MIXER_KINDS, MIXERS, TRAINABLE_KINDS, DeltaConvAdapter, DeltaConvSelfAttention,
                      LinearAttentionAdapter, MixerAdapter, MixerSelfAttention, NoAttentionAdapter,
                      UniformAttentionAdapter, WindowAttentionAdapter, build_adapter, build_mixer_adapter,
                      deltaconv_layers, get_adapter, latent_size, load_deltaconv, load_mixer, mixer_applied,
                      mixer_layers, resolve_kernel_sizes, restore_attention, save_deltaconv, save_mixer, to_deltaconv,
                      to_mixer)
from .deltaconv import DeltaConvBlock, receptive_field, stage_grid
from .linear_attention import GeneralizedLinearAttention
from .neighborhood import NeighborhoodAttnProcessor, natten_available, neighborhood_attention, neighborhood_mask
from .window_attention import WindowAttention

__all__ = ["DeltaConvAdapter", "DeltaConvBlock", "DeltaConvSelfAttention", "GeneralizedLinearAttention",
           "LINEAR_INITS", "LinearAttentionAdapter", "MIXERS", "MIXER_KINDS", "MixerAdapter", "MixerSelfAttention",
           "NeighborhoodAttnProcessor", "NoAttention", "NoAttentionAdapter", "TRAINABLE_KINDS", "UniformAttention",
           "UniformAttentionAdapter", "WindowAttention", "WindowAttentionAdapter",
           "build_adapter", "build_mixer_adapter", "deltaconv_layers", "get_adapter", "latent_size", "load_deltaconv",
           "load_mixer", "mixer_applied", "mixer_layers", "natten_available", "neighborhood_attention", "neighborhood_mask",
           "receptive_field", "resolve_kernel_sizes", "restore_attention", "save_deltaconv", "save_mixer",
           "stage_grid", "to_deltaconv", "to_mixer"]
