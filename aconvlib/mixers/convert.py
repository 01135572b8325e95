"""One-line conversion of diffusers denoisers and pipelines to ΔConvFusion, and its save/load.

    pipe = to_deltaconv(pipe)                      # every attn1 -> DeltaConvBlock; the rest frozen
    save_deltaconv(pipe, "out/sd15-deltaconv")     # only the ΔConv weights + config (safetensors)
    pipe = load_deltaconv(stock_pipe, "out/sd15-deltaconv")   # patch a stock pipeline in one line

Supported denoisers: ``UNet2DConditionModel`` (SD1.5, SDXL, mini-sd) and ``PixArtTransformer2DModel``
(PixArt-Σ, mini-dit). Every self-attention ``attn1`` is replaced by a :class:`DeltaConvSelfAttention`,
a module with the ``Attention`` call signature that runs a :class:`~aconvlib.mixers.deltaconv.DeltaConvBlock`.
The block needs its token grid: a forward pre-hook on the denoiser reads the latent's (h, w) on
every call, and each layer derives its grid from it (U-Net level ℓ: ``unet_level_grids``; DiT:
latent / patch size), so any resolution and aspect ratio works and the pipelines' ``__call__``
runs unchanged. The ΔConv weights live in a :class:`DeltaConvAdapter` (diffusers
``ModelMixin``/``ConfigMixin``), shared with the denoiser's modules.

Kernel sizes (``kernel_sizes=``):
    ``"paper"``    K = 9 for SD1.5-like U-Nets, 13 for SDXL and PixArt (paper, Sec. 5.1);
    ``"official"`` the authors' per-resolution table (SD1.5 down 7/9/5, mid 3, up 5/9/11;
                   SDXL down 9/7, mid 9, up 9/13; PixArt 13);
    an int, a dict ``{layer name or fnmatch pattern: K}``, or a callable ``layer -> K``.
"""
from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..models import LatentTracker, SelfAttentionLayer, family_of, get_denoiser, self_attention_layers
from .deltaconv import DeltaConvBlock


# The authors' per-resolution kernel sizes, by (part, level); level 0 = full latent resolution.
OFFICIAL_KERNEL_SIZES = {
    "sd15": {("down", 0): 7, ("down", 1): 9, ("down", 2): 5, ("mid", 3): 3,
             ("up", 2): 5, ("up", 1): 9, ("up", 0): 11},
    "sdxl": {("down", 1): 9, ("down", 2): 7, ("mid", 2): 9, ("up", 2): 9, ("up", 1): 13},
}
PAPER_KERNEL_SIZES = {"sd15": 9, "sdxl": 13, "pixart": 13}


# ----------------------------------------------------------------------------------------------
# finding the denoiser and describing it
# ----------------------------------------------------------------------------------------------
def model_kind(denoiser: nn.Module) -> str:
    """``"pixart"``, ``"sdxl"`` (a U-Net with SDXL's text-time conditioning) or ``"sd15"`` (other U-Nets)."""
    return family_of(denoiser).kind(denoiser)


