"""Shared pieces of the data package: its errors, constants and small helpers."""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

from ...utils import atomic_write_json, fingerprint

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
    return fingerprint(obj, None)


def _workers(num_workers: int | None) -> int:
    return max(1, num_workers if num_workers is not None else min(8, os.cpu_count() or 1))


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj)


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        warnings.warn(f"{path}: unreadable ({e}); ignoring it", DataWarning, stacklevel=3)
        return None
