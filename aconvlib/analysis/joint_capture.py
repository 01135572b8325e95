"""Capture of joint text-image attention (FLUX double/single-stream blocks, SD3 joint blocks), exact under RoPE.

A joint layer's attention runs over S = L text + N image tokens (:mod:`aconvlib.models.families.joint` says where
each sits). For batch item b, head h and image query q (grid raster order) let ``P[q, ·] = softmax(q_q Kᵀ · s)``
over all S keys, with q and K **the processor's own**: :func:`~aconvlib.models.families.joint.joint_qkv` projects,
RMS-normalises, concatenates and applies RoPE exactly as the processor does (FLUX through diffusers' own projection
helper and ``apply_rotary_emb``). Per image query this module accumulates, streamed over calls and over chunks of
queries (nothing per step is kept):

(a) ``maps[l]`` [N, N]: the image→image part renormalized over image keys, ``P[q, k] / Σ_{k' image} P[q, k']`` —
    row-stochastic on the image grid, the array every locality function (ASM, high-pass, prior/context, ERF) takes;
(b) ``text_share[l]`` [N]: ``Σ_{k text} P[q, k]``, split with the prompt's token mask (True = the prompt's own token,
    False = padding; :func:`~aconvlib.models.families.joint.prompt_token_mask`) into ``prompt_share`` and
    ``padding_share``; ``text_key_mass[l]`` [L]: the mass each text key receives, per image query;
(c) image sink tokens: :func:`sinks` — image keys whose mean renormalized mass ``b[k] = mean_q maps[q, k]``
    reaches ``ratio / N`` (far above the uniform 1/N), as :func:`aconvlib.analysis.locality.attention_sink` defines
    the layer's strongest one.

All are means over the captured (call, batch item, head) triples. Text queries' rows are not kept (they are not
image self-attention). The processor's own output is returned unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..models.families.joint import JointLayout, joint_qkv

__all__ = ["JointCaptureProcessor", "JointStats", "TextMaskError", "joint_capture_bytes", "sinks"]


class TextMaskError(ValueError):
    """A prompt token mask that does not fit the captured text tokens (or none where one is needed)."""


def joint_capture_bytes(n_image: int, n_text: int) -> int:
    """Accumulator bytes of one joint layer: the fp32 [N, N] map, three [N] shares, one [L] key mass."""
    return 4 * (n_image * n_image + 3 * n_image + n_text)


@dataclass
class JointStats:
    """The text-side accumulators of one joint layer (sums; divide by ``count``)."""

    text: Optional[torch.Tensor] = None       # [N] mass on text keys per image query
    padding: Optional[torch.Tensor] = None    # [N] mass on padding text keys
    text_keys: Optional[torch.Tensor] = None  # [L] mass each text key receives
    masked: bool = True                       # every captured call had a prompt token mask
    n_text: int = 0
    block_type: str = ""
    extra: dict = field(default_factory=dict)


class JointCaptureProcessor:
    """Wraps a joint layer's processor: same output, plus an update of its accumulators (not an ``nn.Module``)."""

    def __init__(self, original, state, capture, layout: JointLayout):
        self.original, self.state, self.capture, self.layout = original, state, capture, layout

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 **kwargs):
        if type(attn).__name__ == "FluxAttention":
            out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **kwargs)
        else:
            out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        if self.capture._active_call:
            if attention_mask is not None:
                raise NotImplementedError(f"{self.state.layer.name}: joint capture of a masked attention call")
            with torch.no_grad():
                accumulate(self.capture, self.state, self.layout, attn, hidden_states, encoder_hidden_states,
                           image_rotary_emb)
        return out


def _text_mask(capture, nb: int, n_text: int, device) -> Optional[torch.Tensor]:
    mask = capture.text_mask
    if mask is None:
        return None
    mask = torch.as_tensor(mask, dtype=torch.bool)
    mask = mask[None] if mask.ndim == 1 else mask
    if mask.shape[-1] != n_text:
        raise TextMaskError(f"text_mask has {mask.shape[-1]} tokens but the joint sequence has {n_text} text tokens: "
                            f"build it with the pipeline's max_sequence_length (prompt_token_mask(pipe, prompts, "
                            f"max_sequence_length=...))")
    if mask.shape[0] not in (1, nb):
        raise TextMaskError(f"text_mask has {mask.shape[0]} rows but the captured batch has {nb} items: give one row "
                            f"per prompt of the captured branch, or one row for all")
    return mask.to(device).expand(nb, n_text)


