"""The one training loop of aconvlib: steps, progress bar, JSONL log, atomic checkpoints, resume, deadline.

Distillation (:mod:`aconvlib.training.distill`) and the embedded models' training
(:mod:`aconvlib.mini.train`) are *tasks* of :class:`RunLoop`: a subclass says what one optimisation
step does (:meth:`RunLoop.train_step`), what its checkpoint holds (:meth:`RunLoop.state` /
:meth:`RunLoop.load_state`) and what to write at the end (:meth:`RunLoop.finish`); the loop does
the rest the same way for all of them. A checkpoint is written to ``<out>/ckpt.pt.tmp`` and renamed,
so a kill at any moment leaves the previous checkpoint intact; ``resume=True`` continues from it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..utils import atomic_save

__all__ = ["RunLoop", "atomic_save"]


class RunLoop:
    """Base class of a resumable training run in the folder ``out``.

    Subclasses set ``self.step`` (0 or restored), implement :meth:`train_step`, :meth:`state`,
    :meth:`load_state` and :meth:`finish`, and may override :meth:`total_steps` and :meth:`after_step`.

    Args:
        out: run folder (``config.json``, ``<log_name>``, ``ckpt.pt`` and results go there).
        steps, ckpt_every, log_every, max_minutes: loop settings.
        desc: progress-bar label; quiet: no bar.
    """

    log_name = "train_log.jsonl"

    def __init__(self, out, *, steps: int, ckpt_every: int, log_every: int, max_minutes: float | None = None,
                 desc: str = "train", quiet: bool = False):
        for name, v in (("steps", steps), ("ckpt_every", ckpt_every), ("log_every", log_every)):
            if int(v) < 1:
                raise ValueError(f"{name} must be a positive integer, got {v}")
        if max_minutes is not None and max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {max_minutes}")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.steps, self.ckpt_every, self.log_every, self.max_minutes = steps, ckpt_every, log_every, max_minutes
        self.desc, self.quiet = desc, quiet
        self.step = 0
        self.deadline: float | None = None

    # ------------------------------------------------------------------ the task
    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step at ``self.step`` (before the increment); returns the loss terms to log."""
        raise NotImplementedError

    def state(self) -> dict:
        """Everything a checkpoint needs to continue exactly (weights, optimizer, generators, step)."""
        raise NotImplementedError

    def load_state(self, state: dict) -> None:
        raise NotImplementedError

    def finish(self, summary: dict) -> dict:
        """Called once after the loop with the summary; writes results and returns the summary."""
        return summary

    def total_steps(self) -> int:
        """Where the loop stops (may change during the run, e.g. fitted to a time budget)."""
        return self.steps

    def after_step(self) -> None:
        """Called after every step (EMA updates, sample grids, ...)."""

    def should_stop(self) -> bool:
        """Checked after every step (after the checkpoint): stop early? Default: the ``max_minutes`` deadline
        passed. Data-parallel tasks override it so that all processes agree."""
        return bool(self.deadline) and time.time() > self.deadline

    def config(self) -> dict:
        """Written to ``<out>/config.json`` at the start of :meth:`run`."""
        return {}

    def lr(self) -> float:
        return float("nan")

    # ------------------------------------------------------------------ the loop
    def resume_from_checkpoint(self) -> bool:
        """Load ``<out>/ckpt.pt`` if it exists; return whether it did. Either way it says so on stderr (one line):
        ``resuming <out>/ckpt.pt at step N`` or ``no checkpoint in <out> (ckpt.pt): starting from step 0`` — a
        ``--resume`` that found nothing must not look like a resumed run (``aconv train`` and ``aconv distill``)."""
        import sys

        path = self.out / "ckpt.pt"
        if not path.exists():
            if self._is_main_process():
                print(f"{self.desc}: --resume: no checkpoint in {self.out} (ckpt.pt): starting from step 0",
                      file=sys.stderr, flush=True)
            return False
        self.load_state(torch.load(path, map_location="cpu", weights_only=False))
        if self._is_main_process():
            print(f"{self.desc}: resuming {path} at step {self.step}", file=sys.stderr, flush=True)
        return True

    def _is_main_process(self) -> bool:
        """Whether this process prints run messages (data-parallel tasks override it: only rank 0 does)."""
        return True

    def save(self) -> None:
        atomic_save(self.state(), self.out / "ckpt.pt")

    def log(self, rec: dict) -> None:
        with open(self.out / self.log_name, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def write_config(self) -> None:
        (self.out / "config.json").write_text(json.dumps(self.config(), indent=1))

    def run(self, stop_at: int | None = None) -> dict:
        """Run until :meth:`total_steps` (or ``stop_at``, or ``max_minutes``); checkpoint; :meth:`finish`."""
        from tqdm.auto import tqdm

        self.write_config()
        t0 = time.time()
        self.deadline = t0 + 60 * self.max_minutes if self.max_minutes else None
        bar = tqdm(total=self.total_steps(), initial=self.step, desc=self.desc, disable=self.quiet, mininterval=5)
        sums: dict[str, float] = {}
        n, t_mark = 0, time.time()
        while self.step < self.total_steps() and (stop_at is None or self.step < stop_at):
            terms = self.train_step()
            self.step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
            n += 1
            self.after_step()
            if self.step % self.log_every == 0:
                now = time.time()
                self.log({"step": self.step, **{k: v / n for k, v in sums.items()}, "lr": self.lr(),
                          "s_per_step": (now - t_mark) / n})
                bar.set_postfix(**{k: f"{v / n:.4g}" for k, v in sums.items()})
                sums, n, t_mark = {}, 0, now
            bar.total = self.total_steps()
            bar.update(1)
            if self.step % self.ckpt_every == 0:
                self.save()
            if self.should_stop():
                break
        bar.close()
        self.save()
        summary = {"step": self.step, "finished": self.step >= self.total_steps(), "seconds": time.time() - t0}
        summary = self.finish(summary)
        self.log({"summary": summary})
        return summary
