"""Capture averaged self-attention maps from a diffusers denoiser while it runs.

Definitions. For a self-attention layer ``l`` with token grid (H', W') and N = H'·W' tokens, one
denoiser call, one batch item ``b`` and one head ``h`` give the row-stochastic map

    A[b, h] = softmax(Q_bh K_bhᵀ · s)  ∈ R^{N×N},   s = attn.scale (1/√d by default),

with Q, K the layer's own projections (``attn.to_q``, ``attn.to_k``, plus ``norm_q``/``norm_k``
when the layer has them) of the tokens the original processor receives. Tokens are in raster
order: token ``n`` sits at row ``n // W'`` and column ``n % W'`` of the grid. The captured map is
the mean

    maps[l] = mean over (selected calls, batch items of the selected CFG branch, heads) of A[b, h],

which is again row-stochastic (each row sums to one). Each call contributes with weight
(batch items × heads), so prompts and timesteps count equally when the batch is constant.

How it works. :func:`capture_self_attention` swaps only the ``attn1`` processors of the denoiser
(through diffusers' ``set_attn_processor``, keeping every other processor) for a thin wrapper that
(1) calls the original processor unchanged — the layer output is bit-for-bit the same — and
(2) recomputes Q and K for the selected batch items, then the softmax in fp32 over chunks of
queries, adding each chunk into one fp32 [N, N] accumulator per layer. Nothing per step is kept.
A forward pre-hook on the denoiser reads, before each call, the latent size (h, w) (token grids
at run time, non-square included; a DiT divides by its patch size), the timestep, and whether the
batch is a classifier-free-guidance (CFG) batch. The original processors are restored on exit,
also after an exception.

Joint-attention transformers (FLUX, SD3: layers whose ``block_type`` is not ``"self"``): the wrapper of those layers
is :class:`~aconvlib.analysis.joint_capture.JointCaptureProcessor`; ``maps`` then holds each image query's
image→image attention renormalized over the image keys (same layout as above), and ``text_share`` /
``prompt_share`` / ``padding_share`` / ``text_key_mass`` / :meth:`AttentionCapture.sink_tokens` what the image
queries give the text keys and which image keys sink attention (see :mod:`aconvlib.analysis.joint_capture`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence, Union

import torch

from ..models import (LatentTracker, SelfAttentionLayer, default_latent_hw, family_of, get_denoiser,
                      self_attention_layers)
from .joint_capture import JointCaptureProcessor, JointStats, joint_capture_bytes, sinks

__all__ = ["AttentionCapture", "CaptureProcessor", "MemoryBudgetError", "capture_self_attention",
           "estimate_capture_bytes"]

LayerSelector = Union[None, str, int, Sequence[Union[str, int]], Callable[[SelfAttentionLayer], bool]]
StepSelector = Union[None, int, Sequence[int], Callable[[int], bool]]
TimestepSelector = Union[None, float, Sequence[float], Callable[[float], bool]]


class MemoryBudgetError(MemoryError):
    """The capture would need more memory than ``memory_budget_gb``; raised before any work."""


def _select_layers(layers: list[SelfAttentionLayer], selector: LayerSelector) -> list[SelfAttentionLayer]:
    if selector is None:
        return list(layers)
    if callable(selector):
        return [layer for layer in layers if selector(layer)]
    if isinstance(selector, (str, int)):
        selector = [selector]
    by_name = {layer.name: layer for layer in layers}
    chosen = []
    for s in selector:
        if isinstance(s, int):
            try:
                layer = layers[s]
            except IndexError:
                raise IndexError(f"layer index {s} out of range: the denoiser has {len(layers)} "
                                 f"self-attention layers") from None
        elif s in by_name:
            layer = by_name[s]
        else:
            raise KeyError(f"no self-attention layer named {s!r}; layers: {', '.join(by_name)}")
        if layer not in chosen:
            chosen.append(layer)
    return chosen


def _matches(value, selector) -> bool:
    if selector is None:
        return True
    if callable(selector):
        return bool(selector(value))
    if isinstance(selector, (int, float)):
        selector = [selector]
    if isinstance(value, int):
        return value in set(selector)
    return any(math.isclose(value, float(s), rel_tol=0, abs_tol=1e-3) for s in selector)


def estimate_capture_bytes(grids: Iterable[tuple[int, int]], workspace_bytes: int) -> int:
    """Peak extra memory of a capture: one fp32 [N, N] accumulator per layer plus the softmax workspace.

    The workspace (scores of one query chunk) is counted three times: the fp32 scores, their
    softmax, and the head/batch sum.
    """
    acc = sum(4 * (h * w) ** 2 for h, w in grids)
    return acc + 3 * workspace_bytes


@dataclass
class _LayerState:
    layer: SelfAttentionLayer
    grid: Optional[tuple[int, int]] = None
    acc: Optional[torch.Tensor] = None
    count: int = 0
    joint: Optional[JointStats] = None     # text-side accumulators of a joint-attention layer


class CaptureProcessor:
    """Wraps a layer's original processor: same output, plus an update of the layer's accumulator.

    Not an ``nn.Module`` on purpose, so installing it registers no parameters or buffers.
    """

    def __init__(self, original, state: _LayerState, capture: "AttentionCapture"):
        self.original = original
        self.state = state
        self.capture = capture

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if self.capture._active_call and encoder_hidden_states is None:
            with torch.no_grad():
                self.capture._accumulate(self.state, attn, hidden_states, attention_mask, temb)
        return out


class AttentionCapture:
    """Holds the capture state; use it through :func:`capture_self_attention`.

    After (or during) the ``with`` block:

    - ``maps[name]``: [N, N] fp32 CPU tensor, the averaged row-stochastic map of layer ``name``
      (rows = queries, columns = keys, raster order over ``grids[name]``).
    - ``grids[name]``: the (H', W') token grid the map was recorded on.
    - ``counts[name]``: number of (batch item × head) maps averaged.
    - ``layers``: the selected :class:`~aconvlib.models.SelfAttentionLayer` records.
    - ``calls``: one dict per denoiser call seen: step index, timestep, batch, cfg, captured.
    """

    def __init__(self, denoiser, layers: LayerSelector = None, steps: StepSelector = None,
                 timesteps: TimestepSelector = None, cfg_branch: str = "cond", cfg: Optional[bool] = None,
                 memory_budget_gb: float = 4.0, latent_hw: Optional[tuple[int, int]] = None,
                 workspace_mb: float = 256.0, text_mask=None):
        if cfg_branch not in ("cond", "uncond", "both"):
            raise ValueError(f"cfg_branch must be 'cond', 'uncond' or 'both', got {cfg_branch!r}")
        self.denoiser = denoiser
        self.cfg_branch = cfg_branch
        self.cfg = cfg
        self.steps = steps
        self.timesteps = timesteps
        self.memory_budget_bytes = int(memory_budget_gb * 2**30)
        self.workspace_bytes = int(workspace_mb * 2**20)
        all_layers = self_attention_layers(denoiser, latent_hw or default_latent_hw(denoiser))
        if not all_layers:
            raise ValueError(f"{type(denoiser).__name__} has no self-attention (attn1) layers")
        self.layers = _select_layers(all_layers, layers)
        if not self.layers:
            raise ValueError("the layer selection matched no self-attention layer")
        self._states = {layer.name: _LayerState(layer, joint=JointStats() if layer.joint else None)
                        for layer in self.layers}
        self.text_mask = text_mask
        self._text_tokens = family_of(denoiser).text_tokens(denoiser) if any(l.joint for l in self.layers) else 0
        self._check_budget([layer.grid for layer in self.layers])
        self.calls: list[dict] = []
        self._active_call = False
        self._step = -1
        self._last_t: Optional[float] = None
        self._latent_hw: Optional[tuple[int, int]] = None
        self._batch_sel: slice = slice(None)
        self._originals: Optional[dict] = None
        self._tracker: Optional[LatentTracker] = None

    # ---------------------------------------------------------------- results
    @property
    def maps(self) -> dict[str, torch.Tensor]:
        return {n: (s.acc / s.count).float().cpu() for n, s in self._states.items() if s.count}

    @property
    def grids(self) -> dict[str, tuple[int, int]]:
        return {n: s.grid for n, s in self._states.items() if s.grid is not None}

    @property
    def counts(self) -> dict[str, int]:
        return {n: s.count for n, s in self._states.items()}

    # ---------------------------------------------------------------- joint layers: the text side
    def _joint(self, attr: str) -> dict[str, torch.Tensor]:
        return {n: (getattr(s.joint, attr) / s.count).float().cpu() for n, s in self._states.items()
                if s.joint is not None and s.count}

    @property
    def text_share(self) -> dict[str, torch.Tensor]:
        """Joint layers: [N] per image query, the mean attention mass on the text keys."""
        return self._joint("text")

    @property
    def padding_share(self) -> dict[str, torch.Tensor]:
        """Joint layers: [N] per image query, the mean mass on the prompt's padding tokens (needs ``text_mask``)."""
        from .joint_capture import TextMaskError

        if any(s.joint is not None and s.count and not s.joint.masked for s in self._states.values()):
            raise TextMaskError("the padding share needs the prompt's token mask: capture with "
                                "text_mask=prompt_token_mask(pipe, prompts, max_sequence_length)")
        return self._joint("padding")

    @property
    def prompt_share(self) -> dict[str, torch.Tensor]:
        """Joint layers: [N] per image query, the mean mass on the prompt's own tokens (needs ``text_mask``)."""
        pad = self.padding_share
        return {n: t - pad[n] for n, t in self.text_share.items()}

    @property
    def text_key_mass(self) -> dict[str, torch.Tensor]:
        """Joint layers: [L] the mean mass each text key receives from one image query."""
        return self._joint("text_keys")

    @property
    def block_types(self) -> dict[str, str]:
        """Each selected layer's block type (``"self"``, or ``"double"``/``"single"``/``"joint"``)."""
        return {n: s.layer.block_type for n, s in self._states.items()}

    def sink_tokens(self, name: str, ratio: float = 3.0) -> list[dict]:
        """Image sink tokens of layer ``name``: image keys receiving at least ``ratio`` times the uniform share 1/N
        of the renormalized image→image attention (see :func:`aconvlib.analysis.joint_capture.sinks`)."""
        return sinks(self.maps[name], self.grids[name], ratio)

    # ---------------------------------------------------------------- data parallel
    def reduce(self, group=None) -> "AttentionCapture":
        """Sum the accumulators and counts over the processes of ``group`` (``torch.distributed``; default:
        the world), once, after the processes captured different prompts: every process then holds the
        maps of all of them — the same sums as one process over all prompts (up to float summation order).
        A process that captured nothing contributes zeros (its grids are the expected latent size's).
        ``calls`` stays per process. A no-op without an initialised process group."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        if any(s.joint is not None for s in self._states.values()):
            raise NotImplementedError("reduce() sums self-attention maps only; capture joint layers on one process")
        states = list(self._states.values())  # same order on every process
        tokens = torch.tensor([(s.grid or s.layer.grid)[0] * (s.grid or s.layer.grid)[1] for s in states],
                              dtype=torch.float64)
        on_cpu = dist.get_backend(group) == "gloo"
        dev = torch.device("cpu") if on_cpu else torch.device("cuda", torch.cuda.current_device())
        lo, hi = tokens.to(dev), tokens.to(dev).clone()
        dist.all_reduce(lo, dist.ReduceOp.MIN, group=group)
        dist.all_reduce(hi, dist.ReduceOp.MAX, group=group)
        if not torch.equal(lo, hi):
            raise ValueError("the processes captured different token grids; use one image size for all prompts")
        counts = torch.tensor([float(s.count) for s in states], dtype=torch.float64, device=dev)
        dist.all_reduce(counts, group=group)
        for s, n, c in zip(states, tokens.long().tolist(), counts.tolist()):
            home = s.acc.device if s.acc is not None else dev
            acc = s.acc.to(dev) if s.acc is not None else torch.zeros(n, n, dtype=torch.float32, device=dev)
            dist.all_reduce(acc, group=group)
            s.acc, s.count = acc.to(home), int(round(c))
            s.grid = s.grid or s.layer.grid
        return self

    # ---------------------------------------------------------------- budget
    def _check_budget(self, grids) -> None:
        need = estimate_capture_bytes(grids, self.workspace_bytes)
        need += sum(joint_capture_bytes(g[0] * g[1], self._text_tokens) - 4 * (g[0] * g[1]) ** 2
                    for g, s in zip(grids, self._states.values()) if s.joint is not None)
        if need > self.memory_budget_bytes:
            biggest = max(grids, key=lambda g: g[0] * g[1])
            raise MemoryBudgetError(
                f"capturing {len(grids)} self-attention layer(s) needs about {need / 2**30:.2f} GiB ({need} bytes: "
                f"fp32 [N, N] accumulators, largest grid {biggest[0]}x{biggest[1]} = {biggest[0] * biggest[1]} "
                f"tokens, plus {3 * self.workspace_bytes / 2**20:.0f} MiB softmax workspace), more than "
                f"memory_budget_gb={self.memory_budget_bytes / 2**30:.2f}. Select fewer layers (layers=), "
                f"a smaller image (height/width), a smaller workspace_mb, or raise the budget.")

    # ---------------------------------------------------------------- install / restore
    def __enter__(self) -> "AttentionCapture":
        den = self.denoiser
        self._originals = dict(den.attn_processors)
        new = dict(self._originals)
        fam = family_of(den)
        for name, state in self._states.items():
            key = f"{name}.processor"
            if key not in new:
                raise KeyError(f"{key} is not among the denoiser's attention processors")
            new[key] = (JointCaptureProcessor(self._originals[key], state, self, fam.layout(den, name))
                        if state.joint is not None else CaptureProcessor(self._originals[key], state, self))
        den.set_attn_processor(new)
        self._tracker = LatentTracker(den, on_call=self._on_call)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def close(self) -> None:
        """Restore the original processors and remove the hook (idempotent)."""
        if self._tracker is not None:
            self._tracker.remove()
            self._tracker = None
        if self._originals is not None:
            self.denoiser.set_attn_processor(dict(self._originals))
            self._originals = None
        self._active_call = False

    # ---------------------------------------------------------------- per call
    def _on_call(self, tracker: LatentTracker, sample: torch.Tensor, t) -> None:
        t_val = tracker.timestep
        # Steps follow the scheduler's timesteps: a sampling run starts when the timestep increases
        # (or is unknown); a repeated timestep is the same step called again (PNDM's warm-up, Heun's
        # second evaluation); a smaller one is the next step.
        if self._last_t is None or not (t_val <= self._last_t):
            self._step = 0
        elif t_val < self._last_t:
            self._step += 1
        self._last_t = t_val
        batch = sample.shape[0]
        hw = tracker.latent_hw
        if hw != self._latent_hw:
            level_grids = tracker.grids()
            grids = {n: level_grids[s.layer.level] for n, s in self._states.items()}
            self._check_budget([grids[n] for n in self._states])  # before anything is allocated
            for n, s in self._states.items():
                if s.grid is not None and s.grid != grids[n] and s.count:
                    raise ValueError(f"layer {n}: latent size changed from grid {s.grid} to {grids[n]} "
                                     f"within one capture; use one capture per resolution")
                s.grid = grids[n]
            self._latent_hw = hw
        cfg = self.cfg
        if cfg is None:  # diffusers builds the CFG batch as torch.cat([latents] * 2): identical halves
            cfg = batch % 2 == 0 and batch >= 2 and torch.equal(sample[: batch // 2], sample[batch // 2:])
        if cfg and batch % 2:
            raise ValueError(f"cfg=True but the denoiser batch ({batch}) is odd")
        if not cfg or self.cfg_branch == "both":
            self._batch_sel = slice(None)
        elif self.cfg_branch == "cond":
            self._batch_sel = slice(batch // 2, batch)
        else:
            self._batch_sel = slice(0, batch // 2)
        self._active_call = _matches(self._step, self.steps) and _matches(t_val, self.timesteps)
        self.calls.append({"step": self._step, "timestep": t_val, "batch": batch, "cfg": bool(cfg),
                           "captured": self._active_call})

    def _accumulate(self, state: _LayerState, attn, hidden_states, attention_mask, temb) -> None:
        x = hidden_states
        if attn.spatial_norm is not None:
            x = attn.spatial_norm(x, temb)
        if x.ndim == 4:
            b, c, h, w = x.shape
            x = x.view(b, c, h * w).transpose(1, 2)
        batch, n_tok, _ = x.shape
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, n_tok, batch)
            mask = mask.view(batch, attn.heads, -1, mask.shape[-1])[self._batch_sel].float()
        x = x[self._batch_sel]
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        q, k = attn.to_q(x), attn.to_k(x)
        nb, heads = q.shape[0], attn.heads
        d = k.shape[-1] // heads
        q = q.view(nb, n_tok, heads, d).transpose(1, 2)
        k = k.view(nb, n_tok, heads, d).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        grid = state.grid
        if grid is None or grid[0] * grid[1] != n_tok:
            raise ValueError(f"layer {state.layer.name}: {n_tok} tokens do not match its grid {grid}")
        q = q.float() * attn.scale
        k = k.float()
        if state.acc is None:
            state.acc = torch.zeros(n_tok, n_tok, dtype=torch.float32, device=q.device)
        chunk = max(1, self.workspace_bytes // (4 * nb * heads * n_tok))
        kt = k.transpose(-1, -2)
        for i in range(0, n_tok, chunk):
            s = torch.matmul(q[:, :, i:i + chunk], kt)  # [nb, heads, c, N]
            if mask is not None:
                s = s + (mask if mask.shape[2] == 1 else mask[:, :, i:i + chunk])
            p = torch.softmax(s, dim=-1)
            state.acc[i:i + chunk] += p.sum(dim=(0, 1))
        state.count += nb * heads


def capture_self_attention(target, layers: LayerSelector = None, *, steps: StepSelector = None,
                           timesteps: TimestepSelector = None, cfg_branch: str = "cond",
                           cfg: Optional[bool] = None, memory_budget_gb: float = 4.0,
                           latent_hw: Optional[tuple[int, int]] = None,
                           workspace_mb: float = 256.0, text_mask=None) -> AttentionCapture:
    """Context manager recording head-, timestep-, prompt-averaged self-attention maps.

    Example::

        with capture_self_attention(pipe, steps=range(0, 20, 2)) as cap:
            images = pipe(prompts, num_inference_steps=20).images
        cap.maps["down_blocks.0.attentions.0.transformer_blocks.0.attn1"]  # [N, N] fp32
        cap.grids[...]                                                        # (H', W')

    Args:
        target: a diffusers pipeline (its ``unet`` or ``transformer`` is used) or the denoiser itself
            (``UNet2DConditionModel`` or ``PixArtTransformer2DModel``), on any device and dtype.
        layers: which self-attention layers: None (all), names, indices into
            :func:`~aconvlib.models.self_attention_layers` order, or a predicate on
            :class:`~aconvlib.models.SelfAttentionLayer`.
        steps: which denoiser calls, by step index within a sampling run (0 = first call; a run
            starts whenever the timestep does not decrease): None (all), ints, or a predicate.
        timesteps: which calls, by scheduler timestep value (matched within 1e-3): None, values,
            or a predicate. A call is captured when both ``steps`` and ``timesteps`` match.
        cfg_branch: with a CFG batch ``[uncond, cond]`` (as diffusers concatenates it), average the
            conditional half (``"cond"``, default), the unconditional half, or ``"both"``.
        cfg: whether denoiser batches are CFG batches. None detects it per call: an even batch whose
            two halves of the latent input are identical (``torch.cat([latents] * 2)``).
        memory_budget_gb: limit on the capture's extra memory (accumulators + workspace); exceeding
            it raises :class:`MemoryBudgetError` before any work: here for the expected latent size,
            and again before a denoiser call at a larger latent size.
        latent_hw: expected latent (h, w) for the budget check; defaults to ``config.sample_size``.
        workspace_mb: size of one chunk of fp32 scores [batch, heads, chunk, N].
        text_mask: joint-attention transformers: the prompt's token mask [L] or [P, L] (True = prompt token,
            False = padding; :func:`aconvlib.models.families.joint.prompt_token_mask`), one row per item of the
            captured branch or one for all; needed for ``padding_share`` / ``prompt_share``.

    Returns:
        An :class:`AttentionCapture`; enter it with ``with``.
    """
    return AttentionCapture(get_denoiser(target), layers, steps=steps, timesteps=timesteps,
                            cfg_branch=cfg_branch, cfg=cfg, memory_budget_gb=memory_budget_gb,
                            latent_hw=latent_hw, workspace_mb=workspace_mb, text_mask=text_mask)