def accumulate(capture, state, layout: JointLayout, attn, hidden_states, encoder_hidden_states, rope) -> None:
    """Add one call's image-query statistics to ``state`` (see the module docstring)."""
    sel = capture._batch_sel
    hs = hidden_states[sel]
    ehs = encoder_hidden_states[sel] if encoder_hidden_states is not None else None
    q, k, _, n_text = joint_qkv(attn, layout, hs, ehs, rope)    # [nb, S, heads, d]
    nb, seq, heads, d = q.shape
    grid = state.grid
    if grid is None:
        raise ValueError(f"layer {state.layer.name}: unknown token grid (call the denoiser itself)")
    n_img = grid[0] * grid[1]
    if layout.block_type == "single":   # [text, image] arrive as one sequence
        n_text = seq - n_img
    if n_text + n_img != seq or n_text < 0:
        raise ValueError(f"layer {state.layer.name}: {seq} tokens do not hold the grid {grid} ({n_img} image tokens)"
                         f" and {n_text} text tokens")
    img, txt = layout.image_slice(n_text, n_img), layout.text_slice(n_text, n_img)
    mask = _text_mask(capture, nb, n_text, q.device)
    js: JointStats = state.joint
    if state.acc is None:
        state.acc = torch.zeros(n_img, n_img, dtype=torch.float32, device=q.device)
        js.text = torch.zeros(n_img, dtype=torch.float32, device=q.device)
        js.padding = torch.zeros(n_img, dtype=torch.float32, device=q.device)
        js.text_keys = torch.zeros(n_text, dtype=torch.float32, device=q.device)
        js.n_text, js.block_type = n_text, layout.block_type
    elif js.n_text != n_text:
        raise ValueError(f"layer {state.layer.name}: text length changed from {js.n_text} to {n_text} within one "
                         "capture; use one max_sequence_length per capture")
    js.masked = js.masked and mask is not None
    qi = q[:, img].transpose(1, 2).float() * d ** -0.5            # [nb, heads, N, d]
    kt = k.transpose(1, 2).float().transpose(-1, -2)              # [nb, heads, d, S]
    pad = None if mask is None else (~mask).float()[:, None, None, :]   # [nb, 1, 1, L]
    chunk = max(1, capture.workspace_bytes // (4 * nb * heads * seq))
    for i in range(0, n_img, chunk):
        p = torch.softmax(torch.matmul(qi[:, :, i:i + chunk], kt), dim=-1)   # [nb, heads, c, S]
        p_img, p_txt = p[..., img], p[..., txt]
        state.acc[i:i + chunk] += (p_img / p_img.sum(-1, keepdim=True)).sum(dim=(0, 1))
        js.text[i:i + chunk] += p_txt.sum(-1).sum(dim=(0, 1))
        if pad is not None:
            js.padding[i:i + chunk] += (p_txt * pad).sum(-1).sum(dim=(0, 1))
        js.text_keys += p_txt.sum(dim=(0, 1, 2))
    state.count += nb * heads


def sinks(maps: torch.Tensor, grid: tuple[int, int], ratio: float = 3.0) -> list[dict]:
    """Image sink tokens of a renormalized map [N, N]: keys with ``N · b[k] ≥ ratio`` (``b`` the column mean), most
    attended first: ``{"token", "row", "col", "share", "ratio"}`` each."""
    n = maps.shape[1]
    b = maps.double().mean(0)
    idx = torch.nonzero(b * n >= ratio).flatten().tolist()
    out = [{"token": i, "row": i // grid[1], "col": i % grid[1], "share": float(b[i]), "ratio": float(b[i] * n)}
           for i in idx]
    return sorted(out, key=lambda r: -r["share"])
