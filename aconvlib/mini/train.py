"""Training of the embedded models (``aconv train --model mini-sd|mini-dit|classifier``).

Denoisers and their text encoders are trained jointly with v-prediction on a cosine DDPM schedule
(the one their shipped scheduler configs use), captions dropped to ``""`` 10% of the time for
classifier-free guidance; AdamW, linear warmup then cosine decay to 10%, EMA of the weights (the EMA
is what ships), bf16 autocast on CUDA. The batch of step ``s`` is dataset indices
``s*B .. s*B+B-1`` and all other randomness comes from one saved generator, so a run resumed from its
checkpoint continues exactly where it stopped. Checkpoints (``ckpt.pt``: weights, EMA, optimizer,
step, generator state) are written atomically; losses go to ``train_log.jsonl``; sample grids to
``samples_<step>.png``; the final EMA pipeline to ``<out>/pipeline`` (or ``<out>/classifier``).

Runs are tasks of :class:`aconvlib.training.loop.RunLoop` (one loop for training and distillation):
:class:`DenoiserTrainer` for ``mini-sd`` / ``mini-dit`` and :class:`ClassifierTrainer` for the
evaluator's classifier share :class:`Trainer` (EMA, schedule, checkpoint state).

``max_minutes`` bounds the wall-clock time: at step 70 the run measures its speed (steps 20-70), fits the
schedule's total steps into the budget (recorded in the checkpoint) and stops there, saving itself.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..training.loop import RunLoop
from . import dataset as data

FAMILY = {"mini-sd": "unet", "mini-dit": "dit"}
SAMPLE_PROMPTS = [
    "a large red circle at the center", "a small blue square at the top left",
    "a large green triangle at the bottom right", "a small yellow ring at the top",
    "a large magenta square at the left and a small cyan circle at the right",
    "a small red triangle at the top right and a large blue ring at the bottom left",
    "a large yellow circle at the bottom and a small green square at the top",
    "a large cyan ring at the center",
]


@dataclass
class TrainConfig:
    """Hyper-parameters of one run (saved in the checkpoint and ``config.json``)."""

    model: str = "mini-sd"
    steps: int = 4000
    batch: int = 64
    lr: float = 5e-4
    warmup: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    seed: int = 0
    ckpt_every: int = 500
    sample_every: int = 1000
    log_every: int = 10
    max_minutes: float | None = None
    eval_images: int = 2000  # held-out images for the classifier's accuracy at export
    min_snr_gamma: float | None = None  # min-SNR-γ loss weighting (Hang et al. 2023); None = plain MSE
    init_from: str | None = None  # start from an exported pipeline folder (fine-tuning / continuation)
    high_noise_frac: float = 0.0  # fraction of each batch whose timestep is drawn from [high_noise_min, T)
    high_noise_min: int = 850  # (layout is decided there: only the caption can tell where objects go)
    text_encoder_lr_mult: float = 1.0  # the text encoder's lr = lr × this (position words need to move)
    position_word_norm: float | None = None  # re-initialise the position words' embeddings (see below)
    total_steps: int | None = field(default=None)  # schedule length; fixed at start or fitted to the budget

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (called on construction, before any work)."""
        if self.model not in ("mini-sd", "mini-dit", "classifier"):
            raise ValueError(f"unknown model {self.model!r}: choose mini-sd, mini-dit or classifier")
        for name in ("steps", "batch", "ckpt_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.lr <= 0 or self.warmup < 0 or self.sample_every < 0 or not 0 <= self.ema_decay < 1:
            raise ValueError(f"lr must be > 0, warmup and sample_every >= 0, ema_decay in [0, 1); got "
                             f"{self.lr}, {self.warmup}, {self.sample_every}, {self.ema_decay}")
        if not 0.0 <= self.caption_dropout <= 1.0 or not 0.0 <= self.high_noise_frac <= 1.0:
            raise ValueError(f"caption_dropout and high_noise_frac must be in [0, 1], got "
                             f"{self.caption_dropout}, {self.high_noise_frac}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.init_from is not None and not Path(self.init_from).is_dir():
            raise FileNotFoundError(f"init_from: no pipeline folder at {self.init_from}")


POSITION_WORDS = ("top", "bottom", "left", "right", "center")


@torch.no_grad()
def spread_word_embeddings(text_encoder, tokenizer, words, norm: float, seed: int = 0) -> None:
    """Set the input embeddings of ``words`` to mutually orthogonal random vectors of length ``norm``.

    Why: jointly trained from scratch, the text encoder of both embedded models collapsed the position
    words (top/bottom/left/right): swapping them moves its norm-11 states by 0.35 (mini-sd) and 2.0
    (mini-dit) against 5-13 for colour, shape and size words (:func:`aconvlib.mini.report.word_separation`),
    so the denoisers could not learn *where*. Distinct, larger embeddings
    give those tokens distinct states for the denoiser to bind to (the rest of the encoder is kept).
    """
    emb = text_encoder.get_input_embeddings().weight
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(emb.shape[1], len(words), generator=g))
    for k, w in enumerate(words):
        emb[tokenizer.index[w]] = (norm * q[:, k]).to(emb)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine decay to 0.1 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))


