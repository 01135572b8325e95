"""LinFusion-style generalized linear attention: a trainable, grid-free stand-in for self-attention.

The ΔConvFusion paper (Dong et al., arXiv 2504.21292, Tables 1–3) compares against LinFusion
(Liu et al. 2024), which replaces every ``attn1`` of a diffusers U-Net with "generalized linear
attention". Its published formulation, for tokens ``x`` of ``C`` channels split into ``h`` heads of
``d = C/h`` channels::

    q = W_q (x + f_q(x))           f = Linear(C -> m) -> LayerNorm(m) -> LeakyReLU -> Linear(m -> C)
    k = W_k (x + f_k(x))           m = round(hidden_ratio · C)
    v = W_v x
    φ(t) = ELU(t) + 1              (per head, elementwise, so φ > 0)
    S  = mean_j φ(k_j) v_jᵀ        [d × d] per head
    z  = mean_j φ(k_j)             [d] per head
    out_i = φ(q_i)ᵀ S / (φ(q_i)ᵀ z + eps)          eps = 1e-4
    y = W_o · concat_heads(out) + b_o   (then the dropout no-op, as diffusers' ``to_out``)

Averaging (not summing) over the ``N`` keys makes the output independent of N for a constant
image, which is what makes it resolution-consistent (and ``forward`` divides φ(k) by N *before* the
key sum, so half-precision sums over tens of thousands of tokens do not overflow). The last Linear
of each ``f`` is initialised to zero, so at initialisation ``q = W_q x`` and ``k = W_k x`` exactly
(the teacher's projections).
``from_attention`` copies ``W_q, W_k, W_v, W_o`` (and their biases, and ``norm_q``/``norm_k`` if the
teacher has them, applied per head after the split as diffusers' ``AttnProcessor2_0`` does) from a
diffusers :class:`~diffusers.models.attention_processor.Attention`.

``hidden_ratio`` (m / C) is our parameter; the peers' note does not state LinFusion's value, we
default to 1.0. Parameter names mirror diffusers (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) so a
layer mounted at ``…attn1`` keeps the teacher's state-dict keys for the shared projections; the new
branches are ``f_q.*`` and ``f_k.*``.

The module needs no token grid: ``forward`` accepts ``grid=(H, W)`` for interface symmetry with the
spatial mixers and only checks ``H·W == N`` when it is given.

FLOPs: :func:`linear_attention_flops` (conventions in its docstring) and
:func:`linear_attention_flops_breakdown`.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import check_grid, positive_int

__all__ = ["GeneralizedLinearAttention", "linear_attention_flops", "linear_attention_flops_breakdown",
           "FLOP_CONVENTIONS"]

FLOP_CONVENTIONS = ("paper", "2mac")


def _hidden_dim(channels: int, hidden_ratio: float) -> int:
    if isinstance(hidden_ratio, bool) or not isinstance(hidden_ratio, (int, float)) or not hidden_ratio > 0 \
            or not math.isfinite(hidden_ratio):
        raise ValueError(f"hidden_ratio must be a positive finite number, got {hidden_ratio!r}")
    return max(1, int(round(hidden_ratio * channels)))


def _check_grid(grid, n: int, who: str) -> tuple[int, int] | None:
    """``None`` or a validated ``(H, W)`` with ``H·W == n``."""
    return None if grid is None else check_grid(grid, n, who)


def _feature_mlp(channels: int, hidden: int, negative_slope: float, device=None, dtype=None) -> nn.Sequential:
    """f = Linear(C -> m) -> LayerNorm(m) -> LeakyReLU -> Linear(m -> C), last Linear zero-initialised."""
    f = nn.Sequential(nn.Linear(channels, hidden, device=device, dtype=dtype),
                      nn.LayerNorm(hidden, device=device, dtype=dtype),
                      nn.LeakyReLU(negative_slope),
                      nn.Linear(hidden, channels, device=device, dtype=dtype))
    nn.init.zeros_(f[3].weight)
    nn.init.zeros_(f[3].bias)
    return f


class GeneralizedLinearAttention(nn.Module):
    """LinFusion's generalized linear attention (see the module docstring for the formulas).

    ``[B, N, C]`` in, ``[B, N, out_dim]`` out; no grid needed.

    Args:
        query_dim: C, the token channels.
        heads: number of heads h.
        dim_head: channels per head d (inner dim h·d, as diffusers' ``Attention``).
        hidden_ratio: width of the f MLPs as a fraction of C (m = round(ratio·C), at least 1).
        out_dim: output channels of ``to_out`` (default C).
        qkv_bias, out_bias: biases of ``to_q/to_k/to_v`` and of ``to_out[0]``.
        eps: the denominator's 1e-4.
        negative_slope: LeakyReLU slope inside f (PyTorch's default 0.01).
        dropout: probability of the ``to_out[1]`` dropout (0: the no-op diffusers ships).
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, hidden_ratio: float = 1.0, out_dim: int | None = None,
                 qkv_bias: bool = False, out_bias: bool = True, eps: float = 1e-4, negative_slope: float = 0.01,
                 dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        c = positive_int(query_dim, "query_dim")
        self.heads = positive_int(heads, "heads")
        self.head_dim = positive_int(dim_head, "dim_head")
        self.inner_dim = self.heads * self.head_dim
        self.query_dim = c
        self.out_dim = c if out_dim is None else positive_int(out_dim, "out_dim")
        self.hidden_ratio = float(hidden_ratio)
        self.hidden_dim = _hidden_dim(c, hidden_ratio)
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.eps = float(eps)
        kw = dict(device=device, dtype=dtype)
        self.to_q = nn.Linear(c, self.inner_dim, bias=qkv_bias, **kw)
        self.to_k = nn.Linear(c, self.inner_dim, bias=qkv_bias, **kw)
        self.to_v = nn.Linear(c, self.inner_dim, bias=qkv_bias, **kw)
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, self.out_dim, bias=out_bias, **kw), nn.Dropout(dropout)])
        self.f_q = _feature_mlp(c, self.hidden_dim, negative_slope, **kw)
        self.f_k = _feature_mlp(c, self.hidden_dim, negative_slope, **kw)
        self.norm_q: nn.Module | None = None
        self.norm_k: nn.Module | None = None
        self.grid: tuple[int, int] | None = None

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_attention(cls, attn: nn.Module, hidden_ratio: float = 1.0, eps: float = 1e-4,
                       negative_slope: float = 0.01) -> "GeneralizedLinearAttention":
        """A linear attention initialised from a diffusers self-attention ``Attention``.

        Copies (not shares) ``to_q``, ``to_k``, ``to_v``, ``to_out[0]`` weights and biases, the dropout
        probability, and deep-copies ``norm_q``/``norm_k`` when present; heads and head dim come from
        ``attn``. The f branches start at zero, so q and k equal the teacher's at initialisation. The
        result is on ``attn``'s device and dtype and is trainable; ``attn`` is not modified.
        """
        _check_self_attention(attn, "GeneralizedLinearAttention.from_attention")
        heads = int(attn.heads)
        inner = attn.to_q.out_features
        if inner % heads:
            raise ValueError(f"inner dim {inner} is not divisible by heads {heads}")
        w = attn.to_q.weight
        out0 = attn.to_out[0]
        m = cls(attn.to_q.in_features, heads, inner // heads, hidden_ratio=hidden_ratio, out_dim=out0.out_features,
                qkv_bias=attn.to_q.bias is not None, out_bias=out0.bias is not None, eps=eps,
                negative_slope=negative_slope, dropout=attn.to_out[1].p if len(attn.to_out) > 1 else 0.0,
                device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for name in ("to_q", "to_k", "to_v"):
                src, dst = getattr(attn, name), getattr(m, name)
                if (src.bias is None) != (dst.bias is None):
                    raise ValueError(f"{name}: to_q/to_k/to_v must agree on having a bias")
                dst.weight.copy_(src.weight)
                if src.bias is not None:
                    dst.bias.copy_(src.bias)
            m.to_out[0].weight.copy_(out0.weight)
            if out0.bias is not None:
                m.to_out[0].bias.copy_(out0.bias)
        if getattr(attn, "norm_q", None) is not None:
            m.norm_q = copy.deepcopy(attn.norm_q)
        if getattr(attn, "norm_k", None) is not None:
            m.norm_k = copy.deepcopy(attn.norm_k)
        return m

    def set_grid(self, grid: tuple[int, int] | None) -> None:
        """Remember a token grid (only checked against N; the mixer itself does not use it)."""
        self.grid = None if grid is None else tuple(grid)

    @staticmethod
    def feature_map(t: torch.Tensor) -> torch.Tensor:
        """φ(t) = ELU(t) + 1."""
        return F.elu(t) + 1.0

    def projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as ``[B, heads, N, d]`` (before φ; after ``norm_q``/``norm_k`` when present)."""
        b, n, _ = x.shape
        q = self.to_q(x + self.f_q(x))
        k = self.to_k(x + self.f_k(x))
        v = self.to_v(x)
        q, k, v = (t.view(b, n, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if self.norm_q is not None:
            q = self.norm_q(q)
        if self.norm_k is not None:
            k = self.norm_k(k)
        return q, k, v

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, *, grid: tuple[int, int] | None = None,
                **kwargs) -> torch.Tensor:
        """``[B, N, C]`` -> ``[B, N, out_dim]``.

        Called like diffusers' ``attn1``; ``encoder_hidden_states`` and ``attention_mask`` must be
        ``None`` (self-attention without a mask, as in U-Net and PixArt blocks). Other keyword
        arguments (e.g. ``cross_attention_kwargs`` entries) are ignored, as diffusers' ``Attention``
        drops the ones its processor does not take.
        """
        _check_call(hidden_states, encoder_hidden_states, attention_mask, type(self).__name__)
        _check_grid(grid if grid is not None else self.grid, hidden_states.shape[1], type(self).__name__)
        b, n, _ = hidden_states.shape
        q, k, v = self.projections(hidden_states)
        q, k = self.feature_map(q), self.feature_map(k)
        state = torch.matmul(k.transpose(-1, -2) / n, v)                 # [B, h, d, d]   mean_j φ(k_j) v_jᵀ
        z = k.mean(dim=-2, keepdim=True).transpose(-1, -2)               # [B, h, d, 1]   mean_j φ(k_j)
        num = torch.matmul(q, state)                                     # [B, h, N, d]
        den = torch.matmul(q, z) + self.eps                              # [B, h, N, 1]
        out = (num / den).transpose(1, 2).reshape(b, n, self.inner_dim)
        out = self.to_out[0](out)
        return self.to_out[1](out)

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, head_dim={self.head_dim}, hidden_dim={self.hidden_dim} "
                f"(ratio {self.hidden_ratio:g}), eps={self.eps:g}")


# ----------------------------------------------------------------------------------------------
# checks shared with window_attention.py (which imports them)
# ----------------------------------------------------------------------------------------------
def _check_self_attention(attn: nn.Module, who: str) -> None:
    for name in ("to_q", "to_k", "to_v", "to_out", "heads"):
        if getattr(attn, name, None) is None:
            raise TypeError(f"{who}: expected a diffusers Attention (with to_q/to_k/to_v/to_out/heads), "
                            f"got {type(attn).__name__} without {name!r}")
    if getattr(attn, "is_cross_attention", False):
        raise ValueError(f"{who}: {type(attn).__name__} is a cross-attention (attn2); only self-attention "
                         f"(attn1) can be replaced")
    for name in ("add_k_proj", "spatial_norm", "group_norm"):
        if getattr(attn, name, None) is not None:
            raise NotImplementedError(f"{who}: Attention with {name} is not supported")
    if getattr(attn, "residual_connection", False) or getattr(attn, "rescale_output_factor", 1.0) != 1.0:
        raise NotImplementedError(f"{who}: Attention with residual_connection or rescale_output_factor != 1 "
                                  f"is not supported")
    if not (attn.to_q.in_features == attn.to_k.in_features == attn.to_v.in_features):
        raise ValueError(f"{who}: to_q/to_k/to_v take different input widths (not a self-attention)")
    if not (attn.to_q.out_features == attn.to_k.out_features == attn.to_v.out_features):
        raise NotImplementedError(f"{who}: grouped key/value heads (kv_heads != heads) are not supported")


def _check_call(x, encoder_hidden_states, attention_mask, who: str) -> None:
    if encoder_hidden_states is not None:
        raise ValueError(f"{who} is a self-attention replacement: encoder_hidden_states must be None")
    if attention_mask is not None:
        raise NotImplementedError(f"{who}: attention_mask is not supported (U-Net and PixArt self-attention "
                                  f"pass None)")
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise ValueError(f"{who}: hidden_states must be a [B, N, C] tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


# ----------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------
def linear_attention_flops_breakdown(tokens: int, channels: int, hidden_ratio: float = 1.0, *,
                                     heads: int = 1, qkv_bias: bool = False, out_bias: bool = True) -> dict[str, int]:
    """Per-sample operation counts of :class:`GeneralizedLinearAttention` (N tokens, C = inner = out dim).

    Multiply-accumulates (MACs) of the matrix products, with d = C/heads and m = round(ratio·C):

    - ``proj_macs``  = 4·N·C²       W_q, W_k, W_v, W_o
    - ``mlp_macs``   = 4·N·C·m      f_q and f_k, each C -> m -> C
    - ``state_macs`` = N·C·d        Σ_j φ(k_j) v_jᵀ over all heads (h·N·d²)
    - ``read_macs``  = N·C·d        φ(q_i)ᵀ S
    - ``norm_macs``  = N·C          φ(q_i)ᵀ z

    ``elementwise``: one FLOP per output element of each elementwise operation: the biases
    (N·C per biased projection, N·m + N·C per f Linear), LayerNorm 5·N·m per f (subtract mean,
    square, divide by std, scale, shift; the reductions are counted in those), LeakyReLU N·m per f,
    the residuals x + f(x) (2·N·C), φ = ELU + 1 on q and k (2 each: 4·N·C), the key mean z (N·C),
    the divisions of S and z by N (C·d + C), + eps (N·heads) and the division num/den (N·C).
    """
    n = positive_int(tokens, "tokens")
    c = positive_int(channels, "channels")
    h = positive_int(heads, "heads")
    if c % h:
        raise ValueError(f"channels {c} not divisible by heads {h}")
    d, m = c // h, _hidden_dim(c, hidden_ratio)
    bias = n * c * (3 * int(bool(qkv_bias)) + int(bool(out_bias))) + 2 * (n * m + n * c)
    elementwise = (bias + 2 * 5 * n * m + 2 * n * m + 2 * n * c + 4 * n * c + n * c + (c * d + c) + n * h + n * c)
    return {"proj_macs": 4 * n * c * c, "mlp_macs": 4 * n * c * m, "state_macs": n * c * d, "read_macs": n * c * d,
            "norm_macs": n * c, "elementwise": elementwise}


def linear_attention_flops(tokens: int, channels: int, hidden_ratio: float = 1.0, *, heads: int = 1,
                           convention: str = "paper", qkv_bias: bool = False, out_bias: bool = True) -> int:
    """FLOPs of one :class:`GeneralizedLinearAttention` forward per sample (N = ``tokens``, C = ``channels``).

    ``heads`` matters (the d×d state per head costs N·C·d); the default 1 is the upper bound d = C.
    Counts of :func:`linear_attention_flops_breakdown`, weighted by ``convention``:

    ``"paper"`` — counted the way the paper's self-attention formula 4NC² + 4N²C + 4N² counts
    (Sec. 3.1): there 4NC² is the four C×C projections at **one FLOP per multiply-add**, 4N²C is
    QKᵀ and A·V (2·N²·C multiply-adds) at **two FLOPs per multiply-add**, and 4N² the per-score
    elementwise work. Correspondingly::

        paper = (proj_macs + mlp_macs)                           # Linear layers, 1 per MAC
              + 2·(state_macs + read_macs + norm_macs)           # token interaction, 2 per MAC
              + elementwise
              = 4NC² + 4NCm + 4NCd + 2NC + elementwise

    ``"2mac"`` — two FLOPs per multiply-add everywhere (the convention of
    ``torch.utils.flop_counter.FlopCounterMode`` and of self-attention's 8NC² + 4N²C + 4N²)::

        2mac = 2·(proj_macs + mlp_macs + state_macs + read_macs + norm_macs) + elementwise
             = 8NC² + 8NCm + 4NCd + 2NC + elementwise

    ``FlopCounterMode`` counts only the matrix products (mm/addmm/bmm, 2 per MAC) and no elementwise
    work, so on the module ``counted == linear_attention_flops(..., convention="2mac") - elementwise``
    exactly (tested).
    """
    if convention not in FLOP_CONVENTIONS:
        raise ValueError(f"convention must be one of {FLOP_CONVENTIONS}, got {convention!r}")
    b = linear_attention_flops_breakdown(tokens, channels, hidden_ratio, heads=heads, qkv_bias=qkv_bias,
                                         out_bias=out_bias)
    interaction = b["state_macs"] + b["read_macs"] + b["norm_macs"]
    if convention == "paper":
        return int(b["proj_macs"] + b["mlp_macs"] + 2 * interaction + b["elementwise"])
    return int(2 * (b["proj_macs"] + b["mlp_macs"] + interaction) + b["elementwise"])
