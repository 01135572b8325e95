"""Training (above the token mixers, below the embedded domain): the one run loop
(:class:`~aconvlib.training.loop.RunLoop`: checkpoints, resume, logs, deadline) and its tasks —
distillation of self-attention into any trainable token mixer (ΔConv blocks, LinFusion-style
linear attention) for any supported denoiser — plus the data
pipelines for real models (image–caption folders, buckets, latent caches).
"""
from .distill import DistillConfig, Distiller, make_student, min_snr_weight, prediction_gap, to_epsilon
from .loop import RunLoop, atomic_save

__all__ = ["DistillConfig", "Distiller", "RunLoop", "atomic_save", "make_student", "min_snr_weight",
           "prediction_gap", "to_epsilon"]
