"""One-line conversion of diffusers denoisers and pipelines: any token mixer in place of every ``attn1``.

    pipe = to_deltaconv(pipe)                      # every attn1 -> DeltaConvBlock; the rest frozen
    save_deltaconv(pipe, "out/sd15-deltaconv")     # only the ΔConv weights + config (safetensors)
    pipe = load_deltaconv(stock_pipe, "out/sd15-deltaconv")   # patch a stock pipeline in one line

    pipe = to_mixer(pipe, "linear")                # LinFusion-style linear attention, from each attn1
    pipe = to_mixer(pipe, "window", window=9, mode="2d")      # training-free window attention
    pipe = to_mixer(pipe, "none")                  # control: self-attention removed (attn1 outputs zeros)
    pipe = to_mixer(pipe, "uniform")               # control: uniform attention (the mean of to_v, via to_out)
    restore_attention(pipe)                        # the original attn1 modules back
    with mixer_applied(pipe, "uniform"): ...       # converted inside the block, the stock model back after it
    save_mixer(pipe, "out/x"); load_mixer(stock_pipe, "out/x")  # any kind; the config names it

The paper's comparison (Tables 1–3) replaces the same ``attn1`` layers by three token mixers; all
three go through ONE mechanism here, parameterised by the mixer *kind*:

* ``"deltaconv"`` — :class:`~aconvlib.mixers.deltaconv.DeltaConvBlock`, fresh weights, trained,
  all of its weights saved; needs the token grid.
* ``"linear"`` — LinFusion-style :class:`~aconvlib.mixers.linear_attention.GeneralizedLinearAttention`,
  initialised from each attn1's q/k/v/out (copies; ``init="teacher"``, the default) or freshly
  (``init="scratch"``, like ΔConv's fresh blocks), trained, all of its weights saved; no grid.
* ``"window"`` — DiTFastAttn-style :class:`~aconvlib.mixers.window_attention.WindowAttention` on each
  attn1's own modules (shared), training-free, only the config saved; grid needed in ``mode="2d"``.
* ``"none"`` and ``"uniform"`` — the controls of :mod:`~aconvlib.mixers.controls`: self-attention removed
  (:class:`~aconvlib.mixers.controls.NoAttention`, zeros) and uniform attention
  (:class:`~aconvlib.mixers.controls.UniformAttention`, each attn1's own ``to_v``/``to_out``, shared);
  training-free, only the config saved, no grid.

The mechanism:

* :class:`MixerSelfAttention` — the one wrapper mounted at every ``attn1``: the ``Attention`` call
  signature, runs its ``block`` with ``grid=`` the layer's token grid when the kind needs it. The
  grid comes from a :class:`~aconvlib.models.LatentTracker` (one forward pre-hook on the denoiser
  reads the latent's (h, w) on every call; each layer derives its grid from its level: U-Net
  ``level_grids``, DiT latent / patch), so any resolution and aspect ratio works and the pipelines'
  ``__call__`` runs unchanged. ``DeltaConvSelfAttention`` is the same class (historical name).
* :class:`MixerAdapter` — the one adapter (diffusers ``ModelMixin``/``ConfigMixin``): the config to
  rebuild the mixers, the new weights (``save_pretrained``/``from_pretrained``), :meth:`~MixerAdapter.apply_to`
  with compatibility checks, freezing, and :meth:`~MixerAdapter.restore`. A kind is a small subclass
  that only declares its config (``__init__``), its per-layer spec (:meth:`~MixerAdapter.layer_specs`)
  and how it makes a block: :class:`DeltaConvAdapter` (config format and state-dict keys unchanged,
  so saved ΔConv adapters load), :class:`LinearAttentionAdapter`, :class:`WindowAttentionAdapter`,
  :class:`NoAttentionAdapter`, :class:`UniformAttentionAdapter`. ``MIXERS`` maps kind names to them.

Originals: training-free kinds keep a reference to each original ``attn1`` (the window mixer runs on
its modules anyway), so :func:`restore_attention` gives the stock model back (module objects,
outputs and ``requires_grad`` flags). Trained kinds drop them (a student does not need the teacher's
layers) unless converted with ``keep_original=True``.

Kernel sizes of ΔConv (``kernel_sizes=``):
    ``"paper"``    K = 9 for SD1.5-like U-Nets, 13 for SDXL and PixArt (paper, Sec. 5.1);
    ``"official"`` the authors' per-resolution table (SD1.5 down 7/9/5, mid 3, up 5/9/11;
                   SDXL down 9/7, mid 9, up 9/13; PixArt 13);
    an int, a dict ``{layer name or fnmatch pattern: K}``, or a callable ``layer -> K``.
Windows of window attention (``window=``): an odd int, a dict of the same form, or a callable.
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable

import torch

from ..models import get_denoiser, self_attention_layers
from ..models.families import OFFICIAL_KERNEL_SIZES, PAPER_KERNEL_SIZES  # noqa: F401 (re-exported)
from .adapter_base import _HUB_KWARGS, DeltaConvSelfAttention, MixerAdapter, MixerSelfAttention  # noqa: F401
from .adapters import (LINEAR_INITS, MIXER_KINDS, MIXERS, TRAINABLE_KINDS,  # noqa: F401 (re-exported)
                       DeltaConvAdapter, LinearAttentionAdapter, NoAttentionAdapter, UniformAttentionAdapter,
                       WindowAttentionAdapter)
from .deltaconv import DeltaConvBlock
from .layer_specs import model_kind, per_layer, resolve_kernel_sizes  # noqa: F401 (re-exported)


@contextlib.contextmanager
def latent_size(pipe_or_denoiser, latent_hw: tuple[int, int]):
    """Set the latent size by hand, to call converted transformer blocks outside the denoiser's forward."""
    with get_adapter(pipe_or_denoiser).tracker.override(latent_hw):
        yield


