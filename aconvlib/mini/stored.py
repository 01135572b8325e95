"""Stored evaluation rows: a results JSON plus each row's classifier features, written atomically after every row.

The stored CPU runs of chapters 5 and 8 (``scripts/eval_comparison.py``, ``scripts/eval_controls.py``) keep one
JSON (``{"meta": {...}, "rows": [...]}``, one row per model and condition) and, next to it, an ``.npz`` with each
row's per-image classifier features (float32), from which the FDD analogue's intervals are recomputed without
sampling again. Both files are replaced atomically (temporary file + rename), features first, so a row in the
JSON always has its features and a killed run resumes from the rows already there.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..utils import atomic_path, atomic_write_json

__all__ = ["StoredRows"]


class StoredRows:
    """``rows.json`` (+ ``rows.npz``) of one stored run.

    >>> s = StoredRows(path)          # path: the JSON; features in path.with_suffix(".npz")
    >>> s.add(row, features, key)     # appends, saves both files
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.features_path = self.path.with_suffix(".npz")
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"meta": {}, "rows": []}
        self.features: dict[str, np.ndarray] = (dict(np.load(self.features_path)) if self.features_path.exists()
                                                else {})

    @property
    def meta(self) -> dict:
        return self.data["meta"]

    @property
    def rows(self) -> list:
        return self.data["rows"]

    def find(self, **match) -> Optional[dict]:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in match.items())), None)

    def add(self, row: dict, features: Optional[np.ndarray] = None, key: Optional[str] = None, sort_key=None) -> None:
        """Append ``row`` (with its ``features`` stored under ``key``), optionally re-sort, and save both files."""
        if features is not None:
            if key is None:
                raise ValueError("features need a key")
            self.features[key] = np.asarray(features, dtype=np.float32)
        self.rows.append(row)
        if sort_key is not None:
            self.rows.sort(key=sort_key)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.features:
            with atomic_path(self.features_path, tmp_name=self.features_path.stem + ".tmp.npz") as tmp:
                np.savez_compressed(tmp, **self.features)
        atomic_write_json(self.path, self.data)
