"""Distillation at scale: one process or many (accelerate / torchrun), mixed precision, accumulation, EMA.

:class:`AcceleratedDistiller` runs the loss of :mod:`aconvlib.training.distill` (Min-SNR ε terms +
β · feature term, AdamW, warm-up, clipping at 1) with what real models need. Settings are a
:class:`RunConfig` (next to the :class:`~aconvlib.training.distill.DistillConfig` of the loss)::

    run = RunConfig(mixed_precision="bf16", grad_accum=4, gradient_checkpointing=True, ema_decay=0.999)
    AcceleratedDistiller(pipe, batches, DistillConfig(batch=16), "runs/sd15", run=run).run()

Launch the same code with ``python``/``aconv`` (one device) or ``accelerate launch`` / ``torchrun``
(many: the process group comes from accelerate's ``PartialState``, which reads the launcher's
environment; on CPUs the backend is gloo).

How a step works. ``batches(start_step)`` yields *global* batches (``cfg.batch`` samples; the last batch
of a bucket may be smaller). Every process draws the same timesteps and noise for the whole batch from
the run's generator, takes its own rows — the batch cut into ``W × grad_accum`` contiguous micro-batches
(``W`` processes), process ``r`` getting micro-batches ``r·A … r·A+A−1`` — and back-propagates
``Σ_{its samples} ℓ_i / B`` for each micro-batch (ℓ_i the per-sample loss). The adapter's gradients are
then summed over processes with one ``all_reduce`` (the adapter is the only trainable part: the frozen
denoiser is not wrapped in DDP, so teacher passes and module swaps need no DDP awareness), clipped and
stepped. The update is therefore the one of a single process on the whole batch, whatever ``W`` and
``grad_accum`` (up to float summation order; tested on 2 CPU processes).

Memory:

* ``mixed_precision`` ``bf16``/``fp16``: forward passes under ``torch.autocast``; the frozen weights are
  stored in ``weight_dtype`` (default: the autocast dtype), the mixer parameters stay fp32 (master
  weights; the optimizer and EMA are fp32); fp16 uses a ``GradScaler``.
* ``share_weights`` (default): teacher and student are ONE denoiser. The student is the pipeline's
  denoiser with the mixers installed (:func:`~aconvlib.mixers.convert.to_mixer`); the original ``attn1``
  modules are kept aside (plain references) and swapped back in for the teacher pass
  (:class:`SharedTeacher`). Without sharing (``share_weights=False``) the student is a deep copy
  (:func:`~aconvlib.training.distill.make_student`): a second copy of every frozen weight (SD1.5 U-Net
  0.86 G parameters, SDXL 2.57 G, PixArt-Σ 0.61 G: 1.7 / 5.1 / 1.2 GB more in bf16).
* ``gradient_checkpointing``: ``enable_gradient_checkpointing()`` of the denoiser; only the student pass
  (the one with gradients) is checkpointed, the teacher pass runs under ``no_grad``.

Checkpoints: ``<out>/ckpt.pt`` written by the main process only, atomically (temporary file + rename),
every ``ckpt_every`` steps and at the end; it holds the adapter, optimizer, generator, EMA, GradScaler
state, the step, and the run's identity (model, data fingerprint) and configs. ``resume=True`` continues
from it and refuses (:class:`ResumeError`, one line) a checkpoint of another model, data or loss
configuration (:data:`RESUME_FIELDS`); a resumed run equals the uninterrupted one (tested on CPU).
Result: ``<out>/adapter`` (:func:`~aconvlib.mixers.convert.save_mixer`) — the EMA weights when EMA is on,
the last weights then in ``<out>/adapter_raw``.

Logs (main process): ``<out>/distill_log.jsonl`` with the loss terms (``loss``, ``out``, ``feat``), the
adapter's gradient norm before clipping (``grad_norm``), ``lr``,
``samples_per_s`` (global samples per second over the log window), ``s_per_step`` and ``mem_gb``
(``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on a CPU: ``mem_kind`` says which);
every ``sample_every`` steps a grid of preview images in ``<out>/samples/step-NNNNNN.png`` (and a log
line); with ``tensorboard`` the same scalars and images in ``<out>/tensorboard`` (needs the
``tensorboard`` package; nothing online).
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..mixers.convert import get_adapter, mixer_layers, save_mixer
from ..models import denoise, family_of, get_denoiser, self_attention_layers
from ..utils import parse_dtype
from .distill import DistillConfig, install_student, make_student, min_snr_weight, to_epsilon
from .loop import RunLoop, atomic_save
from .preview import PreviewSampler, image_grid

__all__ = ["AcceleratedDistiller", "Distiller", "PreviewSampler", "RESUME_FIELDS", "ResumeError", "RunConfig", "SharedTeacher",
           "check_resume", "image_grid", "resolve_weight_dtype"]

#: accelerate's ``mixed_precision`` values ("no": no autocast) and the weight dtypes a run accepts
#: (spelled as accelerate spells them; :func:`aconvlib.utils.parse_dtype` makes the torch dtype)
MIXED_PRECISION = ("no", "bf16", "fp16")
WEIGHT_DTYPES = ("fp32", "bf16", "fp16")


def _autocast_dtype(mixed_precision: str) -> torch.dtype | None:
    return None if mixed_precision == "no" else parse_dtype(mixed_precision)

#: Fields that must agree between a checkpoint and the run resuming it (others — steps, ckpt/log
#: intervals, deadline, precision, accumulation, checkpointing, previews — may change).
RESUME_FIELDS = {"distill": ("batch", "lr", "betas", "warmup", "feature_weight", "min_snr_gamma", "kernel_sizes",
                             "caption_dropout", "seed", "init_adapter", "image_sizes", "mixer", "init"),
                 "run": ("ema_decay",)}


class ResumeError(ValueError):
    """A checkpoint cannot be resumed by this run (another model, data or configuration)."""


@dataclass
class RunConfig:
    """How a distillation run executes (its loss is the :class:`DistillConfig`'s)."""

    mixed_precision: str = "no"          # no | bf16 | fp16 (autocast)
    weight_dtype: str = "auto"           # frozen weights: auto (= the autocast dtype) | fp32 | bf16 | fp16
    grad_accum: int = 1                  # micro-batches per process and optimizer step
    gradient_checkpointing: bool = False  # of the frozen denoiser (student pass)
    ema_decay: float = 0.0               # EMA of the adapter (0: off; after n steps min(decay, (1+n)/(10+n)))
    share_weights: bool = True           # teacher = the student's denoiser with the original attn1 swapped in
    sample_every: int = 0                # preview images every N steps (0: never)
    sample_steps: int = 20               # sampler steps of the previews
    num_samples: int = 4                 # preview prompts
    sample_px: int = 0                   # preview size (0: the training size)
    tensorboard: bool = False            # also log to <out>/tensorboard

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                             f"got {self.mixed_precision!r}")
        if self.weight_dtype not in ("auto", *WEIGHT_DTYPES):
            raise ValueError(f"weight_dtype must be auto, fp32, bf16 or fp16, got {self.weight_dtype!r}")
        if self.mixed_precision == "no" and self.weight_dtype not in ("auto", "fp32"):
            raise ValueError(f"weight_dtype={self.weight_dtype} needs autocast: set mixed_precision to "
                             f"{self.weight_dtype} (or keep weight_dtype auto/fp32)")
        for name in ("grad_accum", "sample_steps", "num_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.sample_every < 0 or self.sample_px < 0:
            raise ValueError(f"sample_every and sample_px must be >= 0, got {self.sample_every}, {self.sample_px}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("tensorboard=True needs the tensorboard package (pip install tensorboard); "
                             "the JSONL log is always written")


def resolve_weight_dtype(run: RunConfig) -> torch.dtype:
    """The dtype of the frozen weights: ``weight_dtype``, or the autocast dtype for ``auto``."""
    if run.weight_dtype == "auto":
        return _autocast_dtype(run.mixed_precision) or torch.float32
    return parse_dtype(run.weight_dtype)


def _plain(obj):
    return json.loads(json.dumps(obj, default=list))


def check_resume(ckpt: dict, identity: dict, cfg: DistillConfig, run: RunConfig, where: str = "ckpt.pt") -> None:
    """Raise :class:`ResumeError` unless checkpoint ``ckpt`` belongs to this model/data (``identity``) and
    agrees on :data:`RESUME_FIELDS`."""
    if not isinstance(ckpt, dict) or "config" not in ckpt or ("identity" not in ckpt and "adapter" not in ckpt):
        raise ResumeError(f"{where} is not a distillation checkpoint: start a new run in another --out folder")
    diff = []
    if "identity" in ckpt:  # checkpoints of the plain Distiller carry none: their adapter is checked on load
        theirs, mine = _plain(ckpt["identity"]), _plain(identity)
        diff = [f"{k}: checkpoint {theirs.get(k)!r} vs now {mine.get(k)!r}" for k in sorted(set(theirs) | set(mine))
                if theirs.get(k) != mine.get(k)]
    for part, conf in (("distill", asdict(cfg)), ("run", asdict(run))):
        if part == "run" and "run" not in ckpt:
            continue
        saved = _plain(ckpt.get("config" if part == "distill" else "run", {}))
        now = _plain(conf)
        diff += [f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in RESUME_FIELDS[part]
                 if k in now and saved.get(k, now[k]) != now.get(k)]
    if diff:
        raise ResumeError(f"cannot resume {where}: it is of another run ({'; '.join(diff[:4])}"
                          f"{f' and {len(diff) - 4} more' if len(diff) > 4 else ''}); use the same settings or "
                          "another --out")


class SharedTeacher:
    """The teacher pass of a shared-weights run: the original ``attn1`` modules swapped back in.

    ``originals``: {layer name: original attn1 module}, taken before the conversion. Inside
    :meth:`active` the denoiser computes the teacher's output; on exit the mixer wrappers are back.
    """

    def __init__(self, denoiser: torch.nn.Module, originals: dict[str, torch.nn.Module]):
        self.denoiser, self.originals = denoiser, dict(originals)
        self.wrappers = dict(mixer_layers(denoiser))
        if set(self.wrappers) != set(self.originals):
            raise ValueError("the converted layers differ from the kept attn1 modules")
        self._parents = {n: (denoiser.get_submodule(n.rpartition(".")[0]) if "." in n else denoiser, n.rpartition(".")[2])
                         for n in self.originals}

    def modules(self) -> torch.nn.ModuleList:
        return torch.nn.ModuleList(self.originals.values())

    @contextlib.contextmanager
    def active(self):
        for n, (parent, child) in self._parents.items():
            setattr(parent, child, self.originals[n])
        try:
            yield
        finally:
            for n, (parent, child) in self._parents.items():
                setattr(parent, child, self.wrappers[n])


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


class _OneProcess:
    """The accelerate state of a plain single-process run (no process group, accelerate not needed)."""

    num_processes, process_index, is_main_process = 1, 0, True

    def __init__(self, device):
        self.device = torch.device(device)

    def wait_for_everyone(self) -> None:
        pass


def _peak_memory_gb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "cpu_peak_rss"


class AcceleratedDistiller(RunLoop):
    """A distillation run of ``pipe``'s self-attention into trainable token mixers, on one process or many.

    Args:
        pipe: the teacher pipeline (diffusers or embedded); with ``run.share_weights`` its denoiser becomes the
            student in place (the pipeline then samples with the student), else a converted copy is made.
        batches: ``batches(start_step)`` → iterator of global batches ``(x0, text_states[, cond])`` (CPU).
        cfg: the loss (:class:`DistillConfig`; ``cfg.batch`` = global batch), run: :class:`RunConfig`.
        out: run folder. state: an accelerate ``PartialState``/``Accelerator`` (default: ``PartialState()``,
            which joins the process group a launcher set up). device: for a single process (default: the state's).
        identity: what this run distills, e.g. ``{"model": "sd15", "data": <fingerprint>}``; stored in the
            checkpoint and compared on resume.
        preview: ``preview(denoiser, autocast) -> list of PIL images`` (e.g. a :class:`PreviewSampler`), called
            every ``run.sample_every`` steps on the main process.
        student: a student pipeline built beforehand (:func:`~aconvlib.training.distill.make_student`) to
            train instead of converting ``pipe`` (needs ``run.share_weights=False``); :class:`Distiller`.
    """

    log_name = "distill_log.jsonl"

    def __init__(self, pipe, batches: Callable[[int], Iterator], cfg: DistillConfig, out, *, run: RunConfig | None = None,
                 state=None, device=None, resume: bool = False, quiet: bool = False, identity: dict | None = None,
                 preview: Callable | None = None, student=None):
        from diffusers import DDPMScheduler

        run = run or RunConfig()
        if state is None:
            from accelerate import PartialState

            state = PartialState(cpu=device is not None and torch.device(device).type == "cpu")
        self.state, self.run_cfg, self.cfg = state, run, cfg
        self.world, self.rank = int(state.num_processes), int(state.process_index)
        self.is_main = bool(state.is_main_process)
        super().__init__(out, steps=cfg.steps, ckpt_every=cfg.ckpt_every, log_every=cfg.log_every,
                         max_minutes=cfg.max_minutes, desc="distill", quiet=quiet or not self.is_main)
        self.device = torch.device(device) if device is not None and self.world == 1 else torch.device(state.device)
        self.identity = dict(identity or {})
        self.amp_dtype = _autocast_dtype(run.mixed_precision)
        wdtype = resolve_weight_dtype(run)

        # -- teacher and student ---------------------------------------------------------------------
        den = get_denoiser(pipe).to(self.device)
        den.requires_grad_(False)
        self.shared: SharedTeacher | None = None
        if student is not None and run.share_weights:
            raise ValueError("a student built beforehand is a copy: run it with RunConfig(share_weights=False)")
        if run.share_weights:
            originals = {l.name: l.module for l in self_attention_layers(den)}
            install_student(den, cfg.mixer, kernel_sizes=cfg.kernel_sizes, seed=cfg.seed,
                            init_adapter=cfg.init_adapter, init=cfg.init)
            self.shared = SharedTeacher(den, originals)
            self.student_pipe, self.teacher, self.student = pipe, den, den
            teacher_attn = self.shared.originals
        else:
            self.student_pipe = student or make_student(pipe, cfg.kernel_sizes, seed=cfg.seed,
                                                        init_adapter=cfg.init_adapter, kind=cfg.mixer, init=cfg.init)
            self.teacher, self.student = den.eval(), get_denoiser(self.student_pipe).to(self.device)
            teacher_attn = {l.name: l.module for l in self_attention_layers(self.teacher)}
        self.adapter = get_adapter(self.student)
        if self.adapter.kind != cfg.mixer:
            raise ValueError(f"the student holds {self.adapter.kind} mixers but the config says mixer={cfg.mixer!r}; "
                             f"build it with make_student(pipe, kind={cfg.mixer!r}) or set DistillConfig.mixer")
        torch.nn.Module.to(self.adapter, device=self.device, dtype=torch.float32)   # fp32 master weights
        self.params = [p for p in self.adapter.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"the student has no trainable {self.adapter.title} parameters")
        if wdtype != torch.float32:
            self._cast_frozen(wdtype)
        if run.gradient_checkpointing:
            if not getattr(self.student, "_supports_gradient_checkpointing", False):
                raise ValueError(f"{type(self.student).__name__} does not support gradient checkpointing")
            self.student.enable_gradient_checkpointing()

        # flow-matching models (FLUX, SD3): x_t = (1 − σ) x0 + σ ε, the velocity ε − x0 is the target, σ = t / T
        self.flow = family_of(den).prediction_type(dict(pipe.scheduler.config)) == "flow_matching"
        if self.flow:
            self.prediction_type, self.alphas = "flow_matching", None
            self.n_timesteps = int(pipe.scheduler.config.get("num_train_timesteps", 1000))
        else:
            sched = DDPMScheduler.from_config(pipe.scheduler.config)
            self.prediction_type = sched.config.prediction_type
            self.alphas = sched.alphas_cumprod.to(self.device)
            self.n_timesteps = len(self.alphas)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=0.0)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=run.mixed_precision == "fp16")
        self.ema = [p.detach().clone() for p in self.params] if run.ema_decay > 0 else None
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        self.preview = preview
        if resume:
            self.resume_from_checkpoint()
        self.batches = batches(self.step)
        student_attn = dict(mixer_layers(self.student))
        if set(teacher_attn) != set(student_attn):
            raise ValueError("teacher and student self-attention layers differ")
        self.t_out, self.s_out = _Outputs(teacher_attn), _Outputs(student_attn)
        self._tb = None
        if run.tensorboard and self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out / "tensorboard"))
        self._win_samples, self._win_t = 0, time.time()
        self._total_samples, self._t_start = 0, None

    # ------------------------------------------------------------------ setup helpers
    def _cast_frozen(self, dtype: torch.dtype) -> None:
        """Frozen weights (and float buffers) of the denoiser(s) to ``dtype``; the adapter stays fp32."""
        keep = {id(p) for p in self.adapter.parameters()} | {id(b) for b in self.adapter.buffers()}
        mods = [self.student] + ([self.teacher] if self.teacher is not self.student else [])
        if self.shared is not None:
            mods.append(self.shared.modules())
        for m in mods:
            for t in list(m.parameters()) + list(m.buffers()):
                if id(t) not in keep and t.is_floating_point():
                    t.data = t.data.to(dtype)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _teacher_pass(self):
        return self.shared.active() if self.shared is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ the loss
    def terms(self, x0, text, cond, t, eps) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample loss terms [b] of one micro-batch: the Min-SNR ε term (flow matching: the velocity term, σ
        uniform in (0, 1], no weighting) and the feature term."""
        b = x0.shape[0]
        if self.flow:
            return self._flow_terms(x0, text, cond, t, eps)
        a = self.alphas[t].view(b, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with torch.no_grad(), self._teacher_pass(), self._autocast():
            eps_t = to_epsilon(denoise(self.teacher, x_t, t, text, **cond).float(), x_t, a, self.prediction_type)
        with self._autocast():
            eps_s = to_epsilon(denoise(self.student, x_t, t, text, **cond).float(), x_t, a, self.prediction_type)
        w = min_snr_weight(self.alphas, t, self.cfg.min_snr_gamma)
        out = w * (((eps_s - eps) ** 2).mean((1, 2, 3)) + ((eps_s - eps_t) ** 2).mean((1, 2, 3)))
        feat = sum(((self.s_out.values[n].float() - self.t_out.values[n].float()) ** 2).flatten(1).mean(1)
                   for n in self.t_out.values)
        return out, feat

    def _flow_terms(self, x0, text, cond, t, eps):
        sigma = (t.float() / self.n_timesteps).view(-1, 1, 1, 1)
        x_t = (1 - sigma) * x0 + sigma * eps
        with torch.no_grad(), self._teacher_pass(), self._autocast():
            v_t = denoise(self.teacher, x_t, t.float(), text, **cond).float()
        with self._autocast():
            v_s = denoise(self.student, x_t, t.float(), text, **cond).float()
        v = eps - x0
        out = ((v_s - v) ** 2).mean((1, 2, 3)) + ((v_s - v_t) ** 2).mean((1, 2, 3))
        feat = sum(((self.s_out.values[n].float() - self.t_out.values[n].float()) ** 2).flatten(1).mean(1)
                   for n in self.t_out.values)
        return out, feat

    def train_step(self) -> dict[str, torch.Tensor]:
        cfg, run = self.cfg, self.run_cfg
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (self.step + 1) / max(1, cfg.warmup))
        x0, text, *rest = next(self.batches)
        cond = dict(rest[0]) if rest else {}
        B = x0.shape[0]
        t = torch.randint(int(self.flow), self.n_timesteps + int(self.flow), (B,), generator=self.gen, device=self.device)
        eps = torch.randn(x0.shape, generator=self.gen, device=self.device)
        A = run.grad_accum
        mine = torch.arange(B).tensor_split(self.world * A)[self.rank * A:(self.rank + 1) * A]
        self.opt.zero_grad(set_to_none=True)
        sums = torch.zeros(3, device=self.device)
        for idx in mine:
            if len(idx) == 0:
                continue
            dev_idx = idx.to(self.device)
            out, feat = self.terms(x0[idx].to(self.device), text[idx].to(self.device),
                                   {k: v[idx].to(self.device) for k, v in cond.items()}, t[dev_idx], eps[dev_idx])
            per = out + cfg.feature_weight * feat
            self.scaler.scale(per.sum() / B).backward()
            sums += torch.stack([per.sum(), out.sum(), feat.sum()]).detach()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if self.world > 1:
            flat = torch.cat([g.reshape(-1) for g in grads] + [sums])
            torch.distributed.all_reduce(flat)
            pos = 0
            for p, g in zip(self.params, grads):
                p.grad = flat[pos:pos + g.numel()].view_as(p).clone()
                pos += g.numel()
            sums = flat[pos:]
        else:
            for p, g in zip(self.params, grads):
                p.grad = g
        self.scaler.unscale_(self.opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            d = min(run.ema_decay, (1 + self.step + 1) / (10 + self.step + 1))
            with torch.no_grad():
                for e, p in zip(self.ema, self.params):
                    e.mul_(d).add_(p.detach(), alpha=1 - d)
        self._win_samples += B
        self._total_samples += B
        return {"loss": sums[0] / B, "out": sums[1] / B, "feat": sums[2] / B, "grad_norm": grad_norm.detach()}

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    # ------------------------------------------------------------------ loop hooks
    def config(self) -> dict:
        return {"distill": asdict(self.cfg), "run": asdict(self.run_cfg), "identity": self.identity,
                "world_size": self.world}

    def write_config(self) -> None:
        if self.is_main:
            super().write_config()

    def log(self, rec: dict) -> None:
        if not self.is_main:
            return
        if "step" in rec:
            now = time.time()
            rec["samples_per_s"] = self._win_samples / max(now - self._win_t, 1e-9)
            self._win_samples, self._win_t = 0, now
            rec["mem_gb"], rec["mem_kind"] = _peak_memory_gb(self.device)
            if self._tb is not None:
                for k, v in rec.items():
                    if k != "step" and isinstance(v, (int, float)):
                        self._tb.add_scalar(f"distill/{k}", v, rec["step"])
        super().log(rec)

    def save(self) -> None:
        if self.is_main:
            atomic_save(self.state_dict_for_checkpoint(), self.out / "ckpt.pt")
        self.state.wait_for_everyone()

    def should_stop(self) -> bool:
        if not self.deadline:
            return False
        stop = torch.tensor([float(time.time() > self.deadline)], device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(stop, op=torch.distributed.ReduceOp.MAX)
        return bool(stop.item())

    def after_step(self) -> None:
        every = self.run_cfg.sample_every
        if every and self.preview is not None and self.step % every == 0 and self.is_main:
            self.write_preview()

    def write_preview(self) -> Path:
        """Preview images of the current student in ``<out>/samples/step-NNNNNN.png`` (main process)."""
        self.student.eval()
        try:
            images = self.preview(self.student, self._autocast)
        finally:
            self.student.train()
        path = self.out / "samples" / f"step-{self.step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid = image_grid(images)
        grid.save(path)
        super().log({"step": self.step, "samples": str(path)})
        if self._tb is not None:
            import numpy as np

            self._tb.add_image("samples", np.asarray(grid), self.step, dataformats="HWC")
        return path

    def run(self, stop_at: int | None = None) -> dict:
        """Distill until ``cfg.steps`` (or ``max_minutes``); save the adapter; return a summary."""
        self.student.train()
        self._t_start = time.time()
        self._win_t = time.time()
        return super().run(stop_at)

    def finish(self, summary: dict) -> dict:
        self.student.eval()
        result = {**summary, "adapter": str(self.out / "adapter"), "world_size": self.world,
                  "samples_per_s": self._total_samples / max(time.time() - (self._t_start or time.time()), 1e-9),
                  "mem_gb": _peak_memory_gb(self.device)[0]}
        if self.is_main:
            if self.ema is not None:
                save_mixer(self.student, str(self.out / "adapter_raw"))
                with self.ema_weights():
                    save_mixer(self.student, str(self.out / "adapter"))
                result["adapter_raw"] = str(self.out / "adapter_raw")
            else:
                save_mixer(self.student, str(self.out / "adapter"))
        if self._tb is not None:
            self._tb.close()
        self.state.wait_for_everyone()
        return result

    @contextlib.contextmanager
    def ema_weights(self):
        """The EMA weights in the adapter, for the duration of the block."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, self.ema):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    # ------------------------------------------------------------------ checkpoints
    def state_dict_for_checkpoint(self) -> dict:
        return {"format": "aconvlib-distill-v2", "identity": self.identity, "config": asdict(self.cfg),
                "run": asdict(self.run_cfg), "step": self.step, "world_size": self.world,
                "adapter": self.adapter.state_dict(), "optimizer": self.opt.state_dict(),
                "generator": self.gen.get_state(), "ema": self.ema, "scaler": self.scaler.state_dict()}

    def state(self) -> dict:
        return self.state_dict_for_checkpoint()

    def _is_main_process(self) -> bool:
        return self.is_main

    def load_state(self, s: dict) -> None:
        where = str(self.out / "ckpt.pt")
        check_resume(s, self.identity, self.cfg, self.run_cfg, where)
        mine = {k: tuple(v.shape) for k, v in self.adapter.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in s["adapter"].items()}
        if mine != theirs:
            bad = sorted(set(mine) ^ set(theirs)) or [k for k in mine if mine[k] != theirs[k]]
            raise ResumeError(f"cannot resume {where}: its {len(theirs)} adapter tensors do not fit this model's "
                              f"{len(mine)} (e.g. {bad[0]}); it is of another model: use another --out")
        if self.ema is not None and s.get("ema") is None and s["step"] > 0:
            raise ResumeError(f"cannot resume {where}: it has no EMA state but ema_decay={self.run_cfg.ema_decay}")
        self.adapter.load_state_dict(s["adapter"])
        self.opt.load_state_dict(s["optimizer"])
        self.gen.set_state(s["generator"].cpu())
        if self.ema is not None and s.get("ema") is not None:
            for e, v in zip(self.ema, s["ema"]):
                e.copy_(v)
        if s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        self.step = int(s["step"])


class Distiller(AcceleratedDistiller):
    """:class:`AcceleratedDistiller` on one process with a student built beforehand, in the signature of the
    first single-process distiller: ``Distiller(teacher_pipe, student_pipe, batches, cfg, out)``.

    The student pipeline (:func:`~aconvlib.training.distill.make_student` with ``kind=cfg.mixer``) is trained in
    place; the teacher pipeline stays stock. No accelerate state is needed.
    """

    def __init__(self, teacher_pipe, student_pipe, batches: Callable[[int], Iterator], cfg: DistillConfig, out,
                 device="cpu", resume: bool = False, quiet: bool = False):
        super().__init__(teacher_pipe, batches, cfg, out, run=RunConfig(share_weights=False),
                         state=_OneProcess(device), device=device, resume=resume, quiet=quiet, student=student_pipe)
