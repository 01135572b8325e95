"""Aspect-ratio buckets: :class:`Bucket` and :class:`BucketTable` (a model's table comes from its ``ModelSpec``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

from ...models import ModelSpec, list_models, lookup_spec
from .common import DataError, _and_more, _sha256


# --------------------------------------------------------------------------------------------------
# Aspect-ratio buckets
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Bucket:
    """A training resolution ``height × width`` in pixels."""

    height: int
    width: int

    @property
    def name(self) -> str:
        return f"{self.height}x{self.width}"

    @property
    def aspect(self) -> float:
        return self.height / self.width

    @classmethod
    def parse(cls, name: str) -> "Bucket":
        h, w = name.lower().split("x")
        return cls(int(h), int(w))


class BucketTable:
    """A set of :class:`Bucket` (height, width) sizes; :meth:`nearest` by aspect ratio.

    A model's own table (:meth:`for_model`) is its ``ModelSpec.bucket_sizes()`` (see
    :mod:`aconvlib.models.buckets`: SD1.5's 512²-area scheme, SDXL's paper table, PixArt-Σ's diffusers bins),
    validated against its ``ModelSpec.grid_factors``.
    """

    def __init__(self, sizes: Iterable[tuple[int, int] | Bucket], name: str = "custom"):
        buckets: list[Bucket] = []
        for s in sizes:
            h, w = (s.height, s.width) if isinstance(s, Bucket) else s
            if int(h) != h or int(w) != w or h <= 0 or w <= 0:
                raise DataError(f"bucket table {name!r}: bucket {h}x{w} must have positive integer sides")
            b = Bucket(int(h), int(w))
            if b not in buckets:
                buckets.append(b)
        if not buckets:
            raise DataError(f"bucket table {name!r} is empty")
        self.name = name
        self.buckets: tuple[Bucket, ...] = tuple(sorted(buckets, key=lambda b: (b.aspect, b.height * b.width)))

    @classmethod
    def for_model(cls, model: "str | ModelSpec", *, validate: bool = True) -> "BucketTable":
        """The bucket table of a registered model (a :class:`~aconvlib.models.ModelSpec`, or a name that
        :func:`~aconvlib.models.lookup_spec` knows: ``"sdxl"``, ``"stable-diffusion-v1-5"``,
        ``"PixArt-alpha/PixArt-Sigma-XL-2-512-MS"`` …), validated against its grid factors by default.
        DataError for a model without a table."""
        try:
            spec = model if isinstance(model, ModelSpec) else lookup_spec(model)
            table = cls(spec.bucket_sizes(), spec.name)
        except LookupError as e:   # UnknownModelError is one too
            known = ", ".join(s.name for s in list_models() if s.buckets is not None)
            raise DataError(f"no bucket table for model {getattr(model, 'name', model)!r} ({e}); models with one: "
                            f"{known} (or build BucketTable(sizes) yourself)") from None
        if validate:
            table.validate(*spec.grid_factors)
        return table

    def __iter__(self) -> Iterator[Bucket]:
        return iter(self.buckets)

    def __len__(self) -> int:
        return len(self.buckets)

    def __contains__(self, item) -> bool:
        b = Bucket.parse(item) if isinstance(item, str) else Bucket(*item) if isinstance(item, tuple) else item
        return b in self.buckets

    def __repr__(self) -> str:
        return f"BucketTable({self.name!r}, {len(self)} buckets, {self.buckets[0].name} .. {self.buckets[-1].name})"

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [(b.height, b.width) for b in self.buckets]

    def nearest(self, height: int, width: int) -> Bucket:
        """The bucket whose aspect ratio is nearest to height/width (log distance), then nearest area."""
        if height <= 0 or width <= 0:
            raise DataError(f"image size {height}x{width} must be positive")
        la, area = math.log(height / width), height * width
        return min(self.buckets, key=lambda b: (abs(math.log(b.aspect) - la), abs(math.log(b.height * b.width / area))))

    def validate(self, latent_factor: int, patch_size: int = 1, downsample: int = 1) -> "BucketTable":
        """Check that every bucket's height and width are divisible by latent_factor × patch_size ×
        downsample (VAE factor, transformer patch size, UNet down-sampling); returns self."""
        for n, v in (("latent_factor", latent_factor), ("patch_size", patch_size), ("downsample", downsample)):
            if int(v) != v or v < 1:
                raise DataError(f"{n} must be a positive integer, not {v!r}")
        d = int(latent_factor) * int(patch_size) * int(downsample)
        bad = [f"{b.name} ({b.height} % {d} = {b.height % d}, {b.width} % {d} = {b.width % d})"
               for b in self.buckets if b.height % d or b.width % d]
        if bad:
            raise DataError(
                f"bucket table {self.name!r} does not fit the model: sides must be multiples of {d} "
                f"(latent factor {latent_factor} × patch size {patch_size} × downsample {downsample}); "
                f"{len(bad)} of {len(self)} buckets are not: {_and_more(bad)}")
        return self

    def to_dict(self) -> dict:
        return {"name": self.name, "buckets": self.sizes}

    def fingerprint(self) -> str:
        return _sha256(self.sizes)
