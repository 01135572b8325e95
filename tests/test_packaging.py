"""Packaging: what ``pyproject.toml`` tells setuptools to install is the whole package and all of its data.

The wheel installs only the packages listed under ``[tool.setuptools] packages`` and, from the repository's
``data/`` folder (installed as ``aconvlib._data``), only the files the ``package-data`` globs match; code that
works from a checkout would fail after ``pip install`` if either list missed something.
"""
import pathlib
import tomllib

import aconvlib

PKG = pathlib.Path(aconvlib.__file__).parent
ROOT = PKG.parent
CFG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_name(init: pathlib.Path) -> str:
    return ".".join(init.parent.relative_to(ROOT).parts)


def test_every_subpackage_is_listed():
    on_disk = {_package_name(p) for p in PKG.rglob("__init__.py")}
    listed = set(CFG["packages"]) - {"aconvlib._data"}
    assert listed == on_disk, f"missing from pyproject: {sorted(on_disk - listed)}; stale: {sorted(listed - on_disk)}"


def test_the_data_package_is_the_repositorys_data_folder():
    assert "aconvlib._data" in CFG["packages"] and CFG["package-dir"]["aconvlib._data"] == "data"
    assert (ROOT / "data" / "__init__.py").is_file()


# data files deliberately left out of the wheel
NOT_INSTALLED = (
    "regression/*.json",     # the book's regression references: read from the checkout (book_root()/data/regression)
    "models/*/samples_*.png",  # sample grids written by the embedded models' training, for reading only
)


def test_package_data_globs_cover_every_data_file():
    data = ROOT / "data"
    covered = {p for pattern in CFG["package-data"]["aconvlib._data"] for p in data.glob(pattern)}
    assert covered, "the package-data globs match nothing"
    files = {p for p in data.rglob("*") if p.is_file() and "__pycache__" not in p.parts
             and p.name != "__init__.py" and not p.name.startswith(".") and p.suffix != ".md"}
    left_out = {p for pattern in NOT_INSTALLED for p in data.glob(pattern)}
    missing = sorted(str(p.relative_to(data)) for p in files - covered - left_out)
    assert not missing, f"data files a wheel would leave out (add a package-data glob): {missing}"


def test_package_data_is_found_through_the_package():
    from aconvlib.models import config_dir, get_spec, models_dir, paper_table

    assert (models_dir() / "mini-sd" / "model_index.json").exists()
    assert (config_dir() / "sd15" / "unet.json").exists() and get_spec("sdxl").config_path.exists()
    assert paper_table("thresholds")["highpass_mass"] == 0.8
