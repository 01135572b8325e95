"""The mixer kinds: one small :class:`~aconvlib.mixers.adapter_base.MixerAdapter` subclass each (ΔConv, linear
attention, window attention, and the no- and uniform-attention controls), and ``MIXERS`` mapping kind names to them."""
from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from .controls import NoAttention, UniformAttention
from .deltaconv import DeltaConvBlock
from .linear_attention import GeneralizedLinearAttention
from .window_attention import WINDOW_MODES, WindowAttention, _check_window
from .adapter_base import MixerAdapter, _key
from .layer_specs import per_layer, resolve_kernel_sizes

__all__ = ["DeltaConvAdapter", "JointDeltaConv", "LINEAR_INITS", "LinearAttentionAdapter", "MIXERS", "MIXER_KINDS", "NoAttentionAdapter", "TRAINABLE_KINDS", "UniformAttentionAdapter", "WindowAttentionAdapter"]


class JointDeltaConv(nn.Module):
    """The trained part of a joint layer's ΔConv hybrid (see :class:`~aconvlib.mixers.adapter_base.JointMixerAttention`):
    ``conv``, the ΔConvBlock on the image tokens (C → C), and ``text_gate``, one logit per head weighting the image
    queries' attention over the text keys (0: σ = 1/2)."""

    def __init__(self, channels: int, heads: int, kernel_size, **block_kwargs):
        super().__init__()
        self.conv = DeltaConvBlock(channels, kernel_size, **block_kwargs)
        self.text_gate = nn.Parameter(torch.zeros(heads))


class DeltaConvAdapter(MixerAdapter):
    """The ΔConv blocks of one converted denoiser and the config to rebuild them.

    Args:
        layers: one dict per replaced layer: ``name``, ``channels``, ``kernel_size``, ``level`` (joint-attention
            layers also ``block_type`` and ``heads``: their block is a :class:`JointDeltaConv`).
        base_model: class name of the denoiser (``UNet2DConditionModel`` / ``PixArtTransformer2DModel``).
        ratio, scales, gate, gate_scale, bias: :class:`~aconvlib.mixers.deltaconv.DeltaConvBlock` arguments.
    """

    kind, title, trainable = "deltaconv", "ΔConv", True

    @register_to_config
    def __init__(self, layers: list[dict], base_model: str = "", ratio: float = 0.5,
                 scales: list[float] = (1.0, 0.5), gate: str = "scaled", gate_scale: str | float = "divide",
                 bias: bool = True):
        super().__init__()
        kw = dict(scales=list(scales), ratio=ratio, gate=gate, gate_scale=gate_scale, bias=bias)
        self.blocks = nn.ModuleDict({
            _key(l["name"]): (JointDeltaConv(int(l["channels"]), int(l["heads"]), l["kernel_size"], **kw)
                              if l.get("block_type", "self") != "self" else
                              DeltaConvBlock(int(l["channels"]), l["kernel_size"], **kw))
            for l in layers})

    @classmethod
    def layer_specs(cls, denoiser, layers, *, kernel_sizes="paper", ratio: float = 0.5, scales=(1.0, 0.5),
                    gate: str = "scaled", gate_scale: str | float = "divide", bias: bool = True):
        ks = resolve_kernel_sizes(denoiser, kernel_sizes, layers)
        spec = [{"name": l.name, "channels": l.channels, "kernel_size": ks[l.name], "level": l.level,
                 **({"block_type": l.block_type, "heads": l.heads} if l.joint else {})} for l in layers]
        return spec, dict(ratio=ratio, scales=list(scales), gate=gate, gate_scale=gate_scale, bias=bias)