def sample_timesteps(n: int, num_train_timesteps: int, generator: torch.Generator, high_noise_frac: float = 0.0,
                     high_noise_min: int = 850) -> torch.Tensor:
    """(n,) training timesteps: uniform over ``[0, T)``, except that a ``high_noise_frac`` share is drawn
    uniformly from ``[high_noise_min, T)``, where the image is nearly pure noise and only the caption
    can say where objects go (layout is learned there, and uniform sampling visits it rarely)."""
    if not 0.0 <= high_noise_frac <= 1.0 or not 0 <= high_noise_min < num_train_timesteps:
        raise ValueError(f"high_noise_frac must be in [0, 1] and high_noise_min in [0, {num_train_timesteps}); "
                         f"got {high_noise_frac}, {high_noise_min}")
    dev = generator.device
    t = torch.randint(0, num_train_timesteps, (n,), generator=generator, device=dev)
    if high_noise_frac > 0:
        hi = torch.randint(high_noise_min, num_train_timesteps, (n,), generator=generator, device=dev)
        t = torch.where(torch.rand(n, generator=generator, device=dev) < high_noise_frac, hi, t)
    return t


class Trainer(RunLoop):
    """One training run in ``out``; ``run()`` trains (resuming when asked) and exports the result.

    Subclasses build ``self.modules`` (name → module) in :meth:`build`, compute the loss of one
    batch in :meth:`loss` and write the result in :meth:`export`.
    """

    def __init__(self, cfg: TrainConfig, out, device="cpu", resume: bool = False, quiet: bool = False):
        if cfg.batch < 1:
            raise ValueError(f"batch must be a positive integer, got {cfg.batch}")
        super().__init__(out, steps=cfg.steps, ckpt_every=cfg.ckpt_every, log_every=cfg.log_every,
                         max_minutes=cfg.max_minutes, desc=cfg.model, quiet=quiet)
        self.cfg, self.device = cfg, torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.seed)
        self.build()
        self.params = [p for m in self.modules.values() for p in m.parameters()]
        self.ema = [p.detach().clone().float() for p in self.params]
        # one param group per module; the text encoder's lr is scaled by text_encoder_lr_mult
        self.opt = torch.optim.AdamW(
            [{"params": list(m.parameters()), "lr_mult": cfg.text_encoder_lr_mult if k == "text_encoder" else 1.0}
             for k, m in self.modules.items()], lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed + 1)
        if cfg.total_steps is None and cfg.max_minutes is None:
            cfg.total_steps = cfg.steps
        if resume:
            self.resume_from_checkpoint()
        self._t20: float | None = None

    # -- the task ------------------------------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def loss(self, step: int) -> torch.Tensor:
        raise NotImplementedError

    def sample(self) -> None:
        """Write a sample grid (denoisers only)."""

    def export(self) -> Path:
        raise NotImplementedError

    def ema_modules(self) -> dict:
        """Copies of the modules holding the EMA weights (eval mode)."""
        mods = {k: copy.deepcopy(m) for k, m in self.modules.items()}
        ps = [p for m in mods.values() for p in m.parameters()]
        with torch.no_grad():
            for p, e in zip(ps, self.ema):
                p.copy_(e)
        return {k: m.eval() for k, m in mods.items()}

    # -- RunLoop ----------------------------------------------------------------------------------------
    def config(self) -> dict:
        return asdict(self.cfg)

    def total_steps(self) -> int:
        return self.cfg.total_steps or self.cfg.steps

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def train_step(self) -> dict[str, torch.Tensor]:
        cfg, dev = self.cfg, self.device
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * g["lr_mult"] * lr_factor(self.step, cfg.warmup, self.total_steps())
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast(
            "cpu", enabled=False)
        with autocast:
            loss = self.loss(self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        d = min(cfg.ema_decay, (2 + self.step) / (11 + self.step))  # (1 + s) / (10 + s) after the increment
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach().float() for p in self.params], 1 - d)
        return {"loss": loss.detach().float()}

    def after_step(self) -> None:
        cfg = self.cfg
        if self.deadline and cfg.total_steps is None and self.step == 20:
            self._t20 = time.time()
        if self.deadline and cfg.total_steps is None and self.step == 70:
            rate = (time.time() - self._t20) / 50  # s/step once warm
            cfg.total_steps = min(cfg.steps, int(70 + 0.96 * (self.deadline - time.time()) / rate))
            self.write_config()
        if cfg.sample_every and self.step % cfg.sample_every == 0:
            self.sample()

    def run(self, stop_at: int | None = None) -> dict:
        """Train until the schedule ends (or ``stop_at`` steps, or the time budget); export; return a summary."""
        for m in self.modules.values():
            m.train()
        return super().run(stop_at)

    def finish(self, summary: dict) -> dict:
        cfg = self.cfg
        if cfg.total_steps is None:
            cfg.total_steps = self.step
            self.save()
        done = self.step >= self.total_steps()
        summary = {"model": cfg.model, **summary, "finished": done}
        if done or self.deadline:
            if cfg.sample_every:
                self.sample()
            summary["export"] = str(self.export())
        return summary

    def state(self) -> dict:
        return {"config": asdict(self.cfg), "step": self.step,
                "modules": {k: m.state_dict() for k, m in self.modules.items()},
                "ema": self.ema, "optimizer": self.opt.state_dict(), "generator": self.gen.get_state()}

    def load_state(self, s: dict) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(s["modules"][k])
        with torch.no_grad():
            for e, v in zip(self.ema, s["ema"]):
                e.copy_(v)
        self.opt.load_state_dict(s["optimizer"])
        self.gen.set_state(s["generator"].cpu())
        self.step = s["step"]
        self.cfg.total_steps = s["config"]["total_steps"]


