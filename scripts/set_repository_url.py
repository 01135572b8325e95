"""Set the repository URL everywhere it is written: pyproject.toml ([project.urls] Repository, the one source),
book/_config.yml (repository.url), every chapter's install cell and the README.

    python scripts/set_repository_url.py https://github.com/<owner>/<repo> [--root CHECKOUT]

tests/test_book_config.py checks that all copies agree with pyproject.toml.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="e.g. https://github.com/<owner>/<repo> (no trailing slash, no .git)")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="the checkout (default: this one)")
    a = ap.parse_args(argv)
    new = a.url.rstrip("/").removesuffix(".git")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", new):
        ap.error(f"not a GitHub repository URL: {a.url}")
    root = Path(a.root)
    text = (root / "pyproject.toml").read_text()
    old = re.search(r'^Repository\s*=\s*"([^"]+)"', text[text.index("[project.urls]"):], re.M).group(1)
    files = [root / "pyproject.toml", root / "book" / "_config.yml", root / "README.md",
             *sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    for f in files:
        if f.exists() and old in (text := f.read_text()):
            f.write_text(text.replace(old, new))   # plain text replace keeps the notebooks' JSON layout
            print(f"{f.relative_to(root)}: {old} -> {new}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
