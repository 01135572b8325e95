"""The real-model data path: images and captions encoded by the pipeline itself, cached, batched for distillation.

    enc = PipelineEncoder(pipe)                       # SD1.5, SDXL or PixArt-Σ pipeline (any hub id)
    cache = build_image_cache(enc, "photos/", "cache/")      # validate, bucket, encode once (resumable)
    batches = cached_batches(cache, enc.kind, batch=16, seed=0, caption_dropout=0.1)
    x0, text_states, cond = next(batches(0))          # the Distiller's format

What the encoder does, per family (``enc.kind``, from the denoiser: ``sd15``, ``sdxl``, ``pixart``):

* images: ``vae.encode(pixels).latent_dist`` — its mean (``latents="mean"``, default: the cache is
  then deterministic) or one sample — then ``(z − shift_factor) · scaling_factor`` from the VAE's
  config (0.18215 for SD1.5, 0.13025 for the SDXL VAE that SDXL and PixArt-Σ use); latent factor
  ``pipe.vae_scale_factor`` (8).
* captions: the pipeline's own ``encode_prompt`` without CFG. SD1.5: ``prompt_embeds`` [B, 77, 768];
  SDXL: ``prompt_embeds`` [B, 77, 2048] and ``pooled_prompt_embeds`` [B, 1280], plus ``add_time_ids``
  (original size, crop top-left, target size: what the bucket preprocessing recorded) stored by the
  cache; PixArt-Σ: ``prompt_embeds`` [B, 300, 4096] and ``prompt_attention_mask`` [B, 300]
  (``max_sequence_length`` 300).
* the empty caption: whatever the pipeline uses as its unconditional branch — the negative outputs of
  ``encode_prompt(..., do_classifier_free_guidance=True)`` with the default negative prompt. That is the
  encoding of "" for SD1.5 and PixArt-Σ, and zeros for SDXL (``force_zeros_for_empty_prompt``). The
  cache stores it once (``uncond``) and caption dropout swaps it in; an empty caption in the data means
  the same thing.

Batches (:func:`cached_batches`) follow the Distiller's format ``(x0, text_states, cond)``:
``cond = {}`` (SD1.5), ``{"text_embeds", "time_ids"}`` (SDXL), ``{"encoder_attention_mask"}`` (PixArt),
the keyword arguments of :func:`aconvlib.models.denoise`.

Caches at scale (:class:`CacheSet`): the encoding batches are dealt round-robin to the processes of a
data-parallel run (batch ``k`` to process ``k mod W``), each writes its own
:class:`~aconvlib.training.latent_cache.LatentCache` ``part-RR/``, and ``parts.json`` records ``W``. The
reader puts batch ``k`` back at position ``k``, so the sample order (and the sampler's batches) is the
same whatever the number of processes that built it; a complete cache is reused by any number of
processes. Validity is the LatentCache's: the encoders' fingerprint (:meth:`PipelineEncoder.fingerprint`)
and the dataset key (the prepared data's fingerprint) must match, or the cache is rebuilt.
"""
from __future__ import annotations

import bisect
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ..models import family_of, get_denoiser, text_conditioning
from ..utils import atomic_write_json, parse_dtype
from .data import (BucketBatchSampler, BucketTable, DataError, ImageCaptionFolder, ImageCaptionSource,
                       PreparedBuckets, TarShards, prepare_buckets)
from .latent_cache import CacheError, LatentCache, gather_arguments, model_fingerprint

__all__ = ["CacheSet", "PipelineEncoder", "build_cache_parts", "build_image_cache", "cached_batches", "grid_factors",
           "grid_multiple",
           "open_source", "parse_buckets", "to_distill_batch"]

PARTS_NAME = "parts.json"
def grid_factors(denoiser, latent_factor: int) -> tuple[int, int, int]:
    """(latent factor, patch size, U-Net down-sampling) of a denoiser: pixel sizes must be multiples of their product
    (its family's ``grid_factors`` of its config, as ``ModelSpec.grid_factors`` reads the shipped config)."""
    return family_of(denoiser).grid_factors(denoiser.config, latent_factor)


