"""Reading prepared buckets (:class:`PreparedBuckets`): samples, batches of one bucket, encoding batches."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .common import INDEX_NAME, DataError
from .buckets import Bucket
from .sampler import SampledBatch


class PreparedBuckets:
    """Reads the output of :func:`prepare_buckets` (``out_dir/index.json`` + shards).

    ``data[i]`` -> dict(image uint8 [3,H,W], caption, key, bucket, original_size, crop_top_left,
    target_size); ``groups()`` -> {bucket name: sample indices} for :class:`BucketBatchSampler`;
    ``load_batch(indices or SampledBatch)`` -> a training batch; ``encoding_batches(n)`` -> a lazy
    sequence of batches (bucket by bucket, fixed order) for the latent cache.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.root = Path(out_dir)
        path = self.root / INDEX_NAME
        if not path.is_file():
            raise DataError(f"{path} does not exist: run prepare_buckets first")
        try:
            index = json.loads(path.read_text())
        except ValueError as e:
            raise DataError(f"{path}: not valid JSON ({e}); rerun prepare_buckets") from None
        if not index.get("done"):
            raise DataError(f"{path}: preparation did not finish; rerun prepare_buckets (it resumes)")
        self.index = index
        self.format: str = index["format"]
        self.samples: list[dict] = index["samples"]
        self.shards: list[dict] = index["shards"]
        self._members: dict[int, dict[str, tuple[int, int]]] = {}

    @property
    def fingerprint(self) -> str:
        """The preparation key (source listing + table + options): use it as a latent cache's dataset key."""
        return self.index["key"]

    def __len__(self) -> int:
        return len(self.samples)

    def groups(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, s in enumerate(self.samples):
            out.setdefault(s["bucket"], []).append(i)
        return out

    def _image(self, s: dict) -> torch.Tensor:
        sh = self.shards[s["shard"]]
        path = self.root / sh["file"]
        if self.format == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return f.get_slice("images")[s["row"]:s["row"] + 1][0]
        members = self._members.get(s["shard"])
        if members is None:
            with tarfile.open(path, "r:") as tf:
                members = {m.name: (m.offset_data, m.size) for m in tf if m.isfile()}
            self._members[s["shard"]] = members
        offset, size = members[f"{s['row']:06d}.png"]
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        with Image.open(io.BytesIO(data)) as im:
            arr = np.array(im.convert("RGB"))
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        b = Bucket.parse(s["bucket"])
        return {"image": self._image(s), "caption": s["caption"], "key": s["key"], "bucket": s["bucket"],
                "original_size": tuple(s["original_size"]), "crop_top_left": tuple(s["crop_top_left"]),
                "target_size": (b.height, b.width)}

    def load_batch(self, indices: "Sequence[int] | SampledBatch", drop: Sequence[bool] | None = None) -> dict:
        """Stack samples of one bucket: pixel_values float32 [B,3,H,W] in [-1,1], captions ("" where
        ``drop``; a :class:`SampledBatch` brings its own mask), keys, and SDXL's original_size,
        crop_top_left, target_size as int64 [B,2]."""
        if isinstance(indices, SampledBatch):
            drop = indices.drop if drop is None else drop
            indices = indices.indices
        items = [self[i] for i in indices]
        if not items:
            raise DataError("empty batch")
        buckets = {it["bucket"] for it in items}
        if len(buckets) > 1:
            raise DataError(f"a batch must come from one bucket, got {', '.join(sorted(buckets))}")
        drop = [False] * len(items) if drop is None else list(drop)
        return {
            "pixel_values": torch.stack([it["image"] for it in items]).float() / 127.5 - 1.0,
            "captions": ["" if d else it["caption"] for it, d in zip(items, drop)],
            "keys": [it["key"] for it in items],
            "original_size": torch.tensor([it["original_size"] for it in items], dtype=torch.long),
            "crop_top_left": torch.tensor([it["crop_top_left"] for it in items], dtype=torch.long),
            "target_size": torch.tensor([it["target_size"] for it in items], dtype=torch.long),
        }

    def encoding_batches(self, batch_size: int) -> "_LazyBatches":
        """All samples in fixed order (bucket by bucket), ``batch_size`` at a time (the last batch of a
        bucket may be smaller), loaded only when indexed: a Sequence, so a resumed latent-cache build
        skips finished batches without decoding them."""
        if batch_size < 1:
            raise DataError(f"batch_size must be ≥ 1, not {batch_size}")
        chunks = [idx[s:s + batch_size] for idx in self.groups().values() for s in range(0, len(idx), batch_size)]
        return _LazyBatches(self, chunks)


class _LazyBatches(Sequence):
    def __init__(self, data: PreparedBuckets, chunks: list[list[int]]):
        self.data, self.chunks = data, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        return self.data.load_batch(self.chunks[k])
