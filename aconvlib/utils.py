"""Small shared utilities (layer 0, like :mod:`aconvlib.models`): the one way aconvlib does each of these jobs.

* atomic writes: :func:`atomic_path` (a context manager yielding a temporary sibling that replaces the target
  only when the block succeeds), :func:`atomic_write`, :func:`atomic_write_json`, :func:`atomic_save`
  (``torch.save``); a kill never leaves a half-written file, a failed block leaves the old one;
* dtype parsing: :func:`parse_dtype` (``"fp16"``, ``"float16"``, ``"torch.float16"``, a ``torch.dtype`` …);
* environment metadata: :func:`environment` (versions, platform, CPU, device) for records and benchmarks;
* fingerprints: :func:`fingerprint`, a sha256 of an object's JSON form; :func:`file_digest` and :func:`files_fingerprint`, of files' bytes.

Nothing here imports another aconvlib module, and torch is imported only by the functions that need it, so
that ``import aconvlib`` stays light.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

__all__ = ["DTYPE_NAMES", "atomic_path", "atomic_save", "atomic_write", "atomic_write_json", "check_grid", "cpu_name", "environment",
           "file_digest", "files_fingerprint", "fingerprint", "iter_json_lines", "module_version", "parse_dtype", "positive_int"]


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, tmp_name: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (``.tmp-<name>``, or ``tmp_name``); write it in the block.

    When the block succeeds the temporary file (or folder) replaces ``path`` in one rename (an existing folder at
    ``path`` is removed first); when it raises, the temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(tmp_name or f".tmp-{path.name}")
    try:
        yield tmp
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    if tmp.is_dir() and path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    os.replace(tmp, path)


def atomic_write(path: str | os.PathLike, data: bytes | str, encoding: str = "utf-8") -> Path:
    """Write ``data`` (bytes, or text in ``encoding``) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode(encoding) if isinstance(data, str) else data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, **dumps) -> Path:
    """``json.dumps(obj, indent=indent, **dumps)`` written to ``path`` atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent, **dumps))


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``<path>.tmp``, then rename (a kill never leaves a half-written checkpoint)."""
    import torch

    with atomic_path(path, tmp_name=Path(path).name + ".tmp") as tmp:
        torch.save(obj, tmp)


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------

def positive_int(value: Any, what: str) -> int:
    """``value`` as an int ≥ 1 (anything ``operator.index`` accepts, bools excluded); ValueError naming ``what``."""
    import operator

    if not isinstance(value, bool):
        try:
            v = operator.index(value)
        except TypeError:
            v = None
        if v is not None and v >= 1:
            return v
    raise ValueError(f"{what} must be a positive integer, got {value!r}")


def check_grid(grid: Any, n: int | None = None, who: str = "grid") -> tuple[int, int]:
    """A token grid ``(H, W)`` of positive ints with, when ``n`` is given, ``H·W == n`` (tokens in raster order);
    ValueError starting with ``who`` otherwise."""
    import operator

    try:
        h, w = grid
        h, w = operator.index(h), operator.index(w)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: grid must be a pair of positive integers (H, W), got {grid!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{who}: grid must be a pair of positive integers (H, W), got {grid!r}")
    if n is not None and h * w != n:
        raise ValueError(f"{who}: grid {h}x{w} has {h * w} tokens but the input has N = {n} tokens "
                         f"(tokens must be the H·W grid in raster order)")
    return h, w


def iter_json_lines(text: str, error: Callable[[int, ValueError], Exception]) -> Iterator[tuple[int, Any]]:
    """``(line number, object)`` for each non-blank line of JSON-lines ``text``; a line that is not JSON raises
    ``error(line number, the JSON error)`` (each reader names its file and raises its own exception type)."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise error(n, e) from None
        yield n, obj


# --------------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------------

#: accepted spellings of the floating dtypes aconvlib runs in, and the torch attribute each names
DTYPE_NAMES: dict[str, str] = {"float32": "float32", "fp32": "float32", "float": "float32",
                               "float16": "float16", "fp16": "float16", "half": "float16",
                               "bfloat16": "bfloat16", "bf16": "bfloat16"}


def parse_dtype(dtype: Any, default: Any = None):
    """A ``torch.dtype`` from a dtype, a name in :data:`DTYPE_NAMES` (with or without ``torch.``), or None
    (``default``, itself parsed). ValueError naming the accepted spellings for anything else."""
    import torch

    if dtype is None:
        return None if default is None else parse_dtype(default)
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, DTYPE_NAMES[name])


# --------------------------------------------------------------------------------------------------
# Environment metadata
# --------------------------------------------------------------------------------------------------

def module_version(module: str) -> str:
    """``module.__version__`` (``"installed"`` without one; ``"not importable (Error)"`` for a broken install)."""
    try:
        return str(getattr(importlib.import_module(module), "__version__", "installed"))
    except Exception as e:  # noqa: BLE001 - a broken install is worth recording, not raising
        return f"not importable ({type(e).__name__})"


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(modules: tuple[str, ...] = ("torch", "diffusers", "numpy")) -> dict:
    """Versions and device of this process: aconvlib and ``modules``, python, platform, the CPU (the CUDA device
    when this process initialised one), and, when torch is imported, its thread count and deterministic mode."""
    from . import __version__

    env = {"aconvlib": __version__, **{m: module_version(m) for m in modules}, "python": platform.python_version(),
           "platform": f"{platform.system()} {platform.machine()}", "device": f"cpu: {cpu_name()}"}
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                env["device"] = f"cuda: {torch.cuda.get_device_name()}"
        except Exception:  # noqa: BLE001 - a broken CUDA setup is not the metadata's business
            pass
        env["torch_threads"] = torch.get_num_threads()
        env["deterministic"] = bool(torch.are_deterministic_algorithms_enabled())
    return env


# --------------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------------

def fingerprint(obj: Any, length: int | None = 16, *, canonical: bool = True,
                default: Callable[[Any], Any] | None = None) -> str:
    """Hex sha256 of ``obj``'s JSON form, cut to ``length`` characters (None: all 64).

    ``canonical`` (default) sorts keys and drops whitespace; ``canonical=False`` hashes plain ``json.dumps(obj)``,
    the form of the older cache keys (prompt lists, sample keys), kept so that existing caches stay valid.
    ``default`` turns values JSON cannot encode into ones it can (e.g. ``str`` for dtypes and paths).
    """
    text = (json.dumps(obj, sort_keys=True, separators=(",", ":"), default=default) if canonical
            else json.dumps(obj, default=default))
    digest = hashlib.sha256(text.encode()).hexdigest()
    return digest if length is None else digest[:length]


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """Hex sha256 of one file's bytes, cut to ``length`` characters."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:length]


def files_fingerprint(files: Iterable[str | os.PathLike], root: str | os.PathLike, length: int = 16) -> str:
    """``"sha256:<hex>"`` over the files' paths relative to ``root`` and their bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    for f in files:
        f = Path(f)
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()[:length]
