"""Preview images of a student during distillation: :class:`PreviewSampler` and :func:`image_grid`."""
from __future__ import annotations

import contextlib

import torch

from ..models import denoise

__all__ = ["PreviewSampler", "image_grid"]


def image_grid(images, cols: int | None = None):
    """PIL images of one size → one PIL grid image."""
    from PIL import Image

    n = len(images)
    cols = cols or min(n, 4)
    rows = -(-n // cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), ((i % cols) * w, (i // cols) * h))
    return grid


class PreviewSampler:
    """Preview images of a (student) denoiser for a few prompts, without the text encoders.

    The prompts' text states and the unconditional ones come from a
    :class:`~aconvlib.training.encoding.PipelineEncoder` once, at construction (so the text encoders may
    leave the device afterwards); each call samples with a fresh copy of the pipeline's scheduler,
    classifier-free guidance (the pipeline's default scale) and the same seed, and decodes with the VAE.
    """

    def __init__(self, pipe, encoder, prompts: list[str], *, px: int, steps: int = 20, guidance: float | None = None,
                 seed: int = 0):
        from .teacher_data import teacher_call_defaults

        self.prompts, self.px, self.steps, self.seed = list(prompts), int(px), int(steps), seed
        self.vae, self.latent_factor = pipe.vae, encoder.latent_factor
        self.scheduler = pipe.scheduler
        self.guidance = float(guidance if guidance is not None else teacher_call_defaults(pipe).get("guidance_scale", 4.5))
        self.text = encoder.encode_text(self.prompts)
        self.uncond = encoder.unconditional()
        self.time_ids = encoder.time_ids(2 * len(self.prompts), self.px, self.px)

    @torch.no_grad()
    def __call__(self, denoiser, autocast=contextlib.nullcontext):
        from PIL import Image

        dev = next(p.device for p in denoiser.parameters())
        n = len(self.prompts)
        sched = type(self.scheduler).from_config(self.scheduler.config)
        sched.set_timesteps(self.steps, device=dev)
        both = {k: torch.cat([self.uncond[k].expand(n, *v.shape[1:]).to(v.dtype), v]).to(dev)
                for k, v in self.text.items()}
        text = both["prompt_embeds"].float()
        cond = {}
        if "pooled_prompt_embeds" in both:      # the encoder's outputs say which conditioning the denoiser takes
            cond = {"text_embeds": both["pooled_prompt_embeds"].float(), "time_ids": self.time_ids.to(dev)}
        elif "prompt_attention_mask" in both:
            cond = {"encoder_attention_mask": both["prompt_attention_mask"]}
        h = self.px // self.latent_factor
        g = torch.Generator("cpu").manual_seed(self.seed)
        lat = torch.randn(n, denoiser.config.in_channels, h, h, generator=g).to(dev) * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([lat, lat]), t)
            with autocast():
                out = denoise(denoiser, inp, t.expand(2 * n), text, **cond).float()
            u, c = out.chunk(2)
            lat = sched.step(u + self.guidance * (c - u), t, lat, return_dict=False)[0]
        cfg = self.vae.config
        z = lat / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        with autocast():
            img = self.vae.decode(z.to(self.vae.dtype)).sample.float()
        arr = ((img / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]

