"""The ``joint`` family: joint-attention transformers (MMDiT) — diffusers ``FluxTransformer2DModel`` (FLUX.1) and
``SD3Transformer2DModel`` (SD3 / SD3.5).

Text and image tokens go through ONE attention, so the "self-attention" of the paper is the image→image part of a
joint map. What the processors of diffusers 0.42 do (``FluxAttnProcessor`` in ``transformer_flux.py``,
``JointAttnProcessor2_0`` in ``attention_processor.py``), read from their code:

=========================  ====================================================================================
block type                 where the tokens sit in the attention sequence
=========================  ====================================================================================
``double`` (FLUX,          ``transformer_blocks.i.attn``: image tokens come in ``hidden_states``, text tokens in
 19 blocks)                ``encoder_hidden_states``; q/k/v are projected per stream (``to_q``/``add_q_proj``),
                           RMS-normed per head (``norm_q``/``norm_added_q``), concatenated **text first**
                           ``[text, image]``, then RoPE (``image_rotary_emb``, from ``cat(txt_ids, img_ids)``) is
                           applied to the whole sequence; the output is split back (``to_out`` image,
                           ``to_add_out`` text).
``single`` (FLUX,          ``single_transformer_blocks.i.attn``: ``hidden_states`` is already ``[text, image]``
 38 blocks)                (text first); one projection, RMS norm, RoPE; no output projection (``pre_only``: the
                           block's ``proj_out`` mixes attention and MLP).
``joint`` (SD3,            ``transformer_blocks.i.attn``: image in ``hidden_states``, text in
 every block)              ``encoder_hidden_states``, concatenated **image first** ``[image, text]``; optional
                           RMS q/k norms (SD3.5); no RoPE (absolute position embeddings are added before the
                           blocks); the last block (``context_pre_only``) drops the text output.
``self`` (SD3.5 ``attn2``)  ``transformer_blocks.i.attn2`` of the dual-attention blocks (SD3.5-medium: blocks
                           0–12): image tokens only, ``JointAttnProcessor2_0`` without context — a plain
                           self-attention, handled like a U-Net's ``attn1``.
=========================  ====================================================================================

Neither pipeline passes an attention mask: padding tokens of the T5 prompt (FLUX pads to ``max_sequence_length``
512, SD3 to 256 after 77 CLIP tokens) are attended like real ones. The scale is ``head_dim^-1/2`` (SDPA's default).

Token grid: FLUX packs 2×2 latent cells into one token (the transformer's ``patch_size`` is 1, the pipeline packs),
SD3 patchifies with ``patch_size`` 2: both give ``(H/16, W/16)`` tokens for an ``H×W`` image with the VAE's factor 8.
FLUX is called with packed tokens ``[B, N, 64]`` and ``img_ids`` ``[N, 3]`` (row in column 1, column in column 2):
the latent size of a call is read from them. Both predict the flow-matching velocity (``v = noise − x0``) and are
sampled with ``FlowMatchEulerDiscreteScheduler``.

:func:`joint_qkv` computes q, k, v of one attention call exactly as its processor does (FLUX through diffusers' own
projection helper and ``apply_rotary_emb``); :func:`joint_output` applies the processor's output projections. The
joint capture, neighborhood attention and the ΔConv hybrid all go through these two.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .base import DenoiserFamily, TextConditioning

__all__ = ["GridSizeError", "JointFamily", "JointLayout", "joint_output", "joint_qkv", "prompt_token_mask"]

_LAYER = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(attn|attn2)$")
#: the pipelines' default ``max_sequence_length`` (T5 tokens) by architecture
_T5_TOKENS = {"flux": 512, "sd3": 256}
_CLIP_TOKENS = 77


class GridSizeError(ValueError):
    """An image or latent size that the model's token grid does not divide (one line, naming the multiple)."""


