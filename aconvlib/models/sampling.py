"""A model's own sampler settings, as its publisher recommends them (a :class:`~aconvlib.models.ModelSpec` field).

The paper samples every model it studies (SD1.5, SDXL, PixArt-Σ) with DPM-Solver++ for 20 steps; the book's
profiles set that once per chapter. Models distilled or trained for a particular sampler do not take that setting:
FLUX.1 [schnell] is timestep-distilled for 4 steps without guidance, FLUX.1 [dev] is guidance-distilled (the
guidance scale is an input of the transformer, not classifier-free guidance), SD3.5 samples with its
flow-matching Euler scheduler. Such a model's spec carries a :class:`Sampling`, and the chapters use it in place of
the chapter-wide steps and guidance (:func:`aconvlib.book.studies.model_generation`).

The numbers are the hub model cards' diffusers examples (``num_inference_steps``, ``guidance_scale``,
``max_sequence_length``); ``scheduler="pipeline"``: the scheduler the checkpoint ships (for these,
``FlowMatchEulerDiscreteScheduler``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["Sampling"]

_SCHEDULERS = ("pipeline", "dpm")


@dataclass(frozen=True)
class Sampling:
    """How a model is sampled by default.

    Attributes:
        steps: ``num_inference_steps``.
        guidance_scale: the pipeline's ``guidance_scale`` (FLUX.1 [dev]: the embedded guidance; 0: none).
        scheduler: ``"pipeline"`` (the checkpoint's own scheduler) or ``"dpm"`` (DPM-Solver++, the paper's).
        max_sequence_length: T5 tokens of the prompt (None: the pipeline's default).
        source: where the numbers come from.
    """

    steps: int
    guidance_scale: float
    scheduler: str = "pipeline"
    max_sequence_length: Optional[int] = None
    source: str = ""

    def __post_init__(self):
        if int(self.steps) < 1:
            raise ValueError(f"Sampling.steps must be a positive integer, got {self.steps}")
        if self.guidance_scale < 0:
            raise ValueError(f"Sampling.guidance_scale must be ≥ 0, got {self.guidance_scale}")
        if self.scheduler not in _SCHEDULERS:
            raise ValueError(f"Sampling.scheduler must be one of {_SCHEDULERS}, got {self.scheduler!r}")

    def call_kwargs(self) -> dict:
        """The pipeline call arguments besides steps and guidance (``max_sequence_length`` when set)."""
        return {} if self.max_sequence_length is None else {"max_sequence_length": int(self.max_sequence_length)}
