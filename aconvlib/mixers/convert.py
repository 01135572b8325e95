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
import fnmatch
import inspect
from collections.abc import Callable

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..models import LatentTracker, SelfAttentionLayer, family_of, get_denoiser, self_attention_layers
from ..models.families import OFFICIAL_KERNEL_SIZES, PAPER_KERNEL_SIZES  # noqa: F401 (re-exported)
from .controls import NoAttention, UniformAttention
from .deltaconv import DeltaConvBlock
from .linear_attention import GeneralizedLinearAttention
from .window_attention import WINDOW_MODES, WindowAttention, _check_window


# ----------------------------------------------------------------------------------------------
# finding the denoiser and describing it
# ----------------------------------------------------------------------------------------------
def model_kind(denoiser: nn.Module) -> str:
    """``"pixart"``, ``"sdxl"`` (a U-Net with SDXL's text-time conditioning) or ``"sd15"`` (other U-Nets)."""
    return family_of(denoiser).kind(denoiser)


def per_layer(value, layers: list[SelfAttentionLayer], what: str, symbol: str) -> dict[str, object]:
    """``{layer name: value}`` from an int (every layer), a dict ``{name or fnmatch pattern: value}``
    (exact names first, then the first matching pattern) or a callable ``layer -> value``."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, a dict or a callable, got {value!r}")
    if isinstance(value, int):
        return {l.name: value for l in layers}
    if isinstance(value, dict):
        out, missing = {}, []
        for l in layers:
            if l.name in value:
                out[l.name] = value[l.name]
                continue
            hit = next((v for pat, v in value.items() if fnmatch.fnmatchcase(l.name, pat)), None)
            if hit is None:
                missing.append(l.name)
            out[l.name] = hit
        if missing:
            raise ValueError(f"{what} names no {symbol} for {len(missing)} layer(s), e.g. {missing[:3]}; "
                             "add them or a pattern like '*attn1'")
        return out
    if callable(value):
        return {l.name: int(value(l)) for l in layers}
    raise ValueError(f"{what} must be an int, a dict or a callable, got {value!r}")


def resolve_kernel_sizes(denoiser: nn.Module, kernel_sizes="paper",
                         layers: list[SelfAttentionLayer] | None = None) -> dict[str, int]:
    """Kernel size K of every self-attention layer: ``{layer name: K}`` (see the module docstring)."""
    layers = self_attention_layers(denoiser) if layers is None else layers
    fam = family_of(denoiser)   # the paper's facts per architecture live with the family
    kind = fam.kind(denoiser)
    if isinstance(kernel_sizes, bool):
        raise TypeError("kernel_sizes must be 'paper', 'official', an int, a dict or a callable")
    if kernel_sizes == "paper":
        return {l.name: fam.paper_kernel_size(denoiser) for l in layers}
    if kernel_sizes == "official":
        table, out = fam.official_kernel_sizes(denoiser), {}
        if isinstance(table, int):   # one K for every layer (PixArt)
            return {l.name: table for l in layers}
        for l in layers:
            key = (fam.layer_part(l.name), l.level)
            if key not in table:
                raise ValueError(f"the authors' kernel-size table ({kind}) has no entry for {l.name} "
                                 f"({key[0]} level {l.level}); this U-Net's layout differs from {kind.upper()}: "
                                 "pass kernel_sizes='paper', an int, a dict or a callable")
            out[l.name] = table[key]
        return out
    if isinstance(kernel_sizes, (int, dict)) or callable(kernel_sizes):
        return per_layer(kernel_sizes, layers, "kernel_sizes", "K")
    raise ValueError(f"kernel_sizes must be 'paper', 'official', an int, a dict or a callable, got {kernel_sizes!r}")


# ----------------------------------------------------------------------------------------------
# run-time grids and the one wrapper
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def latent_size(pipe_or_denoiser, latent_hw: tuple[int, int]):
    """Set the latent size by hand, to call converted transformer blocks outside the denoiser's forward."""
    with get_adapter(pipe_or_denoiser).tracker.override(latent_hw):
        yield


