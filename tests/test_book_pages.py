"""The chapters as readers see them: visible code fits the page, plumbing cells are tagged, figures are declared."""
import json
from pathlib import Path

import pytest

from aconvlib.book.figures import declared_figures

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
HIDDEN = {"remove-cell", "remove-input", "aconv-install", "parameters"}


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _src(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_visible_code_lines_fit_the_page(path):
    long = [(i, len(line)) for i, c in enumerate(_cells(path)) if c["cell_type"] == "code"
            and not HIDDEN & set(c.get("metadata", {}).get("tags", [])) for line in _src(c).splitlines()
            if len(line) > 100]
    assert not long, f"{path.name}: code lines over 100 characters (cell, length): {long}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_and_parameter_cells_are_tagged(path):
    tags = [set(c.get("metadata", {}).get("tags", [])) for c in _cells(path)]
    assert any("parameters" in t for t in tags), f"{path.name}: no parameters cell"
    installs = [i for i, c in enumerate(_cells(path)) if c["cell_type"] == "code" and "pip" in _src(c)
                and "install" in _src(c)]
    assert all("aconv-install" in tags[i] for i in installs), f"{path.name}: untagged install cell(s) {installs}"


def test_figure_names_are_unique_across_the_book():
    names = [n for p in NOTEBOOKS for n in declared_figures(p)]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert len(names) >= 14
