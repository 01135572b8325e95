"""Distilling self-attention into a trainable token mixer (paper Sec. 4.3), for any diffusers denoiser.

The student is a deep copy of the teacher's denoiser converted with
:func:`aconvlib.mixers.convert.to_mixer`: every ``attn1`` becomes a mixer of the run's kind
(``DistillConfig.mixer``: ``"deltaconv"``, the paper's ΔConvBlock, or ``"linear"``, LinFusion-style
linear attention initialised from the teacher's attn1 — or from scratch with ``init="scratch"``, the
same starting point as ΔConv's fresh blocks —, trained the same way in the paper's comparison) and
everything else is frozen, so only the mixer weights train. Window attention is
training-free and is not distilled. One step, for clean latents x₀ and text states c:

    t ~ U{0, …, T−1},  ε ~ N(0, I),  x_t = α_t x₀ + σ_t ε            (the teacher's noise schedule)
    p_T = teacher(x_t, t, c) (no grad),  p_S = student(x_t, t, c)
    ε̂ = the prediction in ε-space (ε-prediction as is; v-prediction: ε̂ = α_t v̂ + σ_t x_t)
    L_out = w_t · ( ‖ε̂_S − ε‖² + ‖ε̂_S − ε̂_T‖² ),   w_t = min(γ / SNR_t, 1),  SNR_t = α_t² / σ_t²
    L_f   = Σ_l ‖M^l(z_S^l) − A^l(z_T^l)‖²     (mean over elements; output of each token mixer M^l)
    L     = L_out + β · L_f

``w_t`` is Min-SNR-γ weighting (Hang et al. 2023) written for ε-prediction (γ = 5 in the paper);
β = 0.001 is the paper's feature weight, chosen there "to match the loss scales" of SD-sized
features: for other models pick β so that β·L_f and L_out are of the same order (the loss log
records both terms). The feature term compares the student's mixer output in its own forward pass
with the teacher's attention output in the teacher's pass (the authors' released code does the same
on the residual stream right after the mixer). AdamW (lr 3e-4, betas 0.9/0.99), linear warm-up,
gradient clipping at 1, as in the paper and the authors' code.

Data: any iterator of ``(x0_latents [B, C, h, w], text_states [B, L, D])`` or
``(x0_latents, text_states, cond)`` with ``cond`` the family's extra conditioning (SDXL: pooled
``text_embeds`` and ``time_ids``). For the embedded models :func:`aconvlib.mini.distill_batches`
renders the procedural dataset and encodes its captions (dropped to "" 10% of the time so that the
unconditional branch of classifier-free guidance is distilled too).

The run itself is one class for one process or many (mixed precision, gradient accumulation and
checkpointing, EMA, one shared copy of the frozen weights):
:class:`~aconvlib.training.accelerated.AcceleratedDistiller`; ``accelerated.Distiller(teacher, student, ...)`` is
the same class called with a student built beforehand (:func:`make_student`) on one process; a
golden-step test (tests/test_distill.py) pins its losses and weights to those of the shipped adapters' code.

Runs are tasks of :class:`aconvlib.training.loop.RunLoop`: a tqdm bar, a log in
``<out>/distill_log.jsonl``, atomic checkpoints in ``<out>/ckpt.pt`` (adapter weights, optimizer,
step, generator) and resume after a kill with ``resume=True``; the result is saved with
:func:`aconvlib.mixers.convert.save_mixer` to ``<out>/adapter`` (load it with ``load_mixer``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..mixers.convert import MIXER_KINDS, TRAINABLE_KINDS, get_adapter, load_mixer, to_mixer
from ..models import denoise, family_of, get_denoiser

__all__ = ["DistillConfig", "INITS", "check_init", "check_trainable_kind", "init_options",
           "install_student", "make_student", "min_snr_weight", "prediction_gap", "to_epsilon"]



@dataclass
class DistillConfig:
    """Hyper-parameters of one distillation run (saved with every checkpoint)."""

    steps: int = 1000
    batch: int = 32
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.99)
    warmup: int = 100
    feature_weight: float = 0.001   # β
    min_snr_gamma: float = 5.0      # γ
    kernel_sizes: str | int = "paper"
    caption_dropout: float = 0.1
    seed: int = 0
    ckpt_every: int = 100
    log_every: int = 10
    max_minutes: float | None = None
    init_adapter: str | None = None  # start from this saved adapter (re-distillation) instead of fresh blocks
    image_sizes: tuple[int, ...] = (64,)  # mini models: px of the batches, cycled per step (mixed resolution)
    mixer: str = "deltaconv"        # token mixer to distill into: deltaconv | linear
    init: str | None = None         # how fresh mixers start: None = the kind's own (ΔConv: scratch; linear:
    #                                 teacher, its q/k/v/out copied from each attn1); "scratch" | "teacher"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (called on construction, before any work)."""
        for name in ("steps", "batch", "ckpt_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.warmup < 0 or self.lr <= 0 or self.feature_weight < 0 or self.min_snr_gamma <= 0:
            raise ValueError("warmup must be >= 0, lr > 0, feature_weight >= 0 and min_snr_gamma > 0; got "
                             f"{self.warmup}, {self.lr}, {self.feature_weight}, {self.min_snr_gamma}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {self.caption_dropout}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        ks = self.kernel_sizes
        if isinstance(ks, int) and not isinstance(ks, bool) and (ks < 1 or ks % 2 == 0):
            raise ValueError(f"kernel_sizes must be an odd positive integer, 'paper' or 'official', got {ks}")
        if isinstance(ks, str) and ks not in ("paper", "official"):
            raise ValueError(f"kernel_sizes must be 'paper', 'official' or an odd integer, got {ks!r}")
        if not self.image_sizes or any(int(px) <= 0 for px in self.image_sizes):
            raise ValueError(f"image_sizes must be positive, got {self.image_sizes!r}")
        check_trainable_kind(self.mixer, "mixer")
        check_init(self.mixer, self.init)
        if self.init is not None and self.init_adapter:
            raise ValueError(f"init={self.init!r} and init_adapter={self.init_adapter!r}: a run starts either from a "
                             "saved adapter or from fresh mixers; give one of them")


INITS = ("scratch", "teacher")


def check_init(kind: str, init) -> str:
    """The start of a fresh ``kind`` student: ``init`` (``"scratch"`` or ``"teacher"``), or the kind's own for
    None (ΔConv: ``"scratch"``, fresh blocks; linear attention: ``"teacher"``, q/k/v/out copied from each
    attn1); a ValueError for a start the kind does not have (ΔConv has no teacher projections to copy)."""
    if init is None:
        return "scratch" if kind == "deltaconv" else "teacher"
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if kind == "deltaconv" and init == "teacher":
        raise ValueError("init='teacher': a ΔConv block has no attention projections to copy from the teacher; "
                         "ΔConv students start from fresh blocks (init='scratch')")
    return init


def init_options(kind: str, init) -> dict:
    """The :func:`~aconvlib.mixers.convert.to_mixer` option that gives ``kind`` the start ``init``."""
    init = check_init(kind, init)
    return {"init": init} if kind == "linear" else {}


def check_trainable_kind(kind, what: str = "kind") -> str:
    """``kind`` if it names a mixer that can be distilled, else a ValueError saying why not."""
    if kind not in MIXER_KINDS:
        raise ValueError(f"{what} must be one of {TRAINABLE_KINDS} (a trainable token mixer), got {kind!r}")
    if kind not in TRAINABLE_KINDS:
        raise ValueError(f"{what}={kind!r}: {kind} attention is training-free (it runs on the teacher's own attention "
                         f"weights), there is nothing to distill; convert with aconvlib.mixers.to_mixer(pipe, "
                         f"{kind!r}, ...) instead, or distill one of {TRAINABLE_KINDS}")
    return kind


def min_snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ weight for an ε-space loss: min(γ / SNR_t, 1) with SNR_t = ᾱ_t / (1 − ᾱ_t); shape [B]."""
    a = alphas_cumprod[t].float()
    snr = a / (1 - a)
    return torch.clamp(gamma / snr, max=1.0)


def to_epsilon(pred: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """A denoiser output [B, C, h, w] in ε-space; ``alpha_bar`` is ᾱ_t shaped [B, 1, 1, 1]."""
    if prediction_type == "epsilon":
        return pred
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * pred + (1 - alpha_bar).sqrt() * x_t
    raise ValueError(f"unsupported prediction_type {prediction_type!r} (epsilon or v_prediction)")


def install_student(den, kind: str = "deltaconv", *, kernel_sizes="paper", seed: int = 0,
                    init_adapter: str | None = None, init: str | None = None, **mixer_options):
    """``den`` (a denoiser) turned into a student with ``kind`` mixers, in place; returns it.

    Fresh mixers (:func:`~aconvlib.mixers.convert.to_mixer`, ``kernel_sizes`` for ΔConv, ``init`` as
    :func:`check_init` says) or, with ``init_adapter``, a saved adapter of that kind made trainable again.
    """
    check_trainable_kind(kind)
    mixer_options.update(init_options(kind, init))
    if init is not None and init_adapter:
        raise ValueError("init and init_adapter exclude each other (a saved adapter is its own start)")
    if kind == "deltaconv":
        mixer_options["kernel_sizes"] = kernel_sizes
    elif kernel_sizes != "paper":
        raise ValueError(f"kernel_sizes={kernel_sizes!r} applies to ΔConv students, not {kind!r} ones")
    if init_adapter:
        den = load_mixer(den, init_adapter, freeze=True, kind=kind)
        get_adapter(den).requires_grad_(True)
        return den
    return to_mixer(den, kind, seed=seed, **mixer_options)


def make_student(pipe, kernel_sizes="paper", seed: int = 0, init_adapter: str | None = None, *,
                 kind: str = "deltaconv", init: str | None = None, **mixer_options):
    """A copy of ``pipe`` whose denoiser is a student with ``kind`` mixers (the teacher's other components are shared).

    ``kind``: ``"deltaconv"`` (fresh ΔConv blocks with ``kernel_sizes``) or ``"linear"`` (linear
    attention initialised from the teacher's attn1, or fresh with ``init="scratch"``; ``kernel_sizes``
    must stay ``"paper"``). ``init``: see :func:`check_init`.
    ``mixer_options`` go to :func:`~aconvlib.mixers.convert.to_mixer` (e.g. ``hidden_ratio``).
    ``init_adapter``: start from a saved adapter (folder) of that kind instead of fresh mixers, e.g.
    to re-distill after the teacher was fine-tuned; the options and ``seed`` are then the adapter's.
    """
    student = copy.copy(pipe)
    name = family_of(get_denoiser(pipe)).pipeline_attr
    den = install_student(copy.deepcopy(get_denoiser(pipe)), kind, kernel_sizes=kernel_sizes, seed=seed,
                          init_adapter=init_adapter, init=init, **mixer_options)
    setattr(student, name, den)
    if hasattr(student, "denoiser_name"):
        student.denoiser_name = name
    return student


@torch.no_grad()
def prediction_gap(teacher_pipe, student_pipe, x0: torch.Tensor, text_states: torch.Tensor,
                   timesteps=(900, 500, 100), seed: int = 0, **cond) -> dict[int, float]:
    """How far a student's denoiser prediction is from its teacher's, per timestep.

    Both denoisers predict on the same noisy latents ``x_t`` (the DDPM forward process of the
    teacher's schedule applied to clean latents ``x0`` [B, C, h, w], one noise draw from ``seed``)
    with the same text states. Returns ``{t: ‖ŷ_student − ŷ_teacher‖ / ‖ŷ_teacher‖}`` over the batch.
    """
    from diffusers import DDPMScheduler

    dev = x0.device
    n = x0.shape[0]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(dev)
    sched = DDPMScheduler.from_config(teacher_pipe.scheduler.config)
    teacher, student = get_denoiser(teacher_pipe), get_denoiser(student_pipe)
    gaps = {}
    for t in timesteps:
        tt = torch.full((n,), int(t), device=dev)
        x_t = sched.add_noise(x0, noise, tt)
        y_t, y_s = denoise(teacher, x_t, tt, text_states, **cond), denoise(student, x_t, tt, text_states, **cond)
        gaps[int(t)] = ((y_s - y_t).norm() / y_t.norm()).item()
    return gaps
