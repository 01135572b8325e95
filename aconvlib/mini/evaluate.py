"""Evaluator of the mini domain: an attribute classifier, prompt adherence and a Fréchet distance.

The classifier reads a 64×64 image and predicts, for each of the 9 grid cells, the shape
(empty / circle / square / triangle / ring), colour and size of the object there. It is trained on
the ``all`` split (every composition: it is a measuring instrument, not a generalisation test) and
evaluated on unseen ``heldout`` images.

- Prompt adherence (the CLIP-score analogue): fraction of generated images whose classified scene
  (all 9 cells: empty or shape, plus colour and size of occupied cells) equals the prompt's.
- FDD analogue: Fréchet distance between Gaussians fitted to the classifier's 256-d penultimate
  features of generated images and of real held-out images.

:func:`evaluate_model` also returns the per-image results (``per_image``: 1 where the image's scene matches
its prompt; ``features``: each image's classifier features; ``prompts``), from which
:mod:`aconvlib.mini.intervals` computes the intervals (Wilson for adherence, bootstrap over images for the
FDD analogue) and the paired differences of two conditions on the same prompts and noise.
"""
from __future__ import annotations

import functools

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import models_dir
from . import dataset as data

CELLS = 9
N_SHAPE, N_COLOR, N_SIZE = len(data.SHAPES) + 1, len(data.COLORS), len(data.SIZES)


def classifier_dir() -> Path:
    """Where the trained attribute classifier ships (package data)."""
    return models_dir() / "classifier"


def _block(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class AttributeClassifier(nn.Module):
    """CNN: (B,3,64,64) images in [-1,1] → per-cell logits; ``features`` gives the (B,256) penultimate."""

    def __init__(self, width: int = 32, feat_dim: int = 256):
        super().__init__()
        w = width
        self.body = nn.Sequential(_block(3, w), _block(w, w), _block(w, 2 * w, 2), _block(2 * w, 2 * w),
                                  _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w), _block(4 * w, 4 * w, 2))
        self.pool = nn.AdaptiveAvgPool2d(3)  # one cell of the 3x3 scene grid per output
        self.fc = nn.Linear(4 * w * CELLS, feat_dim)
        self.head = nn.Linear(feat_dim, CELLS * (N_SHAPE + N_COLOR + N_SIZE))
        self.config = {"width": width, "feat_dim": feat_dim}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) → (B,feat_dim) penultimate features (resized to 64×64 first if needed)."""
        if x.shape[-2:] != (64, 64):
            x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        return F.silu(self.fc(self.pool(self.body(x)).flatten(1)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits ``shape`` (B,9,5), ``color`` (B,9,6), ``size`` (B,9,2)."""
        z = self.head(self.features(x)).view(-1, CELLS, N_SHAPE + N_COLOR + N_SIZE)
        return {"shape": z[..., :N_SHAPE], "color": z[..., N_SHAPE:N_SHAPE + N_COLOR],
                "size": z[..., N_SHAPE + N_COLOR:]}

    def loss(self, x: torch.Tensor, batch: dict) -> torch.Tensor:
        out = self(x)
        return sum(F.cross_entropy(out[k].flatten(0, 1).float(), batch[k].flatten(), ignore_index=-100)
                   for k in ("shape", "color", "size"))

    def save(self, path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().half().contiguous() for k, v in self.state_dict().items()},
                  str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(self.config, indent=1))

    @classmethod
    def load(cls, path=None, device="cpu") -> "AttributeClassifier":
        from safetensors.torch import load_file

        path = Path(path) if path is not None else classifier_dir()
        m = cls(**json.loads((path / "config.json").read_text()))
        m.load_state_dict({k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()})
        return m.to(device).eval()


@torch.no_grad()
def predict(clf: AttributeClassifier, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Per-cell predictions (B,9) of ``shape`` (0 = empty), ``color``, ``size`` and ``features`` (B,256)."""
    dev = next(clf.parameters()).device
    outs = {"shape": [], "color": [], "size": [], "features": []}
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(dev, torch.float32)
        f = clf.features(x)
        z = clf.head(f).view(-1, CELLS, N_SHAPE + N_COLOR + N_SIZE)
        outs["shape"].append(z[..., :N_SHAPE].argmax(-1).cpu())
        outs["color"].append(z[..., N_SHAPE:N_SHAPE + N_COLOR].argmax(-1).cpu())
        outs["size"].append(z[..., N_SHAPE + N_COLOR:].argmax(-1).cpu())
        outs["features"].append(f.cpu())
    return {k: torch.cat(v) for k, v in outs.items()}


def scene_match(pred: dict, lab: dict) -> torch.Tensor:
    """(B,) bool: every cell's shape (incl. empty) and every occupied cell's colour and size match."""
    occ = lab["shape"] > 0
    ok = (pred["shape"] == lab["shape"]).all(1)
    ok &= ((pred["color"] == lab["color"]) | ~occ).all(1)
    ok &= ((pred["size"] == lab["size"]) | ~occ).all(1)
    return ok


def attribute_accuracy(pred: dict, lab: dict) -> dict[str, float]:
    """Per-attribute accuracy over objects (shape, colour, size at the object's cell), empty-cell
    accuracy (position: no object predicted where there is none) and whole-scene accuracy."""
    occ = lab["shape"] > 0
    return {
        "shape": (pred["shape"] == lab["shape"])[occ].float().mean().item(),
        "color": (pred["color"] == lab["color"])[occ].float().mean().item(),
        "size": (pred["size"] == lab["size"])[occ].float().mean().item(),
        "position": (pred["shape"] == lab["shape"]).all(1).float().mean().item(),
        "scene": scene_match(pred, lab).float().mean().item(),
    }


def classifier_accuracy(clf: AttributeClassifier | None = None, n: int = 2000, split: str = "heldout",
                        seed: int = 4321, device="cpu") -> dict[str, float]:
    """Accuracy of the classifier on ``n`` real images of ``split`` (unseen in its training)."""
    clf = clf or AttributeClassifier.load(device=device)
    b = data.make_batch(range(n), seed, split, device=device)
    pred = predict(clf, b["pixel_values"])
    return attribute_accuracy(pred, {k: b[k].cpu() for k in ("shape", "color", "size")})


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N,D)."""
    a, b = f1.double().numpy(), f2.double().numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(S1 S2) = sum of square roots of the (real, non-negative) eigenvalues of S1 S2
    ev = np.linalg.eigvals(s1 @ s2).real.clip(min=0)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev).sum())


