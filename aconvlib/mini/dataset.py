"""The mini domain: a procedural, captioned image dataset rendered on the fly (no files, no network).

Each image (64×64 RGB by default) shows one or two objects on a muted background (a colour gradient
plus low-frequency noise). An object has a shape (circle, square, triangle, ring), a colour (six
well-separated saturated colours), a size (small, large) and a position on a 3×3 grid ("top left",
..., "center", ..., "bottom right"); two objects never share a cell. The caption follows a tiny
grammar: ``"a small red circle at the top left and a large blue square at the bottom right"``.

Everything is deterministic per ``(seed, split, index)``: attributes are drawn with a NumPy
generator seeded by that triple, and rendering is vectorized in torch (signed distance functions with
a one-pixel smooth edge for anti-aliasing), so a batch renders in milliseconds on CPU or GPU.

Held-out compositions: for every (shape, colour) pair one position is reserved
(:data:`HELDOUT_COMBOS`, 24 of the 216 (shape, colour, position) triples). Training images never
contain a reserved triple; every held-out image contains at least one. Splits: ``train`` and ``val``
(no reserved triple; different streams), ``heldout`` (at least one reserved triple), ``all`` (no
restriction; used to train the attribute classifier, which is a measuring instrument).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "ring")
COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
RGB = torch.tensor([
    [0.92, 0.14, 0.12],  # red
    [0.14, 0.80, 0.18],  # green
    [0.18, 0.32, 1.00],  # blue
    [0.97, 0.90, 0.12],  # yellow
    [0.90, 0.18, 0.88],  # magenta
    [0.12, 0.88, 0.92],  # cyan
])
SPLITS = {"train": 0, "heldout": 1, "val": 2, "all": 3}
MAX_OBJECTS = 2
#: (shape, colour, position) triples never seen in training: one position per (shape, colour).
HELDOUT_COMBOS = frozenset((s, c, (2 * s + 5 * c + 1) % 9) for s in range(len(SHAPES)) for c in range(len(COLORS)))


@dataclass(frozen=True)
class SceneObject:
    """One object: indices into SHAPES, COLORS, SIZES, POSITIONS."""

    shape: int
    color: int
    size: int
    position: int

    def phrase(self) -> str:
        return f"a {SIZES[self.size]} {COLORS[self.color]} {SHAPES[self.shape]} at the {POSITIONS[self.position]}"


def caption(objects: list[SceneObject]) -> str:
    """The caption of a scene, objects in order, joined by ``and``."""
    return " and ".join(o.phrase() for o in objects)


def parse_caption(text: str) -> list[SceneObject]:
    """Inverse of :func:`caption` (raises ValueError on text outside the grammar)."""
    objs = []
    for part in text.strip().split(" and "):
        w = part.split()
        if len(w) < 6 or w[0] != "a" or w[4:6] != ["at", "the"]:
            raise ValueError(f"not a caption of the mini grammar: {text!r}")
        try:
            objs.append(SceneObject(SHAPES.index(w[3]), COLORS.index(w[2]), SIZES.index(w[1]),
                                    POSITIONS.index(" ".join(w[6:]))))
        except ValueError as e:
            raise ValueError(f"not a caption of the mini grammar: {text!r}") from e
    return objs


def describe_vocabulary() -> str:
    """What the embedded models understand, by kind (for error messages and the book)."""
    return (f"shapes: {', '.join(SHAPES)}; colours: {', '.join(COLORS)}; sizes: {', '.join(SIZES)}; "
            f"positions: {', '.join(POSITIONS)}; and the words 'a', 'at', 'the', 'and' "
            "(e.g. 'a small red circle at the top left and a large blue ring at the bottom')")


def vocabulary() -> list[str]:
    """All words of the caption grammar, sorted."""
    words = {"a", "at", "the", "and", *SIZES, *COLORS, *SHAPES}
    for p in POSITIONS:
        words.update(p.split())
    return sorted(words)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def sample_objects(rng: np.random.Generator, split: str = "train") -> list[SceneObject]:
    """Draw a scene's objects (1 or 2, distinct cells) respecting the split's held-out rule."""
    n = 1 + int(rng.random() < 0.6)
    heldout = sorted(HELDOUT_COMBOS)
    while True:
        cells = rng.permutation(9)[:n]
        objs = [SceneObject(int(rng.integers(4)), int(rng.integers(6)), int(rng.integers(2)), int(c))
                for c in cells]
        if split == "heldout":
            s, c, p = heldout[int(rng.integers(len(heldout)))]
            k = int(rng.integers(n))
            if any(o.position == p for j, o in enumerate(objs) if j != k):
                continue
            objs[k] = SceneObject(s, c, objs[k].size, p)
            return objs
        if split == "all" or not any((o.shape, o.color, o.position) in HELDOUT_COMBOS for o in objs):
            return objs


@dataclass
class SceneParams:
    """Everything needed to render a batch (tensors on CPU, leading dim = batch)."""

    objects: list[list[SceneObject]]
    jitter: torch.Tensor  # (B, MAX_OBJECTS, 2) position jitter in cell units
    color_jitter: torch.Tensor  # (B, MAX_OBJECTS, 3)
    bg_colors: torch.Tensor  # (B, 2, 3) gradient end colours
    bg_angle: torch.Tensor  # (B,)
    bg_noise: torch.Tensor  # (B, 3, 4, 4) low-frequency noise


def sample_scenes(indices, seed: int = 0, split: str = "train") -> SceneParams:
    """Draw the scene parameters of the given dataset indices (deterministic per index)."""
    objs, jit, cj, bgc, ang, noise = [], [], [], [], [], []
    for i in indices:
        rng = _rng(seed, split, int(i))
        objs.append(sample_objects(rng, split))
        jit.append(rng.uniform(-1, 1, (MAX_OBJECTS, 2)))
        cj.append(rng.uniform(-0.05, 0.05, (MAX_OBJECTS, 3)))
        gray = rng.uniform(0.22, 0.55, (2, 1))
        bgc.append(np.clip(gray + rng.uniform(-0.08, 0.08, (2, 3)), 0, 1))
        ang.append(rng.uniform(0, 2 * math.pi))
        noise.append(rng.normal(0, 1, (3, 4, 4)))
    f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return SceneParams(objs, f(jit), f(cj), f(bgc), f(ang), f(noise))


def _sdf(shape: torch.Tensor, px: torch.Tensor, py: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels) of each shape kind; px, py: (B,H,W) offsets from the centre, y down."""
    d = torch.sqrt(px * px + py * py)
    circle = d - r
    h = 0.85 * r
    qx, qy = px.abs() - h, py.abs() - h
    square = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2) + torch.maximum(qx, qy).clamp(max=0)
    ring = (d - 0.78 * r).abs() - 0.24 * r
    # equilateral triangle pointing up, half side a (y up, centroid at the origin)
    a, k = 1.05 * r, math.sqrt(3.0)
    x, y = px.abs() - a, -py + a / k
    flip = (x + k * y) > 0
    x, y = torch.where(flip, (x - k * y) / 2, x), torch.where(flip, (-k * x - y) / 2, y)
    x = x - torch.maximum(x.clamp(max=0), -2 * a)
    tri = -torch.sqrt(x * x + y * y) * torch.sign(y)
    all_ = torch.stack([circle, square, tri, ring], 0)  # (4,B,H,W)
    return all_.gather(0, shape.view(1, -1, 1, 1).expand(1, *px.shape)).squeeze(0)