def mixer_adapter_class(kind: str) -> type[MixerAdapter]:
    """The adapter class of a mixer kind (``"deltaconv"``, ``"linear"``, ``"window"``, ``"none"``, ``"uniform"``)."""
    if kind not in MIXERS:
        raise ValueError(f"unknown mixer kind {kind!r}; choose one of {MIXER_KINDS}")
    return MIXERS[kind]


def get_adapter(pipe_or_denoiser) -> MixerAdapter:
    """The :class:`MixerAdapter` (e.g. :class:`DeltaConvAdapter`) of a converted pipeline or denoiser."""
    den = get_denoiser(pipe_or_denoiser)
    adapter = den.__dict__.get("mixer_adapter")
    if adapter is None:
        raise ValueError(f"this {type(den).__name__} is not converted: call to_mixer / to_deltaconv or "
                         "load_mixer / load_deltaconv first")
    return adapter


def mixer_layers(pipe_or_denoiser, kind: str | None = None) -> list[tuple[str, MixerSelfAttention]]:
    """``(name, wrapper)`` of every converted layer (of ``kind``, if given) of a denoiser, in module order."""
    den = get_denoiser(pipe_or_denoiser)
    return [(n, m) for n, m in den.named_modules()
            if isinstance(m, MixerSelfAttention) and (kind is None or m.kind == kind)]


def deltaconv_layers(pipe_or_denoiser) -> list[tuple[str, MixerSelfAttention]]:
    """``(name, module)`` of every ΔConv layer of a converted denoiser, in module order."""
    return mixer_layers(pipe_or_denoiser, "deltaconv")


# ----------------------------------------------------------------------------------------------
# the one-line API
# ----------------------------------------------------------------------------------------------
def build_mixer_adapter(pipe_or_denoiser, kind: str = "deltaconv", *, seed: int | None = None,
                        **options) -> MixerAdapter:
    """A fresh adapter of ``kind`` for the denoiser (not installed); ``options`` are the kind's
    (deltaconv: kernel_sizes, ratio, scales, gate, gate_scale, bias; linear: hidden_ratio, eps,
    negative_slope, init; window: window, mode; none, uniform: none); ``seed`` fixes the initialisation of
    new weights."""
    cls = mixer_adapter_class(kind)
    accepted = [p for p in inspect.signature(cls.layer_specs).parameters if p not in ("denoiser", "layers")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"mixer kind {kind!r} takes the options {accepted}, not {unknown}")
    den = get_denoiser(pipe_or_denoiser)
    held = {m.kind for m in den.modules() if isinstance(m, MixerSelfAttention)}
    if held:
        raise ValueError(f"this {type(den).__name__} is already converted ({', '.join(sorted(held))} mixers); "
                         "call restore_attention first or start from a stock model")
    layers = self_attention_layers(den)
    if not layers:
        raise ValueError(f"no self-attention (attn1) layers found in the {type(den).__name__}")
    if kind != "deltaconv" and any(l.joint for l in layers):
        raise NotImplementedError(f"mixer kind {kind!r} replaces self-attention only; the {type(den).__name__} has "
                                  "joint text-image attention layers: convert it with kind='deltaconv' (the hybrid)")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return cls.create(den, layers, **options)


