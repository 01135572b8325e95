"""Image–caption data for distilling real diffusers denoisers (SD1.5, SDXL, PixArt-Σ).

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
area. ``validate`` checks that every bucket fits the model's grid (see :data:`MODEL_GRIDS`).

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

import ast
import csv
import hashlib
import importlib
import importlib.util
import io
import json
import logging
import math
import os
import posixpath
import re
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
INDEX_NAME = "index.json"
_EXIF_ORIENTATION = 0x0112


class DataError(ValueError):
    """A problem with training data, raised before any work; the message names the file."""


class DataWarning(UserWarning):
    """Something legal but suspicious in the training data (e.g. empty captions)."""


def _and_more(items: Sequence[Any], shown: int = 3) -> str:
    """``"a, b, c and 4 more"``."""
    items = [str(x) for x in items]
    head = ", ".join(items[:shown])
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _workers(num_workers: int | None) -> int:
    return max(1, num_workers if num_workers is not None else min(8, os.cpu_count() or 1))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        warnings.warn(f"{path}: unreadable ({e}); ignoring it", DataWarning, stacklevel=3)
        return None


# --------------------------------------------------------------------------------------------------
# Images: inspection and conversion to RGB
# --------------------------------------------------------------------------------------------------

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
#: Modes converted to RGB (everything else raises DataError at validation).
CONVERTIBLE_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"}) | _ALPHA_MODES | _SIXTEEN_BIT_MODES


def _check_mode(mode: str, origin: str) -> None:
    if mode not in CONVERTIBLE_MODES:
        raise DataError(
            f"{origin}: image mode {mode!r} cannot be converted to 8-bit RGB (convertible: "
            f"{', '.join(sorted(CONVERTIBLE_MODES))}); re-save it as an 8-bit RGB image")


def _check_int_range(im: Image.Image, origin: str) -> None:
    lo, hi = im.getextrema()
    if lo < 0 or hi > 65535:
        raise DataError(f"{origin}: 32-bit integer image with values {lo}..{hi} outside 0..65535: its 8-bit "
                        "range is undefined; convert it to 8 or 16 bit first")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255), origin: str = "image") -> Image.Image:
    """Convert any supported image to 8-bit RGB by the module's rules (EXIF orientation applied)."""
    _check_mode(img.mode, origin)
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        if mode == "I":
            _check_int_range(img, origin)
        a = np.asarray(img).astype(np.int64)
        u8 = ((a * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(u8, "L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def _inspect(data: bytes, origin: str, thorough: bool) -> tuple[int, int, str]:
    """(width, height, mode) of an encoded image as it will be used (EXIF-rotated); DataError if bad."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            mode, (w, h) = im.mode, im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            _check_mode(mode, origin)
            if thorough:
                im.load()
                if mode == "I":
                    _check_int_range(im, origin)
    except DataError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... on bad data
        raise DataError(f"{origin}: unreadable or corrupt image ({type(e).__name__}: {e})") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return w, h, mode


def _decode_rgb(data: bytes, origin: str, background: tuple[int, int, int]) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return to_rgb(im, background, origin)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{origin}: unreadable or corrupt image ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageRecord:
    """One validated image–caption pair. ``width``/``height`` are after EXIF rotation."""

    key: str
    caption: str
    width: int
    height: int
    mode: str
    digest: str  # sha256 of the encoded image bytes
    origin: str  # human-readable location (a path, or "shard.tar:member")
    location: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Sample:
    key: str
    caption: str
    image: Image.Image  # 8-bit RGB


@dataclass
class _Entry:
    key: str
    caption: str
    origin: str
    location: Any


class ImageCaptionSource:
    """Base class of validated image–caption sources: a list of :class:`ImageRecord`.

    ``source[i]`` / iteration give :class:`Sample` (RGB image); ``fingerprint()`` hashes the listing
    (keys, captions and image-file digests), which keys preprocessing and latent caches.
    """

    kind = "source"
    records: list[ImageRecord]
    background: tuple[int, int, int]

    def __init__(self, *, empty_captions: str = "warn", verify: str = "decode",
                 background: tuple[int, int, int] = (255, 255, 255), num_workers: int | None = None,
                 progress: bool = True):
        if empty_captions not in ("warn", "error", "allow"):
            raise ValueError(f"empty_captions must be 'warn', 'error' or 'allow', not {empty_captions!r}")
        if verify not in ("decode", "verify"):
            raise ValueError(f"verify must be 'decode' (full decode) or 'verify' (Pillow's verify only), not {verify!r}")
        self.empty_captions = empty_captions
        self.verify = verify
        self.background = tuple(int(c) for c in background)
        self.num_workers = num_workers
        self.progress = progress
        self._fingerprint: str | None = None

    # subclasses: the encoded bytes of an image
    def _read(self, location: Any) -> bytes:
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind

    def _finish(self, entries: list[_Entry]) -> None:
        """Caption policy, then open + verify (+ decode) every image; raise one DataError for all failures."""
        empty = [e for e in entries if not e.caption]
        if empty and self.empty_captions == "error":
            more = f" (and {len(empty) - 1} more empty captions: {_and_more([e.origin for e in empty[1:]])})" if len(empty) > 1 else ""
            raise DataError(f"{empty[0].origin}: empty caption{more}; empty captions are refused with "
                            "empty_captions='error'")
        if empty and self.empty_captions == "warn":
            warnings.warn(f"{len(empty)} of {len(entries)} images have an empty caption, first: {empty[0].origin} "
                          "(they train the unconditional branch, like a dropped caption; pass "
                          "empty_captions='allow' to silence or 'error' to refuse)", DataWarning, stacklevel=3)

        thorough = self.verify == "decode"

        def check(e: _Entry):
            try:
                data = self._read(e.location)
            except OSError as err:
                return DataError(f"{e.origin}: cannot be read ({err})")
            try:
                w, h, mode = _inspect(data, e.origin, thorough)
            except DataError as err:
                return err
            return ImageRecord(e.key, e.caption, w, h, mode, hashlib.sha256(data).hexdigest(), e.origin, e.location)

        from tqdm.auto import tqdm

        with ThreadPoolExecutor(_workers(self.num_workers)) as pool:
            results = list(tqdm(pool.map(check, entries), total=len(entries), desc=f"validating {self.describe()}",
                                unit="img", disable=not self.progress or len(entries) < 100, leave=False))
        bad = [r for r in results if isinstance(r, DataError)]
        if bad:
            more = ""
            if len(bad) > 1:
                more = f" (and {len(bad) - 1} more bad images: " + _and_more([str(b).split(': ')[0] for b in bad[1:]]) + ")"
            raise DataError(f"{bad[0]}{more}")
        self.records = results

    def __len__(self) -> int:
        return len(self.records)

    def image(self, i: int) -> Image.Image:
        """Image ``i`` as 8-bit RGB (EXIF-rotated, transparency composited on ``background``)."""
        r = self.records[i]
        return _decode_rgb(self._read(r.location), r.origin, self.background)

    def __getitem__(self, i: int) -> Sample:
        r = self.records[i]
        return Sample(r.key, r.caption, self.image(i))

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def listing(self) -> list[dict]:
        return [{"key": r.key, "caption": r.caption, "sha256": r.digest} for r in self.records]

    def fingerprint(self) -> str:
        """sha256 of the listing: keys, captions and the sha256 of every image file (computed at validation)."""
        if self._fingerprint is None:
            self._fingerprint = _sha256(self.listing())
        return self._fingerprint

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()}, {len(self)} images)"


def _read_caption(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig").strip()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: caption file is not valid UTF-8 ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: caption file cannot be read ({e})") from None


class ImageCaptionFolder(ImageCaptionSource):
    """Images (``.png .jpg .jpeg .webp``) each with a same-stem ``.txt`` caption, under ``root``.

    Keys are the paths relative to ``root`` without extension (``"sub/cat"``). Construct from a
    manifest with :meth:`from_manifest`. Options (shared by all sources): ``empty_captions`` ('warn',
    'error', 'allow'), ``verify`` ('decode': full decode of every image; 'verify': Pillow's cheaper
    ``verify()`` only, which misses truncated JPEGs), ``background`` for transparency, ``num_workers``
    threads for validation, ``progress``.
    """

    kind = "folder"

    def __init__(self, root: str | os.PathLike, *, recursive: bool = True, **options):
        super().__init__(**options)
        self.root = Path(root)
        self.manifest: Path | None = None
        root = self.root
        if not root.exists():
            raise DataError(f"image folder {root} does not exist")
        if not root.is_dir():
            raise DataError(f"{root} is not a folder (for a manifest use ImageCaptionFolder.from_manifest)")
        paths = root.rglob("*") if recursive else root.iterdir()
        files = sorted(p for p in paths if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            others = f"; it has {len(files)} other files, e.g. {_and_more([f.name for f in files])}" if files else " (it is empty)"
            raise DataError(f"no images ({', '.join('*' + e for e in IMAGE_EXTENSIONS)}) in {root}"
                            f"{' or its subfolders' if recursive else ''}{others}")
        by_caption: dict[Path, list[Path]] = {}
        for p in images:
            by_caption.setdefault(p.with_suffix(".txt"), []).append(p)
        shared = [(c, ps) for c, ps in by_caption.items() if len(ps) > 1]
        if shared:
            c, ps = shared[0]
            raise DataError(f"{ps[0]} and {_and_more([p.name for p in ps[1:]])} share the caption file {c.name}; "
                            f"keep one image per stem ({len(shared)} such stems)")
        missing = [p for p in images if not p.with_suffix(".txt").is_file()]
        if missing:
            more = (f"; {len(missing) - 1} more of {len(images)} images have no caption: "
                    f"{_and_more([p.relative_to(root).as_posix() for p in missing[1:]])}") if len(missing) > 1 else ""
            raise DataError(f"{missing[0]}: no caption file {missing[0].with_suffix('.txt').name} next to it{more}")
        entries = [_Entry(p.relative_to(root).with_suffix("").as_posix(), _read_caption(p.with_suffix(".txt")),
                          str(p), p) for p in images]
        self._finish(entries)

    def _read(self, location: Path) -> bytes:
        return Path(location).read_bytes()

    def describe(self) -> str:
        return str(self.manifest or self.root)

    @classmethod
    def from_manifest(cls, path: str | os.PathLike, **options) -> "ImageCaptionFolder":
        """Images listed in a manifest: JSONL (``{"image": relpath, "caption": ...}`` per line; a
        ``.json`` file may also hold one array of such objects) or CSV/TSV with columns ``image`` and
        ``caption``. Relative image paths are relative to the manifest's folder. Keys are the image
        paths as written (``"#2"``, ``"#3"``, ... appended to repeats of the same image)."""
        self = cls.__new__(cls)
        ImageCaptionSource.__init__(self, **options)
        path = Path(path)
        self.manifest, self.root = path, path.parent
        if not path.is_file():
            raise DataError(f"manifest {path} does not exist" if not path.exists() else f"manifest {path} is not a file")
        rows = _read_manifest(path)
        if not rows:
            raise DataError(f"manifest {path} lists no images")
        missing, entries, seen = [], [], {}
        for where, rel, caption in rows:
            p = Path(rel)
            p = p if p.is_absolute() else path.parent / p
            if not p.is_file():
                missing.append(f"{where}: {rel} ({p})")
                continue
            n = seen[rel] = seen.get(rel, 0) + 1
            entries.append(_Entry(rel if n == 1 else f"{rel}#{n}", caption.strip(), f"{p} ({where} of {path.name})", p))
        if missing:
            raise DataError(f"manifest {path} references {len(missing)} missing image(s): {_and_more(missing)}")
        self._finish(entries)
        return self


def from_manifest(path: str | os.PathLike, **options) -> ImageCaptionFolder:
    """Alias of :meth:`ImageCaptionFolder.from_manifest`."""
    return ImageCaptionFolder.from_manifest(path, **options)


def _read_manifest(path: Path) -> list[tuple[str, str, str]]:
    """[(where, image, caption)] from a JSONL/JSON/CSV/TSV manifest; DataError naming file and line."""
    suffix = path.suffix.lower()
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"manifest {path} is not valid UTF-8 ({e})") from None
    rows: list[tuple[str, str, str]] = []

    def take(where: str, obj: Any) -> None:
        if not isinstance(obj, Mapping):
            raise DataError(f"manifest {path}, {where}: expected an object with 'image' and 'caption', got {type(obj).__name__}")
        for k in ("image", "caption"):
            if k not in obj:
                raise DataError(f"manifest {path}, {where}: no {k!r} field (fields: {', '.join(map(str, obj)) or 'none'})")
            if not isinstance(obj[k], str):
                raise DataError(f"manifest {path}, {where}: {k!r} must be a string, got {obj[k]!r}")
        rows.append((where, obj["image"], obj["caption"]))

    if suffix in (".jsonl", ".ndjson", ".json"):
        if suffix == ".json" and text.lstrip().startswith("["):
            try:
                items = json.loads(text)
            except ValueError as e:
                raise DataError(f"manifest {path}: not valid JSON ({e})") from None
            for i, obj in enumerate(items):
                take(f"item {i}", obj)
            return rows
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise DataError(f"manifest {path}, line {n}: not valid JSON ({e})") from None
            take(f"line {n}", obj)
        return rows
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        cols = reader.fieldnames or []
        lacking = [c for c in ("image", "caption") if c not in cols]
        if lacking:
            raise DataError(f"manifest {path}: no column {' or '.join(map(repr, lacking))} in its header "
                            f"(columns: {', '.join(cols) or 'none'})")
        for row in reader:
            where = f"line {reader.line_num}"
            if row.get("image") is None or row.get("caption") is None:
                raise DataError(f"manifest {path}, {where}: missing image or caption value")
            take(where, row)
        return rows
    raise DataError(f"manifest {path}: unknown format {suffix or '(no extension)'!r}; use .jsonl, .json, .csv or .tsv")


# ----- tar shards ---------------------------------------------------------------------------------

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_shards(pattern: str) -> list[str]:
    """Brace expansion as in webdataset shard specs: ``d-{000..002}.tar`` -> d-000.tar, d-001.tar,
    d-002.tar (zero padding kept; descending ranges allowed), ``{a,b}`` lists, several groups."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        a, b = r.groups()
        padded = (len(a) > 1 and a.startswith("0")) or (len(b) > 1 and b.startswith("0"))
        width = max(len(a), len(b)) if padded else 0
        lo, hi = int(a), int(b)
        step = 1 if hi >= lo else -1
        items = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif "," in body:
        items = body.split(",")
    else:
        raise DataError(f"cannot expand {{{body}}} in {pattern!r}: use {{first..last}} or {{a,b,...}}")
    out: list[str] = []
    for item in items:
        for s in expand_shards(pattern[:m.start()] + item + pattern[m.end():]):
            if s not in out:
                out.append(s)
    return out


_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_TAR_IMAGE_EXTS = tuple(e[1:] for e in IMAGE_EXTENSIONS)


class TarShards(ImageCaptionSource):
    """Webdataset-style tar shards: members ``<key>.<ext>`` grouped by key (the member path up to the
    first dot of its file name), each sample with one image (``jpg jpeg png webp``) and a ``txt``
    caption; other members (``json``, ``cls``, ...) are ignored.

    ``urls_or_paths``: one pattern (``"data-{000..009}.tar"``) or a list of paths/patterns; local
    files or ``file://`` URLs (remote URLs are refused: download the shards first). Shards must be
    uncompressed ``.tar`` (the webdataset default): samples are read by seeking to their offsets.
    Keys are ``"<shard stem>/<key>"``.
    """

    kind = "tar shards"

    def __init__(self, urls_or_paths: str | os.PathLike | Sequence[str | os.PathLike], **options):
        super().__init__(**options)
        specs = [urls_or_paths] if isinstance(urls_or_paths, (str, os.PathLike)) else list(urls_or_paths)
        shards: list[Path] = []
        for spec in specs:
            for s in expand_shards(str(spec)):
                if s.startswith("file://"):
                    s = s[len("file://"):]
                elif "://" in s or s.startswith("pipe:"):
                    raise DataError(f"{s}: only local shard files are supported (download remote shards first)")
                shards.append(Path(s))
        if not shards:
            raise DataError(f"no tar shards given ({urls_or_paths!r})")
        self.shards = shards
        missing = [str(p) for p in shards if not p.is_file()]
        if missing:
            raise DataError(f"{len(missing)} of {len(shards)} tar shards do not exist: {_and_more(missing)}")
        stems: dict[str, Path] = {}
        for p in shards:
            stem = p.name[:-4] if p.name.endswith(".tar") else p.name
            if stem in stems:
                raise DataError(f"{p} and {stems[stem]} have the same name; sample keys would collide")
            stems[stem] = p

        entries, no_caption, no_image, two_images = [], [], [], []
        for stem, shard in stems.items():
            with open(shard, "rb") as f:
                head = f.read(6)
            for magic, name in _COMPRESSED_MAGIC.items():
                if head.startswith(magic):
                    raise DataError(f"{shard}: {name}-compressed; only uncompressed .tar shards are supported "
                                    "(samples are read by offset): decompress it first")
            samples: dict[str, dict[str, tarfile.TarInfo]] = {}
            try:
                with tarfile.open(shard, "r:") as tf:
                    for m in tf:
                        if not m.isfile():
                            continue
                        d, base = posixpath.split(m.name)
                        if base.startswith(".") or "." not in base:
                            continue
                        k, ext = base.split(".", 1)
                        samples.setdefault(posixpath.join(d, k), {})[ext.lower()] = m
                    for k, members in samples.items():
                        where = f"{shard}: sample {k!r}"
                        imgs = [e for e in _TAR_IMAGE_EXTS if e in members]
                        if not imgs:
                            no_image.append(f"{where} (members: {', '.join(sorted(members))})")
                        elif len(imgs) > 1:
                            two_images.append(f"{where} ({', '.join(imgs)})")
                        elif "txt" not in members:
                            no_caption.append(where)
                        else:
                            cm, im = members["txt"], members[imgs[0]]
                            try:
                                caption = tf.extractfile(cm).read().decode("utf-8-sig").strip()
                            except UnicodeDecodeError as e:
                                raise DataError(f"{shard}: caption {cm.name} is not valid UTF-8 ({e})") from None
                            entries.append(_Entry(f"{stem}/{k}", caption, f"{shard}:{im.name}",
                                                  (str(shard), im.offset_data, im.size)))
            except tarfile.TarError as e:
                raise DataError(f"{shard}: not a readable tar file ({e})") from None
        for problems, what in ((no_caption, "has no .txt caption"), (no_image, "has no image (jpg, jpeg, png, webp)"),
                               (two_images, "has several images")):
            if problems:
                more = f" (and {len(problems) - 1} more: {_and_more(problems[1:])})" if len(problems) > 1 else ""
                raise DataError(f"{problems[0]} {what}{more}")
        if not entries:
            raise DataError(f"no samples in {_and_more([str(s) for s in shards])}")
        self._finish(entries)

    def _read(self, location) -> bytes:
        path, offset, size = location
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def describe(self) -> str:
        return _and_more([s.name for s in self.shards], 2)


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


#: SDXL's multi-aspect training resolutions (height, width), from the table in the SDXL paper's
#: appendix (Podell et al. 2023): all near 1024² pixels, multiples of 64. It includes the nine
#: resolutions usually quoted (1024², 1152×896, 896×1152, 1216×832, 832×1216, 1344×768, 768×1344,
#: 1536×640, 640×1536) and is not quite symmetric (704×1344 is listed, 1344×704 is not).
SDXL_BUCKETS: tuple[tuple[int, int], ...] = (
    (512, 2048), (512, 1984), (512, 1920), (512, 1856), (576, 1792), (576, 1728), (576, 1664),
    (640, 1600), (640, 1536), (704, 1472), (704, 1408), (704, 1344), (768, 1344), (768, 1280),
    (832, 1216), (832, 1152), (896, 1152), (896, 1088), (960, 1088), (960, 1024), (1024, 1024),
    (1024, 960), (1088, 960), (1088, 896), (1152, 896), (1152, 832), (1216, 832), (1280, 768),
    (1344, 768), (1408, 704), (1472, 704), (1536, 640), (1600, 640), (1664, 576), (1728, 576),
    (1792, 576), (1856, 512), (1920, 512), (1984, 512), (2048, 512),
)


def area_buckets(max_area: int, step: int = 64, min_side: int = 256, max_side: int = 1024) -> list[tuple[int, int]]:
    """The usual bucket construction of SD fine-tuning scripts (NovelAI-style aspect-ratio bucketing):
    for every side ``s`` in ``min_side..max_side`` (step ``step``) the largest other side (multiple of
    ``step``, within the limits) with area ≤ ``max_area``, both orientations. Returns (height, width)."""
    out = set()
    for s in range(min_side, max_side + 1, step):
        o = min(max_side, (max_area // s) // step * step)
        if o >= min_side:
            out.add((s, o))
            out.add((o, s))
    return sorted(out, key=lambda hw: (hw[0] / hw[1], hw[0] * hw[1]))


def _literal_assignment(path: Path, name: str) -> Any | None:
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return None
    return None


def pixart_bins(resolution: int) -> list[tuple[int, int]]:
    """diffusers' ``ASPECT_RATIO_{resolution}_BIN`` (PixArt-α/Σ; keys h/w, values [height, width]) as
    (height, width) pairs. Read from the installed diffusers' source (a literal dict) to avoid the ~10 s
    import of its pipelines; falls back to importing the module if the file's layout has changed."""
    name = f"ASPECT_RATIO_{int(resolution)}_BIN"
    table = None
    try:
        spec = importlib.util.find_spec("diffusers")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise DataError(f"the PixArt bucket table {name} comes from diffusers, which is not installed")
    for base in spec.submodule_search_locations or []:
        f = Path(base) / "pipelines" / "pixart_alpha" / "pipeline_pixart_alpha.py"
        if f.is_file():
            table = _literal_assignment(f, name)
            if table is not None:
                break
    if table is None:
        try:
            mod = importlib.import_module("diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha")
            table = getattr(mod, name)
        except (ImportError, AttributeError) as e:
            raise DataError(f"diffusers has no PixArt bucket table {name} ({e})") from None
    return [(int(v[0]), int(v[1])) for v in table.values()]


#: (latent factor, patch size, downsample) of each model family: a bucket must be divisible by their
#: product. SD1.5: VAE /8, UNet downsamples 3× (skip connections align only if the latent is a
#: multiple of 8). SDXL: VAE /8, UNet downsamples 2×. PixArt-Σ: VAE /8, patch size 2.
MODEL_GRIDS: dict[str, tuple[int, int, int]] = {
    "sd15": (8, 1, 8),
    "sdxl": (8, 1, 4),
    "pixart-sigma-512": (8, 2, 1),
    "pixart-sigma-1024": (8, 2, 1),
}


def _model_key(name: str) -> str:
    n = name.lower().replace("_", "-")
    if "pixart" in n:
        return "pixart-sigma-512" if "512" in n else "pixart-sigma-1024"
    if "xl" in n:
        return "sdxl"
    compact = re.sub(r"[^a-z0-9]", "", n)
    if any(s in compact for s in ("sd15", "sdv15", "stablediffusionv15", "stablediffusion15", "sd1", "stablediffusionv1")):
        return "sd15"
    raise DataError(f"no bucket table for model {name!r}; known: sd15 (stable-diffusion-v1-5), sdxl, "
                    "pixart-sigma-512, pixart-sigma-1024 (or build BucketTable(sizes) yourself)")


class BucketTable:
    """A set of :class:`Bucket` (height, width) sizes; :meth:`nearest` by aspect ratio.

    Built-in tables (:meth:`for_model`): ``sd15`` — SD1.5 was trained on square 512² crops only, so
    there is no official table; this is the common 512²-area scheme of SD fine-tuning scripts
    (:func:`area_buckets` with max area 512², step 64, sides 256–1024: 17 buckets); ``sdxl`` —
    :data:`SDXL_BUCKETS`; ``pixart-sigma-512`` / ``pixart-sigma-1024`` — diffusers'
    ``ASPECT_RATIO_512_BIN`` / ``ASPECT_RATIO_1024_BIN``.
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
    def for_model(cls, name: str, *, validate: bool = True) -> "BucketTable":
        """The table of a model family (aliases like ``"stable-diffusion-v1-5"``, ``"SDXL"``,
        ``"PixArt-Sigma-XL-2-512-MS"`` work), validated against :data:`MODEL_GRIDS` by default."""
        key = _model_key(name)
        if key == "sd15":
            table = cls(area_buckets(512 * 512), "sd15")
        elif key == "sdxl":
            table = cls(SDXL_BUCKETS, "sdxl")
        else:
            table = cls(pixart_bins(int(key.rsplit("-", 1)[1])), key)
        if validate:
            table.validate(*MODEL_GRIDS[key])
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

                tmp = path.with_name(f".tmp-{path.name}")
                save_file({"images": torch.from_numpy(np.stack(results))}, str(tmp),
                          metadata={"keys": json.dumps([s["key"] for s in rows]),
                                    "captions": json.dumps([s["caption"] for s in rows])})
                os.replace(tmp, path)
    bar.close()
    index["done"] = True
    counts: dict[str, int] = {}
    for s in samples:
        counts[s["bucket"]] = counts.get(s["bucket"], 0) + 1
    index["stats"] = {"images": len(samples), "per_bucket": counts, "upscaled": sum(s["upscaled"] for s in samples)}
    _write_json(index_path, index)
    return PreparedBuckets(out)


def _write_tar_shard(path: Path, items: list[tuple[str, bytes, str]]) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for stem, png, caption in items:
            for name, data in ((f"{stem}.png", png), (f"{stem}.txt", caption.encode())):
                ti = tarfile.TarInfo(name)
                ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
                tf.addfile(ti, io.BytesIO(data))
    os.replace(tmp, path)


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


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------

def _derive_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class SampledBatch:
    """Batch ``step`` of a :class:`BucketBatchSampler`: sample indices of one bucket and the
    caption-dropout mask (True: use the empty caption / the cached unconditional text states)."""

    step: int
    epoch: int
    bucket: str
    indices: list[int]
    drop: list[bool]


class BucketBatchSampler:
    """Batches of one bucket each, deterministic given (seed, step), with caption dropout.

    ``groups``: {bucket name: sample indices}, or anything with a ``groups()`` method
    (:class:`PreparedBuckets`, ``LatentCache``). ``len(sampler)`` is the number of batches per epoch
    (``drop_last`` drops each bucket's incomplete last batch). ``batch(k)`` is a pure function of
    (seed, k); iteration runs forever from ``start_step`` (stop at your step budget), and also works
    as a DataLoader ``batch_sampler`` through :meth:`index_batches`.
    """

    def __init__(self, groups: Mapping[str, Sequence[int]] | Any, batch_size: int, *, seed: int = 0,
                 caption_dropout: float = 0.1, drop_last: bool = False, start_step: int = 0):
        if hasattr(groups, "groups") and callable(groups.groups):
            groups = groups.groups()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, not {batch_size!r}")
        if not 0.0 <= caption_dropout <= 1.0:
            raise DataError(f"caption_dropout must be a probability in [0, 1], not {caption_dropout!r}")
        if start_step < 0:
            raise DataError(f"start_step must be ≥ 0, not {start_step}")
        self.groups = {str(k): [int(i) for i in v] for k, v in sorted(groups.items()) if len(v)}
        if not self.groups:
            raise DataError("no samples to sample from (all groups are empty)")
        self.batch_size, self.seed, self.caption_dropout = batch_size, int(seed), float(caption_dropout)
        self.drop_last, self.start_step = drop_last, start_step
        self.batches_per_epoch = sum(len(v) // batch_size if drop_last else -(-len(v) // batch_size)
                                     for v in self.groups.values())
        if self.batches_per_epoch == 0:
            raise DataError(f"drop_last=True with batch_size {batch_size} leaves no batch: the largest bucket has "
                            f"{max(len(v) for v in self.groups.values())} samples")
        self._epoch_cache: tuple[int, list[tuple[str, list[int], list[bool]]]] | None = None

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch_plan(self, epoch: int) -> list[tuple[str, list[int], list[bool]]]:
        """[(bucket, indices, drop)] of one epoch, from one generator seeded by (seed, epoch)."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        g = torch.Generator().manual_seed(_derive_seed("aconvlib-bucket-sampler", self.seed, epoch))
        chunks: list[tuple[str, list[int]]] = []
        for name, idx in self.groups.items():
            perm = torch.randperm(len(idx), generator=g).tolist()
            shuffled = [idx[p] for p in perm]
            for s in range(0, len(shuffled), self.batch_size):
                chunk = shuffled[s:s + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    chunks.append((name, chunk))
        order = torch.randperm(len(chunks), generator=g).tolist()
        chunks = [chunks[o] for o in order]
        u = torch.rand(sum(len(c) for _, c in chunks), generator=g, dtype=torch.float64).tolist()
        plan, pos = [], 0
        for name, chunk in chunks:
            plan.append((name, chunk, [x < self.caption_dropout for x in u[pos:pos + len(chunk)]]))
            pos += len(chunk)
        self._epoch_cache = (epoch, plan)
        return plan

    def batch(self, step: int) -> SampledBatch:
        if step < 0:
            raise DataError(f"step must be ≥ 0, not {step}")
        epoch, j = divmod(step, self.batches_per_epoch)
        name, idx, drop = self.epoch_plan(epoch)[j]
        return SampledBatch(step, epoch, name, list(idx), list(drop))

    def iter_from(self, step: int) -> Iterator[SampledBatch]:
        while True:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[SampledBatch]:
        return self.iter_from(self.start_step)

    def index_batches(self, start_step: int | None = None, num_steps: int | None = None) -> Iterator[list[int]]:
        """Index lists only (a DataLoader ``batch_sampler``; caption dropout is then up to the caller)."""
        step = self.start_step if start_step is None else start_step
        end = None if num_steps is None else step + num_steps
        while end is None or step < end:
            yield self.batch(step).indices
            step += 1