class LinearAttentionAdapter(MixerAdapter):
    """The LinFusion-style linear attentions of one converted denoiser (trainable, all their weights saved).

    Built from a model with ``init="teacher"`` (default), each layer is
    :meth:`GeneralizedLinearAttention.from_attention` of its ``attn1`` (q/k/v/out copied, f branches at
    zero, so the converted model starts at q, k of the teacher); with ``init="scratch"`` each is a fresh
    :class:`GeneralizedLinearAttention` of the same shape (PyTorch's default Linear init, seeded by
    ``to_mixer(..., seed=)``; f branches at zero), which starts from the same point as a fresh ΔConv
    student. Loaded, each is rebuilt from the layer spec and gets the saved weights.

    Args:
        layers: one dict per layer: ``name``, ``channels``, ``heads``, ``head_dim``, ``level``,
            ``qkv_bias``, ``out_bias``.
        base_model: class name of the denoiser.
        hidden_ratio, eps, negative_slope: :class:`GeneralizedLinearAttention` arguments.
        init: ``"teacher"`` or ``"scratch"``: how the weights started (recorded in the config).
        sources: ``{layer name: attn1 module}`` to initialise from (not part of the config).
    """

    kind, title, trainable = "linear", "linear-attention", True
    shape_keys = ("channels", "heads")
    ignore_for_config = ["sources"]

    @register_to_config
    def __init__(self, layers: list[dict], base_model: str = "", hidden_ratio: float = 1.0, eps: float = 1e-4,
                 negative_slope: float = 0.01, init: str = "teacher", sources: dict | None = None):
        super().__init__()
        _check_linear_init(init)
        if sources and init != "teacher":
            raise ValueError(f"init={init!r}: sources (the teacher's attn1 modules) are only used with init='teacher'")
        kw = dict(hidden_ratio=hidden_ratio, eps=eps, negative_slope=negative_slope)
        self.blocks = nn.ModuleDict({
            _key(l["name"]): (GeneralizedLinearAttention.from_attention(sources[l["name"]], **kw) if sources else
                              GeneralizedLinearAttention(int(l["channels"]), int(l["heads"]), int(l["head_dim"]),
                                                         qkv_bias=bool(l["qkv_bias"]), out_bias=bool(l["out_bias"]),
                                                         **kw))
            for l in layers})

    @classmethod
    def layer_specs(cls, denoiser, layers, *, hidden_ratio: float = 1.0, eps: float = 1e-4,
                    negative_slope: float = 0.01, init: str = "teacher"):
        _check_linear_init(init)
        for l in layers:
            if getattr(l.module, "norm_q", None) is not None or getattr(l.module, "norm_k", None) is not None:
                raise NotImplementedError(f"{l.name}: linear-attention adapters of attn1 with q/k norms cannot be "
                                          "saved and rebuilt yet")
            if l.module.to_out[0].out_features != l.channels or l.heads * l.head_dim != l.channels:
                raise NotImplementedError(f"{l.name}: linear-attention adapters need inner dim = out dim = channels")
        spec = [{"name": l.name, "channels": l.channels, "heads": l.heads, "head_dim": l.head_dim, "level": l.level,
                 "qkv_bias": l.module.to_q.bias is not None, "out_bias": l.module.to_out[0].bias is not None}
                for l in layers]
        return spec, dict(hidden_ratio=hidden_ratio, eps=eps, negative_slope=negative_slope, init=init)

    @classmethod
    def create(cls, denoiser, layers, **options):
        spec, config = cls.layer_specs(denoiser, layers, **options)
        sources = {l.name: l.module for l in layers} if config["init"] == "teacher" else None
        return cls(layers=spec, base_model=type(denoiser).__name__, sources=sources, **config)

    def needs_grid(self, spec: dict) -> bool:
        return False


LINEAR_INITS = ("teacher", "scratch")


def _check_linear_init(init) -> str:
    if init not in LINEAR_INITS:
        raise ValueError(f"init must be one of {LINEAR_INITS} (linear attention from the teacher's attn1 "
                         f"q/k/v/out, or fresh weights), got {init!r}")
    return init