SMALL_R, LARGE_R = 5.5, 9.5


def render(params: SceneParams, size: int = 64, device="cpu") -> torch.Tensor:
    """Render scenes to images (B, 3, size, size) in [0, 1]."""
    B = len(params.objects)
    s = size / 64.0
    dev = torch.device(device)
    ys, xs = torch.meshgrid(torch.arange(size, device=dev, dtype=torch.float32) + 0.5,
                            torch.arange(size, device=dev, dtype=torch.float32) + 0.5, indexing="ij")
    # background: gradient between two muted colours plus low-frequency noise
    ang = params.bg_angle.to(dev)
    t = ((xs / size - 0.5)[None] * torch.cos(ang)[:, None, None]
         + (ys / size - 0.5)[None] * torch.sin(ang)[:, None, None]) + 0.5
    t = t.clamp(0, 1)[:, None]
    c = params.bg_colors.to(dev)
    img = c[:, 0, :, None, None] * (1 - t) + c[:, 1, :, None, None] * t
    noise = torch.nn.functional.interpolate(params.bg_noise.to(dev), size=(size, size), mode="bicubic",
                                            align_corners=False)
    img = (img + 0.06 * noise).clamp(0, 1)
    for k in range(MAX_OBJECTS):
        present = torch.tensor([len(o) > k for o in params.objects], device=dev)
        if not present.any():
            continue
        get = lambda attr: torch.tensor([getattr(o[k], attr) if len(o) > k else 0 for o in params.objects],  # noqa: E731
                                        device=dev)
        shape, color, sz, pos = get("shape"), get("color"), get("size"), get("position")
        cx = (12 + 20 * (pos % 3).float() + 1.5 * params.jitter[:, k, 0].to(dev)) * s
        cy = (12 + 20 * (pos // 3).float() + 1.5 * params.jitter[:, k, 1].to(dev)) * s
        r = torch.where(sz == 1, LARGE_R, SMALL_R).float() * s
        sdf = _sdf(shape, xs[None] - cx[:, None, None], ys[None] - cy[:, None, None], r[:, None, None])
        alpha = (0.5 - sdf).clamp(0, 1) * present[:, None, None]
        rgb = (RGB.to(dev)[color] + params.color_jitter[:, k].to(dev)).clamp(0, 1)
        img = img * (1 - alpha[:, None]) + rgb[:, :, None, None] * alpha[:, None]
    return img


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2):
    """Tile images (B,3,H,W) in [0,1] into one PIL image with ``nrow`` per row."""
    from PIL import Image

    B, C, H, W = images.shape
    rows = math.ceil(B / nrow)
    grid = torch.ones(C, rows * (H + pad) + pad, nrow * (W + pad) + pad)
    for i in range(B):
        r, c = divmod(i, nrow)
        grid[:, pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = images[i]
    arr = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def labels(objects: list[list[SceneObject]]) -> dict[str, torch.Tensor]:
    """Per-cell labels of scenes: ``shape`` (B,9) in 0..4 (0 = empty, else 1 + shape index),
    ``color`` and ``size`` (B,9), -100 where the cell is empty (ignored by cross-entropy)."""
    B = len(objects)
    shape = torch.zeros(B, 9, dtype=torch.long)
    color = torch.full((B, 9), -100, dtype=torch.long)
    size = torch.full((B, 9), -100, dtype=torch.long)
    for b, objs in enumerate(objects):
        for o in objs:
            shape[b, o.position] = 1 + o.shape
            color[b, o.position] = o.color
            size[b, o.position] = o.size
    return {"shape": shape, "color": color, "size": size}


def make_batch(indices, seed: int = 0, split: str = "train", size: int = 64, device="cpu") -> dict:
    """Images in [-1, 1] (B,3,size,size), captions (list[str]) and labels for the given indices."""
    p = sample_scenes(indices, seed, split)
    lab = {k: v.to(device) for k, v in labels(p.objects).items()}
    return {"pixel_values": render(p, size, device) * 2 - 1, "captions": [caption(o) for o in p.objects],
            "objects": p.objects, **lab}


class MiniScenes(torch.utils.data.Dataset):
    """Map-style dataset of ``length`` scenes of one split; item = dict (image (3,H,W) in [-1,1],
    caption, labels). Index i always yields the same scene for a given seed and split."""

    def __init__(self, split: str = "train", length: int = 100_000, seed: int = 0, size: int = 64):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits: {list(SPLITS)}")
        self.split, self.length, self.seed, self.size = split, length, seed, size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        b = make_batch([i], self.seed, self.split, self.size)
        return {"pixel_values": b["pixel_values"][0], "caption": b["captions"][0],
                "shape": b["shape"][0], "color": b["color"][0], "size": b["size"][0]}


def dataloader(split: str = "train", batch_size: int = 64, length: int = 100_000, seed: int = 0,
               shuffle: bool = False, num_workers: int = 0, size: int = 64) -> torch.utils.data.DataLoader:
    """A DataLoader over :class:`MiniScenes` (captions collate to a list of strings)."""
    return torch.utils.data.DataLoader(MiniScenes(split, length, seed, size), batch_size=batch_size,
                                       shuffle=shuffle, num_workers=num_workers)


def prompts(n: int, split: str = "heldout", seed: int = 1234) -> list[str]:
    """``n`` deterministic captions of a split (evaluation prompts)."""
    return [caption(o) for o in sample_scenes(range(n), seed, split).objects]