class DenoiserTrainer(Trainer):
    """Joint training of an embedded denoiser (``mini-sd`` / ``mini-dit``) and its text encoder."""

    def build(self) -> None:
        from .models import build_denoiser, build_text_encoder, make_scheduler
        from .tokenizer import WordTokenizer

        self.tokenizer = WordTokenizer.for_grammar()
        self.modules = {FAMILY[self.cfg.model]: build_denoiser(FAMILY[self.cfg.model]).to(self.device),
                        "text_encoder": build_text_encoder(len(self.tokenizer)).to(self.device)}
        if self.cfg.init_from:
            self._init_from(Path(self.cfg.init_from))
        if self.cfg.position_word_norm:
            spread_word_embeddings(self.modules["text_encoder"], self.tokenizer, POSITION_WORDS,
                                   self.cfg.position_word_norm, seed=self.cfg.seed)
        self.noise_scheduler = make_scheduler("ddpm")
        self.alphas = self.noise_scheduler.alphas_cumprod.to(self.device)

    def _init_from(self, path: Path) -> None:
        from safetensors.torch import load_file

        for key, m in self.modules.items():
            sub = {"unet": "unet", "dit": "transformer"}.get(key, key)
            f = next((path / sub).glob("*.safetensors"))
            m.load_state_dict({k: v.float() for k, v in load_file(str(f)).items()})

    def loss(self, step: int) -> torch.Tensor:
        from .models import denoise, to_latent

        cfg, dev = self.cfg, self.device
        b = data.make_batch(range(step * cfg.batch, (step + 1) * cfg.batch), cfg.seed, "train", device=dev)
        x0 = to_latent(b["pixel_values"])
        B = x0.shape[0]
        drop = torch.rand(B, generator=self.gen, device=dev) < cfg.caption_dropout
        caps = ["" if d else c for c, d in zip(b["captions"], drop.tolist())]
        ids = self.tokenizer(caps)["input_ids"].to(dev)
        t = sample_timesteps(B, len(self.alphas), self.gen, cfg.high_noise_frac, cfg.high_noise_min)
        noise = torch.randn(x0.shape, generator=self.gen, device=dev)
        a = self.alphas[t].view(B, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v-prediction
        states = self.modules["text_encoder"](ids)[0]
        pred = denoise(self.modules[FAMILY[cfg.model]], xt, t, states)
        if cfg.min_snr_gamma is None:
            return F.mse_loss(pred.float(), target)
        snr = a.view(B) / (1 - a.view(B))
        w = snr.clamp(max=cfg.min_snr_gamma) / (snr + 1)  # min-SNR-γ weight for v-prediction
        return (w * (pred.float() - target).square().mean((1, 2, 3))).mean()

    def pipeline(self):
        from .models import make_scheduler
        from .pipeline import MiniPipeline

        m = self.ema_modules()
        return MiniPipeline(m[FAMILY[self.cfg.model]], m["text_encoder"], self.tokenizer, make_scheduler("dpm"))

    def sample(self) -> None:
        pipe = self.pipeline()
        g = torch.Generator("cpu").manual_seed(0)
        imgs = pipe(SAMPLE_PROMPTS * 2, num_inference_steps=20, generator=g, output_type="pt").images
        data.image_grid(imgs, nrow=8).save(self.out / f"samples_{self.step:06d}.png")

    def export(self) -> Path:
        """Write the EMA pipeline in diffusers layout (fp16)."""
        pipe = self.pipeline()
        pipe.save_pretrained(self.out / "pipeline")
        return self.out / "pipeline"


class ClassifierTrainer(Trainer):
    """Training of the evaluator's attribute classifier on the ``all`` split."""

    def build(self) -> None:
        from .evaluate import AttributeClassifier

        self.modules = {"classifier": AttributeClassifier().to(self.device)}

    def loss(self, step: int) -> torch.Tensor:
        cfg, dev = self.cfg, self.device
        b = data.make_batch(range(step * cfg.batch, (step + 1) * cfg.batch), cfg.seed, "all", device=dev)
        x = b["pixel_values"]
        x = x + 0.03 * torch.randn(x.shape, generator=self.gen, device=dev)  # robustness to sampler noise
        return self.modules["classifier"].loss(x, b)

    def export(self) -> Path:
        """Write the EMA classifier and its held-out accuracy."""
        from .evaluate import classifier_accuracy

        clf = self.ema_modules()["classifier"].cpu()
        clf.save(self.out / "classifier")
        acc = classifier_accuracy(clf, n=self.cfg.eval_images)
        (self.out / "classifier" / "accuracy.json").write_text(json.dumps(acc, indent=1))
        self.log({"step": self.step, "heldout_accuracy": acc})
        return self.out / "classifier"


TRAINERS = {"mini-sd": DenoiserTrainer, "mini-dit": DenoiserTrainer, "classifier": ClassifierTrainer}


def train(model: str = "mini-sd", out="runs/mini-sd", device="cpu", resume: bool = False, **kw) -> dict:
    """Train ``model`` (``mini-sd``, ``mini-dit`` or ``classifier``) into ``out``; see :class:`TrainConfig`."""
    if model not in TRAINERS:
        raise ValueError(f"unknown model {model!r}: choose {', '.join(TRAINERS)}")
    return TRAINERS[model](TrainConfig(model=model, **kw), out, device, resume).run()
