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

At scale (many processes, mixed precision, gradient accumulation and checkpointing, EMA, one shared
copy of the frozen weights) the same loss runs in
:class:`~aconvlib.training.accelerated.AcceleratedDistiller`, what ``aconv distill`` uses; this
:class:`Distiller` is the plain single-process reference (tested to give the same updates).

Runs are tasks of :class:`aconvlib.training.loop.RunLoop`: a tqdm bar, a log in
``<out>/distill_log.jsonl``, atomic checkpoints in ``<out>/ckpt.pt`` (adapter weights, optimizer,
step, generator) and resume after a kill with ``resume=True``; the result is saved with
:func:`aconvlib.mixers.convert.save_mixer` to ``<out>/adapter`` (load it with ``load_mixer``).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..mixers.convert import MIXER_KINDS, TRAINABLE_KINDS, get_adapter, load_mixer, mixer_layers, save_mixer, to_mixer
from ..models import denoise, family_of, get_denoiser, self_attention_layers
from .loop import RunLoop

__all__ = ["DistillConfig", "Distiller", "INITS", "check_init", "check_trainable_kind", "init_options", "make_student",
           "min_snr_weight", "prediction_gap", "to_epsilon"]


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


class _Outputs:
    """Forward hooks that keep the latest output of each named module."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.values: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name):
        def hook(module, args, output):
            self.values[name] = output[0] if isinstance(output, tuple) else output
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


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
    check_trainable_kind(kind)
    mixer_options.update(init_options(kind, init))
    if init is not None and init_adapter:
        raise ValueError("init and init_adapter exclude each other (a saved adapter is its own start)")
    if kind == "deltaconv":
        mixer_options["kernel_sizes"] = kernel_sizes
    elif kernel_sizes != "paper":
        raise ValueError(f"kernel_sizes={kernel_sizes!r} applies to ΔConv students, not {kind!r} ones")
    student = copy.copy(pipe)
    name = family_of(get_denoiser(pipe)).pipeline_attr
    den = copy.deepcopy(get_denoiser(pipe))
    if init_adapter:
        den = load_mixer(den, init_adapter, freeze=True, kind=kind)
        get_adapter(den).requires_grad_(True)
    else:
        den = to_mixer(den, kind, seed=seed, **mixer_options)
    setattr(student, name, den)
    if hasattr(student, "denoiser_name"):
        student.denoiser_name = name
    return student


class Distiller(RunLoop):
    """One distillation run of ``teacher``'s self-attention into ``student``'s token mixers, in ``out``.

    The student comes from :func:`make_student` with ``kind=cfg.mixer``; only its adapter's
    parameters are optimised, and the feature loss hooks every mixer wrapper (whatever its kind)
    and the teacher's ``attn1`` of the same name.

    ``batches(start_step)`` returns the batch iterator from step ``start_step`` on (so a resumed run
    sees the batches it had not seen yet).
    """

    log_name = "distill_log.jsonl"

    def __init__(self, teacher_pipe, student_pipe, batches: Callable[[int], Iterator], cfg: DistillConfig, out,
                 device="cpu", resume: bool = False, quiet: bool = False):
        from diffusers import DDPMScheduler

        super().__init__(out, steps=cfg.steps, ckpt_every=cfg.ckpt_every, log_every=cfg.log_every,
                         max_minutes=cfg.max_minutes, desc="distill", quiet=quiet)
        if cfg.batch < 1:
            raise ValueError(f"batch must be a positive integer, got {cfg.batch}")
        self.cfg, self.device = cfg, torch.device(device)
        self.teacher = get_denoiser(teacher_pipe).to(self.device).eval().requires_grad_(False)
        self.student_pipe = student_pipe
        self.student = get_denoiser(student_pipe).to(self.device)
        self.adapter = get_adapter(student_pipe)
        if self.adapter.kind != cfg.mixer:
            raise ValueError(f"the student holds {self.adapter.kind} mixers but the config says mixer={cfg.mixer!r}; "
                             f"build it with make_student(pipe, kind={cfg.mixer!r}) or set DistillConfig.mixer")
        self.params = [p for p in self.adapter.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"the student has no trainable {self.adapter.title} parameters")
        sched = DDPMScheduler.from_config(teacher_pipe.scheduler.config)
        self.prediction_type = sched.config.prediction_type
        self.alphas = sched.alphas_cumprod.to(self.device)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=0.0)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        if resume:
            self.resume_from_checkpoint()
        self.batches = batches(self.step)
        teacher_layers = {l.name: l.module for l in self_attention_layers(self.teacher)}
        student_layers = dict(mixer_layers(self.student))
        if set(teacher_layers) != set(student_layers):
            raise ValueError("teacher and student self-attention layers differ; build the student with make_student")
        self.t_out, self.s_out = _Outputs(teacher_layers), _Outputs(student_layers)

    def loss(self) -> dict[str, torch.Tensor]:
        """One batch's losses: ``loss`` (total), ``out`` (Min-SNR ε terms), ``feat`` (feature term)."""
        x0, text, *rest = next(self.batches)
        cond = {k: v.to(self.device) for k, v in (rest[0] if rest else {}).items()}
        x0, text = x0.to(self.device), text.to(self.device)
        B = x0.shape[0]
        t = torch.randint(0, len(self.alphas), (B,), generator=self.gen, device=self.device)
        eps = torch.randn(x0.shape, generator=self.gen, device=self.device)
        a = self.alphas[t].view(B, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with torch.no_grad():
            eps_t = to_epsilon(denoise(self.teacher, x_t, t, text, **cond).float(), x_t, a, self.prediction_type)
        eps_s = to_epsilon(denoise(self.student, x_t, t, text, **cond).float(), x_t, a, self.prediction_type)
        w = min_snr_weight(self.alphas, t, self.cfg.min_snr_gamma)
        per_sample = ((eps_s - eps) ** 2).mean((1, 2, 3)) + ((eps_s - eps_t) ** 2).mean((1, 2, 3))
        out = (w * per_sample).mean()
        feat = sum(F.mse_loss(self.s_out.values[n].float(), self.t_out.values[n].float())
                   for n in self.t_out.values)
        return {"loss": out + self.cfg.feature_weight * feat, "out": out.detach(), "feat": feat.detach()}

    # -- RunLoop task ----------------------------------------------------------------------------------
    def train_step(self) -> dict[str, torch.Tensor]:
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * min(1.0, (self.step + 1) / max(1, self.cfg.warmup))
        losses = self.loss()
        self.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return losses

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def config(self) -> dict:
        return asdict(self.cfg)

    def run(self, stop_at: int | None = None) -> dict:
        """Distill until ``cfg.steps`` (or ``max_minutes``); save the adapter; return a summary."""
        self.student.train()
        return super().run(stop_at)

    def finish(self, summary: dict) -> dict:
        self.student.eval()
        save_mixer(self.student, str(self.out / "adapter"))
        return {**summary, "adapter": str(self.out / "adapter")}

    def state(self) -> dict:
        return {"config": asdict(self.cfg), "step": self.step, "adapter": self.adapter.state_dict(),
                "optimizer": self.opt.state_dict(), "generator": self.gen.get_state()}

    def load_state(self, s: dict) -> None:
        self.adapter.load_state_dict(s["adapter"])
        self.opt.load_state_dict(s["optimizer"])
        self.gen.set_state(s["generator"].cpu())
        self.step = s["step"]


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