def grid_multiple(denoiser, latent_factor: int) -> int:
    """Pixel sizes must be multiples of this: VAE factor × (DiT patch size, or the U-Net's 2^(levels−1))."""
    a, b, c = grid_factors(denoiser, latent_factor)
    return a * b * c


class PipelineEncoder:
    """Encodes images and captions as a diffusers text-to-image pipeline does (see the module docstring).

    Args:
        pipe: a Stable Diffusion, SDXL or PixArt(-Σ) pipeline (with ``vae`` and ``encode_prompt``).
        latents: ``"mean"`` (default) or ``"sample"`` of the VAE posterior (a sample uses a generator
            seeded by ``seed`` and the batch's call count, so a rebuilt cache is the same).
        max_sequence_length: PixArt's T5 length (default 300, the pipeline's).
        device: where to encode (default: the VAE's device).
    """

    def __init__(self, pipe, *, latents: str = "mean", max_sequence_length: int | None = None, device=None,
                 seed: int = 0):
        if latents not in ("mean", "sample"):
            raise ValueError(f"latents must be 'mean' or 'sample', not {latents!r}")
        if getattr(pipe, "vae", None) is None or not hasattr(pipe, "encode_prompt"):
            raise ValueError(f"{type(pipe).__name__} has no VAE and encode_prompt: the real-data path needs a "
                             "diffusers SD/SDXL/PixArt pipeline (the embedded mini models distill on their "
                             "procedural dataset)")
        self.pipe = pipe
        self.denoiser = get_denoiser(pipe)
        self.conditioning = family_of(self.denoiser).text_conditioning(self.denoiser)
        self.kind = self.conditioning.kind   # the architecture (family.kind), recorded in the cache settings
        self.latents = latents
        self.max_sequence_length = int(max_sequence_length or 300)
        self.device = torch.device(device) if device is not None else pipe.vae.device
        self.seed, self._calls = seed, 0
        self._uncond: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ facts
    @property
    def latent_factor(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor", 8))

    @property
    def factors(self) -> tuple[int, int, int]:
        """(latent factor, patch size, down-sampling), see :func:`grid_factors`."""
        return grid_factors(self.denoiser, self.latent_factor)

    @property
    def multiple(self) -> int:
        """Pixel sizes must be multiples of this (see :func:`grid_multiple`)."""
        return grid_multiple(self.denoiser, self.latent_factor)

    @property
    def native_px(self) -> int:
        """The denoiser's native image side (config ``sample_size`` × latent factor)."""
        s = self.denoiser.config.sample_size
        return int(s if isinstance(s, int) else s[0]) * self.latent_factor

    def text_encoders(self) -> list[torch.nn.Module]:
        return [m for m in (getattr(self.pipe, "text_encoder", None), getattr(self.pipe, "text_encoder_2", None))
                if m is not None]

    def settings(self) -> dict:
        """What, besides the weights, changes the encodings."""
        cfg = self.pipe.vae.config
        return {"kind": self.kind, "latents": self.latents, "scaling_factor": float(cfg.scaling_factor),
                "shift_factor": float(getattr(cfg, "shift_factor", None) or 0.0),
                "max_sequence_length": self.max_sequence_length if self.conditioning.attention_mask else None,
                "force_zeros_for_empty_prompt": bool(getattr(self.pipe.config, "force_zeros_for_empty_prompt", False))}

    def fingerprint(self, full: bool = False) -> str:
        """The cache key of the encoders (:func:`~aconvlib.training.latent_cache.model_fingerprint` of the VAE
        and text encoders, sampled bytes unless ``full``) and :meth:`settings`."""
        return model_fingerprint(self.pipe.vae, *self.text_encoders(), json.dumps(self.settings(), sort_keys=True),
                                 full=full)

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] in [-1, 1] → scaled latents [B, C, H/8, W/8] (float32, CPU)."""
        vae = self.pipe.vae
        x = pixel_values.to(self.device, vae.dtype)
        dist = vae.encode(x).latent_dist
        if self.latents == "mean":
            z = dist.mean
        else:
            g = torch.Generator(self.device).manual_seed(self.seed + self._calls)
            self._calls += 1
            z = dist.sample(generator=g)
        s = self.settings()
        return ((z.float() - s["shift_factor"]) * s["scaling_factor"]).cpu()

    def _encode(self, prompts: list[str], cfg: bool):
        p, dev, c = self.pipe, self.device, self.conditioning
        if c.attention_mask:   # PixArt: T5 with its mask
            return p.encode_prompt(prompts, do_classifier_free_guidance=cfg, negative_prompt="", device=dev,
                                   max_sequence_length=self.max_sequence_length)
        if c.pooled_and_time_ids:   # SDXL: two CLIP encoders, pooled embeddings
            return p.encode_prompt(prompts, device=dev, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
                                   negative_prompt=None)
        return p.encode_prompt(prompts, dev, 1, cfg, negative_prompt=None)

    @torch.no_grad()
    def _text(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        out, c = self._encode(prompts, False), self.conditioning
        if c.attention_mask:
            return {"prompt_embeds": out[0], "prompt_attention_mask": out[1]}
        if c.pooled_and_time_ids:
            return {"prompt_embeds": out[0], "pooled_prompt_embeds": out[2]}
        return {"prompt_embeds": out[0]}

    @torch.no_grad()
    def unconditional(self) -> dict[str, torch.Tensor]:
        """The pipeline's unconditional text states, {name: [1, ...]} (CPU)."""
        if self._uncond is None:
            out, c = self._encode(["x"], True), self.conditioning
            if c.attention_mask:
                u = {"prompt_embeds": out[2], "prompt_attention_mask": out[3]}
            elif c.pooled_and_time_ids:
                u = {"prompt_embeds": out[1], "pooled_prompt_embeds": out[3]}
            else:
                u = {"prompt_embeds": out[1]}
            self._uncond = {k: v[:1].detach().cpu() for k, v in u.items()}
        return self._uncond

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Text states of ``captions`` {name: [B, ...]} (CPU); an empty caption gets :meth:`unconditional`."""
        captions = [str(c) for c in captions]
        empty = [i for i, c in enumerate(captions) if not c.strip()]
        if len(empty) == len(captions):
            return {k: v.expand(len(captions), *v.shape[1:]).clone() for k, v in self.unconditional().items()}
        out = {k: v.detach().cpu() for k, v in self._text(captions).items()}
        if empty:
            idx = torch.tensor(empty)
            for k, u in self.unconditional().items():
                out[k][idx] = u.to(out[k].dtype)
        return out

    # ------------------------------------------------------------------ batches
    def time_ids(self, n: int, height: int, width: int) -> torch.Tensor:
        """SDXL's default micro-conditioning for generated images: (H, W, 0, 0, H, W) per row."""
        return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(n, 1)