def to_mixer(pipe_or_denoiser, kind: str = "deltaconv", *, freeze: bool = True, keep_original: bool | None = None,
             seed: int | None = None, **options):
    """Replace every ``attn1`` of a diffusers pipeline or denoiser by a token mixer of ``kind``, in place.

    ``kind``: ``"deltaconv"`` (fresh ΔConv blocks), ``"linear"`` (LinFusion-style linear attention
    initialised from each attn1) or ``"window"`` (training-free window attention on each attn1's
    own weights; needs ``window=``), ``"none"`` (self-attention removed: every attn1 outputs zeros) or
    ``"uniform"`` (uniform attention on each attn1's own to_v/to_out). Cross-attention, norms, FFNs and the rest
    stay and, with
    ``freeze``, are frozen. The adapter is ``get_adapter(result)``; :func:`restore_attention` undoes
    the conversion when the originals were kept (``keep_original``, default: training-free kinds).
    See :func:`build_mixer_adapter` for ``options`` and ``seed``.
    """
    adapter = build_mixer_adapter(pipe_or_denoiser, kind, seed=seed, **options)
    return adapter.apply_to(pipe_or_denoiser, freeze=freeze, keep_original=keep_original)


@contextlib.contextmanager
def mixer_applied(pipe_or_denoiser, kind: str, **options):
    """Inside the block every ``attn1`` is a ``kind`` mixer (:func:`to_mixer` with ``options``); on exit, also
    after an exception, :func:`restore_attention` gives the stock model back. Yields the argument.

        with mixer_applied(pipe, "none"):                    # self-attention removed
            res = evaluate_model(pipe, prompts)
        with mixer_applied(pipe, "window", window=9, mode="2d"):
            ...

    The originals are always kept (``keep_original=True``), so trained kinds work too (with fresh weights).
    For neighborhood attention use :func:`aconvlib.mixers.neighborhood.neighborhood_attention` (a processor swap).
    """
    to_mixer(pipe_or_denoiser, kind, keep_original=True, **options)
    try:
        yield pipe_or_denoiser
    finally:
        restore_attention(pipe_or_denoiser)


def restore_attention(pipe_or_denoiser):
    """Undo :func:`to_mixer` / :func:`load_mixer`: the original ``attn1`` modules, hook-free; return the argument.

    Raises:
        ValueError: the model is not converted, or the originals were not kept (trained kinds
            converted without ``keep_original=True``).
    """
    return get_adapter(pipe_or_denoiser).restore(pipe_or_denoiser)


def save_mixer(pipe_or_denoiser, path: str, **kwargs) -> None:
    """Save a converted pipeline/denoiser's adapter: its config and the mixers' own weights (safetensors)."""
    get_adapter(pipe_or_denoiser).save_pretrained(path, **kwargs)