@dataclass(frozen=True)
class JointLayout:
    """Where the tokens of one joint attention call sit.

    Attributes:
        block_type: ``"double"``, ``"single"`` (FLUX), ``"joint"`` (SD3) or ``"self"`` (image only).
        text_first: the text tokens precede the image tokens in the sequence (FLUX) or follow them (SD3).
        rope: the processor applies rotary embeddings to q and k (FLUX).
    """

    block_type: str
    text_first: bool
    rope: bool

    @property
    def has_text(self) -> bool:
        return self.block_type != "self"

    def image_slice(self, n_text: int, n_image: int) -> slice:
        """The image tokens' positions in the joint sequence of ``n_text + n_image`` tokens."""
        return slice(n_text, n_text + n_image) if self.text_first else slice(0, n_image)

    def text_slice(self, n_text: int, n_image: int) -> slice:
        """The text tokens' positions in the joint sequence."""
        return slice(0, n_text) if self.text_first else slice(n_image, n_image + n_text)


def _is_flux(denoiser_or_attn) -> bool:
    return type(denoiser_or_attn).__name__ in ("FluxTransformer2DModel", "FluxAttention")


class JointFamily(DenoiserFamily):
    name = "joint"
    class_names = ("FluxTransformer2DModel", "SD3Transformer2DModel")
    pipeline_attr = "transformer"
    embedded_alternative = "mini-dit"
    default_sample_size = 128   # FluxPipeline.default_sample_size (FLUX's config has no sample_size): 1024 px

    def model_class(self, config: dict | None = None):
        import diffusers

        if config is None:   # an unregistered checkpoint: its config names the class
            return diffusers.AutoModel
        name = config.get("_class_name")
        if name not in self.class_names:
            raise ValueError(f"the joint family loads {', '.join(self.class_names)}, not {name}")
        return getattr(diffusers, name)

    def kind(self, denoiser) -> str:
        return "flux" if _is_flux(denoiser) else "sd3"

    def conditionings(self) -> tuple[TextConditioning, ...]:
        return TextConditioning("flux", pooled=True), TextConditioning("sd3", pooled=True)

    def paper_kernel_size(self, denoiser) -> int:
        return 13   # the paper's DiT choice (PixArt); it publishes no kernel size for joint-attention models

    def official_kernel_sizes(self, denoiser) -> int:
        return 13

    # ------------------------------------------------------------------ layers and grids
    def grid_factors(self, config, latent_factor):
        # FLUX: transformer patch 1 on 2×2-packed latents; SD3: patch_size (2) of its PatchEmbed
        pack = 2 if config.get("_class_name") == "FluxTransformer2DModel" or "num_single_layers" in config else 1
        return int(latent_factor), int(config.get("patch_size", 1)) * pack, 1

    def token_patch(self, denoiser) -> int:
        """Latent cells per token side: 2 (FLUX's packing, SD3's patch)."""
        return 2 if _is_flux(denoiser) else int(denoiser.config.patch_size)

    def is_self_attention(self, name: str, module) -> bool:
        return _LAYER.match(name) is not None and hasattr(module, "to_q")

    def layout(self, denoiser, name: str) -> JointLayout:
        """The :class:`JointLayout` of the attention layer at ``name``."""
        m = _LAYER.match(name)
        if m is None:
            raise ValueError(f"{name!r} is not an attention layer of a joint-attention transformer")
        if _is_flux(denoiser):
            return JointLayout("single" if m.group(1) == "single_transformer_blocks" else "double", True, True)
        return JointLayout("self" if m.group(3) == "attn2" else "joint", False, False)

    def layer_block_type(self, denoiser, name: str) -> str:
        return self.layout(denoiser, name).block_type

    def level_grids(self, denoiser, latent_hw):
        p = self.token_patch(denoiser)
        h, w = int(latent_hw[0]), int(latent_hw[1])
        if h <= 0 or w <= 0 or h % p or w % p:
            what = "2×2 packing" if _is_flux(denoiser) else f"patch size {p}"
            raise GridSizeError(f"latent size {h}x{w} does not divide into tokens: {type(denoiser).__name__}'s "
                                f"{what} needs latent sides that are multiples of {p} (image sides multiples of "
                                f"{8 * p} px)")
        return [(h // p, w // p)]

    def text_tokens(self, denoiser) -> int:
        """Text tokens in the joint sequence with the pipeline's default ``max_sequence_length``."""
        kind = self.kind(denoiser)
        return _T5_TOKENS[kind] + (0 if kind == "flux" else _CLIP_TOKENS)

    # ------------------------------------------------------------------ calling
    @staticmethod
    def call_sample(args, kwargs):
        return args[0] if args else kwargs.get("hidden_states")

    def call_latent_hw(self, denoiser, args, kwargs):
        sample = self.call_sample(args, kwargs)
        if not isinstance(sample, torch.Tensor):
            return None
        if sample.ndim == 4:   # SD3: [B, C, h, w]
            return int(sample.shape[-2]), int(sample.shape[-1])
        ids = kwargs.get("img_ids", args[5] if len(args) > 5 else None)
        if sample.ndim != 3 or ids is None:
            return None
        ids = ids[0] if ids.ndim == 3 else ids
        rows, cols = int(ids[:, 1].max().item()) + 1, int(ids[:, 2].max().item()) + 1
        if rows * cols != sample.shape[1]:
            raise ValueError(f"img_ids describe a {rows}x{cols} grid but the call has {sample.shape[1]} image tokens")
        return 2 * rows, 2 * cols   # the unpacked latent

    def call_timestep(self, args, kwargs):
        t = kwargs.get("timestep", args[3] if len(args) > 3 else None)
        if t is not None and "img_ids" in kwargs:   # FLUX is called with timestep / 1000: report the scheduler's
            t = t * 1000
        return t

    def prediction_type(self, scheduler_config: dict) -> str:
        return "flow_matching"

    def denoise(self, denoiser, x, t, text_states, **cond):
        """x [B, 16, h, w] latent, t the scheduler timestep (0…1000, as the pipelines' loop variable), text_states
        [B, L, 4096] → velocity [B, 16, h, w]. ``cond``: ``pooled_projections`` [B, D] (required); FLUX-dev:
        ``guidance`` [B] (the guidance scale; default 3.5 when the model embeds guidance)."""
        pooled = cond.pop("pooled_projections", None)
        if pooled is None:
            raise ValueError("joint-attention transformers need pooled_projections (the pooled CLIP embedding)")
        guidance = cond.pop("guidance", None)
        if cond:
            raise TypeError(f"unexpected conditioning for a joint-attention transformer: {sorted(cond)}")
        b, c, h, w = x.shape
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        t = t.expand(b) if t.ndim == 0 else t
        if not _is_flux(denoiser):
            return denoiser(x, encoder_hidden_states=text_states, pooled_projections=pooled, timestep=t,
                            return_dict=False)[0]
        gh, gw = self.level_grids(denoiser, (h, w))[0]
        packed = x.view(b, c, gh, 2, gw, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * 4)
        img_ids = torch.zeros(gh, gw, 3, device=x.device, dtype=x.dtype)
        img_ids[..., 1] += torch.arange(gh, device=x.device, dtype=x.dtype)[:, None]
        img_ids[..., 2] += torch.arange(gw, device=x.device, dtype=x.dtype)[None, :]
        txt_ids = torch.zeros(text_states.shape[1], 3, device=x.device, dtype=x.dtype)
        if denoiser.config.guidance_embeds:
            guidance = torch.full((b,), 3.5, device=x.device) if guidance is None else torch.as_tensor(guidance)
            guidance = guidance.to(device=x.device, dtype=torch.float32).expand(b)
        else:
            guidance = None
        out = denoiser(packed, encoder_hidden_states=text_states, pooled_projections=pooled, timestep=t / 1000,
                       img_ids=img_ids.reshape(-1, 3), txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]
        return out.view(b, gh, gw, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


# ----------------------------------------------------------------------------------------------------------------
# one attention call, as its processor computes it
# ----------------------------------------------------------------------------------------------------------------
def joint_qkv(attn, layout: JointLayout, hidden_states: torch.Tensor, encoder_hidden_states=None,
              image_rotary_emb=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """q, k, v [B, S, heads, d] of one call of a joint attention layer, in the processor's sequence order (FLUX:
    ``[text, image]`` with RoPE applied; SD3: ``[image, text]``), post-norm; and the number of text tokens in it.

    ``hidden_states``/``encoder_hidden_states``/``image_rotary_emb`` are the arguments the processor receives. For
    a ``single`` block the text tokens are the first ``S − n_image`` of ``hidden_states``: the caller knows
    ``n_image`` (the grid) and gets ``n_text = 0`` here (the single stream carries no separate text argument).
    """
    if _is_flux(attn):
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        q, k, v, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (q, k, v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        n_text = 0
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            eq, ek, ev = (t.unflatten(-1, (-1, attn.head_dim)) for t in (eq, ek, ev))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
            n_text = encoder_hidden_states.shape[1]
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        return q, k, v, n_text
    b = hidden_states.shape[0]
    q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    d = k.shape[-1] // attn.heads
    q, k, v = (t.view(b, -1, attn.heads, d) for t in (q, k, v))
    if attn.norm_q is not None:    # RMSNorm over the head dim: the same on [B, S, h, d] as on [B, h, S, d]
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    if encoder_hidden_states is None:
        return q, k, v, 0
    eq, ek, ev = (p(encoder_hidden_states).view(b, -1, attn.heads, d)
                  for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
    if attn.norm_added_q is not None:
        eq = attn.norm_added_q(eq)
    if attn.norm_added_k is not None:
        ek = attn.norm_added_k(ek)
    return torch.cat([q, eq], 1), torch.cat([k, ek], 1), torch.cat([v, ev], 1), encoder_hidden_states.shape[1]


def joint_output(attn, layout: JointLayout, out: torch.Tensor, n_text: int, has_context: bool):
    """The processor's output from the attention result ``out`` [B, S, heads·d] (sequence order as
    :func:`joint_qkv`): ``image_out`` alone, or ``(image_out, text_out)`` when the call had a context."""
    if not has_context:
        if getattr(attn, "pre_only", False):   # FLUX single blocks: no projection here
            return out
        return attn.to_out[1](attn.to_out[0](out))
    n_image = out.shape[1] - n_text
    img = out[:, layout.image_slice(n_text, n_image)].contiguous()
    txt = out[:, layout.text_slice(n_text, n_image)].contiguous()
    img = attn.to_out[1](attn.to_out[0](img))
    if _is_flux(attn):
        return img, attn.to_add_out(txt)
    if not attn.context_pre_only:
        txt = attn.to_add_out(txt)
    return img, txt


def prompt_token_mask(pipe, prompts, max_sequence_length: int | None = None) -> torch.Tensor:
    """[P, L] bool: which text tokens of the joint sequence are the prompt's own (True) and which are padding,
    tokenized as the pipeline does (FLUX: the T5 tokens, ``max_sequence_length`` default 512; SD3: 77 CLIP tokens,
    then the T5 tokens, default 256). A token counts as the prompt's when the tokenizer's attention mask is 1 (T5's
    ``</s>`` and CLIP's start/end tokens included)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    den = getattr(pipe, "transformer")
    kind = JointFamily().kind(den)
    n = max_sequence_length or _T5_TOKENS[kind]

    def mask(tok, length):
        return tok(prompts, padding="max_length", max_length=length, truncation=True,
                   return_tensors="pt").attention_mask.bool()

    if kind == "flux":
        return mask(pipe.tokenizer_2, n)
    return torch.cat([mask(pipe.tokenizer, _CLIP_TOKENS), mask(pipe.tokenizer_3, n)], dim=1)