def frechet_to(real_features: torch.Tensor):
    """The Fréchet distance to fixed reference features as a function of generated features ``[n, d]`` (numpy
    or torch): equal to ``frechet_distance(f, real_features)``, computed through the n×n Gram matrix
    (tr sqrt(S1 S2) = Σ sqrt(eig(Y Yᵀ/(n−1))), Y = (f − mean) S2^{1/2}), so a bootstrap over a few dozen
    generated images costs a small eigenproblem per resample, not a d×d one."""
    b = real_features.double().numpy() if isinstance(real_features, torch.Tensor) else np.asarray(real_features,
                                                                                                  np.float64)
    mu2 = b.mean(0)
    s2 = np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s2)
    root = (v * np.sqrt(w.clip(min=0))) @ v.T                              # S2^{1/2}, symmetric
    tr2 = float(np.trace(s2))

    def distance(f) -> float:
        a = f.double().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, np.float64)
        n = len(a)
        mu1 = a.mean(0)
        x = a - mu1                                                        # [n, d] centred
        y = x @ root                                                       # [n, d]
        ev = np.linalg.eigvalsh(y @ y.T / (n - 1)).clip(min=0)              # [n]  eig(S2^½ S1 S2^½) ≠ 0 part
        tr1 = float((x * x).sum() / (n - 1))
        return float(((mu1 - mu2) ** 2).sum() + tr1 + tr2 - 2 * np.sqrt(ev).sum())

    return distance


def real_features(n_real: int = 1000, classifier=None) -> torch.Tensor:
    """The FDD reference: classifier features ``[n_real, 256]`` of the first ``n_real`` real held-out images
    (the shipped classifier's are computed once per process)."""
    if classifier is None:
        return _real_features(n_real)
    return predict(classifier, data.make_batch(range(n_real), 999, "heldout")["pixel_values"])["features"]


@functools.lru_cache(maxsize=4)
@torch.no_grad()
def _real_features(n_real: int) -> torch.Tensor:
    """The shipped classifier's features of the first ``n_real`` real held-out images (the FDD reference), computed
    once per process: every evaluate_model call of a chapter compares against the same set."""
    return predict(AttributeClassifier.load(), data.make_batch(range(n_real), 999, "heldout")["pixel_values"])["features"]


@torch.no_grad()
def evaluate_model(pipe, prompts: list[str] | int = 64, num_inference_steps: int = 20,
                   guidance_scale: float = 4.5, seed: int = 0, batch_size: int = 64, classifier=None,
                   n_real: int = 1000, return_images: bool = False, height: int = 64, width: int = 64) -> dict:
    """Generate one image per prompt and score it with the attribute classifier.

    Args:
        pipe: a :class:`~aconvlib.mini.pipeline.MiniPipeline` (or any pipeline with that convention).
        prompts: captions of the mini grammar, or an int n for the first n held-out prompts.
        height, width: generated size in px; the classifier reads every image resized to 64×64.

    Returns:
        dict with ``n_prompts``, ``prompt_adherence``, per-attribute agreement (``shape``, ``color``,
        ``size``, ``position``) and ``fdd`` (Fréchet distance to ``n_real`` real held-out images), the
        sampler (``steps``, ``guidance_scale``, ``scheduler``); the per-image results: ``per_image`` (list of
        0/1, one per prompt in order: 1 where the classified scene equals the prompt's; its mean is
        ``prompt_adherence``), ``features`` (tensor [N, 256], the classifier features the FDD analogue is
        computed from), ``prompts`` (the captions, in order), ``seed`` and ``n_real`` (to rebuild the
        reference with :func:`real_features`); plus ``images`` (N,3,height,width) in [0,1] when
        ``return_images``. Intervals and paired differences: :mod:`aconvlib.mini.intervals`.
    """
    if isinstance(prompts, int):
        prompts = data.prompts(prompts, "heldout")
    clf = classifier or AttributeClassifier.load()
    imgs = []
    for i in range(0, len(prompts), batch_size):
        g = torch.Generator("cpu").manual_seed(seed + i)
        imgs.append(pipe(prompts[i:i + batch_size], num_inference_steps=num_inference_steps,
                         guidance_scale=guidance_scale, generator=g, height=height, width=width,
                         output_type="pt").images.cpu().float())
    imgs = torch.cat(imgs)
    pred = predict(clf, imgs * 2 - 1)
    lab = data.labels([data.parse_caption(p) for p in prompts])
    acc = attribute_accuracy(pred, lab)
    fdd = frechet_distance(pred["features"], real_features(n_real, classifier))
    res = {"n_prompts": len(prompts), "prompt_adherence": acc.pop("scene"), **acc, "fdd": fdd,
           "steps": num_inference_steps, "guidance_scale": guidance_scale, "scheduler": type(pipe.scheduler).__name__,
           "per_image": [int(x) for x in scene_match(pred, lab).tolist()], "features": pred["features"],
           "prompts": list(prompts), "seed": seed, "n_real": n_real}
    if return_images:
        res["images"] = imgs
    return res