class MixerSelfAttention(nn.Module):
    """Drop-in for a diffusers self-attention ``attn1``: ``(hidden_states [B, N, C], ...) -> [B, N, C]``.

    Runs ``block`` (any token mixer called as ``block(x, grid=...)``) on the grid of its level for
    the denoiser's current latent size when ``needs_grid``, with ``grid=None`` otherwise. Keeps the
    original module's parameter count in ``attn_params`` (for tables). ``attention_mask`` is ignored
    (U-Net and PixArt self-attention get none); ``encoder_hidden_states`` is an error.

    Attributes:
        block: the token mixer (a submodule; for window attention it holds the original's modules).
        kind: ``"deltaconv"``, ``"linear"``, ``"window"``, ``"none"`` or ``"uniform"``; layer_name, level:
            where it sits.
    """

    is_cross_attention = False

    def __init__(self, block: nn.Module, name: str, level: int, tracker: LatentTracker, attn_params: int = 0,
                 kind: str = "deltaconv", needs_grid: bool = True, title: str = "ΔConv"):
        super().__init__()
        self.block = block
        self.layer_name, self.level, self.attn_params = name, level, attn_params
        self.kind, self.needs_grid, self.title = kind, needs_grid, title
        self.__dict__["tracker"] = tracker  # not a submodule

    @property
    def mixer(self) -> nn.Module:
        """The token mixer (same as ``block``)."""
        return self.block

    def token_grid(self, n: int) -> tuple[int, int]:
        """The (H, W) grid of this layer for N = ``n`` tokens at the tracker's current latent size."""
        grid = self.tracker.grid(self.level)
        if grid is None:
            side = int(round(n ** 0.5))
            if side * side != n:
                raise RuntimeError(f"{self.layer_name}: unknown token grid for N = {n} tokens; call the denoiser "
                                   "itself (its pre-hook records the latent size) or wrap the call in "
                                   "aconvlib.mixers.latent_size(model, (h, w))")
            return side, side
        if grid[0] * grid[1] != n:
            raise RuntimeError(f"{self.layer_name}: the latent {self.tracker.latent_hw} gives a {grid[0]}×{grid[1]} "
                               f"grid at level {self.level}, but the layer got N = {n} tokens")
        return grid

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.layer_name}: a {self.title} self-attention replacement got encoder_hidden_states "
                             "(cross-attention is not converted)")
        grid = self.token_grid(hidden_states.shape[1]) if self.needs_grid else None
        return self.block(hidden_states, grid=grid)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, layer={self.layer_name!r}, level={self.level}"


DeltaConvSelfAttention = MixerSelfAttention  # historical name: the wrapper serves every kind (see ``.kind``)


# ----------------------------------------------------------------------------------------------
# the one adapter: config + new weights of the mixers of one converted denoiser
# ----------------------------------------------------------------------------------------------
def _key(name: str) -> str:
    return name.replace(".", "__")