def resolve_kernel_sizes(denoiser: nn.Module, kernel_sizes="paper",
                         layers: list[SelfAttentionLayer] | None = None) -> dict[str, int]:
    """Kernel size K of every self-attention layer: ``{layer name: K}`` (see the module docstring)."""
    layers = self_attention_layers(denoiser) if layers is None else layers
    kind = model_kind(denoiser)
    if isinstance(kernel_sizes, bool):
        raise TypeError("kernel_sizes must be 'paper', 'official', an int, a dict or a callable")
    if isinstance(kernel_sizes, int):
        return {l.name: kernel_sizes for l in layers}
    if kernel_sizes == "paper":
        return {l.name: PAPER_KERNEL_SIZES[kind] for l in layers}
    if kernel_sizes == "official":
        if kind == "pixart":
            return {l.name: 13 for l in layers}
        table, out = OFFICIAL_KERNEL_SIZES[kind], {}
        for l in layers:
            key = (family_of(denoiser).layer_part(l.name), l.level)
            if key not in table:
                raise ValueError(f"the authors' kernel-size table ({kind}) has no entry for {l.name} "
                                 f"({key[0]} level {l.level}); this U-Net's layout differs from {kind.upper()}: "
                                 "pass kernel_sizes='paper', an int, a dict or a callable")
            out[l.name] = table[key]
        return out
    if isinstance(kernel_sizes, dict):
        out, missing = {}, []
        for l in layers:
            if l.name in kernel_sizes:
                out[l.name] = kernel_sizes[l.name]
                continue
            hit = next((k for pat, k in kernel_sizes.items() if fnmatch.fnmatchcase(l.name, pat)), None)
            if hit is None:
                missing.append(l.name)
            out[l.name] = hit
        if missing:
            raise ValueError(f"kernel_sizes names no K for {len(missing)} layer(s), e.g. {missing[:3]}; "
                             "add them or a pattern like '*attn1'")
        return out
    if callable(kernel_sizes):
        return {l.name: int(kernel_sizes(l)) for l in layers}
    raise ValueError(f"kernel_sizes must be 'paper', 'official', an int, a dict or a callable, got {kernel_sizes!r}")


# ----------------------------------------------------------------------------------------------
# run-time grids
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def latent_size(pipe_or_denoiser, latent_hw: tuple[int, int]):
    """Set the latent size by hand, to call converted transformer blocks outside the denoiser's forward."""
    with get_adapter(pipe_or_denoiser).tracker.override(latent_hw):
        yield


class DeltaConvSelfAttention(nn.Module):
    """Drop-in for a diffusers self-attention ``attn1``: ``(hidden_states [B, N, C], ...) -> [B, N, C]``.

    Runs ``block`` on the grid of its level for the denoiser's current latent size. Keeps the
    original module's parameter count in ``attn_params`` (for tables); the original is dropped.
    """

    is_cross_attention = False

    def __init__(self, block: DeltaConvBlock, name: str, level: int, tracker: LatentTracker, attn_params: int = 0):
        super().__init__()
        self.block = block
        self.layer_name, self.level, self.attn_params = name, level, attn_params
        self.__dict__["tracker"] = tracker  # not a submodule

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.layer_name}: a ΔConv self-attention replacement got encoder_hidden_states "
                             "(cross-attention is not converted)")
        n = hidden_states.shape[1]
        grid = self.tracker.grid(self.level)
        if grid is None:
            side = int(round(n ** 0.5))
            if side * side != n:
                raise RuntimeError(f"{self.layer_name}: unknown token grid for N = {n} tokens; call the denoiser "
                                   "itself (its pre-hook records the latent size) or wrap the call in "
                                   "aconvlib.convert.latent_size(model, (h, w))")
            grid = (side, side)
        elif grid[0] * grid[1] != n:
            raise RuntimeError(f"{self.layer_name}: the latent {self.tracker.latent_hw} gives a {grid[0]}×{grid[1]} "
                               f"grid at level {self.level}, but the layer got N = {n} tokens")
        return self.block(hidden_states, grid)

    def extra_repr(self) -> str:
        return f"layer={self.layer_name!r}, level={self.level}"


# ----------------------------------------------------------------------------------------------
# the adapter: the ΔConv weights and their config
# ----------------------------------------------------------------------------------------------
def _key(name: str) -> str:
    return name.replace(".", "__")


