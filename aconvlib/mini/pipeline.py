"""``MiniPipeline``: text-to-image sampling for mini-sd / mini-dit with the diffusers calling convention.

``pipe(prompt, num_inference_steps=20, guidance_scale=4.5, generator=None, height=64, width=64)``
returns an object with ``.images`` (PIL list, or a (B,3,H,W) tensor / (B,H,W,3) array in [0,1]).
The denoiser is ``pipe.unet`` (``UNet2DConditionModel``) or ``pipe.transformer``
(``PixArtTransformer2DModel``) and is called exactly as diffusers' SD / PixArt pipelines call it, with
the classifier-free-guidance batch ``[uncond, cond]``; attention processors installed on it apply.
Saved in diffusers ``save_pretrained`` layout: ``unet|transformer/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/`` and ``model_index.json``.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..models import family_of, get_family
from .models import LATENT_CHANNELS, LATENT_FACTOR, denoise, from_latent
from .tokenizer import WordTokenizer


class PromptWarning(UserWarning):
    """A prompt an embedded model cannot read whole: words outside its vocabulary (read as ``<unk>``) or more
    words than its text encoder takes (cut off)."""


def prompt_problems(tokenizer: WordTokenizer, prompts) -> list[str]:
    """One line per problem of ``prompts`` for this tokenizer (empty when the model reads them whole)."""
    from .dataset import describe_vocabulary

    out = []
    unknown = tokenizer.unknown_words(prompts)
    if unknown:
        out.append(f"the embedded models do not know the word(s) {', '.join(repr(w) for w in unknown)} (each is "
                   f"read as <unk>, so the image will not show it); they understand {describe_vocabulary()}")
    room = tokenizer.model_max_length - 2
    longest = max((len(tokenizer.words(p)) for p in ([prompts] if isinstance(prompts, str) else prompts)), default=0)
    if longest > room:
        out.append(f"a prompt has {longest} words but the text encoder reads only the first {room}: the rest is cut")
    return out


@dataclass
class MiniPipelineOutput:
    images: object


class MiniPipeline:
    """Text → 64×64 image pipeline over a fixed pixel-unshuffle latent (see :mod:`aconvlib.mini.models`)."""

    def __init__(self, denoiser, text_encoder, tokenizer: WordTokenizer, scheduler):
        fam = family_of(denoiser)
        self.family = fam.name
        self.denoiser_name = fam.pipeline_attr
        setattr(self, self.denoiser_name, denoiser)
        self.text_encoder, self.tokenizer, self.scheduler = text_encoder, tokenizer, scheduler
        self.vae_scale_factor = LATENT_FACTOR

    # -- diffusers-like plumbing ---------------------------------------------------------------------
    @property
    def denoiser(self):
        return getattr(self, self.denoiser_name)

    @property
    def components(self) -> dict:
        return {self.denoiser_name: self.denoiser, "text_encoder": self.text_encoder,
                "tokenizer": self.tokenizer, "scheduler": self.scheduler}

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def to(self, device=None, dtype=None) -> "MiniPipeline":
        for m in (self.denoiser, self.text_encoder):
            m.to(device=device, dtype=dtype)
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        self._progress = kwargs

    def save_pretrained(self, path, dtype: torch.dtype = torch.float16) -> None:
        """Write the diffusers folder layout (weights as ``dtype`` safetensors)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, m in ((self.denoiser_name, self.denoiser), ("text_encoder", self.text_encoder)):
            copy.deepcopy(m).to(dtype).save_pretrained(path / name, safe_serialization=True)
        self.tokenizer.save_pretrained(path / "tokenizer")
        self.scheduler.save_pretrained(path / "scheduler")
        index = {"_class_name": "MiniPipeline", "_module": "aconvlib.mini.pipeline",
                 self.denoiser_name: ["diffusers", type(self.denoiser).__name__],
                 "text_encoder": ["transformers", "CLIPTextModel"],
                 "tokenizer": ["aconvlib.mini.tokenizer", "WordTokenizer"],
                 "scheduler": ["diffusers", type(self.scheduler).__name__]}
        (path / "model_index.json").write_text(json.dumps(index, indent=1))

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype: torch.dtype = torch.float32) -> "MiniPipeline":
        """Load a saved pipeline (offline; no hub access)."""
        from diffusers import DPMSolverMultistepScheduler
        from transformers import CLIPTextModel

        path = Path(path)
        fam = get_family("dit" if (path / "transformer").is_dir() else "unet")
        den = fam.model_class().from_pretrained(path / fam.pipeline_attr, torch_dtype=dtype)
        te = CLIPTextModel.from_pretrained(path / "text_encoder", torch_dtype=dtype)
        sched = DPMSolverMultistepScheduler.from_pretrained(path / "scheduler")
        return cls(den.eval(), te.eval(), WordTokenizer.from_pretrained(path / "tokenizer"), sched).to(device)

    # -- sampling ----------------------------------------------------------------------------------------
    def unknown_words(self, prompts) -> list[str]:
        """Words of ``prompts`` this model's closed vocabulary does not hold (each would be read as ``<unk>``)."""
        return self.tokenizer.unknown_words(prompts)

    def warn_prompt_problems(self, prompts) -> None:
        """Warn (:class:`PromptWarning`) when a prompt has words the model cannot read or more words than it
        takes, naming them and listing what it understands. ``aconv generate`` makes this an error unless
        ``--allow-unknown-words``."""
        import warnings

        for problem in prompt_problems(self.tokenizer, prompts):
            warnings.warn(problem, PromptWarning, stacklevel=3)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """(B, L, D) text states of the last text-encoder layer."""
        tok = self.tokenizer(prompts, return_tensors="pt")
        ids = tok["input_ids"].to(self.text_encoder.device)
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def __call__(self, prompt, num_inference_steps: int = 20, guidance_scale: float = 4.5, generator=None,
                 height: int = 64, width: int = 64, negative_prompt=None, num_images_per_prompt: int = 1,
                 latents: torch.Tensor | None = None, output_type: str = "pil", return_dict: bool = True):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        self.warn_prompt_problems(prompts + ([] if negative_prompt is None else
                                           [negative_prompt] if isinstance(negative_prompt, str)
                                           else list(negative_prompt)))
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        mult = LATENT_FACTOR * (self.denoiser.config.patch_size if self.family == "dit" else 1)
        if height % mult or width % mult:
            raise ValueError(f"height and width must be multiples of {mult} for this model, got {height}x{width}")
        B, dev, dt = len(prompts), self.device, self.dtype
        cfg = guidance_scale > 1.0
        cond = self.encode_prompt(prompts)
        if cfg:
            neg = negative_prompt if negative_prompt is not None else ""
            neg = [neg] * B if isinstance(neg, str) else [n for n in neg for _ in range(num_images_per_prompt)]
            text = torch.cat([self.encode_prompt(neg), cond])
        else:
            text = cond
        shape = (B, LATENT_CHANNELS, height // LATENT_FACTOR, width // LATENT_FACTOR)
        if latents is None:
            latents = torch.randn(shape, generator=generator, device=generator.device if generator else "cpu",
                                  dtype=torch.float32)
        x = latents.to(dev, torch.float32) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=dev)
        for t in self.scheduler.timesteps:
            inp = torch.cat([x, x]) if cfg else x
            inp = self.scheduler.scale_model_input(inp, t)
            tt = t.expand(inp.shape[0]) if self.family == "dit" else t
            out = denoise(self.denoiser, inp.to(dt), tt, text.to(dt)).float()
            if cfg:
                u, c = out.chunk(2)
                out = u + guidance_scale * (c - u)
            x = self.scheduler.step(out, t, x, return_dict=False)[0]
        img = (from_latent(x) / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            images = img.cpu()
        else:
            arr = img.permute(0, 2, 3, 1).cpu().numpy()
            if output_type == "np":
                images = arr
            else:
                from PIL import Image

                images = [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]
        return MiniPipelineOutput(images) if return_dict else (images,)