def to_distill_batch(kind: str, gathered: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A cache batch ({latents, text: {...}, add_time_ids?}) → ``(x0, text_states, cond)`` for the Distiller
    (floating tensors as float32; PixArt's mask as is). ``kind``: the architecture (``PipelineEncoder.kind``)."""
    text = gathered["text"]
    x0 = gathered["latents"].float()
    states = text["prompt_embeds"].float()
    c = text_conditioning(kind)
    if c.pooled_and_time_ids:
        if "add_time_ids" not in gathered:
            raise CacheError("an SDXL batch needs add_time_ids (original size, crop, target size): rebuild the cache "
                             "from bucketed data (prepare_buckets records them) or teacher data")
        return x0, states, {"text_embeds": text["pooled_prompt_embeds"].float(),
                            "time_ids": gathered["add_time_ids"].float()}
    if c.attention_mask:
        return x0, states, {"encoder_attention_mask": text["prompt_attention_mask"]}
    return x0, states, {}


# --------------------------------------------------------------------------------------------------
# Sources and buckets
# --------------------------------------------------------------------------------------------------

def open_source(data: str | os.PathLike | ImageCaptionSource, *, image_modes: str = "convert",
                progress: bool = True, **options) -> ImageCaptionSource:
    """An image–caption source from a folder, a manifest (``.jsonl .json .csv .tsv``) or tar shards
    (``x.tar``, ``d-{000..009}.tar``), validated (:class:`~aconvlib.training.data.DataError` on any problem).

    ``image_modes``: ``"convert"`` (default: every mode with a defined conversion becomes 8-bit RGB, see
    :mod:`aconvlib.training.data`) or ``"same"`` (a dataset whose images have different modes, e.g.
    RGB and RGBA, is refused, naming the first image of each minority mode).
    """
    if image_modes not in ("convert", "same"):
        raise DataError(f"image_modes must be 'convert' or 'same', not {image_modes!r}")
    if isinstance(data, ImageCaptionSource):
        src = data
    else:
        s = str(data)
        p = Path(s)
        if "{" in s or s.endswith(".tar") or (p.is_file() and p.suffix == ".tar"):
            src = TarShards(s, progress=progress, **options)
        elif p.is_file():
            src = ImageCaptionFolder.from_manifest(p, progress=progress, **options)
        else:
            src = ImageCaptionFolder(p, progress=progress, **options)
    if image_modes == "same":
        by_mode: dict[str, list[str]] = {}
        for r in src.records:
            by_mode.setdefault(r.mode, []).append(r.origin)
        if len(by_mode) > 1:
            major = max(by_mode, key=lambda m: len(by_mode[m]))
            others = "; ".join(f"{m}: {len(v)} (first {v[0]})" for m, v in by_mode.items() if m != major)
            raise DataError(f"{src.describe()}: images have mixed modes ({len(by_mode[major])} {major}; {others}); "
                            "convert them to one mode, or allow conversion to RGB (image_modes='convert')")
    return src


def parse_buckets(spec: str | Sequence | BucketTable | None, model: str | None, factors: tuple[int, int, int],
                  default_px: int) -> BucketTable:
    """A bucket table: ``None``/``"model"`` (the model's own table, see ``BucketTable.for_model``, or one
    square bucket of ``default_px`` for an unknown model), ``"square"`` (``default_px``² only), a list of
    (h, w), or ``"HxW,HxW,..."``. Validated against ``factors`` (:func:`grid_factors`; DataError naming the
    buckets whose sides are not multiples of their product)."""
    if isinstance(spec, BucketTable):
        table = spec
    elif spec is None or spec == "model":
        try:
            table = BucketTable.for_model(model or "", validate=False)
        except DataError:
            table = BucketTable([(default_px, default_px)], "square")
    elif spec == "square":
        table = BucketTable([(default_px, default_px)], "square")
    elif isinstance(spec, str):
        sizes = []
        for part in spec.split(","):
            part = part.strip().lower()
            try:
                h, w = (int(v) for v in part.split("x"))
            except ValueError:
                raise DataError(f"bucket {part!r}: write buckets as HxW (height x width in pixels), e.g. 512x768") from None
            sizes.append((h, w))
        table = BucketTable(sizes, "custom")
    else:
        table = BucketTable([tuple(s) for s in spec], "custom")
    return table.validate(*factors)


# --------------------------------------------------------------------------------------------------
# Caches in parts (one per process of the run that built them)
# --------------------------------------------------------------------------------------------------

class _Interleaved(Sequence):
    """Batches ``part, part + W, part + 2W, …`` of a Sequence of batches."""

    def __init__(self, batches: Sequence, part: int, world: int):
        self.batches, self.part, self.world = batches, part, world

    def __len__(self) -> int:
        return len(range(self.part, len(self.batches), self.world))

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(len(self)))]
        if not 0 <= j < len(self):
            raise IndexError(j)
        return self.batches[self.part + j * self.world]


