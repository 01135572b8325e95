"""Analysis (above model knowledge, below the token mixers): capture of self-attention maps while a
denoiser runs (:mod:`~aconvlib.analysis.capture`), the locality measures of the paper — ASM(K), its
high-pass version, prior/context, effective receptive fields (:mod:`~aconvlib.analysis.locality`) —,
the gradient ERF of any token mixer on real inputs (:mod:`~aconvlib.analysis.receptive_field`, paper Fig. 9)
and image-quality metrics (:mod:`~aconvlib.analysis.metrics`: DINOv2 score, FDD, CLIP score).
"""
from .capture import AttentionCapture, MemoryBudgetError, capture_self_attention, estimate_capture_bytes
from .locality import (ContextDecomposition, asm_curve, asm_gradient, attention_sink, butterworth_highpass, decompose,
                       detect_artifacts, erf, highpass, highpass_asm_curve, odd_kernel_sizes, uniform_asm)
from .receptive_field import ReceptiveField, layer_inputs, mixer_receptive_field, receptive_fields

__all__ = ["AttentionCapture", "ContextDecomposition", "MemoryBudgetError", "asm_curve", "asm_gradient",
           "attention_sink", "butterworth_highpass", "capture_self_attention", "decompose", "detect_artifacts", "erf",
           "estimate_capture_bytes", "highpass", "highpass_asm_curve", "layer_inputs", "mixer_receptive_field",
           "odd_kernel_sizes", "receptive_fields", "ReceptiveField", "uniform_asm"]
