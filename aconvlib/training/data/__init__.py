"""Image–caption data for distilling real diffusers denoisers (SD1.5, SDXL, PixArt-Σ).

Modules, one concern each: ``images`` (modes → RGB), ``sources`` (folder, manifest, tar shards), ``buckets``
(:class:`BucketTable`; a model's table and grid come from its :class:`~aconvlib.models.ModelSpec`), ``shards``
(:func:`prepare_buckets`), ``reader`` (:class:`PreparedBuckets`), ``sampler`` (:class:`BucketBatchSampler`).
Everything public is importable from this package (and, for older code, from :mod:`aconvlib.training.datasets`).

The pipeline, each stage usable on its own::

    source = ImageCaptionFolder("photos/")          # or .from_manifest("m.jsonl"), TarShards("d-{000..009}.tar")
    table = BucketTable.for_model("sdxl")           # aspect-ratio buckets (validated for the model)
    data = prepare_buckets(source, table, "prep/")  # resize + centre-crop once, per-bucket shards + index.json
    sampler = BucketBatchSampler(data, batch_size=8, seed=0, caption_dropout=0.1)
    batch = data.load_batch(sampler.batch(step))    # pixel_values [B,3,H,W] in [-1,1], captions (dropped -> "")

(:mod:`aconvlib.training.latent_cache` then encodes ``data.encoding_batches(n)`` once, so that
distillation steps run only the denoisers; the same sampler drives its ``gather``.)

Validation happens when a source is constructed, before any work, and every problem raises
:class:`DataError` (a ``ValueError``) whose message names the offending file (and, where several files
share the problem, the first one and how many more):

* a folder that does not exist / is not a folder; a folder with no image (``.png .jpg .jpeg .webp``,
  searched recursively, hidden files and folders skipped);
* an image without its same-stem ``.txt`` caption, two images sharing one caption file
  (``a.png`` + ``a.jpg``), a caption file that is not UTF-8;
* an image that Pillow cannot open, whose data fail ``verify()``, or (``verify="decode"``, the
  default) that fails a full decode (this catches truncated JPEGs, which ``verify()`` does not);
* an image whose mode has no defined conversion to 8-bit RGB (see below);
* manifests: unknown format, bad JSON line, missing ``image``/``caption`` field or column, images
  that do not exist (paths are relative to the manifest's folder; absolute paths are kept);
* tar shards: a pattern that expands to nothing, missing or compressed shards, a sample without image
  or without ``.txt`` caption, a sample with two images, duplicate shard names.

Image modes: everything is converted to 8-bit RGB, whatever mix of modes a dataset has.

* EXIF orientation is applied first (sizes, buckets and crops use the image as displayed).
* ``RGB``, ``L``, ``1``, ``P``, ``YCbCr``, ``RGBX``: Pillow's ``convert("RGB")``.
* Transparency (``RGBA``, ``LA``, ``PA``, a palette or ``L``/``RGB`` image with a ``transparency``
  entry) is composited onto ``background`` (white by default), so transparent pixels become the
  background colour rather than whatever colour happens to be stored under alpha 0.
* ``CMYK`` (JPEG): Pillow's ``convert("RGB")``, a naive formula without colour management; images
  with a print ICC profile may shift in colour.
* 16-bit greyscale (``I;16*``, and ``I`` whose values lie in 0..65535, as older Pillow opens 16-bit
  PNGs) is scaled to 8 bits (v·255/65535, rounded), then replicated to RGB. 16-bit *colour* PNGs are
  reduced to 8 bits by Pillow itself when it opens them (it keeps the high byte).
* Anything else (``F`` float images, ``I`` with values outside 0..65535, ``LAB``, ``HSV``, …) has no
  defined 8-bit range and raises :class:`DataError` at validation. Pillow decodes by content, so a
  TIFF saved as ``x.png`` is read as the TIFF it is.

Captions: read as UTF-8 (a BOM is dropped), surrounding whitespace stripped. An empty caption is
allowed (it trains the unconditional branch, like a dropped caption) but usually signals a broken
captioning step, so by default it is counted and reported with a :class:`DataWarning` naming the
first file; ``empty_captions="error"`` makes it an error, ``"allow"`` silences it.

Buckets (:class:`BucketTable`): sizes are ``(height, width)`` in pixels and bucket names are
``"HxW"`` (height first, as in the SDXL paper's table and diffusers' PixArt bins; note that the
popular SDXL resolution lists write width first). An image goes to the bucket whose aspect ratio is
nearest in log space (so 2:1 and 1:2 are treated symmetrically; diffusers' PixArt pipeline compares
h/w linearly, which differs only near the midpoint between two bins), ties broken by the closest
area. ``validate`` checks that every bucket fits the model's grid (``ModelSpec.grid_factors``).

Preprocessing (:func:`prepare_buckets`): each image is resized (Lanczos) so that it covers its bucket
(shorter side relative to the bucket's aspect; images smaller than the bucket are upscaled and
counted in the index's stats) and centre-cropped; SDXL's micro-conditioning inputs (original size,
crop top-left in resized pixels, target size) are kept per sample. Output: ``<out>/HxW/shard-00000.tar``
(webdataset-style tar of ``000000.png`` + ``000000.txt``, readable by :class:`TarShards`) or
``.safetensors`` (``images``: uint8 ``[N,3,H,W]``, captions in the metadata), plus ``index.json``.
It is idempotent and resumable: the index is keyed by the source's content fingerprint (keys,
captions, sha256 of every image file), the table and the options; a rerun with the same key returns
at once, an interrupted run keeps its finished shards (written atomically), a different key rebuilds.

Sampling (:class:`BucketBatchSampler`): every batch comes from one bucket. Epoch ``e`` is a pure
function of ``(seed, e)``: one ``torch.Generator`` seeded from them shuffles each bucket, cuts it into
batches, shuffles the batch order and then draws the caption-dropout uniforms for the whole epoch.
Batch ``k`` is epoch ``k // len(sampler)``, position ``k % len(sampler)``, so a run resumed at step
``k`` continues exactly the sequence of the uninterrupted run (given the same groups, batch size,
``drop_last`` and torch version: ``torch.randperm`` streams are not promised across versions).
"""
from __future__ import annotations

from .buckets import Bucket, BucketTable
from .common import IMAGE_EXTENSIONS, INDEX_NAME, DataError, DataWarning
from .images import CONVERTIBLE_MODES, to_rgb
from .reader import PreparedBuckets
from .sampler import BucketBatchSampler, SampledBatch
from .shards import cover_geometry, prepare_buckets
from .sources import (ImageCaptionFolder, ImageCaptionSource, ImageRecord, Sample, TarShards, expand_shards,
                      from_manifest)

__all__ = ["Bucket", "BucketBatchSampler", "BucketTable", "CONVERTIBLE_MODES", "DataError", "DataWarning",
           "IMAGE_EXTENSIONS", "INDEX_NAME", "ImageCaptionFolder", "ImageCaptionSource", "ImageRecord",
           "PreparedBuckets", "Sample", "SampledBatch", "TarShards", "cover_geometry", "expand_shards",
           "from_manifest", "prepare_buckets", "to_rgb"]