def _read_parts(root: Path) -> dict | None:
    try:
        info = json.loads((root / PARTS_NAME).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == "aconvlib-cache-parts" else None


def build_cache_parts(root: str | os.PathLike, fingerprint: str, dataset: str, batches: Sequence,
                      encode_images: Callable | None, encode_text: Callable, *, dtype=None, process_index: int = 0,
                      num_processes: int = 1, barrier: Callable[[], None] | None = None, progress: bool = True,
                      overwrite: bool = False) -> "CacheSet":
    """Build (or reuse) a :class:`CacheSet` in ``root`` from a Sequence of batches (see
    :meth:`LatentCache.build`), the batches dealt round-robin to ``num_processes`` processes; every
    process calls this with its ``process_index`` and a ``barrier`` (e.g. ``state.wait_for_everyone``).
    A complete set with the same fingerprint and dataset is reused as is (any number of processes)."""
    root = Path(root)
    barrier = barrier or (lambda: None)
    info = _read_parts(root)
    if (not overwrite and info and info.get("fingerprint") == fingerprint and info.get("dataset") == dataset
            and info.get("complete")):
        try:
            return CacheSet(root, fingerprint, dataset)
        except CacheError:
            pass  # a part is missing or stale: rebuild below
    barrier()  # everyone has decided before the main process rewrites parts.json
    if process_index == 0:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / PARTS_NAME, {"format": "aconvlib-cache-parts", "fingerprint": fingerprint,
                                        "dataset": dataset, "world": num_processes, "batches": len(batches),
                                        "complete": False})
    barrier()
    W, r = num_processes, process_index
    if r < len(batches):
        LatentCache(root / f"part-{r:02d}", fingerprint, dataset=f"{dataset}|part {r} of {W}").build(
            _Interleaved(batches, r, W), encode_images, encode_text, dtype=parse_dtype(dtype), overwrite=overwrite,
            progress=progress and r == 0)
    barrier()
    if process_index == 0:
        info = _read_parts(root)
        info["complete"] = True
        atomic_write_json(root / PARTS_NAME, info)
    barrier()
    return CacheSet(root, fingerprint, dataset)


