"""Image–caption sources: a folder, a manifest (JSONL/CSV) or webdataset-style tar shards, validated when built."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from PIL import Image

from .common import IMAGE_EXTENSIONS, DataError, DataWarning, _and_more, _sha256, _workers
from ...utils import iter_json_lines
from .images import _decode_rgb, _inspect


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
        for n, obj in iter_json_lines(text, lambda n, e: DataError(f"manifest {path}, line {n}: not valid JSON ({e})")):
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
