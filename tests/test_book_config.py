"""The repository URL lives in one place (pyproject's [project.urls] Repository); every copy agrees with it:
each chapter's install cell (a chapter opened alone in Colab has no aconvlib yet, so the URL must be in the cell)
and book/_config.yml (repository button, Colab launch button). scripts/set_repository_url.py rewrites them all."""
import json
import subprocess
import sys
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def repository_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """``[project.urls] Repository`` (read with a pattern: tomllib is Python >= 3.11 only)."""
    text = pyproject.read_text()
    urls = text[text.index("[project.urls]"):]
    return re.search(r'^Repository\s*=\s*"([^"]+)"', urls, re.M).group(1)


def install_cell(path: Path) -> str:
    nb = json.loads(path.read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "aconv-install" in first["metadata"].get("tags", []), f"{path.name}: first code cell is not the install cell"
    return "".join(first["source"])


def test_repository_url_is_defined_once_in_pyproject():
    url = repository_url()
    assert url.startswith("https://github.com/") and url.count("/") == 4, url


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_installs_aconvlib_from_the_repository_first(path):
    src = install_cell(path)
    assert f'"aconvlib[book] @ git+{repository_url()}"' in src
    assert 'importlib.util.find_spec("aconvlib") is None' in src   # skipped where aconvlib imports
    assert len(src.splitlines()) <= 5


def test_install_cell_is_skipped_when_aconvlib_imports_and_pip_installs_otherwise(monkeypatch):
    import importlib.util

    src = install_cell(CHAPTERS[0])
    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda args: calls.append(args))
    exec(compile(src, "install-cell", "exec"), {})
    assert calls == []                                     # aconvlib is importable here: nothing installed
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aconvlib" else real(name, *a))
    exec(compile(src, "install-cell", "exec"), {})
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", f"aconvlib[book] @ git+{repository_url()}"]]


def test_book_config_carries_the_same_url_and_plain_launch_links():
    cfg = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())
    assert cfg["repository"]["url"] == repository_url()
    assert cfg["html"]["use_repository_button"] is True and cfg["html"]["use_download_button"] is True
    assert cfg["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert not cfg["launch_buttons"].get("binderhub_url") and not cfg["launch_buttons"].get("thebe")
    # a sphinx html_theme_options block would replace the theme options above (buttons and URL included)
    assert "html_theme_options" not in (cfg.get("sphinx") or {}).get("config", {})


def test_set_repository_url_rewrites_every_copy(tmp_path):
    import shutil

    for rel in ("pyproject.toml", "book/_config.yml", "README.md", *(f"notebooks/{p.name}" for p in CHAPTERS)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    new = "https://github.com/someone/deltaconv-book"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "set_repository_url.py"), new, "--root", str(tmp_path)],
                   check=True, capture_output=True)
    text = {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    assert not any(repository_url() in t for t in text.values())
    assert repository_url(tmp_path / "pyproject.toml") == new
    assert all(f"git+{new}\\\"" in t for p, t in text.items() if p.suffix == ".ipynb")   # JSON-escaped quote
    nb = json.loads(text[tmp_path / "notebooks" / CHAPTERS[0].name])   # still valid JSON, same layout
    assert (tmp_path / "notebooks" / CHAPTERS[0].name).read_text() == json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def test_readme_gpu_section_names_the_same_repository():
    text = (ROOT / "README.md").read_text()
    start = text.index("## Running a chapter on a real model")
    section = text[start:text.index("\n## ", start + 10)]
    assert set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", section)) == {repository_url()}


def test_colab_links_point_at_the_chapter_sources_not_the_ignored_executed_copies(tmp_path):
    """jupyter-book links each page to book/chapters/<chapter>.ipynb, which git ignores (a 404 on GitHub/Colab);
    the build rewrites those links to notebooks/<chapter>.ipynb, which exists in the repository."""
    from aconvlib.book.runner import point_launch_links_at_sources

    root = Path(__file__).resolve().parents[1]
    assert "book/chapters" in (root / ".gitignore").read_text()
    page = tmp_path / "chapters" / "03_asm_highpass.html"
    page.parent.mkdir()
    base = "https://colab.research.google.com/github/o/r/blob/main/"
    page.write_text(f'<a href="{base}book/chapters/03_asm_highpass.ipynb">Colab</a> '
                    f'<a href="https://github.com/o/r">repository</a> <a href="_sources/03_asm_highpass.ipynb">download</a>')
    assert point_launch_links_at_sources(tmp_path) == 1
    text = page.read_text()
    assert f'{base}notebooks/03_asm_highpass.ipynb' in text and "book/chapters" not in text
    assert '_sources/03_asm_highpass.ipynb' in text and 'https://github.com/o/r"' in text
    assert (root / "notebooks" / "03_asm_highpass.ipynb").exists()
    assert point_launch_links_at_sources(tmp_path) == 0        # idempotent
