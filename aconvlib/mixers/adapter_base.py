"""The one wrapper mounted at every converted ``attn1`` (:class:`MixerSelfAttention`) and the one adapter base class
(:class:`MixerAdapter`: config, weights, apply/restore); see :mod:`aconvlib.mixers.convert` for the mechanism."""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..models import LatentTracker, SelfAttentionLayer, family_of, get_denoiser, self_attention_layers
from ..models.families.joint import JointLayout, joint_output, joint_qkv

__all__ = ["DeltaConvSelfAttention", "JointMixerAttention", "MixerAdapter", "MixerSelfAttention"]


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


class JointMixerAttention(MixerSelfAttention):
    """Drop-in for a joint text-image attention layer (FLUX double/single, SD3 joint) whose image↔image mixing is a
    trained block: the ΔConv hybrid.

    With q, k, v the original layer's own (:func:`~aconvlib.models.families.joint.joint_qkv`, its processor's
    projections, norms and RoPE; the original module is kept as ``attn``, frozen):

    * text queries keep full attention over every key (text and image): the text stream is the teacher's;
    * image queries get ``σ(g_h) · softmax(q k_textᵀ) v_text  +  ΔConv(x_image)`` per head ``h``: attention over
      the text keys only (its own softmax over the L text keys) gated by a learned per-head scalar ``g`` (initial
      σ = 1/2), plus the ΔConvBlock on the image tokens' input (reshaped to heads × head dim);
    * the sum goes through the layer's own output projections (:func:`~aconvlib.models.families.joint.joint_output`).

    Why a gated sum and not a logsumexp merge of the two softmaxes: the exact merge
    ``(e^{lse_img} o_img + e^{lse_txt} o_txt) / (e^{lse_img} + e^{lse_txt})`` needs ``lse_img``, the log-mass of
    the image keys, which is an O(N²) quantity — exactly what ΔConv removes. The gate stands in for the image/text
    balance (the text share the joint capture measures, per head on average) and the ΔConv block, trained to match
    the teacher's layer output, absorbs the rest. The text conditioning survives twice: text queries are exact and
    image queries read the prompt through their text attention.

    ``block`` holds ``conv`` (the :class:`~aconvlib.mixers.deltaconv.DeltaConvBlock`, C → C) and ``text_gate``
    ([heads] logits); the call signature is the union of the FLUX and SD3 attention modules'.
    """

    def __init__(self, block: nn.Module, name: str, level: int, tracker: LatentTracker, attn_params: int,
                 original: nn.Module, layout: JointLayout, kind: str = "deltaconv", title: str = "ΔConv"):
        super().__init__(block, name, level, tracker, attn_params, kind=kind, needs_grid=True, title=title)
        self.attn = original
        self.layout = layout

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, image_rotary_emb=None, **kwargs):
        if attention_mask is not None:
            raise ValueError(f"{self.layer_name}: the ΔConv hybrid takes no attention mask")
        attn, lay = self.attn, self.layout
        q, k, v, n_text = joint_qkv(attn, lay, hidden_states, encoder_hidden_states, image_rotary_emb)
        b, seq, heads, d = q.shape
        if lay.block_type == "single":    # [text, image] in one stream: the grid says how many are image tokens
            grid = self.tracker.grid(self.level)
            if grid is None:
                raise RuntimeError(f"{self.layer_name}: unknown token grid; call the denoiser itself")
            n_text = seq - grid[0] * grid[1]
        n_img = seq - n_text
        grid = self.token_grid(n_img)
        img, txt = lay.image_slice(n_text, n_img), lay.text_slice(n_text, n_img)
        x_img = hidden_states[:, img] if lay.block_type == "single" else hidden_states
        out = torch.empty_like(q)
        if n_text:
            out[:, txt] = nn.functional.scaled_dot_product_attention(
                q[:, txt].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        conv = self.block.conv(x_img, grid=grid).view(b, n_img, heads, d)
        if n_text:
            to_text = nn.functional.scaled_dot_product_attention(
                q[:, img].transpose(1, 2), k[:, txt].transpose(1, 2), v[:, txt].transpose(1, 2)).transpose(1, 2)
            conv = conv + torch.sigmoid(self.block.text_gate).view(1, 1, heads, 1).to(q.dtype) * to_text
        out[:, img] = conv.to(out.dtype)
        return joint_output(attn, lay, out.flatten(2), n_text, encoder_hidden_states is not None)


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
        fam = family_of(den)
        for l in layers:
            parent, child = _parent(den, l.name)
            if keep:
                originals[l.name] = l.module
            n_params = sum(p.numel() for p in l.module.parameters())
            if l.joint:
                wrapper = JointMixerAttention(blocks[l.name], l.name, l.level, tracker, n_params, l.module,
                                              fam.layout(den, l.name), kind=self.kind, title=self.title)
            else:
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
