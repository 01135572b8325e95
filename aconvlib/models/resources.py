"""aconvlib's package data: architecture configs, the paper's tables, the embedded models' weights.

They live in the repository's top-level ``data/`` folder, which the build installs as the package
``aconvlib._data`` (``package-dir`` in ``pyproject.toml``): one copy, reached the same way from an
editable checkout and from a non-editable install, through :mod:`importlib.resources`. Nothing is
read at import time.
"""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path


def data_dir() -> Path:
    """The package data folder (``data/`` of the checkout, ``aconvlib/_data`` when installed)."""
    return Path(str(resources.files("aconvlib._data")))


def config_dir() -> Path:
    """Shipped denoiser architecture configs: ``<config_dir>/<model>/<subfolder>.json``."""
    return data_dir() / "configs"


def models_dir() -> Path:
    """Shipped embedded models, the attribute classifier and the distilled ΔConv adapters."""
    return data_dir() / "models"


@functools.lru_cache(maxsize=None)
def _paper_tables() -> dict:
    import yaml

    return yaml.safe_load((data_dir() / "paper" / "tables.yml").read_text())


def paper_table(name: str):
    """A table or constant transcribed from the paper (``data/paper/tables.yml``), e.g. ``"table1_mean_flops_G"``."""
    tables = _paper_tables()
    if name not in tables:
        raise KeyError(f"no paper table {name!r}; tables: {', '.join(tables)}")
    return tables[name]


__all__ = ["config_dir", "data_dir", "models_dir", "paper_table"]
