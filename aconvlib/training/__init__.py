"""Training (above the token mixers, below the embedded domain): the one run loop
(:class:`~aconvlib.training.loop.RunLoop`: checkpoints, resume, logs, deadline) and its tasks —
distillation of self-attention into any trainable token mixer (ΔConv blocks, LinFusion-style
linear attention) for any supported denoiser, by one distiller on one process or many
(:class:`~aconvlib.training.accelerated.AcceleratedDistiller`: accelerate, mixed precision, gradient
accumulation, EMA, shared teacher/student weights; ``Distiller`` is it on one process with a student
built beforehand) — plus the data pipelines for real models
(:mod:`~aconvlib.training.data`: image–caption sources, buckets, shards, reader, sampler; latent caches,
the pipeline's own encoders, teacher-generated data, prompt files; a model's facts come from its ``ModelSpec``)
and :func:`~aconvlib.training.recipes.distill_model`, the one call for a real model.
"""
from .accelerated import AcceleratedDistiller, Distiller, PreviewSampler, ResumeError, RunConfig, SharedTeacher
from .distill import DistillConfig, make_student, min_snr_weight, prediction_gap, to_epsilon
from .encoding import CacheSet, PipelineEncoder, build_image_cache, cached_batches
from .loop import RunLoop, atomic_save
from .prompts import PromptError, load_prompts
from .recipes import DataConfig, RecipeError, distill_model, load_recipe
from .teacher_data import generate_teacher_data

__all__ = ["AcceleratedDistiller", "CacheSet", "DataConfig", "DistillConfig", "Distiller", "PipelineEncoder",
           "PreviewSampler", "PromptError", "RecipeError", "ResumeError", "RunConfig", "RunLoop", "SharedTeacher",
           "atomic_save", "build_image_cache", "cached_batches", "distill_model", "generate_teacher_data",
           "load_prompts", "load_recipe", "make_student", "min_snr_weight", "prediction_gap", "to_epsilon"]