class WindowAttentionAdapter(MixerAdapter):
    """Training-free window attention (DiTFastAttn-style) on each ``attn1``'s own modules: config only.

    The blocks are built when the adapter is applied, sharing the original ``to_q``/``to_k``/``to_v``/
    ``to_out`` (nothing is copied, trained or saved but the config), and the originals are kept, so
    :func:`restore_attention` gives the stock model back.

    Args:
        layers: one dict per layer: ``name``, ``channels``, ``heads``, ``level``, ``window`` (odd).
        base_model: class name of the denoiser.
        mode: ``"1d"`` (band over the raster sequence, DiTFastAttn) or ``"2d"`` (square on the grid).
    """

    kind, title, trainable = "window", "window-attention", False
    shape_keys = ("channels", "heads")

    @register_to_config
    def __init__(self, layers: list[dict], base_model: str = "", mode: str = "1d"):
        super().__init__()
        if mode not in WINDOW_MODES:
            raise ValueError(f"mode must be one of {WINDOW_MODES}, got {mode!r}")
        for l in layers:
            _check_window(l["window"])

    @classmethod
    def layer_specs(cls, denoiser, layers, *, window=None, mode: str = "1d"):
        if window is None:
            raise ValueError("window attention needs window=: an odd int (keys per query along the band, or the "
                             "square's side in 2d), a dict {layer name or pattern: w} or a callable layer -> w")
        ws = per_layer(window, layers, "window", "window")
        spec = [{"name": l.name, "channels": l.channels, "heads": l.heads, "level": l.level,
                 "window": _check_window(ws[l.name])} for l in layers]
        return spec, dict(mode=mode)

    def make_blocks(self, layers):
        specs = {l["name"]: l for l in self.config.layers}
        return {l.name: WindowAttention.from_attention(l.module, specs[l.name]["window"], self.config.mode)
                for l in layers}

    def needs_grid(self, spec: dict) -> bool:
        return self.config.mode == "2d"


class _ControlAdapter(MixerAdapter):
    """Base of the training-free controls (:mod:`~aconvlib.mixers.controls`): config only, no options, no grid;
    a subclass names its block class in ``block_class`` (built from each ``attn1`` at install time)."""

    trainable = False
    shape_keys = ("channels",)
    block_class: type[nn.Module] = nn.Module

    @classmethod
    def layer_specs(cls, denoiser, layers):
        return [{"name": l.name, "channels": l.channels, "level": l.level} for l in layers], {}

    def make_blocks(self, layers):
        return {l.name: self.block_class.from_attention(l.module) for l in layers}

    def needs_grid(self, spec: dict) -> bool:
        return False

    @register_to_config
    def __init__(self, layers: list[dict], base_model: str = ""):
        """Args: ``layers``: one dict per layer (``name``, ``channels``, ``level``); ``base_model``: the
        denoiser's class name."""
        super().__init__()


class NoAttentionAdapter(_ControlAdapter):
    """Control: self-attention removed — every ``attn1`` outputs zeros (:class:`~aconvlib.mixers.controls.NoAttention`)."""

    kind, title = "none", "no-self-attention"
    block_class = NoAttention


class UniformAttentionAdapter(_ControlAdapter):
    """Control: uniform attention — every query gets ``to_out(mean_j to_v(x_j))`` on each ``attn1``'s own
    ``to_v``/``to_out`` (:class:`~aconvlib.mixers.controls.UniformAttention`, shared, nothing copied)."""

    kind, title = "uniform", "uniform-attention"
    block_class = UniformAttention


MIXERS: dict[str, type[MixerAdapter]] = {c.kind: c for c in (DeltaConvAdapter, LinearAttentionAdapter,
                                                              WindowAttentionAdapter, NoAttentionAdapter,
                                                              UniformAttentionAdapter)}
MIXER_KINDS = tuple(MIXERS)
TRAINABLE_KINDS = tuple(k for k, c in MIXERS.items() if c.trainable)