def load_mixer(pipe_or_denoiser, path_or_hub_id: str, freeze: bool = True, kind: str | None = None,
               keep_original: bool | None = None, **kwargs):
    """Patch a stock pipeline or denoiser with a saved adapter of any kind (local folder or hub id); return it.

    The kind is read from the saved config; ``kind`` (optional) insists on one.

    Raises:
        ValueError: the adapter is of another kind, or was made for another base model (layer names
            or widths differ).
    """
    hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    saved = MixerAdapter.load_config(path_or_hub_id, **hub).get("_class_name")
    by_class = {c.__name__: c for c in MIXERS.values()}
    if saved not in by_class:
        raise ValueError(f"{path_or_hub_id} holds a {saved!r} config, not a token-mixer adapter "
                         f"({', '.join(by_class)})")
    cls = by_class[saved]
    if kind is not None and cls.kind != mixer_adapter_class(kind).kind:
        raise ValueError(f"{path_or_hub_id} holds a {cls.kind} adapter, not a {kind} one")
    if cls.trainable:
        try:
            import accelerate  # noqa: F401
        except ImportError:  # diffusers would print a long notice and fall back to this
            kwargs.setdefault("low_cpu_mem_usage", False)
    adapter = cls.from_pretrained(path_or_hub_id, **kwargs)
    return adapter.apply_to(pipe_or_denoiser, freeze=freeze, keep_original=keep_original)


# -- ΔConv shortcuts (the original one-line API) ---------------------------------------------------
def build_adapter(pipe_or_denoiser, kernel_sizes="paper", *, ratio: float = 0.5, scales=(1.0, 0.5),
                  gate: str = "scaled", gate_scale: str | float = "divide", bias: bool = True,
                  seed: int | None = None) -> DeltaConvAdapter:
    """A freshly initialised :class:`DeltaConvAdapter` for the denoiser (not installed)."""
    return build_mixer_adapter(pipe_or_denoiser, "deltaconv", seed=seed, kernel_sizes=kernel_sizes, ratio=ratio,
                               scales=scales, gate=gate, gate_scale=gate_scale, bias=bias)


def to_deltaconv(pipe_or_denoiser, kernel_sizes: str | int | dict | Callable = "paper", *, ratio: float = 0.5,
                 scales=(1.0, 0.5), gate: str = "scaled", gate_scale: str | float = "divide", bias: bool = True,
                 freeze: bool = True, seed: int | None = None, keep_original: bool = False):
    """Convert a diffusers pipeline or denoiser to ΔConvFusion in place and return it.

    Every ``attn1`` becomes a freshly initialised ΔConvBlock (the attention weights are dropped
    unless ``keep_original``); cross-attention, norms, FFNs and the rest stay and, with ``freeze``,
    are frozen. The adapter holding the new weights is ``get_adapter(result)``. See the module
    docstring for ``kernel_sizes``; the other arguments go to
    :class:`~aconvlib.mixers.deltaconv.DeltaConvBlock`; ``seed`` fixes their init.
    """
    return to_mixer(pipe_or_denoiser, "deltaconv", freeze=freeze, keep_original=keep_original, seed=seed,
                    kernel_sizes=kernel_sizes, ratio=ratio, scales=scales, gate=gate, gate_scale=gate_scale, bias=bias)


def save_deltaconv(pipe_or_denoiser, path: str, **kwargs) -> None:
    """Save only the ΔConv weights and config of a converted pipeline/denoiser (safetensors)."""
    save_mixer(pipe_or_denoiser, path, **kwargs)


def load_deltaconv(pipe_or_denoiser, path_or_hub_id: str, freeze: bool = True, **kwargs):
    """Patch a stock pipeline or denoiser with saved ΔConv weights (local folder or hub id); return it.

    Raises:
        ValueError: the adapter was made for another base model (layer names or widths differ), or
            is not a ΔConv adapter.
    """
    return load_mixer(pipe_or_denoiser, path_or_hub_id, freeze=freeze, kind="deltaconv", **kwargs)


__all__ = ["DeltaConvAdapter", "DeltaConvSelfAttention", "LinearAttentionAdapter", "MIXERS", "MIXER_KINDS",
           "LINEAR_INITS", "MixerAdapter", "MixerSelfAttention", "NoAttentionAdapter", "OFFICIAL_KERNEL_SIZES", "PAPER_KERNEL_SIZES",
           "TRAINABLE_KINDS", "UniformAttentionAdapter", "WindowAttentionAdapter", "build_adapter",
           "build_mixer_adapter", "deltaconv_layers", "get_adapter", "get_denoiser", "latent_size", "load_deltaconv",
           "load_mixer", "mixer_adapter_class", "mixer_applied", "mixer_layers", "model_kind", "per_layer",
           "resolve_kernel_sizes", "restore_attention", "save_deltaconv", "save_mixer", "to_deltaconv", "to_mixer"]
