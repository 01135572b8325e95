"""Latent and text-state caching, so that distillation steps run only the denoisers.

Distilling self-attention into ΔConv blocks trains a few adapter weights while the VAE and the text
encoders stay frozen: encoding every image and caption once, ahead of training, removes them from
the training step (and from GPU memory). ::

    fp = model_fingerprint(vae, text_encoder, text_encoder_2, "sdxl-vae-scale=0.13025")
    cache = LatentCache("cache/", fp, dataset=data.fingerprint)   # data: PreparedBuckets
    cache.build(data.encoding_batches(16), encode_images, encode_text)   # no-op when valid
    sampler = BucketBatchSampler(cache, batch_size=8, seed=0, caption_dropout=0.1)
    b = cache.gather(sampler.batch(step))     # latents, text states (dropped rows = uncond), add_time_ids

Callables (they receive CPU tensors, may run on any device, are called under ``torch.no_grad``):

* ``encode_images(pixel_values [B,3,H,W] float32 in [-1,1]) -> latents [B,C,h,w]`` — what it returns
  is what training reads, so include the VAE scaling factor (and shift, for VAEs that have one), and
  choose between ``latent_dist.mean`` and one ``sample()`` there;
* ``encode_text(list[str]) -> dict[str, Tensor]`` with batch-first tensors, e.g. SDXL
  ``{"prompt_embeds", "pooled_prompt_embeds"}``, PixArt-Σ ``{"prompt_embeds", "prompt_attention_mask"}``.

A batch may instead bring its ``latents`` [B,C,h,w] (e.g. sampled by the teacher,
:mod:`aconvlib.training.teacher_data`) and its ``bucket`` (``"HxW"``, the pixel size they decode
to); ``encode_images`` is then not called for it.

Layout of ``cache_dir``: ``shard-00000.safetensors`` … (one per input batch, hence one bucket each:
``latents``, ``text.<name>`` for each text state, ``add_time_ids`` when the batch carries SDXL's
``original_size`` and ``crop_top_left``; keys and captions in the safetensors metadata),
``uncond.safetensors`` (``encode_text([""])``, stored once, so that caption dropout needs no text
encoder at train time) and ``meta.json`` (fingerprint, dataset key, count, per-shard bucket, count and
shapes, dtypes, complete flag). ``add_time_ids`` rows are SDXL's (original h, w, crop top, left,
target h, w), float32.

Validity: the cache is used as is only when ``meta.json`` says complete and its ``fingerprint``
(caller-supplied: see :func:`model_fingerprint`) and ``dataset`` key (e.g.
``PreparedBuckets.fingerprint``, which changes with the source listing) both match; otherwise
``build`` deletes the cache's own files (shards, uncond, meta — nothing else) and rebuilds. A build
killed midway keeps its finished shards (each written atomically and recorded in ``meta.json``);
rerunning ``build`` with the same batches continues after them: a Sequence of batches is indexed
from the first missing shard (nothing before is loaded), an iterator is advanced past the finished
batches (their keys are checked against the stored ones when batches carry ``keys``).
One process builds a cache at a time.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from ..utils import atomic_path, atomic_write_json
from ..utils import fingerprint as _fingerprint

log = logging.getLogger(__name__)

META_NAME = "meta.json"
UNCOND_NAME = "uncond.safetensors"
_SHARD_RE = re.compile(r"^shard-\d{5,}\.safetensors$")
_TEXT_PREFIX = "text."


class CacheError(ValueError):
    """A latent cache cannot be built or read as asked; the message says which file or batch."""


def gather_arguments(indices, drop=None) -> tuple[list[int], Any]:
    """``(indices, drop)`` of a cache's ``gather``: a sampler's ``SampledBatch`` is unpacked (its ``drop`` unless one
    is given), indices become ints; an empty list is a :class:`CacheError`."""
    if hasattr(indices, "indices") and hasattr(indices, "drop"):
        drop = indices.drop if drop is None else drop
        indices = indices.indices
    indices = [int(i) for i in indices]
    if not indices:
        raise CacheError("empty index list")
    return indices, drop


# --------------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------------

_VOLATILE_CONFIG_KEYS = {"transformers_version", "torch_dtype", "dtype", "architectures"}
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_CHUNK = 1 << 24
_SAMPLES = 4096


def _config_dict(module: Any) -> dict:
    cfg = getattr(module, "config", None)
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    try:
        cfg = dict(cfg)
    except (TypeError, ValueError):
        return {"repr": repr(cfg)}
    return {k: v for k, v in cfg.items() if not str(k).startswith("_") and k not in _VOLATILE_CONFIG_KEYS}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bit patterns as a flat integer tensor (same device, no host copy)."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    flat = t.reshape(-1)
    size = flat.element_size()
    if flat.dtype != _INT_VIEW.get(size) and size in _INT_VIEW:
        flat = flat.view(_INT_VIEW[size])
    return flat


def _hash_tensor(h: "hashlib._Hash", t: torch.Tensor, full: bool) -> None:
    if t.device.type == "meta":
        raise CacheError("cannot fingerprint a module with parameters on the 'meta' device; load its weights first")
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    flat = _bits(t)
    n = flat.numel()
    if n == 0:
        return
    if not full:  # the bytes of up to 4096 evenly spaced elements
        k = min(n, _SAMPLES)
        flat = flat[torch.arange(k, device=flat.device, dtype=torch.int64) * (n - 1) // max(k - 1, 1)]
        n = k
    for start in range(0, n, _CHUNK):  # host copies of at most _CHUNK elements at a time
        h.update(flat[start:start + _CHUNK].contiguous().cpu().numpy().data)


def model_fingerprint(*modules: Any, full: bool = True) -> str:
    """A short hex digest identifying frozen encoders, for :class:`LatentCache`'s ``fingerprint``.

    Each argument: a ``torch.nn.Module`` (its class, its ``config`` — diffusers ``FrozenDict`` or
    transformers ``PretrainedConfig`` — minus volatile keys such as ``_name_or_path`` and versions,
    and every state-dict tensor's name, dtype, shape and contents), a mapping of tensors, ``None``, or
    a string/number (e.g. a scaling factor, the encode settings) hashed as text.

    Cost: ``full=True`` (default) feeds every byte of every tensor to sha256 (GPU tensors are copied
    to the host in chunks of 16M elements, so memory stays bounded): about 1–2 s per GB of weights on
    one CPU core (measured: 1.7 s for 1.07 GB fp32 on a busy 2-core machine), plus the device-to-host
    copy — ~2–4 s for SDXL's VAE and two text encoders in fp16, ~10–20 s for PixArt-Σ's T5-XXL.
    ``full=False`` hashes shape, dtype and the bytes of 4096 evenly spaced elements of each tensor:
    milliseconds for any model; it tells apart any two checkpoints or fine-tunes (they change
    whole tensors) but could miss a hand edit of a few elements. Both are device-independent.
    """
    h = hashlib.sha256(b"aconvlib-model-fingerprint-v1")
    for m in modules:
        if m is None:
            h.update(b"<none>")
        elif isinstance(m, (str, int, float, bool)):
            h.update(f"<{type(m).__name__}:{m!r}>".encode())
        elif isinstance(m, torch.nn.Module) or isinstance(m, Mapping):
            if isinstance(m, torch.nn.Module):
                h.update(f"<module {type(m).__module__}.{type(m).__qualname__}>".encode())
                h.update(json.dumps(_config_dict(m), sort_keys=True, default=repr).encode())
                tensors = m.state_dict()
            else:
                h.update(b"<mapping>")
                tensors = m
            for name in sorted(tensors):
                t = tensors[name]
                if not isinstance(t, torch.Tensor):
                    raise CacheError(f"model_fingerprint: entry {name!r} is a {type(t).__name__}, not a tensor")
                h.update(name.encode())
                _hash_tensor(h, t, full)
        else:
            raise CacheError(f"model_fingerprint: cannot fingerprint a {type(m).__name__}; pass modules, "
                             "tensor mappings or strings")
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------

def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def _keys_digest(keys: Sequence[str] | None) -> str | None:
    return None if keys is None else _fingerprint(list(keys), canonical=False)


def _pixels(batch: Mapping, k: int) -> torch.Tensor:
    px = batch.get("pixel_values") if isinstance(batch, Mapping) else None
    if not isinstance(px, torch.Tensor) or px.ndim != 4 or px.shape[1] != 3:
        got = type(px).__name__ if not isinstance(px, torch.Tensor) else f"shape {tuple(px.shape)}"
        raise CacheError(f"batch {k}: needs 'pixel_values', a [B,3,H,W] tensor (got {got})")
    if px.dtype == torch.uint8:
        return px.float() / 127.5 - 1.0
    if not px.is_floating_point():
        raise CacheError(f"batch {k}: pixel_values must be float in [-1, 1] or uint8, not {px.dtype}")
    lo, hi = float(px.min()), float(px.max())
    if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise CacheError(f"batch {k}: pixel_values must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}] "
                         "(normalise with x / 127.5 - 1)")
    return px.float()


def _given_latents(batch: Mapping, k: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """A batch that brings its ``latents`` [B, C, h, w] (e.g. sampled by a teacher) and its ``bucket``
    ("HxW" in pixels, the size they decode to): (latents, (H, W))."""
    lat, bucket = batch["latents"], batch.get("bucket")
    if not isinstance(lat, torch.Tensor) or lat.ndim != 4:
        got = f"shape {tuple(lat.shape)}" if isinstance(lat, torch.Tensor) else type(lat).__name__
        raise CacheError(f"batch {k}: 'latents' must be a [B, C, h, w] tensor (got {got})")
    try:
        h, w = (int(v) for v in str(bucket).lower().split("x"))
    except ValueError:
        raise CacheError(f"batch {k}: a batch with 'latents' needs 'bucket', its pixel size as \"HxW\" "
                         f"(got {bucket!r})") from None
    return lat, (h, w)


def _pairs(v: Any, n: int, name: str, k: int) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float32)
    if t.shape != (n, 2):
        raise CacheError(f"batch {k}: {name} must be [B, 2] = [{n}, 2], got {tuple(t.shape)}")
    return t


class LatentCache:
    """Sharded safetensors cache of latents and text states (see the module docstring).

    ``LatentCache(cache_dir, fingerprint, dataset=...)``: ``fingerprint`` identifies the encoders (see
    :func:`model_fingerprint`; add anything else that changes the encodings, e.g. a scaling factor),
    ``dataset`` the data (e.g. ``PreparedBuckets.fingerprint`` or a source's ``fingerprint()``).
    """

    def __init__(self, cache_dir: str | os.PathLike, fingerprint: str, *, dataset: str | None = None):
        if not isinstance(fingerprint, str) or not fingerprint:
            raise CacheError("fingerprint must be a non-empty string (see model_fingerprint)")
        self.dir = Path(cache_dir)
        self.fingerprint = fingerprint
        self.dataset = dataset
        self._meta: dict | None = None
        self._uncond: dict[str, torch.Tensor] | None = None

    # ----- state ------------------------------------------------------------------------------------
    def _read_meta(self) -> dict | None:
        try:
            meta = json.loads((self.dir / META_NAME).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable meta.json (%s); the cache will be rebuilt", self.dir, e)
            return None
        return meta if isinstance(meta, dict) and meta.get("format") == "aconvlib-latent-cache" else None

    def _matches(self, meta: dict | None) -> bool:
        return meta is not None and meta.get("fingerprint") == self.fingerprint and meta.get("dataset") == self.dataset

    def valid(self) -> bool:
        """Complete, same fingerprint and dataset key, every file present."""
        meta = self._read_meta()
        if not self._matches(meta) or not meta.get("complete"):
            return False
        files = [s["file"] for s in meta["shards"]] + [UNCOND_NAME]
        return all((self.dir / f).is_file() for f in files)

    def clear(self) -> None:
        """Delete the cache's own files (shards, uncond, meta, temporaries); nothing else in the folder."""
        if not self.dir.is_dir():
            return
        for p in self.dir.iterdir():
            name = p.name[len(".tmp-"):] if p.name.startswith(".tmp-") else p.name
            if p.is_file() and (_SHARD_RE.match(name) or name in (META_NAME, UNCOND_NAME)):
                p.unlink()
        self._meta, self._uncond = None, None

    @property
    def meta(self) -> dict:
        if self._meta is None:
            meta = self._read_meta()
            if not self._matches(meta) or not meta.get("complete"):
                raise CacheError(f"{self.dir}: no complete cache for this fingerprint and dataset; call build() first")
            self._meta = meta
            counts = [s["count"] for s in meta["shards"]]
            self._starts = [sum(counts[:i]) for i in range(len(counts))]
        return self._meta

    # ----- build ------------------------------------------------------------------------------------
    def build(self, batches: Iterable[Mapping] | Sequence[Mapping], encode_images: Callable[[torch.Tensor], torch.Tensor],
              encode_text: Callable[[list[str]], Mapping[str, torch.Tensor]], *, dtype: torch.dtype | None = None,
              overwrite: bool = False, progress: bool = True) -> "LatentCache":
        """Encode every batch (dicts with ``pixel_values`` [B,3,H,W] in [-1,1] or uint8, ``captions``;
        optional ``keys``, ``original_size`` and ``crop_top_left`` [B,2] (then ``add_time_ids`` is
        stored), ``target_size``) into one shard each. Returns self at once when :meth:`valid`;
        resumes a partial cache of the same fingerprint and dataset; rebuilds otherwise.
        ``dtype`` casts floating tensors before saving (e.g. ``torch.float16`` halves the size)."""
        if not overwrite and self.valid():
            log.info("%s: latent cache is up to date, reusing it", self.dir)
            self._meta = None
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = None if overwrite else self._read_meta()
        if not self._matches(meta):
            self.clear()
            meta = {"format": "aconvlib-latent-cache", "version": 1, "fingerprint": self.fingerprint,
                    "dataset": self.dataset, "complete": False, "count": 0, "shards": [], "dtypes": {}}
        else:
            kept = []
            for s in meta["shards"]:  # keep the finished prefix whose files exist
                if not (self.dir / s["file"]).is_file():
                    break
                kept.append(s)
            meta["shards"], meta["complete"] = kept, False
            meta["count"] = sum(s["count"] for s in kept)
        self._meta, self._uncond = None, None

        def cast(t: torch.Tensor) -> torch.Tensor:
            t = t.detach().to("cpu")
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        def text_states(captions: list[str], where: str) -> dict[str, torch.Tensor]:
            with torch.no_grad():
                out = encode_text(captions)
            if not isinstance(out, Mapping) or not out:
                raise CacheError(f"{where}: encode_text must return a non-empty dict of tensors, got {type(out).__name__}")
            res = {}
            for name, t in out.items():
                if not isinstance(t, torch.Tensor):
                    raise CacheError(f"{where}: encode_text()[{name!r}] is a {type(t).__name__}, not a tensor")
                if t.ndim == 0 or t.shape[0] != len(captions):
                    raise CacheError(f"{where}: encode_text()[{name!r}] has shape {tuple(t.shape)}; its first "
                                     f"dimension must be the batch size {len(captions)}")
                res[_TEXT_PREFIX + str(name)] = cast(t)
            return res

        if not (self.dir / UNCOND_NAME).is_file() or not meta.get("uncond"):
            unc = text_states([""], "uncond")
            _save(self.dir / UNCOND_NAME, unc)
            meta["uncond"] = {"file": UNCOND_NAME, "shapes": {k: list(v.shape[1:]) for k, v in unc.items()}}
            atomic_write_json(self.dir / META_NAME, meta)

        done = len(meta["shards"])
        is_seq = isinstance(batches, Sequence) or (hasattr(batches, "__len__") and hasattr(batches, "__getitem__")
                                                   and not isinstance(batches, Mapping))
        total = len(batches) if hasattr(batches, "__len__") else None
        if is_seq:
            if done > len(batches):
                raise CacheError(f"{self.dir}: the partial cache holds {done} batches but only {len(batches)} were "
                                 "given; pass the same batches or build with overwrite=True")
            source = ((k, batches[k]) for k in range(done, len(batches)))
        else:
            it = iter(batches)
            for k in range(done):
                b = next(it, None)
                if b is None:
                    raise CacheError(f"{self.dir}: the partial cache holds {done} batches but the iterator ended "
                                     f"after {k}; pass the same batches or build with overwrite=True")
                stored = meta["shards"][k].get("keys_sha")
                got = _keys_digest(b.get("keys")) if isinstance(b, Mapping) else None
                if stored is not None and got is not None and stored != got:
                    raise CacheError(f"{self.dir}: batch {k} differs from the one cached in {meta['shards'][k]['file']} "
                                     "(other keys): the batch order must be deterministic; pass the same batches "
                                     "or build with overwrite=True")
            source = ((k, b) for k, b in enumerate(it, start=done))

        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=done, desc=f"caching latents in {self.dir.name}", unit="batch",
                   disable=not progress)
        try:
            for k, b in source:
                if isinstance(b, Mapping) and b.get("latents") is not None:  # already latents (teacher samples)
                    lat, size = _given_latents(b, k)
                    n = lat.shape[0]
                else:
                    px = _pixels(b, k)
                    n, size = px.shape[0], (int(px.shape[-2]), int(px.shape[-1]))
                captions = b.get("captions")
                if isinstance(captions, str) or captions is None or len(captions) != n:
                    raise CacheError(f"batch {k}: needs 'captions', a list of {n} strings")
                if b.get("latents") is None:
                    with torch.no_grad():
                        lat = encode_images(px)
                if not isinstance(lat, torch.Tensor) or lat.ndim < 2 or lat.shape[0] != n:
                    got = tuple(lat.shape) if isinstance(lat, torch.Tensor) else type(lat).__name__
                    raise CacheError(f"batch {k}: encode_images must return a [B, ...] tensor with B = {n}, got {got}")
                tensors = {"latents": cast(lat), **text_states(list(captions), f"batch {k}")}
                if b.get("original_size") is not None and b.get("crop_top_left") is not None:
                    target = b.get("target_size")
                    target = [list(size)] * n if target is None else target
                    tensors["add_time_ids"] = torch.cat([_pairs(b["original_size"], n, "original_size", k),
                                                         _pairs(b["crop_top_left"], n, "crop_top_left", k),
                                                         _pairs(target, n, "target_size", k)], dim=1)
                keys = [str(x) for x in b["keys"]] if b.get("keys") is not None else None
                file = f"shard-{k:05d}.safetensors"
                _save(self.dir / file, tensors, {"keys": json.dumps(keys), "captions": json.dumps(list(captions))})
                meta["shards"].append({"file": file, "count": n, "bucket": f"{size[0]}x{size[1]}",
                                       "keys_sha": _keys_digest(keys),
                                       "shapes": {name: list(t.shape[1:]) for name, t in tensors.items()}})
                for name, t in tensors.items():
                    meta["dtypes"][name] = str(t.dtype).replace("torch.", "")
                meta["count"] += n
                atomic_write_json(self.dir / META_NAME, meta)
                bar.update(1)
        finally:
            bar.close()
        if not meta["shards"]:
            raise CacheError("no batches to cache")
        meta["complete"] = True
        atomic_write_json(self.dir / META_NAME, meta)
        self._meta = None
        return self

    # ----- read -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of shards (= cached batches)."""
        return len(self.meta["shards"])

    @property
    def num_samples(self) -> int:
        return int(self.meta["count"])

    def uncond(self) -> dict[str, torch.Tensor]:
        """The empty prompt's text states, {name: [1, ...]}."""
        if self._uncond is None:
            from safetensors.torch import load_file

            self.meta  # noqa: B018 - validity check
            raw = load_file(str(self.dir / UNCOND_NAME))
            self._uncond = {k[len(_TEXT_PREFIX):]: v for k, v in raw.items()}
        return self._uncond

    def _apply_drop(self, text: dict[str, torch.Tensor], drop: Sequence[bool] | torch.Tensor | None) -> dict:
        if drop is None:
            return text
        mask = torch.as_tensor(list(drop) if not isinstance(drop, torch.Tensor) else drop, dtype=torch.bool)
        if not bool(mask.any()):
            return text
        unc = self.uncond()
        out = {}
        for name, t in text.items():
            if mask.shape[0] != t.shape[0]:
                raise CacheError(f"drop mask has {mask.shape[0]} entries for a batch of {t.shape[0]}")
            u = unc[name]
            if u.shape[1:] != t.shape[1:]:
                raise CacheError(f"text state {name!r}: uncond shape {tuple(u.shape[1:])} differs from the "
                                 f"captions' {tuple(t.shape[1:])} (pad prompts to a fixed length)")
            t = t.clone()
            t[mask] = u.to(t.dtype).expand(int(mask.sum()), *u.shape[1:])
            out[name] = t
        return out

    def _read(self, shard: int, rows: list[int] | None = None) -> dict[str, Any]:
        from safetensors import safe_open

        s = self.meta["shards"][shard]
        path = self.dir / s["file"]
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            if rows is None:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            else:
                tensors = {}
                for k in f.keys():
                    sl = f.get_slice(k)
                    tensors[k] = torch.cat([sl[r:r + 1] for r in rows])
        keys = json.loads(md.get("keys", "null"))
        captions = json.loads(md.get("captions", "null"))
        if rows is not None:
            keys = None if keys is None else [keys[r] for r in rows]
            captions = None if captions is None else [captions[r] for r in rows]
        return {"tensors": tensors, "keys": keys, "captions": captions, "bucket": s["bucket"]}

    @staticmethod
    def _assemble(parts: list[dict]) -> dict[str, Any]:
        names = parts[0]["tensors"].keys()
        tensors = {n: torch.cat([p["tensors"][n] for p in parts]) if len(parts) > 1 else parts[0]["tensors"][n]
                   for n in names}
        out: dict[str, Any] = {"latents": tensors["latents"],
                               "text": {n[len(_TEXT_PREFIX):]: t for n, t in tensors.items() if n.startswith(_TEXT_PREFIX)}}
        if "add_time_ids" in tensors:
            out["add_time_ids"] = tensors["add_time_ids"]
        keys = [p["keys"] for p in parts]
        caps = [p["captions"] for p in parts]
        out["keys"] = None if any(k is None for k in keys) else [x for k in keys for x in k]
        out["captions"] = None if any(c is None for c in caps) else [x for c in caps for x in c]
        out["bucket"] = parts[0]["bucket"]
        return out

    def batch(self, k: int, drop: Sequence[bool] | torch.Tensor | None = None) -> dict[str, Any]:
        """Shard ``k`` as {latents, text: {name: tensor}, add_time_ids?, keys, captions, bucket};
        rows where ``drop`` is True get the uncond text states."""
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} out of range (cache has {len(self)})")
        out = self._assemble([self._read(k)])
        out["text"] = self._apply_drop(out["text"], drop)
        return out

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.batch(k)

    def __iter__(self):
        for k in range(len(self)):
            yield self.batch(k)

    def groups(self) -> dict[str, list[int]]:
        """{bucket: global sample indices}, for ``BucketBatchSampler(cache, ...)``."""
        out: dict[str, list[int]] = {}
        pos = 0
        for s in self.meta["shards"]:
            out.setdefault(s["bucket"], []).extend(range(pos, pos + s["count"]))
            pos += s["count"]
        return out

    def gather(self, indices: Sequence[int] | Any, drop: Sequence[bool] | torch.Tensor | None = None) -> dict[str, Any]:
        """Samples by global index (all from one bucket), in the given order; accepts a sampler's
        ``SampledBatch`` (its ``indices`` and ``drop``). Rows are read with ``safe_open`` slices."""
        indices, drop = gather_arguments(indices, drop)
        meta, n = self.meta, self.num_samples
        loc = []
        for i in indices:
            if not 0 <= i < n:
                raise IndexError(f"sample {i} out of range (cache has {n})")
            sh = bisect.bisect_right(self._starts, i) - 1
            loc.append((sh, i - self._starts[sh]))
        buckets = {meta["shards"][sh]["bucket"] for sh, _ in loc}
        if len(buckets) > 1:
            raise CacheError(f"samples from several buckets ({', '.join(sorted(buckets))}) cannot be stacked")
        # read each shard once, then restore the requested order
        by_shard: dict[int, list[int]] = {}
        for sh, r in loc:
            by_shard.setdefault(sh, []).append(r)
        parts, order = [], []
        for sh, rows in by_shard.items():
            parts.append(self._read(sh, rows))
            order.extend((sh, r) for r in rows)
        out = self._assemble(parts)
        first: dict[tuple[int, int], int] = {}
        for j, x in enumerate(order):
            first.setdefault(x, j)
        perm = [first[x] for x in loc]
        if perm != list(range(len(order))):
            p = torch.tensor(perm)
            out["latents"] = out["latents"][p]
            out["text"] = {k: v[p] for k, v in out["text"].items()}
            if "add_time_ids" in out:
                out["add_time_ids"] = out["add_time_ids"][p]
            for f in ("keys", "captions"):
                if out[f] is not None:
                    out[f] = [out[f][j] for j in perm]
        out["text"] = self._apply_drop(out["text"], drop)
        return out
