"""FLOP counts of token mixers: formulas, per-layer tables, a FlopCounterMode cross-check.

Self-attention, by the paper's formula (Sec. 3.1), for N = H'·W' tokens of C' channels:

    FLOPs_attn = 4·N·C'^2  (q, k, v, out projections)
               + 4·N^2·C'  (QKᵀ and A·V)
               + 4·N^2     (scaling and softmax)

(:func:`attention_flops`; :func:`attention_flops_2mac` counts the projections at 2 FLOPs per
multiply-add too: 8·N·C'^2 + 4·N^2·C' + 4·N^2, the convention of every mixer formula below.)

The mixers of the paper's comparison, per sample, 2 FLOPs per multiply-add (MAC) and 1 per other op:

* self-attention: :func:`attention_flops_2mac`, 8NC² + 4N²C + 4N²;
* ``deltaconv``: :func:`deltaconv_flops` (split by :func:`deltaconv_flops_breakdown`), about
  2NC·Ci + 2N·K²·Ci + 2N·Ci·C with Ci = C/2;
* ``linear``: :func:`~aconvlib.mixers.linear_attention.linear_attention_flops` (``convention="2mac"``),
  8NC² + 8NCm + 4NCd + O(NC) (m: hidden width of the f MLPs, d: head dim);
* ``window``: :func:`~aconvlib.mixers.window_attention.window_attention_flops` (``convention="2mac"``),
  8NC² + 4PC + 4P with P = N·w_eff the (query, key) pairs the window allows.

:func:`mixer_table` gives one :class:`MixerRow` per layer for any kind (a stock denoiser and the
kind's options, or a converted one), :func:`count_mixer_flops` runs every converted mixer on a small
input under ``torch.utils.flop_counter.FlopCounterMode`` to cross-check the formulas, and
:func:`ditfastattn_window` back-solves a DiTFastAttn entry. Rows are typed (:class:`MixerRow`, :class:`ConversionRow`,
:class:`LayerFlops`); per-model tables and their display frames are the book's (:mod:`aconvlib.book.flops_tables`),
as is the paper's Table 1 beside our counts (:mod:`aconvlib.book.table1`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models import default_latent_hw, family_of, get_denoiser, self_attention_layers
from .convert import get_adapter, latent_size, mixer_adapter_class, mixer_layers
from . import kernels
from .deltaconv import stage_grid
from .linear_attention import _hidden_dim, linear_attention_flops, linear_attention_flops_breakdown
from .window_attention import window_attention_flops, window_pairs


def attention_flops(tokens: int, channels: int) -> int:
    """FLOPs of one self-attention core over ``tokens`` tokens of ``channels`` channels (paper's formula)."""
    if tokens <= 0 or channels <= 0:
        raise ValueError(f"tokens and channels must be positive, got {tokens}, {channels}")
    n, c = int(tokens), int(channels)
    return 4 * n * c * c + 4 * n * n * c + 4 * n * n


@dataclass(frozen=True)
class LayerFlops:
    """One self-attention layer's attention-core FLOPs at a given image size."""

    name: str
    grid: tuple[int, int]
    heads: int
    head_dim: int
    channels: int
    flops: int


def attention_flops_table(denoiser: torch.nn.Module, latent_hw: tuple[int, int]) -> list[LayerFlops]:
    """Per self-attention layer of ``denoiser``: grid, heads, head dim and attention-core FLOPs."""
    return [LayerFlops(l.name, l.grid, l.heads, l.head_dim, l.channels, attention_flops(l.tokens, l.channels))
            for l in self_attention_layers(denoiser, latent_hw)]


# ----------------------------------------------------------------------------------------------
# ΔConvBlock FLOPs and parameters, and the per-layer comparison with self-attention
# ----------------------------------------------------------------------------------------------
def attention_flops_2mac(tokens: int, channels: int) -> int:
    """Self-attention FLOPs counting 2 per multiply-add everywhere: 8·N·C'^2 + 4·N^2·C' + 4·N^2.

    The paper's formula (:func:`attention_flops`) counts the four projections at one FLOP per
    multiply-add; this variant uses the same convention as :func:`deltaconv_flops`.
    """
    n, c = int(tokens), int(channels)
    return 8 * n * c * c + 4 * n * n * c + 4 * n * n


def deltaconv_flops_breakdown(grid: tuple[int, int], channels: int, kernel_size: int | list[int] = 9,
                              ratio: float = 0.5, scales=(1.0, 0.5), gate: str = "scaled") -> dict[str, int]:
    """:func:`deltaconv_flops` split into ``matmul`` (the 1×1 projections and the depthwise convs, 2 per
    MAC: what ``FlopCounterMode`` counts) and ``elementwise`` (biases, pooling, gate, bilinear, the
    pool branch's mean and broadcast add: what it does not count).

    With N = H·W, Ci = C·r, S stages, stage s at m_s = ⌊H·s⌋·⌊W·s⌋ cells::

        matmul      = 2·N·C·Ci + Σ_s 2·m_s·K_s²·Ci + 2·N·(S·Ci/2)·C + 2·C²
        elementwise = N·Ci + Σ_{s<1} (N·Ci + 8·N·Ci/2) + Σ_s g·m_s·Ci/2 + 3·N·C + C

    (g = 1 for the scaled gate, 4 for the sigmoid gate).
    """
    h, w = grid
    n, c = h * w, int(channels)
    ci = int(c * ratio)
    ks = [kernel_size] * len(scales) if isinstance(kernel_size, int) else list(kernel_size)
    mm = 2 * n * c * ci
    el = n * ci
    for k, s in zip(ks, scales):
        sh, sw = stage_grid((h, w), s)
        m = sh * sw
        if (sh, sw) != (h, w):
            el += n * ci + 8 * n * (ci // 2)
        mm += 2 * m * k * k * ci
        el += (1 if gate == "scaled" else 4) * m * (ci // 2)
    mm += 2 * n * (len(scales) * ci // 2) * c + 2 * c * c
    el += n * c + n * c + c + n * c
    return {"matmul": int(mm), "elementwise": int(el)}


def deltaconv_flops(grid: tuple[int, int], channels: int, kernel_size: int | list[int] = 9, ratio: float = 0.5,
                    scales=(1.0, 0.5), gate: str = "scaled") -> int:
    """FLOPs of one ΔConvBlock on a ``grid`` = (H, W) of C = ``channels`` (2 per multiply-add, 1 per other op).

    In-proj 2·N·C·Ci (+bias), per stage at n = ⌊H·s⌋·⌊W·s⌋ cells: pooling N·Ci, depthwise 2·n·K²·Ci,
    gate 1 (sigmoid: 4) per output element, bilinear 8·N·Ci/2; out-proj 2·N·(S·Ci/2)·C; pool branch
    N·C + 2·C² + N·C. Ci = C·r. (:func:`deltaconv_flops_breakdown` splits it.)
    """
    return sum(deltaconv_flops_breakdown(grid, channels, kernel_size, ratio, scales, gate).values())


def deltaconv_params(channels: int, kernel_size: int | list[int] = 9, ratio: float = 0.5, scales=(1.0, 0.5),
                     bias: bool = True) -> int:
    """Parameters of one ΔConvBlock (in-proj, depthwise filters, out-proj, pool-branch projection)."""
    c = int(channels)
    ci = int(c * ratio)
    ks = [kernel_size] * len(scales) if isinstance(kernel_size, int) else list(kernel_size)
    b = 1 if bias else 0
    return c * ci + b * ci + sum(k * k * ci for k in ks) + (len(scales) * ci // 2) * c + b * c + c * c + b * c


def linear_attention_params(channels: int, hidden_ratio: float = 1.0, qkv_bias: bool = False,
                            out_bias: bool = True) -> int:
    """Parameters of one :class:`~aconvlib.mixers.linear_attention.GeneralizedLinearAttention` with
    inner = out dim = C: the four C×C projections (+ biases) and the two f MLPs C -> m -> C with LayerNorm(m)."""
    c = int(channels)
    m = _hidden_dim(c, hidden_ratio)
    return 4 * c * c + (3 * c if qkv_bias else 0) + (c if out_bias else 0) + 2 * (c * m + m + 2 * m + m * c + c)


# ----------------------------------------------------------------------------------------------
# any mixer kind, per layer
# ----------------------------------------------------------------------------------------------
def _deltaconv_cost(spec: dict, cfg: dict, grid) -> dict:
    c, k = int(spec["channels"]), spec["kernel_size"]
    b = deltaconv_flops_breakdown(grid, c, k, cfg["ratio"], cfg["scales"], cfg["gate"])
    return {"size": k if isinstance(k, int) else k[0], "detail": f"K={k}", "flops": b["matmul"] + b["elementwise"],
            "counted": b["matmul"], "params": deltaconv_params(c, k, cfg["ratio"], cfg["scales"], cfg["bias"]),
            "formula": "deltaconv_flops"}


def _linear_cost(spec: dict, cfg: dict, grid) -> dict:
    n, c = grid[0] * grid[1], int(spec["channels"])
    kw = dict(heads=int(spec["heads"]), qkv_bias=bool(spec["qkv_bias"]), out_bias=bool(spec["out_bias"]))
    flops = linear_attention_flops(n, c, cfg["hidden_ratio"], convention="2mac", **kw)
    el = linear_attention_flops_breakdown(n, c, cfg["hidden_ratio"], **kw)["elementwise"]
    m = _hidden_dim(c, cfg["hidden_ratio"])
    return {"size": m, "detail": f"m={m}, heads={kw['heads']}", "flops": flops, "counted": flops - el,
            "params": linear_attention_params(c, cfg["hidden_ratio"], kw["qkv_bias"], kw["out_bias"]),
            "formula": "linear_attention_flops(2mac)"}


def _window_cost(spec: dict, cfg: dict, grid) -> dict:
    n, c, w = grid[0] * grid[1], int(spec["channels"]), int(spec["window"])
    flops = window_attention_flops(grid, c, w, cfg["mode"], "2mac")
    return {"size": w, "detail": f"w={w} ({cfg['mode']})", "flops": flops, "counted": 8 * n * c * c, "params": 0,
            "formula": "window_attention_flops(2mac)"}


_COSTS = {"deltaconv": _deltaconv_cost, "linear": _linear_cost, "window": _window_cost}


@dataclass(frozen=True)
class MixerRow:
    """One self-attention layer vs the token mixer that replaces it, per sample, at one latent size.

    ``size`` is the kind's size parameter (ΔConv: K; linear attention: hidden width m; window: w);
    ``mixer_params`` counts new weights only (0 for window attention, which runs on attn1's);
    ``mixer_flops`` is the kind's formula at 2 FLOPs per MAC (``formula`` names it) and
    ``counted_flops`` its matrix-product part, which ``FlopCounterMode`` sees (see :func:`count_mixer_flops`).
    """

    name: str
    kind: str
    level: int
    grid: tuple[int, int]
    channels: int
    heads: int | None
    size: int
    detail: str
    attn_params: int
    mixer_params: int
    attn_flops: int
    attn_flops_2mac: int
    mixer_flops: int
    counted_flops: int
    formula: str


def mixer_table(denoiser: torch.nn.Module, kind: str | None = None, latent_hw: tuple[int, int] | None = None,
                **options) -> list[MixerRow]:
    """Per layer: self-attention vs its replacing token mixer, parameters and FLOPs.

    ``denoiser`` is either a stock denoiser (the mixer side is computed for ``kind``, default
    ``"deltaconv"``, with the kind's conversion ``options`` as in :func:`aconvlib.mixers.to_mixer`;
    nothing is converted, a meta-device model works) or a converted one (its adapter's config is
    read; ``kind`` may only repeat its kind). ``latent_hw`` defaults to the config's sample size.
    """
    den = get_denoiser(denoiser)
    latent_hw = tuple(latent_hw or default_latent_hw(den))
    grids = family_of(den).level_grids(den, latent_hw)
    converted = mixer_layers(den)
    if converted:
        adapter = get_adapter(den)
        if kind not in (None, adapter.kind) or options:
            raise ValueError(f"this {type(den).__name__} already holds {adapter.kind} mixers; pass a stock model "
                             "to tabulate another kind or other options")
        kind, specs, cfg = adapter.kind, list(adapter.config.layers), dict(adapter.config)
        attn = {n: (m.attn_params, None) for n, m in converted}
    else:
        kind = kind or "deltaconv"
        layers = self_attention_layers(den, latent_hw)
        specs, cfg = mixer_adapter_class(kind).layer_specs(den, layers, **options)
        attn = {l.name: (sum(p.numel() for p in l.module.parameters()), l.heads) for l in layers}
    rows = []
    for spec in specs:
        grid = tuple(grids[spec["level"]])
        n, c = grid[0] * grid[1], int(spec["channels"])
        cost = _COSTS[kind](spec, cfg, grid)
        rows.append(MixerRow(spec["name"], kind, spec["level"], grid, c, spec.get("heads", attn[spec["name"]][1]),
                             cost["size"], cost["detail"], attn[spec["name"]][0], cost["params"],
                             attention_flops(n, c), attention_flops_2mac(n, c), cost["flops"], cost["counted"],
                             cost["formula"]))
    return rows


def count_mixer_flops(pipe_or_denoiser, latent_hw: tuple[int, int] | None = None, batch: int = 1,
                      seed: int = 0) -> list[dict]:
    """Run every converted mixer of a denoiser once on random tokens under ``FlopCounterMode``.

    Each layer is called through its wrapper with the grid of ``latent_hw`` (default: the config's
    sample size; keep it small, the window mixer builds an N×N mask), with the ΔConv stage ops on the
    torch backend (Triton kernels are invisible to the counter). ``FlopCounterMode`` counts the
    matrix products and convolutions at 2 FLOPs per MAC and no elementwise work, so per layer
    (``expected`` = ``batch`` × :attr:`MixerRow.counted_flops`):

    * ``deltaconv``: ``counted == expected`` = :func:`deltaconv_flops_breakdown` ``["matmul"]``;
    * ``linear``: ``counted == expected`` = ``linear_attention_flops(2mac) − elementwise``;
    * ``window``: ``counted == expected`` = the projections 8·N·C², plus the **dense** 4·N²·C of
      ``scaled_dot_product_attention`` when PyTorch counts the kernel that ran (its CUDA
      flash/efficient/cuDNN kernels; the CPU kernel is not counted): the module computes all N²
      scores and masks them, whereas :func:`window_attention_flops` counts the window's pairs only.

    Returns one dict per layer: ``layer``, ``kind``, ``grid``, ``counted``, ``expected``,
    ``dense_sdpa`` (4·N²·C·batch for window, else 0), ``formula`` (batch × the kind's 2/MAC formula)
    and ``matches`` (``counted`` is ``expected``, or for window ``expected + dense_sdpa``).
    """
    from torch.utils.flop_counter import FlopCounterMode

    den = get_denoiser(pipe_or_denoiser)
    latent_hw = tuple(latent_hw or default_latent_hw(den))
    rows = {r.name: r for r in mixer_table(den, latent_hw=latent_hw)}
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name, wrapper in mixer_layers(den):
        r = rows[name]
        n = r.grid[0] * r.grid[1]
        ref = next(wrapper.block.parameters())
        x = torch.randn(batch, n, r.channels, generator=gen).to(device=ref.device, dtype=ref.dtype)
        with latent_size(den, latent_hw), kernels.use_backend("torch"), torch.no_grad(), \
                FlopCounterMode(display=False) as fc:
            wrapper(x)
        counted, expected = int(fc.get_total_flops()), batch * r.counted_flops
        dense = batch * 4 * n * n * r.channels if r.kind == "window" else 0
        out.append({"layer": name, "kind": r.kind, "grid": r.grid, "counted": counted, "expected": expected,
                    "dense_sdpa": dense, "formula": batch * r.mixer_flops,
                    "matches": counted == expected or (dense > 0 and counted == expected + dense)})
    return out


@dataclass(frozen=True)
class ConversionRow:
    """One self-attention layer vs its ΔConvBlock: parameters and FLOPs (per sample) at one latent size."""

    name: str
    level: int
    grid: tuple[int, int]
    channels: int
    kernel_size: int
    attn_params: int
    deltaconv_params: int
    attn_flops: int
    attn_flops_2mac: int
    deltaconv_flops: int


def deltaconv_table(denoiser: torch.nn.Module, latent_hw: tuple[int, int] | None = None, kernel_sizes="paper",
                    ratio: float = 0.5, scales=(1.0, 0.5), gate: str = "scaled") -> list[ConversionRow]:
    """Per layer: self-attention vs ΔConvBlock parameters and FLOPs (:func:`mixer_table` for ΔConv).

    ``denoiser`` is either a stock denoiser (the ΔConv side is computed for ``kernel_sizes`` etc.,
    nothing is converted) or one converted with :func:`aconvlib.mixers.to_deltaconv` (its blocks are
    read). ``latent_hw`` defaults to the config's sample size. Attention FLOPs by the paper's formula
    (``attn_flops``) and at 2 FLOPs per multiply-add (``attn_flops_2mac``, the ΔConv convention).
    """
    den = get_denoiser(denoiser)
    options = {} if mixer_layers(den) else dict(kernel_sizes=kernel_sizes, ratio=ratio, scales=scales, gate=gate)
    return [ConversionRow(r.name, r.level, r.grid, r.channels, r.size, r.attn_params, r.mixer_params, r.attn_flops,
                          r.attn_flops_2mac, r.mixer_flops)
            for r in mixer_table(den, "deltaconv", latent_hw, **options)]


def ditfastattn_window(tokens: int, channels: int, flops: float, batch: int = 2) -> tuple[float, int]:
    """Back-solve a DiTFastAttn entry: ``(kept share ρ of the N² work, odd 1-D window w)``.

    DiTFastAttn keeps the four projections (8·N·C² at 2/MAC) and cuts the quadratic part
    4·N²·C + 4·N² to ρ of it; a uniform 1-D band of ``w`` keys (:func:`window_attention_flops`,
    ``mode="1d"``) does that when its pairs P = N(2r+1) − r(r+1), r = (w−1)/2, equal ρ·N². ``w`` is
    the nearest odd window (between 1 and 2N − 1). ``flops``: the entry in FLOPs for ``batch`` samples.
    """
    n, c = int(tokens), int(channels)
    pairs = (flops / batch - 8 * n * c * c) / (4 * c + 4)
    rho = pairs / (n * n)
    b = 2 * n - 1
    disc = max(0.0, b * b - 4 * (pairs - n))
    r = min(max(0, round((b - disc ** 0.5) / 2)), n - 1)
    return rho, 2 * r + 1


__all__ = ["ConversionRow", "LayerFlops", "MixerRow", "attention_flops",
           "attention_flops_2mac", "attention_flops_table", "count_mixer_flops", "deltaconv_flops",
           "deltaconv_flops_breakdown", "deltaconv_params", "deltaconv_table",
           "ditfastattn_window", "linear_attention_flops", "linear_attention_params", "mixer_table",
           "window_attention_flops", "window_pairs"]


# ----------------------------------------------------------------------------------------------
# what the self-attention formula says per model and size (chapter 0)
# ----------------------------------------------------------------------------------------------
def attention_terms(tokens: int, channels: int) -> dict[str, int]:
    """The two parts of :func:`attention_flops`: ``projections`` = 4·N·C'² and ``quadratic`` = 4·N²·C' + 4·N²."""
    n, c = int(tokens), int(channels)
    return {"projections": 4 * n * c * c, "quadratic": 4 * n * n * c + 4 * n * n}


__all__ += ["attention_terms"]


# ----------------------------------------------------------------------------------------------
# joint text-image attention and its ΔConv hybrid (adapter_base.JointMixerAttention)
# ----------------------------------------------------------------------------------------------
def joint_flops(grid: tuple[int, int], text_tokens: int, channels: int, kernel_size: int | list[int] = 13,
                ratio: float = 0.5, scales=(1.0, 0.5), out_projection: bool = True) -> dict[str, int]:
    """One joint attention layer over N = H·W image and L text tokens of C channels, and its ΔConv hybrid, per
    sample at 2 FLOPs per multiply-add (the convention of :func:`attention_flops_2mac`). With S = N + L:

    * ``attention``: q, k, v (and, with ``out_projection``, the output projections) of all S tokens,
      2·(3 + 1)·S·C², plus the joint core 4·S²·C + 4·S² (= :func:`attention_flops_2mac` (S, C));
    * ``hybrid``: the same projections (the hybrid takes the layer's own q, k, v of every token and its output
      projections), text queries over every key 4·L·S·C + 4·L·S, image queries over the text keys only
      4·N·L·C + 4·N·L, and the ΔConvBlock on the image grid (:func:`deltaconv_flops`): no N² term.

    Also returned: ``projections``, ``text_queries``, ``image_to_text``, ``deltaconv`` (the hybrid's parts) and
    ``image_quadratic`` (the 4·N²·C + 4·N² the hybrid removes). ``out_projection=False``: FLUX's single-stream
    blocks, whose attention has no output projection (the block's ``proj_out`` mixes attention and MLP).
    """
    h, w = grid
    n, l, c = int(h) * int(w), int(text_tokens), int(channels)
    if n <= 0 or l < 0 or c <= 0:
        raise ValueError(f"joint_flops needs a non-empty grid, L ≥ 0 and C > 0, got {grid}, {text_tokens}, "
                         f"{channels}")
    s = n + l
    proj = 2 * (4 if out_projection else 3) * s * c * c
    text_q = 4 * l * s * c + 4 * l * s
    img_text = 4 * n * l * c + 4 * n * l
    dc = deltaconv_flops((h, w), c, kernel_size, ratio, scales)
    return {"attention": proj + 4 * s * s * c + 4 * s * s, "hybrid": proj + text_q + img_text + dc,
            "projections": proj, "text_queries": text_q, "image_to_text": img_text, "deltaconv": dc,
            "image_quadratic": 4 * n * n * c + 4 * n * n}


__all__ += ["joint_flops"]
