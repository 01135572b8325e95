"""Token mixers (above analysis, below training): modules and functions only.

- the ΔConvBlock (:mod:`~aconvlib.mixers.deltaconv`) and its Triton kernels (:mod:`~aconvlib.mixers.kernels`);
- the paper's baselines — LinFusion-style linear attention (:mod:`~aconvlib.mixers.linear_attention`),
  DiTFastAttn-style window attention (:mod:`~aconvlib.mixers.window_attention`), neighborhood attention
  (:mod:`~aconvlib.mixers.neighborhood`, a processor swap) — and the controls (self-attention removed, uniform
  attention: :mod:`~aconvlib.mixers.controls`);
- one conversion machinery that mounts any mixer kind in place of every ``attn1`` of a diffusers denoiser, with
  save/load and restore (:mod:`~aconvlib.mixers.convert`: ``to_mixer``, ``load_mixer``, ``save_mixer``,
  ``restore_attention``, ``mixer_applied``);
- :mod:`~aconvlib.mixers.variants`: the comparison's methods (:class:`Method`) and the one context manager that
  mounts one on a pipeline (:func:`mounted`);
- FLOP counts (:mod:`~aconvlib.mixers.flops`) and timing one module call (:mod:`~aconvlib.mixers.timing`).

One name per concept: the generic ``*_mixer`` functions take the kind (``to_mixer(pipe, "deltaconv")``).
The ΔConv shortcuts ``to_deltaconv`` / ``save_deltaconv`` / ``load_deltaconv`` are the top-level API's
(``from aconvlib import to_deltaconv``) and still resolve here; older names resolve with a DeprecationWarning.
"""
from .controls import NoAttention, UniformAttention
from .convert import (LINEAR_INITS, MIXERS, TRAINABLE_KINDS, MixerAdapter, MixerSelfAttention, build_mixer_adapter,
                      get_adapter, latent_size, load_mixer, mixer_adapter_class, mixer_applied, mixer_layers,
                      resolve_kernel_sizes, restore_attention, save_mixer, to_mixer)
from .deltaconv import DeltaConvBlock, stage_gradient_maps, stage_grid
from .linear_attention import GeneralizedLinearAttention
from .neighborhood import NeighborhoodAttnProcessor, natten_available, neighborhood_attention, neighborhood_mask
from .variants import Method, mounted
from .window_attention import WindowAttention

__all__ = ["DeltaConvBlock", "GeneralizedLinearAttention", "LINEAR_INITS", "MIXERS", "Method", "MixerAdapter",
           "MixerSelfAttention", "NeighborhoodAttnProcessor", "NoAttention", "TRAINABLE_KINDS", "UniformAttention",
           "WindowAttention", "build_mixer_adapter", "get_adapter", "latent_size", "load_mixer", "mixer_adapter_class",
           "mixer_applied", "mixer_layers", "mounted", "natten_available", "neighborhood_attention",
           "neighborhood_mask", "resolve_kernel_sizes", "restore_attention", "save_mixer",
           "stage_gradient_maps", "stage_grid", "to_mixer"]

#: the top-level API's ΔConv shortcuts (defined in :mod:`.convert`), resolved here without a warning
_DELTACONV_SHORTCUTS = ("to_deltaconv", "save_deltaconv", "load_deltaconv")
#: retired names -> what to use instead
_RETIRED = {"build_adapter": "build_mixer_adapter(pipe, 'deltaconv', ...)",
            "deltaconv_layers": "mixer_layers(pipe, 'deltaconv')",
            "DeltaConvSelfAttention": "MixerSelfAttention",
            "MIXER_KINDS": "tuple(MIXERS)",
            "DeltaConvAdapter": "mixer_adapter_class('deltaconv')",
            "LinearAttentionAdapter": "mixer_adapter_class('linear')",
            "WindowAttentionAdapter": "mixer_adapter_class('window')",
            "NoAttentionAdapter": "mixer_adapter_class('none')",
            "UniformAttentionAdapter": "mixer_adapter_class('uniform')"}


def __getattr__(name: str):
    if name in _DELTACONV_SHORTCUTS or name in _RETIRED:
        from . import convert

        if name in _RETIRED:
            import warnings

            warnings.warn(f"aconvlib.mixers.{name} is retired: use aconvlib.mixers.{_RETIRED[name]} "
                          f"(or import it from aconvlib.mixers.convert)", DeprecationWarning, stacklevel=2)
        return getattr(convert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
