"""Preprocessing into per-bucket shards (:func:`prepare_buckets`): resize, centre-crop, write tar or safetensors."""
from __future__ import annotations

import io
import json
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...utils import atomic_path
from .common import INDEX_NAME, DataError, _read_json, _sha256, _workers, _write_json, log
from .buckets import Bucket, BucketTable
from .reader import PreparedBuckets
from .sources import ImageCaptionSource


# --------------------------------------------------------------------------------------------------
# Preprocessing into per-bucket shards
# --------------------------------------------------------------------------------------------------

_RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC,
             "bilinear": Image.Resampling.BILINEAR, "box": Image.Resampling.BOX}
_FORMATS = {"png": "tar", "safetensors": "safetensors"}


def cover_geometry(height: int, width: int, bucket_h: int, bucket_w: int) -> tuple[int, int, int, int]:
    """(resized_h, resized_w, crop_top, crop_left): the smallest resize covering the bucket (aspect
    kept) and the centred crop offsets in resized pixels (SDXL's ``crops_coords_top_left``)."""
    s = max(bucket_h / height, bucket_w / width)
    rh, rw = max(bucket_h, round(height * s)), max(bucket_w, round(width * s))
    return rh, rw, (rh - bucket_h) // 2, (rw - bucket_w) // 2


def _render(img: Image.Image, bucket_h: int, bucket_w: int, resample) -> Image.Image:
    rh, rw, top, left = cover_geometry(img.height, img.width, bucket_h, bucket_w)
    if (rw, rh) != img.size:
        img = img.resize((rw, rh), resample=resample)
    return img.crop((left, top, left + bucket_w, top + bucket_h))


def _make_plan(source: ImageCaptionSource, table: BucketTable, fmt: str, shard_bytes: int) -> tuple[list, list]:
    by_bucket: dict[Bucket, list[int]] = {b: [] for b in table}
    for i, r in enumerate(source.records):
        by_bucket[table.nearest(r.height, r.width)].append(i)
    shards: list[dict] = []
    samples: list[dict] = []
    for b, idx in by_bucket.items():
        per = max(1, shard_bytes // (3 * b.height * b.width))
        for n, s in enumerate(range(0, len(idx), per)):
            rows = idx[s:s + per]
            shards.append({"file": f"{b.name}/shard-{n:05d}.{_FORMATS[fmt]}", "bucket": b.name,
                           "start": len(samples), "count": len(rows)})
            for row, i in enumerate(rows):
                r = source.records[i]
                rh, rw, top, left = cover_geometry(r.height, r.width, b.height, b.width)
                samples.append({"key": r.key, "caption": r.caption, "bucket": b.name, "shard": len(shards) - 1,
                                "row": row, "source_index": i, "original_size": [r.height, r.width],
                                "crop_top_left": [top, left], "upscaled": rh > r.height})
    return shards, samples


def prepare_buckets(source: ImageCaptionSource, table: BucketTable, out_dir: str | os.PathLike, *,
                    format: str = "png", shard_bytes: int = 256 << 20, resample: str = "lanczos",
                    overwrite: bool = False, progress: bool = True, num_workers: int | None = None) -> "PreparedBuckets":
    """Resize (cover) + centre-crop every image of ``source`` to its bucket of ``table``, once.

    Writes ``out_dir/<HxW>/shard-NNNNN.tar`` (``format="png"``: members ``000000.png`` +
    ``000000.txt``) or ``.safetensors`` (``format="safetensors"``: ``images`` uint8 [N,3,H,W]), at most
    ``shard_bytes`` of raw pixels per shard, and ``out_dir/index.json`` (samples with key, caption,
    bucket, shard, row, original size, crop top-left; shards; stats). Idempotent: skipped when the
    index is complete for the same key (source fingerprint + table + options); an interrupted run
    resumes (finished shards are kept); a different key removes the old index's shards and rebuilds.
    """
    if format not in _FORMATS:
        raise DataError(f"format must be 'png' or 'safetensors', not {format!r}")
    if resample not in _RESAMPLE:
        raise DataError(f"resample must be one of {', '.join(_RESAMPLE)}, not {resample!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = _sha256({"v": 1, "source": source.fingerprint(), "table": table.fingerprint(), "format": format,
                   "resample": resample, "background": list(source.background), "shard_bytes": shard_bytes})
    index_path = out / INDEX_NAME
    old = _read_json(index_path)
    same = isinstance(old, dict) and old.get("key") == key and not overwrite
    if same and old.get("done") and all((out / s["file"]).is_file() for s in old.get("shards", [])):
        log.info("%s: up to date (%d images), skipping preparation", out, len(old.get("samples", [])))
        return PreparedBuckets(out)
    if isinstance(old, dict) and not same:
        for s in old.get("shards", []):
            p = out / s.get("file", "")
            if p.is_file() and p.resolve().is_relative_to(out.resolve()):
                p.unlink()
    shards, samples = _make_plan(source, table, format, shard_bytes)
    index = {"format_version": 1, "key": key, "done": False, "format": format, "resample": resample,
             "table": table.to_dict(), "source": {"kind": source.kind, "description": source.describe(),
                                                   "count": len(source), "fingerprint": source.fingerprint()},
             "shards": shards, "samples": samples}
    _write_json(index_path, index)
    todo = [j for j, s in enumerate(shards) if not (same and (out / s["file"]).is_file())]
    filt = _RESAMPLE[resample]

    from tqdm.auto import tqdm

    todo_set = set(todo)
    done_images = sum(s["count"] for j, s in enumerate(shards) if j not in todo_set)
    bar = tqdm(total=len(samples), initial=done_images, desc=f"preparing {out.name}", unit="img", disable=not progress)
    with ThreadPoolExecutor(_workers(num_workers)) as pool:
        for j in todo:
            sh = shards[j]
            b = Bucket.parse(sh["bucket"])
            rows = samples[sh["start"]:sh["start"] + sh["count"]]

            def work(smp: dict, b=b):
                img = _render(source.image(smp["source_index"]), b.height, b.width, filt)
                if format == "png":
                    buf = io.BytesIO()
                    img.save(buf, "PNG", compress_level=4)
                    return buf.getvalue()
                return np.asarray(img).transpose(2, 0, 1).copy()

            results = []
            for r in pool.map(work, rows):
                results.append(r)
                bar.update(1)
            path = out / sh["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            if format == "png":
                _write_tar_shard(path, [(f"{smp['row']:06d}", png, smp["caption"]) for smp, png in zip(rows, results)])
            else:
                from safetensors.torch import save_file

                with atomic_path(path) as tmp:
                    save_file({"images": torch.from_numpy(np.stack(results))}, str(tmp),
                              metadata={"keys": json.dumps([s["key"] for s in rows]),
                                        "captions": json.dumps([s["caption"] for s in rows])})


    bar.close()
    index["done"] = True
    counts: dict[str, int] = {}
    for s in samples:
        counts[s["bucket"]] = counts.get(s["bucket"], 0) + 1
    index["stats"] = {"images": len(samples), "per_bucket": counts, "upscaled": sum(s["upscaled"] for s in samples)}
    _write_json(index_path, index)
    return PreparedBuckets(out)


def _write_tar_shard(path: Path, items: list[tuple[str, bytes, str]]) -> None:
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for stem, png, caption in items:
            for name, data in ((f"{stem}.png", png), (f"{stem}.txt", caption.encode())):
                ti = tarfile.TarInfo(name)
                ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
                tf.addfile(ti, io.BytesIO(data))