class DeltaConvAdapter(ModelMixin, ConfigMixin):
    """The ΔConv blocks of one converted denoiser and the config to rebuild them.

    ``save_pretrained(dir)`` writes ``config.json`` + ``diffusion_pytorch_model.safetensors`` with the
    ΔConv weights only; ``from_pretrained(dir or hub id)`` reads them; :meth:`apply_to` installs the
    blocks into a stock denoiser (checking layer names and channels).

    Args:
        layers: one dict per replaced layer: ``name``, ``channels``, ``kernel_size``, ``level``.
        base_model: class name of the denoiser (``UNet2DConditionModel`` / ``PixArtTransformer2DModel``).
        ratio, scales, gate, gate_scale, bias: :class:`~aconvlib.mixers.deltaconv.DeltaConvBlock` arguments.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, layers: list[dict], base_model: str = "", ratio: float = 0.5,
                 scales: list[float] = (1.0, 0.5), gate: str = "scaled", gate_scale: str | float = "divide",
                 bias: bool = True):
        super().__init__()
        self.blocks = nn.ModuleDict({
            _key(l["name"]): DeltaConvBlock(int(l["channels"]), l["kernel_size"], scales=list(scales), ratio=ratio,
                                            gate=gate, gate_scale=gate_scale, bias=bias)
            for l in layers})
        self.tracker: LatentTracker | None = None

    def block(self, layer_name: str) -> DeltaConvBlock:
        """The block that replaces ``layer_name``."""
        return self.blocks[_key(layer_name)]

    def check_compatible(self, denoiser: nn.Module) -> list[SelfAttentionLayer]:
        """Raise ValueError unless ``denoiser``'s self-attention layers match this adapter's (names, channels)."""
        kind = type(denoiser).__name__
        if any(isinstance(m, DeltaConvSelfAttention) for m in denoiser.modules()):
            raise ValueError(f"this {kind} already holds ΔConv layers; load into a stock model")
        layers = self_attention_layers(denoiser)
        have = {l.name: l.channels for l in layers}
        want = {l["name"]: int(l["channels"]) for l in self.config.layers}
        problems = []
        if self.config.base_model and self.config.base_model != kind:
            problems.append(f"it was made for a {self.config.base_model}, not a {kind}")
        missing = [n for n in want if n not in have]
        extra = [n for n in have if n not in want]
        if missing:
            problems.append(f"{len(missing)} of its layers are not in the model, e.g. {missing[:2]}")
        if extra:
            problems.append(f"{len(extra)} self-attention layers of the model have no ΔConv block, e.g. {extra[:2]}")
        bad = [f"{n}: adapter {want[n]} vs model {have[n]} channels" for n in want if n in have and want[n] != have[n]]
        if bad:
            problems.append(f"{len(bad)} layers differ in width, e.g. {bad[:2]}")
        if problems:
            raise ValueError(f"this ΔConv adapter ({len(want)} layers) does not fit the {kind} "
                             f"({len(have)} self-attention layers): " + "; ".join(problems))
        return layers

    def apply_to(self, pipe_or_denoiser, freeze: bool = True):
        """Replace every ``attn1`` of the denoiser by this adapter's blocks (in place); return the argument.

        With ``freeze`` every denoiser parameter is frozen and only the ΔConv parameters train.
        """
        den = get_denoiser(pipe_or_denoiser)
        layers = self.check_compatible(den)
        ref = layers[0].module.to_q.weight
        # nn.Module.to: ModelMixin.to warns about fp32-pinned modules, of which the adapter has none
        nn.Module.to(self, device=ref.device, dtype=None if ref.device.type == "meta" else ref.dtype)
        if self.tracker is not None:  # re-applied: drop the old hook
            self.tracker.remove()
        tracker = LatentTracker(den)
        for l in layers:
            parent_name, _, child = l.name.rpartition(".")
            parent = den.get_submodule(parent_name) if parent_name else den
            n_params = sum(p.numel() for p in l.module.parameters())
            setattr(parent, child, DeltaConvSelfAttention(self.block(l.name), l.name, l.level, tracker, n_params))
        self.tracker = tracker
        den.__dict__["deltaconv_adapter"] = self  # plain attribute: not part of the denoiser's state_dict
        if freeze:
            den.requires_grad_(False)
            self.requires_grad_(True)
        return pipe_or_denoiser


def get_adapter(pipe_or_denoiser) -> DeltaConvAdapter:
    """The :class:`DeltaConvAdapter` of a converted pipeline or denoiser."""
    den = get_denoiser(pipe_or_denoiser)
    adapter = den.__dict__.get("deltaconv_adapter")
    if adapter is None:
        raise ValueError(f"this {type(den).__name__} is not converted: call to_deltaconv or load_deltaconv first")
    return adapter


def deltaconv_layers(pipe_or_denoiser) -> list[tuple[str, DeltaConvSelfAttention]]:
    """``(name, module)`` of every ΔConv layer of a converted denoiser, in module order."""
    den = get_denoiser(pipe_or_denoiser)
    return [(n, m) for n, m in den.named_modules() if isinstance(m, DeltaConvSelfAttention)]


# ----------------------------------------------------------------------------------------------
# the one-line API
# ----------------------------------------------------------------------------------------------
def build_adapter(pipe_or_denoiser, kernel_sizes="paper", *, ratio: float = 0.5, scales=(1.0, 0.5),
                  gate: str = "scaled", gate_scale: str | float = "divide", bias: bool = True,
                  seed: int | None = None) -> DeltaConvAdapter:
    """A freshly initialised :class:`DeltaConvAdapter` for the denoiser (not installed)."""
    den = get_denoiser(pipe_or_denoiser)
    if any(isinstance(m, DeltaConvSelfAttention) for m in den.modules()):
        raise ValueError(f"this {type(den).__name__} is already converted to ΔConv")
    layers = self_attention_layers(den)
    if not layers:
        raise ValueError(f"no self-attention (attn1) layers found in the {type(den).__name__}")
    ks = resolve_kernel_sizes(den, kernel_sizes, layers)
    spec = [{"name": l.name, "channels": l.channels, "kernel_size": ks[l.name], "level": l.level} for l in layers]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return DeltaConvAdapter(layers=spec, base_model=type(den).__name__, ratio=ratio, scales=list(scales),
                                gate=gate, gate_scale=gate_scale, bias=bias)


def to_deltaconv(pipe_or_denoiser, kernel_sizes: str | int | dict | Callable = "paper", *, ratio: float = 0.5,
                 scales=(1.0, 0.5), gate: str = "scaled", gate_scale: str | float = "divide", bias: bool = True,
                 freeze: bool = True, seed: int | None = None):
    """Convert a diffusers pipeline or denoiser to ΔConvFusion in place and return it.

    Every ``attn1`` becomes a freshly initialised ΔConvBlock (the attention weights are dropped);
    cross-attention, norms, FFNs and the rest stay and, with ``freeze``, are frozen. The adapter
    holding the new weights is ``get_adapter(result)``. See the module docstring for ``kernel_sizes``;
    the other arguments go to :class:`~aconvlib.mixers.deltaconv.DeltaConvBlock`; ``seed`` fixes their init.
    """
    adapter = build_adapter(pipe_or_denoiser, kernel_sizes, ratio=ratio, scales=scales, gate=gate,
                            gate_scale=gate_scale, bias=bias, seed=seed)
    return adapter.apply_to(pipe_or_denoiser, freeze=freeze)


def save_deltaconv(pipe_or_denoiser, path: str, **kwargs) -> None:
    """Save only the ΔConv weights and config of a converted pipeline/denoiser (safetensors)."""
    get_adapter(pipe_or_denoiser).save_pretrained(path, **kwargs)


def load_deltaconv(pipe_or_denoiser, path_or_hub_id: str, freeze: bool = True, **kwargs):
    """Patch a stock pipeline or denoiser with saved ΔConv weights (local folder or hub id); return it.

    Raises:
        ValueError: the adapter was made for another base model (layer names or widths differ).
    """
    try:
        import accelerate  # noqa: F401
    except ImportError:  # diffusers would print a long notice and fall back to this
        kwargs.setdefault("low_cpu_mem_usage", False)
    adapter = DeltaConvAdapter.from_pretrained(path_or_hub_id, **kwargs)
    return adapter.apply_to(pipe_or_denoiser, freeze=freeze)


__all__ = ["DeltaConvAdapter", "DeltaConvSelfAttention", "OFFICIAL_KERNEL_SIZES",
           "PAPER_KERNEL_SIZES", "build_adapter", "deltaconv_layers", "get_adapter", "get_denoiser", "latent_size",
           "load_deltaconv", "model_kind", "resolve_kernel_sizes", "save_deltaconv", "to_deltaconv"]
