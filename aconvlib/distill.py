"""Distilling self-attention into ΔConvBlocks (paper Sec. 4.3), for any diffusers denoiser.

The student is a deep copy of the teacher's denoiser converted with
:func:`aconvlib.convert.to_deltaconv`: every ``attn1`` becomes a ΔConvBlock and everything else is
frozen, so only the ΔConv weights train. One step, for clean latents x₀ and text states c:

    t ~ U{0, …, T−1},  ε ~ N(0, I),  x_t = α_t x₀ + σ_t ε            (the teacher's noise schedule)
    p_T = teacher(x_t, t, c) (no grad),  p_S = student(x_t, t, c)
    ε̂ = the prediction in ε-space (ε-prediction as is; v-prediction: ε̂ = α_t v̂ + σ_t x_t)
    L_out = w_t · ( ‖ε̂_S − ε‖² + ‖ε̂_S − ε̂_T‖² ),   w_t = min(γ / SNR_t, 1),  SNR_t = α_t² / σ_t²
    L_f   = Σ_l ‖Δ^l(z_S^l) − A^l(z_T^l)‖²     (mean over elements; output of each token mixer)
    L     = L_out + β · L_f

``w_t`` is Min-SNR-γ weighting (Hang et al. 2023) written for ε-prediction (γ = 5 in the paper);
β = 0.001 is the paper's feature weight, chosen there "to match the loss scales" of SD-sized
features: for other models pick β so that β·L_f and L_out are of the same order (the loss log
records both terms). The feature term compares the student's mixer output in its own forward pass
with the teacher's attention output in the teacher's pass (the authors' released code does the same
on the residual stream right after the mixer). AdamW (lr 3e-4, betas 0.9/0.99), linear warm-up,
gradient clipping at 1, as in the paper and the authors' code.

Data: any iterator of ``(x0_latents [B, C, h, w], text_states [B, L, D])``. For the embedded models
:func:`mini_batches` renders the procedural dataset and encodes its captions (dropped to "" 10% of
the time so that the unconditional branch of classifier-free guidance is distilled too).

Runs show a tqdm bar, log to ``<out>/distill_log.jsonl``, checkpoint atomically to ``<out>/ckpt.pt``
(adapter weights, optimizer, step, generator) and resume after a kill with ``resume=True``; the
result is saved with :func:`aconvlib.convert.save_deltaconv` to ``<out>/adapter``.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .convert import deltaconv_layers, get_adapter, get_denoiser, load_deltaconv, save_deltaconv, to_deltaconv
from .models.layers import denoise, self_attention_layers


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


def make_student(pipe, kernel_sizes="paper", seed: int = 0, init_adapter: str | None = None):
    """A copy of ``pipe`` whose denoiser is a ΔConv student (the teacher's other components are shared).

    ``init_adapter``: start from a saved adapter (folder) instead of fresh blocks, e.g. to re-distill
    after the teacher was fine-tuned; ``kernel_sizes`` and ``seed`` are then the adapter's.
    """
    student = copy.copy(pipe)
    name = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    den = copy.deepcopy(get_denoiser(pipe))
    if init_adapter:
        den = load_deltaconv(den, init_adapter, freeze=True)
        get_adapter(den).requires_grad_(True)
    else:
        den = to_deltaconv(den, kernel_sizes, seed=seed)
    setattr(student, name, den)
    if hasattr(student, "denoiser_name"):
        student.denoiser_name = name
    return student


def mini_batches(pipe, batch: int, seed: int = 0, caption_dropout: float = 0.1, device="cpu",
                 start_step: int = 0, image_sizes: Sequence[int] = (64,)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(x0 latents, text states)`` batches of the embedded dataset for a mini pipeline.

    Batch ``s`` holds dataset indices ``s·B … s·B+B−1`` rendered at ``image_sizes[s % len(image_sizes)]``
    px (deterministic, so a resumed run sees the batches it had not seen yet).
    """
    if not image_sizes or any(int(px) % 16 for px in image_sizes):
        raise ValueError(f"image_sizes must be multiples of 16 px (the mini models' latent and patch), got {image_sizes!r}")
    from . import data
    from .mini.models import to_latent

    gen = torch.Generator("cpu").manual_seed(seed + 7)
    step = start_step
    while True:
        px = int(image_sizes[step % len(image_sizes)])
        b = data.make_batch(range(step * batch, (step + 1) * batch), seed, "train", size=px, device=device)
        drop = (torch.rand(batch, generator=gen) < caption_dropout).tolist()
        caps = ["" if d else c for c, d in zip(b["captions"], drop)]
        with torch.no_grad():
            text = pipe.encode_prompt(caps)
        yield to_latent(b["pixel_values"]), text
        step += 1


class Distiller:
    """One distillation run of ``teacher``'s self-attention into ``student``'s ΔConv blocks, in ``out``."""

    def __init__(self, teacher_pipe, student_pipe, batches: Callable[[int], Iterator], cfg: DistillConfig, out,
                 device="cpu", resume: bool = False, quiet: bool = False):
        from diffusers import DDPMScheduler

        self.cfg, self.out, self.device, self.quiet = cfg, Path(out), torch.device(device), quiet
        self.out.mkdir(parents=True, exist_ok=True)
        self.teacher = get_denoiser(teacher_pipe).to(self.device).eval().requires_grad_(False)
        self.student_pipe = student_pipe
        self.student = get_denoiser(student_pipe).to(self.device)
        self.adapter = get_adapter(student_pipe)
        self.params = [p for p in self.adapter.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the student has no trainable ΔConv parameters")
        sched = DDPMScheduler.from_config(teacher_pipe.scheduler.config)
        self.prediction_type = sched.config.prediction_type
        self.alphas = sched.alphas_cumprod.to(self.device)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=0.0)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        self.step = 0
        if resume and (self.out / "ckpt.pt").exists():
            self._load(self.out / "ckpt.pt")
        self.batches = batches(self.step)
        teacher_layers = {l.name: l.module for l in self_attention_layers(self.teacher)}
        student_layers = dict(deltaconv_layers(self.student))
        if set(teacher_layers) != set(student_layers):
            raise ValueError("teacher and student self-attention layers differ; build the student with make_student")
        self.t_out, self.s_out = _Outputs(teacher_layers), _Outputs(student_layers)

    def loss(self) -> dict[str, torch.Tensor]:
        """One batch's losses: ``loss`` (total), ``out`` (Min-SNR ε terms), ``feat`` (feature term)."""
        x0, text = next(self.batches)
        x0, text = x0.to(self.device), text.to(self.device)
        B = x0.shape[0]
        t = torch.randint(0, len(self.alphas), (B,), generator=self.gen, device=self.device)
        eps = torch.randn(x0.shape, generator=self.gen, device=self.device)
        a = self.alphas[t].view(B, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with torch.no_grad():
            eps_t = to_epsilon(denoise(self.teacher, x_t, t, text).float(), x_t, a, self.prediction_type)
        eps_s = to_epsilon(denoise(self.student, x_t, t, text).float(), x_t, a, self.prediction_type)
        w = min_snr_weight(self.alphas, t, self.cfg.min_snr_gamma)
        per_sample = ((eps_s - eps) ** 2).mean((1, 2, 3)) + ((eps_s - eps_t) ** 2).mean((1, 2, 3))
        out = (w * per_sample).mean()
        feat = sum(F.mse_loss(self.s_out.values[n].float(), self.t_out.values[n].float())
                   for n in self.t_out.values)
        return {"loss": out + self.cfg.feature_weight * feat, "out": out.detach(), "feat": feat.detach()}

    def run(self) -> dict:
        """Distill until ``cfg.steps`` (or ``max_minutes``); save the adapter; return a summary."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        t0 = time.time()
        deadline = t0 + 60 * cfg.max_minutes if cfg.max_minutes else None
        bar = tqdm(total=cfg.steps, initial=self.step, desc="distill", disable=self.quiet, mininterval=5)
        self.student.train()
        sums, n, t_mark = {"loss": 0.0, "out": 0.0, "feat": 0.0}, 0, time.time()
        while self.step < cfg.steps and not (deadline and time.time() > deadline):
            for g in self.opt.param_groups:
                g["lr"] = cfg.lr * min(1.0, (self.step + 1) / max(1, cfg.warmup))
            losses = self.loss()
            self.opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            self.step += 1
            for k in sums:
                sums[k] += float(losses[k].detach())
            n += 1
            if self.step % cfg.log_every == 0:
                rec = {"step": self.step, **{k: v / n for k, v in sums.items()},
                       "s_per_step": (time.time() - t_mark) / n}
                self._log(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", feat=f"{rec['feat']:.3g}")
                sums, n, t_mark = {k: 0.0 for k in sums}, 0, time.time()
            if self.step % cfg.ckpt_every == 0:
                self._save()
            bar.update(1)
        bar.close()
        self._save()
        self.student.eval()
        save_deltaconv(self.student, str(self.out / "adapter"))
        summary = {"step": self.step, "finished": self.step >= cfg.steps, "seconds": time.time() - t0,
                   "adapter": str(self.out / "adapter")}
        self._log({"summary": summary})
        return summary

    def _log(self, rec: dict) -> None:
        with open(self.out / "distill_log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    def _save(self) -> None:
        state = {"config": asdict(self.cfg), "step": self.step, "adapter": self.adapter.state_dict(),
                 "optimizer": self.opt.state_dict(), "generator": self.gen.get_state()}
        tmp = self.out / "ckpt.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "ckpt.pt")

    def _load(self, path: Path) -> None:
        s = torch.load(path, map_location=self.device, weights_only=False)
        self.adapter.load_state_dict(s["adapter"])
        self.opt.load_state_dict(s["optimizer"])
        self.gen.set_state(s["generator"].cpu())
        self.step = s["step"]


def distill_mini(model: str = "mini-sd", out="runs/distill-mini-sd", device="cpu", resume: bool = False,
                 quiet: bool = False, **overrides) -> dict:
    """Distill an embedded model's self-attention into ΔConv blocks (see :class:`DistillConfig`)."""
    from .models import get_spec, load_pipeline

    spec = get_spec(model)
    if not spec.embedded:
        raise ValueError(f"distill_mini works on the embedded models (mini-sd, mini-dit), not {model!r}; "
                         "for real models build a Distiller with your own latent/text batches")
    cfg = DistillConfig(**overrides)
    teacher = load_pipeline(model, device=device)
    student = make_student(teacher, cfg.kernel_sizes, seed=cfg.seed, init_adapter=cfg.init_adapter)
    batches = lambda start: mini_batches(teacher, cfg.batch, cfg.seed, cfg.caption_dropout, device, start,  # noqa: E731
                                         cfg.image_sizes)
    return Distiller(teacher, student, batches, cfg, out, device, resume, quiet).run()


def register_cli(sub) -> None:
    p = sub.add_parser("distill", help="distill an embedded model's self-attention into ΔConv blocks")
    p.add_argument("--model", default="mini-sd", choices=["mini-sd", "mini-dit"])
    p.add_argument("--out", default=None, help="run folder (default runs/distill-<model>)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--feature-weight", type=float, default=0.001, help="β of the feature loss")
    p.add_argument("--kernel-sizes", default="paper", help="paper | official | an odd integer")
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from <out>/ckpt.pt")
    p.add_argument("--init-adapter", default=None, help="start from this saved adapter folder (re-distillation)")
    p.add_argument("--image-sizes", default="64", help="px of the training batches, comma-separated, cycled per step")

    def run(a):
        ks = int(a.kernel_sizes) if str(a.kernel_sizes).isdigit() else a.kernel_sizes
        summary = distill_mini(a.model, a.out or f"runs/distill-{a.model}", a.device, a.resume, steps=a.steps,
                               batch=a.batch, lr=a.lr, feature_weight=a.feature_weight, kernel_sizes=ks,
                               max_minutes=a.max_minutes, seed=a.seed, init_adapter=a.init_adapter,
                               image_sizes=tuple(int(v) for v in a.image_sizes.split(",")))
        print(json.dumps(summary))

    p.set_defaults(func=run)


# ----------------------------------------------------------------------------------------------
# shipped results of the embedded models
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def prediction_gap(teacher_pipe, student_pipe, px: int = 64, timesteps=(900, 500, 100), n: int = 8,
                   seed: int = 0) -> dict[int, float]:
    """How far a student's denoiser prediction is from its teacher's, per timestep, at ``px``×``px``.

    Both mini pipelines predict on the same noisy held-out images ``x_t`` (rendered at ``px``, the DDPM
    forward process of the teacher's schedule, one noise draw) with the same caption states. Returns
    ``{t: ‖ŷ_student − ŷ_teacher‖ / ‖ŷ_teacher‖}`` over the whole batch.
    """
    from diffusers import DDPMScheduler

    from . import data
    from .mini.models import to_latent

    dev = teacher_pipe.device
    b = data.make_batch(range(n), seed, "heldout", size=px, device=dev)
    x0, text = to_latent(b["pixel_values"]), teacher_pipe.encode_prompt(b["captions"])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(dev)
    sched = DDPMScheduler.from_config(teacher_pipe.scheduler.config)
    teacher, student = get_denoiser(teacher_pipe), get_denoiser(student_pipe)
    gaps = {}
    for t in timesteps:
        tt = torch.full((n,), int(t), device=dev)
        x_t = sched.add_noise(x0, noise, tt)
        y_t, y_s = denoise(teacher, x_t, tt, text), denoise(student, x_t, tt, text)
        gaps[int(t)] = ((y_s - y_t).norm() / y_t.norm()).item()
    return gaps


def adapter_dir(model: str) -> Path:
    """Where the distilled ΔConv adapter of an embedded model ships: ``data/models/<model>-deltaconv``."""
    from .models.registry import DATA_DIR

    return DATA_DIR / "models" / f"{model}-deltaconv"


def read_log(path) -> list[dict]:
    """The step records of a ``distill_log.jsonl`` (summary lines dropped)."""
    path = Path(path)
    if path.is_dir():
        path = path / "distill_log.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no distillation log at {path}; run `aconv distill` first")
    return [r for r in map(json.loads, path.read_text().splitlines()) if "step" in r and "loss" in r]


def plot_distill_curves(models, smooth: int = 10):
    """One panel per loss term (total, Min-SNR ε terms, feature term), one line per model, dashed lines at
    phase changes (``phase`` field of the log); returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    from .plotting import mark_phase_changes

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for model in models:
        log = read_log(adapter_dir(model))
        steps = np.array([r["step"] for r in log])
        for ax, key, title in zip(axes, ("loss", "out", "feat"), ("total L", "L_out (Min-SNR ε terms)", "L_f (features)")):
            y = np.array([r[key] for r in log])
            k = max(1, min(smooth, len(y) // 5))
            ys = np.convolve(y, np.ones(k) / k, mode="valid")
            line, = ax.plot(steps[k - 1:], ys, label=model)
            mark_phase_changes(ax, log, c=line.get_color(), alpha=0.6)  # re-distillation after the teacher changed
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    return fig
