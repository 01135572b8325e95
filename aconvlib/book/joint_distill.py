"""Chapter 7 on joint-attention transformers (FLUX.1, SD3.5): the distiller runs on the ΔConv hybrid.

No distilled hybrid of a real joint-attention model exists; distilling one takes a GPU budget like the paper's.
What the chapter can show on any machine is that the whole path works on the model it loads: the teacher's own
samples are encoded by its VAE into flow-matching latents, the prompts by its text encoders (with the pooled
embedding the transformer needs), the hybrid replaces every attention layer, and :class:`~aconvlib.training.
accelerated.AcceleratedDistiller` takes a few steps of the paper's losses (feature loss per layer + the flow-matching
velocity loss), only the hybrid's parameters changing. :func:`distill_steps` does that and reports each step's
losses; a handful of steps is a check of the path, not a distilled student.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["DistillCheck", "distill_steps", "encode_joint_prompts", "encode_joint_images"]


def encode_joint_prompts(pipe, prompts: Sequence[str], max_sequence_length: Optional[int] = None):
    """``(text_states [P, L, D], pooled [P, D'])`` of ``prompts`` as the pipeline encodes them for the transformer
    (FLUX: T5 states and the pooled CLIP embedding; SD3: CLIP + T5 states and both pooled CLIP embeddings); no
    classifier-free guidance branch."""
    from ..models import family_of

    den = pipe.transformer
    kw = {} if max_sequence_length is None else {"max_sequence_length": int(max_sequence_length)}
    with torch.no_grad():
        if family_of(den).kind(den) == "flux":
            states, pooled, _ = pipe.encode_prompt(list(prompts), None, **kw)
        else:
            states, _, pooled, _ = pipe.encode_prompt(list(prompts), None, None, do_classifier_free_guidance=False,
                                                      **kw)
    return states, pooled


def encode_joint_images(pipe, images: np.ndarray) -> torch.Tensor:
    """uint8 images [P, H, W, 3] → the transformer's latents [P, 16, H/8, W/8]: the VAE's posterior mean, shifted and
    scaled as the pipeline does (``(z − shift_factor) · scaling_factor``)."""
    vae = pipe.vae
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        z = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean.float()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((z - shift) * vae.config.scaling_factor).cpu()


class DistillCheck(dict):
    """What :func:`distill_steps` measured: ``log`` (one dict per step: step, loss, out, feat), ``changed`` (the
    hybrid's parameters moved), ``trainable`` (its parameter count), ``only_adapter_trains`` (no other parameter
    of the transformer requires a gradient), ``layers`` (the converted layers by type)."""


def distill_steps(pipe, prompts: Sequence[str], images: np.ndarray, steps: int = 2, *, device: str = "cpu",
                  kernel_sizes="paper", max_sequence_length: Optional[int] = None, seed: int = 0,
                  out_dir=None) -> DistillCheck:
    """Distil ``pipe``'s joint-attention transformer into the ΔConv hybrid for ``steps`` steps of batch 1 on its
    own samples ``images`` (uint8 [P, H, W, 3]) with their ``prompts``, and report the losses per step.

    The pipeline is used as it is, in its dtype (half precision: autocast, the hybrid in fp32; the teacher is the
    stock transformer: the distiller shares its frozen weights
    and swaps the original attention modules in); afterwards the pipeline's transformer holds the hybrid.
    ``out_dir`` (default: a temporary folder) receives the run's log and adapter.
    """
    from ..mixers.convert import get_adapter, mixer_layers
    from ..training.accelerated import AcceleratedDistiller, RunConfig
    from ..training.distill import DistillConfig

    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if len(prompts) != len(images) or not len(prompts):
        raise ValueError(f"distill_steps needs one image per prompt, got {len(prompts)} prompts and {len(images)} "
                         "images")
    den = pipe.transformer
    states, pooled = encode_joint_prompts(pipe, prompts, max_sequence_length)
    latents = encode_joint_images(pipe, images)

    def batches(start):
        i = start
        while True:
            j = i % len(prompts)
            yield latents[j:j + 1], states[j:j + 1].float().cpu(), {"pooled_projections": pooled[j:j + 1].float().cpu()}
            i += 1

    cfg = DistillConfig(steps=steps, batch=1, warmup=1, ckpt_every=max(steps, 10), log_every=1,
                        kernel_sizes=kernel_sizes, caption_dropout=0.0, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(out_dir) if out_dir is not None else Path(tmp)
        # a half-precision pipeline trains under autocast in its dtype (the hybrid's weights stay fp32)
        mixed = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(den.dtype, "no")
        d = AcceleratedDistiller(pipe, batches, cfg, out, run=RunConfig(mixed_precision=mixed), device=device,
                                 quiet=True)
        before = {k: v.detach().clone() for k, v in d.adapter.state_dict().items()}
        d.run()
        log = [json.loads(line) for line in (out / "distill_log.jsonl").read_text().splitlines()]
        after = get_adapter(den).state_dict()
        kinds: dict[str, int] = {}
        for _, w in mixer_layers(den):
            kinds[type(w).__name__] = kinds.get(type(w).__name__, 0) + 1
        adapter_ids = {id(p) for p in d.adapter.parameters()}
        only_adapter = {id(p) for p in den.parameters() if p.requires_grad} <= adapter_ids
        return DistillCheck(log=[{k: r[k] for k in ("step", "loss", "out", "feat") if k in r} for r in log
                                 if "loss" in r],
                            changed=any(not torch.equal(before[k], after[k].to(before[k].device)) for k in before),
                            trainable=sum(p.numel() for p in d.adapter.parameters()), only_adapter_trains=only_adapter,
                            layers=kinds)
