"""The student edition of the book: the same pages without any solution.

Every solution in a chapter is one or more cells tagged :data:`SOLUTION_TAG` (a ``{solution}`` markdown cell, or
sphinx-exercise's gated ``{solution-start}`` … code … ``{solution-end}`` cells). The instructor edition
(``aconv build``) shows them in collapsed drop-downs; the student edition (``aconv build --student``) is built from a
copy of ``book/`` whose executed chapters have those cells removed and whose ``_config.yml`` sets sphinx-exercise's
``hide_solutions``, so no solution text reaches its HTML (``book/_build/student``). The chapter sources without their
solutions go beside it (``book/_build/student_notebooks``), for a class to run in Jupyter or Colab.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import yaml

__all__ = ["SOLUTION_TAG", "build_student", "strip_solutions", "student_notebooks", "student_source"]

SOLUTION_TAG = "solution"


def strip_solutions(notebook: Path, out: Optional[Path] = None) -> int:
    """Remove every cell tagged :data:`SOLUTION_TAG` from ``notebook`` (written to ``out``, default in place);
    return how many were removed."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    keep = [c for c in nb.cells if SOLUTION_TAG not in c.metadata.get("tags", [])]
    removed = len(nb.cells) - len(keep)
    nb.cells = keep
    nbformat.write(nb, str(out or notebook))
    return removed


def student_source(book_path: Path, dest: Path) -> Path:
    """Copy ``book_path`` (without ``_build``) to ``dest``, strip the solutions of every notebook in it and set
    ``hide_solutions`` in its ``_config.yml``; return ``dest``."""
    book_path, dest = Path(book_path), Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(book_path, dest, ignore=shutil.ignore_patterns("_build"))
    for nb in dest.rglob("*.ipynb"):
        strip_solutions(nb)
    cfg_path = dest / "_config.yml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.setdefault("sphinx", {}).setdefault("config", {})["hide_solutions"] = True
    cfg["title"] = f"{cfg.get('title', 'The book')} (student edition)"
    cfg_path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    return dest


def student_notebooks(notebook_dir: Path, dest: Path) -> list[Path]:
    """The chapter sources without their solutions, written to ``dest`` (for a class's Jupyter or Colab)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for nb in sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb")):
        strip_solutions(nb, dest / nb.name)
        out.append(dest / nb.name)
    return out


def build_student(book_path: Optional[Path] = None) -> Path:
    """Build the student edition from the executed chapters of ``book_path`` (default the checkout's ``book/``)
    into ``<book>/_build/student``; return that folder (it holds ``index.html``)."""
    from .runner import book_dir, build_html

    book_path = Path(book_path or book_dir())
    if (book_path / "guide.md").exists():
        from .course import write_course_times

        write_course_times(book_path)
    src = student_source(book_path, book_path / "_build" / "student_src")
    html = build_html(src)
    out = book_path / "_build" / "student"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(html, out)
    nb_dir = book_path.parent / "notebooks"
    if (nb_dir / "profiles.yml").exists():
        student_notebooks(nb_dir, book_path / "_build" / "student_notebooks")
    return out