def _parent(den: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding ``name`` and the attribute name under it."""
    parent_name, _, child = name.rpartition(".")
    return (den.get_submodule(parent_name) if parent_name else den), child


# from_pretrained arguments that say where a config lives (local folder or hub)
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")


def _module_like(module: nn.Module, parent: nn.Module, skip: str) -> nn.Module:
    """``module`` moved to the device/dtype of ``parent``'s other parameters (a kept original that
    missed a ``.to`` of the denoiser); unchanged when they already agree or there are none."""
    ref = next((p for n, p in parent.named_parameters() if not n.startswith(skip + ".")), None)
    own = next(module.parameters(), None)
    if ref is None or own is None or (own.device == ref.device and own.dtype == ref.dtype):
        return module
    return module.to(device=ref.device, dtype=ref.dtype)


class MixerAdapter(ModelMixin, ConfigMixin):
    """Base of the adapters: the token mixers of one converted denoiser and the config to rebuild them.

    ``save_pretrained(dir)`` writes ``config.json`` (+ ``diffusion_pytorch_model.safetensors`` with
    the mixers' own weights, for trained kinds); ``from_pretrained(dir or hub id)`` reads them;
    :meth:`apply_to` installs the mixers into a stock denoiser (checking layer names and widths);
    :meth:`restore` puts the original ``attn1`` modules back.

    A kind subclasses this with class attributes ``kind`` (registry name), ``title`` (for messages),
    ``trainable`` (it owns weights to train and save) and ``shape_keys`` (layer-spec fields checked
    against the model), and implements ``__init__`` (its config; owned blocks go in ``self.blocks``),
    :meth:`layer_specs` and, when it builds blocks at install time, :meth:`make_blocks`.
    """

    config_name = "config.json"
    kind = ""
    title = ""
    trainable = True
    shape_keys: tuple[str, ...] = ("channels",)

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleDict()
        self.tracker: LatentTracker | None = None
        self.__dict__["_installed"] = {}       # name -> block in use (owned or built at install)
        self.__dict__["_originals"] = {}       # name -> original attn1 (when kept)
        self.__dict__["_grad_flags"] = []      # (parameter, requires_grad) of the stock model (when kept)

    # -- per kind --------------------------------------------------------------------------------
    @classmethod
    def layer_specs(cls, denoiser: nn.Module, layers: list[SelfAttentionLayer], **options) -> tuple[list[dict], dict]:
        """``(one dict per layer, the other config arguments)`` for converting ``denoiser`` with ``options``."""
        raise NotImplementedError

    @classmethod
    def create(cls, denoiser: nn.Module, layers: list[SelfAttentionLayer], **options) -> "MixerAdapter":
        """A fresh adapter for ``denoiser`` (not installed)."""
        spec, config = cls.layer_specs(denoiser, layers, **options)
        return cls(layers=spec, base_model=type(denoiser).__name__, **config)

    def make_blocks(self, layers: list[SelfAttentionLayer]) -> dict[str, nn.Module]:
        """The block for each layer at install time (default: the owned ``self.blocks``)."""
        return {l.name: self.blocks[_key(l.name)] for l in layers}

    def needs_grid(self, spec: dict) -> bool:
        """Whether the mixer of this layer needs its token grid."""
        return True

    # -- generic ---------------------------------------------------------------------------------
    def block(self, layer_name: str) -> nn.Module:
        """The block that replaces ``layer_name``."""
        if _key(layer_name) in self.blocks:
            return self.blocks[_key(layer_name)]
        if layer_name in self._installed:
            return self._installed[layer_name]
        raise KeyError(f"no {self.title} block for {layer_name!r}" +
                       ("" if self.trainable else f" ({self.title} blocks exist once the adapter is applied)"))

    def check_compatible(self, denoiser: nn.Module) -> list[SelfAttentionLayer]:
        """Raise ValueError unless ``denoiser``'s self-attention layers match this adapter's (names, widths)."""
        kind = type(denoiser).__name__
        held = {m.kind for m in denoiser.modules() if isinstance(m, MixerSelfAttention)}
        if held:
            raise ValueError(f"this {kind} already holds converted token mixers ({', '.join(sorted(held))}); "
                             "load into a stock model (or call restore_attention first)")
        layers = self_attention_layers(denoiser)
        have = {l.name: l for l in layers}
        want = {l["name"]: l for l in self.config.layers}
        problems = []
        if self.config.base_model and self.config.base_model != kind:
            problems.append(f"it was made for a {self.config.base_model}, not a {kind}")
        missing = [n for n in want if n not in have]
        extra = [n for n in have if n not in want]
        if missing:
            problems.append(f"{len(missing)} of its layers are not in the model, e.g. {missing[:2]}")
        if extra:
            problems.append(f"{len(extra)} self-attention layers of the model have no {self.title} block, "
                            f"e.g. {extra[:2]}")
        bad = [f"{n}: adapter {want[n][k]} vs model {getattr(have[n], k)} {k}" for n in want if n in have
               for k in self.shape_keys if k in want[n] and int(want[n][k]) != getattr(have[n], k)]
        if bad:
            problems.append(f"{len(bad)} layers differ in width, e.g. {bad[:2]}")
        if problems:
            raise ValueError(f"this {self.title} adapter ({len(want)} layers) does not fit the {kind} "
                             f"({len(have)} self-attention layers): " + "; ".join(problems))
        return layers

    def apply_to(self, pipe_or_denoiser, freeze: bool = True, keep_original: bool | None = None):
        """Replace every ``attn1`` of the denoiser by this adapter's mixers (in place); return the argument.

        With ``freeze`` every denoiser parameter is frozen and only the adapter's parameters train.
        ``keep_original`` (default: only for training-free kinds) keeps references to the original
        ``attn1`` modules and the ``requires_grad`` flags so that :meth:`restore` can undo the conversion.
        """
        den = get_denoiser(pipe_or_denoiser)
        layers = self.check_compatible(den)
        keep = (not self.trainable) if keep_original is None else bool(keep_original)
        ref = layers[0].module.to_q.weight
        # nn.Module.to: ModelMixin.to warns about fp32-pinned modules, of which the adapter has none
        nn.Module.to(self, device=ref.device, dtype=None if ref.device.type == "meta" else ref.dtype)
        if self.tracker is not None:  # re-applied: drop the old hook
            self.tracker.remove()
        grad_flags = [(p, p.requires_grad) for p in den.parameters()] if keep else []
        blocks = self.make_blocks(layers)
        specs = {l["name"]: l for l in self.config.layers}
        tracker = LatentTracker(den)
        originals = {}
        for l in layers:
            parent, child = _parent(den, l.name)
            if keep:
                originals[l.name] = l.module
            n_params = sum(p.numel() for p in l.module.parameters())
            wrapper = MixerSelfAttention(blocks[l.name], l.name, l.level, tracker, n_params, kind=self.kind,
                                         needs_grid=self.needs_grid(specs[l.name]), title=self.title)
            setattr(parent, child, wrapper)
        self.tracker = tracker
        self.__dict__.update(_installed=blocks, _originals=originals, _grad_flags=grad_flags)
        den.__dict__["mixer_adapter"] = self  # plain attribute: not part of the denoiser's state_dict
        if freeze:
            den.requires_grad_(False)
            self.requires_grad_(True)
        return pipe_or_denoiser

    @property
    def can_restore(self) -> bool:
        """Whether the original ``attn1`` modules were kept (see :meth:`apply_to`)."""
        return bool(self._originals)

    def restore(self, pipe_or_denoiser):
        """Put the original ``attn1`` modules and ``requires_grad`` flags back, remove the hook; return the argument."""
        den = get_denoiser(pipe_or_denoiser)
        if den.__dict__.get("mixer_adapter") is not self:
            raise ValueError(f"this {self.title} adapter is not installed in that {type(den).__name__}")
        if not self.can_restore:
            raise ValueError(f"the original attn1 modules were not kept: {self.title} mixers are trained and drop "
                             "them unless converted with keep_original=True; reload the stock model instead")
        for name, original in self._originals.items():
            parent, child = _parent(den, name)
            if not isinstance(getattr(parent, child), MixerSelfAttention):
                raise ValueError(f"{name} no longer holds the converted mixer; cannot restore it")
            setattr(parent, child, _module_like(original, parent, child))
        for p, flag in self._grad_flags:
            p.requires_grad_(flag)
        if self.tracker is not None:
            self.tracker.remove()
            self.tracker = None
        del den.__dict__["mixer_adapter"]
        self.__dict__.update(_installed={}, _originals={}, _grad_flags=[])
        return pipe_or_denoiser

    # -- persistence: training-free kinds save their config only -----------------------------------
    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Save the config and (trained kinds) the mixers' own weights as safetensors."""
        if self.trainable:
            return super().save_pretrained(save_directory, **kwargs)
        self.save_config(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load an adapter saved with :meth:`save_pretrained` (local folder or hub id)."""
        if cls.trainable:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        return cls.from_config(cls.load_config(pretrained_model_name_or_path, **hub))


class DeltaConvAdapter(MixerAdapter):
    """The ΔConv blocks of one converted denoiser and the config to rebuild them.

    Args:
        layers: one dict per replaced layer: ``name``, ``channels``, ``kernel_size``, ``level``.
        base_model: class name of the denoiser (``UNet2DConditionModel`` / ``PixArtTransformer2DModel``).
        ratio, scales, gate, gate_scale, bias: :class:`~aconvlib.mixers.deltaconv.DeltaConvBlock` arguments.
    """

    kind, title, trainable = "deltaconv", "ΔConv", True

    @register_to_config
    def __init__(self, layers: list[dict], base_model: str = "", ratio: float = 0.5,
                 scales: list[float] = (1.0, 0.5), gate: str = "scaled", gate_scale: str | float = "divide",
                 bias: bool = True):
        super().__init__()
        self.blocks = nn.ModuleDict({
            _key(l["name"]): DeltaConvBlock(int(l["channels"]), l["kernel_size"], scales=list(scales), ratio=ratio,
                                            gate=gate, gate_scale=gate_scale, bias=bias)
            for l in layers})

    @classmethod
    def layer_specs(cls, denoiser, layers, *, kernel_sizes="paper", ratio: float = 0.5, scales=(1.0, 0.5),
                    gate: str = "scaled", gate_scale: str | float = "divide", bias: bool = True):
        ks = resolve_kernel_sizes(denoiser, kernel_sizes, layers)
        spec = [{"name": l.name, "channels": l.channels, "kernel_size": ks[l.name], "level": l.level} for l in layers]
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


class NoAttentionAdapter(_ControlAdapter):
    """Control: self-attention removed — every ``attn1`` outputs zeros (:class:`~aconvlib.mixers.controls.NoAttention`).

    Args:
        layers: one dict per layer: ``name``, ``channels``, ``level``.
        base_model: class name of the denoiser.
    """

    kind, title = "none", "no-self-attention"
    block_class = NoAttention

    @register_to_config
    def __init__(self, layers: list[dict], base_model: str = ""):
        super().__init__()


class UniformAttentionAdapter(_ControlAdapter):
    """Control: uniform attention — every query gets ``to_out(mean_j to_v(x_j))`` on each ``attn1``'s own
    ``to_v``/``to_out`` (:class:`~aconvlib.mixers.controls.UniformAttention`, shared, nothing copied).

    Args:
        layers: one dict per layer: ``name``, ``channels``, ``level``.
        base_model: class name of the denoiser.
    """

    kind, title = "uniform", "uniform-attention"
    block_class = UniformAttention

    @register_to_config
    def __init__(self, layers: list[dict], base_model: str = ""):
        super().__init__()


MIXERS: dict[str, type[MixerAdapter]] = {c.kind: c for c in (DeltaConvAdapter, LinearAttentionAdapter,
                                                              WindowAttentionAdapter, NoAttentionAdapter,
                                                              UniformAttentionAdapter)}
MIXER_KINDS = tuple(MIXERS)
TRAINABLE_KINDS = tuple(k for k, c in MIXERS.items() if c.trainable)


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
