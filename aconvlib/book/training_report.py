"""Figures and tables of the chapter "The embedded models" (thin wrappers over data, models, evaluator)."""
from __future__ import annotations

import dataclasses
import json

import torch

from ..mini import dataset as data
from ..models import models_dir


def read_log(name: str) -> list[dict]:
    """The shipped training log of ``name`` (``models/<name>/train_log.jsonl of the package data``), loss records only."""
    return [r for r in map(json.loads, open(models_dir() / name / "train_log.jsonl")) if "loss" in r]


def plot_training_curves(names=("mini-sd", "mini-dit", "classifier"), smooth: int = 20):
    """Loss against step (moving average of ``smooth`` log points); dashed lines mark phase changes."""
    import matplotlib.pyplot as plt

    from .plotting import mark_phase_changes

    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2))
    for ax, name in zip(axes, names):
        log = read_log(name)
        for phase in sorted({r.get("phase", 1) for r in log}):
            part = [r for r in log if r.get("phase", 1) == phase]
            steps = torch.tensor([r["step"] for r in part], dtype=torch.float)
            loss = torch.tensor([r["loss"] for r in part])
            k = min(smooth, len(loss))
            sm = torch.nn.functional.avg_pool1d(loss[None, None], k, 1).flatten()
            ax.plot(steps, loss, alpha=0.25, lw=0.8, c="C0")
            ax.plot(steps[k - 1:], sm, lw=1.5, c="C1")
        mark_phase_changes(ax, log)
        ax.set(yscale="log", xlabel="step (batch 256)" if name != "classifier" else "step (batch 128)",
               ylabel="training loss", title=name)
    fig.tight_layout()
    return fig


def show_images(images: torch.Tensor, titles: list[str], ncols: int = 4, width: float = 2.6):
    """Images (B,3,H,W) in [0,1] with wrapped titles (captions) in a matplotlib grid."""
    import textwrap

    import matplotlib.pyplot as plt

    n = len(images)
    rows = -(-n // ncols)
    fig, axes = plt.subplots(rows, ncols, figsize=(width * ncols, (width + 0.55) * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t in zip(axes.flat, images, titles):
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(t, 26)), fontsize=7)
    fig.tight_layout()
    return fig


def dataset_samples(n: int = 12, split: str = "train", seed: int = 0):
    """A figure of ``n`` dataset images with their captions."""
    b = data.make_batch(range(n), seed, split)
    return show_images(b["pixel_values"] * 0.5 + 0.5, b["captions"])


def shipped_eval() -> dict:
    """The evaluation recorded when the weights were trained (``data/models/<name>/eval.json``)."""
    out = {}
    for name in ("mini-sd", "mini-dit"):
        p = models_dir() / name / "eval.json"
        if p.exists():
            out[name] = json.loads(p.read_text())
    clf = models_dir() / "classifier" / "accuracy.json"
    if clf.exists():
        out["classifier"] = json.loads(clf.read_text())
    return out


def quality_table(rows: dict[str, dict]):
    """A pandas table: one row per (model, where measured), columns = metrics.

    Rows from :func:`aconvlib.mini.evaluate_model` that carry their per-image results also get
    ``adherence [95% CI]`` (Wilson, k of n) and ``FDD [95% CI]`` (bias-corrected bootstrap over the images,
    :mod:`aconvlib.mini.intervals`); stored rows without them show "—" there."""
    import pandas as pd

    from ..mini.intervals import adherence_estimate, fdd_estimate

    cols = ["n_prompts", "prompt_adherence", "shape", "color", "size", "position", "fdd", "steps",
            "guidance_scale", "scheduler"]
    out = []
    for r in rows.values():
        row = {c: r.get(c) for c in cols}
        per_image = r.get("per_image") is not None
        row["adherence [95% CI]"] = adherence_estimate(r).format(pct=True) if per_image else "—"
        row["FDD [95% CI]"] = (fdd_estimate(r).format(".0f") if per_image and r.get("features") is not None
                               and len(r["features"]) > 1 else "—")
        out.append(row)
    return pd.DataFrame(out, index=list(rows)).round(3)


@torch.no_grad()
def word_separation(pipe, base: str = "a large red circle at the top left") -> dict[str, float]:
    """How far apart the text encoder's output states are for captions that differ in one attribute.

    For each attribute (size, colour, shape, position) every alternative word(s) replaces the base
    caption's (positions only by ones of the same word count), and the mean over alternatives of the largest per-token distance ``‖h − h'‖`` between
    the two encoded captions is returned (states are final-layer-normed, norm ≈ √width). A denoiser
    can only follow an attribute whose words move these states.
    """
    obj = data.parse_caption(base)[0]
    swaps = {"size": [dict(size=i) for i in range(len(data.SIZES)) if i != obj.size],
             "color": [dict(color=i) for i in range(len(data.COLORS)) if i != obj.color],
             "shape": [dict(shape=i) for i in range(len(data.SHAPES)) if i != obj.shape],
             # same number of words only ("top left" vs "bottom right"): a length change alone moves the states
             "position": [dict(position=i) for i, p in enumerate(data.POSITIONS)
                          if i != obj.position and len(p.split()) == len(data.POSITIONS[obj.position].split())]}
    enc = lambda caps: pipe.text_encoder(pipe.tokenizer(caps)["input_ids"].to(pipe.device))[0].float()  # noqa: E731
    h0 = enc([base])[0]
    out = {}
    for attr, alts in swaps.items():
        caps = [data.caption([dataclasses.replace(obj, **a)]) for a in alts]
        out[attr] = (enc(caps) - h0).norm(dim=-1).amax(-1).mean().item()
    out["state_norm"] = h0.norm(dim=-1).mean().item()
    return out