class CacheSet:
    """The parts of a cache built by :func:`build_cache_parts`, read as one cache in the original batch order.

    Same reading interface as :class:`~aconvlib.training.latent_cache.LatentCache`: ``groups()``,
    ``gather(indices | SampledBatch, drop)``, ``uncond()``, ``num_samples``, ``len()`` (batches), ``batch(k)``.
    """

    def __init__(self, root: str | os.PathLike, fingerprint: str, dataset: str):
        self.root = Path(root)
        info = _read_parts(self.root)
        if not info or not info.get("complete"):
            raise CacheError(f"{self.root}: no complete cache ({PARTS_NAME} missing or unfinished); build it first")
        if info.get("fingerprint") != fingerprint or info.get("dataset") != dataset:
            raise CacheError(f"{self.root}: the cache was built for other encoders or data")
        W, K = int(info["world"]), int(info["batches"])
        self.world, self.info = W, info
        self.parts = [LatentCache(self.root / f"part-{r:02d}", fingerprint, dataset=f"{dataset}|part {r} of {W}")
                      for r in range(min(W, K))]
        for p in self.parts:
            if not p.valid():
                raise CacheError(f"{p.dir}: incomplete or stale cache part; rebuild the cache")
        self.counts = []   # per global batch k
        self.buckets = []
        for k in range(K):
            s = self.parts[k % W].meta["shards"][k // W]
            self.counts.append(int(s["count"]))
            self.buckets.append(s["bucket"])
        self.starts = [0]
        for c in self.counts:
            self.starts.append(self.starts[-1] + c)
        # where each batch's first sample sits inside its part
        self._part_starts = []
        for k in range(K):
            p = self.parts[k % W]
            self._part_starts.append(sum(int(s["count"]) for s in p.meta["shards"][:k // W]))

    def __len__(self) -> int:
        return len(self.counts)

    @property
    def num_samples(self) -> int:
        return self.starts[-1]

    def groups(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for k, b in enumerate(self.buckets):
            out.setdefault(b, []).extend(range(self.starts[k], self.starts[k + 1]))
        return out

    def uncond(self) -> dict[str, torch.Tensor]:
        return self.parts[0].uncond()

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range (cache has {self.num_samples})")
        k = bisect.bisect_right(self.starts, i) - 1
        return k % self.world, self._part_starts[k] + (i - self.starts[k])

    def batch(self, k: int, drop=None) -> dict:
        return self.gather(range(self.starts[k], self.starts[k + 1]), drop)

    def gather(self, indices, drop=None) -> dict:
        """Samples by global index (one bucket), in order; rows where ``drop`` get the uncond text states."""
        indices, drop = gather_arguments(indices, drop)
        drop = [False] * len(indices) if drop is None else [bool(d) for d in drop]
        by_part: dict[int, list[int]] = {}
        for pos, i in enumerate(indices):
            by_part.setdefault(self._locate(i)[0], []).append(pos)
        pieces, order = [], []
        for r, positions in by_part.items():
            local = [self._locate(indices[pos])[1] for pos in positions]
            pieces.append(self.parts[r].gather(local, [drop[pos] for pos in positions]))
            order.extend(positions)
        if len(pieces) == 1:
            return pieces[0]
        inv = torch.empty(len(order), dtype=torch.long)
        inv[torch.tensor(order)] = torch.arange(len(order))
        out = {"latents": torch.cat([p["latents"] for p in pieces])[inv],
               "text": {n: torch.cat([p["text"][n] for p in pieces])[inv] for n in pieces[0]["text"]},
               "bucket": pieces[0]["bucket"]}
        if "add_time_ids" in pieces[0]:
            out["add_time_ids"] = torch.cat([p["add_time_ids"] for p in pieces])[inv]
        for f in ("keys", "captions"):
            vals = [x for p in pieces for x in (p[f] or [])] if all(p[f] is not None for p in pieces) else None
            out[f] = None if vals is None else [vals[j] for j in inv.tolist()]
        return out


# --------------------------------------------------------------------------------------------------
# Images → cache → batches
# --------------------------------------------------------------------------------------------------

def build_image_cache(encoder: PipelineEncoder, data, cache_dir: str | os.PathLike, *, model: str | None = None,
                      buckets=None, encode_batch: int = 8, dtype="float16", image_modes: str = "convert",
                      process_index: int = 0, num_processes: int = 1, barrier: Callable[[], None] | None = None,
                      progress: bool = True, source: ImageCaptionSource | None = None) -> CacheSet:
    """Validate ``data`` (folder, manifest or tar shards), bucket and crop it once (``<cache_dir>/prep``), encode
    it with the pipeline once (``<cache_dir>/latents``); reused when nothing changed (see the module docstring).

    ``buckets``: see :func:`parse_buckets` (default: the model's table). ``dtype``: storage dtype of the
    floating tensors. Preparation runs on the main process; encoding on all ``num_processes``.
    ``source``: an already opened (validated) source for ``data``.
    """
    cache_dir = Path(cache_dir)
    barrier = barrier or (lambda: None)
    table = parse_buckets(buckets, model, encoder.factors, encoder.native_px)
    if process_index == 0:
        src = source or open_source(data, image_modes=image_modes, progress=progress)
        prepare_buckets(src, table, cache_dir / "prep", progress=progress)
    barrier()
    prepared = PreparedBuckets(cache_dir / "prep")
    return build_cache_parts(cache_dir / "latents", encoder.fingerprint(), prepared.fingerprint,
                             prepared.encoding_batches(encode_batch), encoder.encode_images, encoder.encode_text,
                             dtype=dtype, process_index=process_index, num_processes=num_processes, barrier=barrier,
                             progress=progress)


def cached_batches(cache, kind: str, batch: int, seed: int = 0, caption_dropout: float = 0.1,
                   drop_last: bool = False) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor, dict]]]:
    """``batches(start_step)`` for the Distiller: batch ``k`` = the bucket sampler's batch ``k`` (one bucket,
    caption dropout to the pipeline's unconditional states), as ``(x0, text_states, cond)`` on the CPU."""
    sampler = BucketBatchSampler(cache, batch, seed=seed, caption_dropout=caption_dropout, drop_last=drop_last)

    def batches(start: int):
        for sb in sampler.iter_from(start):
            yield to_distill_batch(kind, cache.gather(sb))

    batches.sampler = sampler  # type: ignore[attr-defined]
    return batches
