"""Record how long each chapter took to execute, for the course guide (book/guide.md).

Reads the timing stamps the runner wrote into the executed chapters' records files (book/chapters/*.records.json:
wall seconds, the kernel's CPU seconds, the load average at start and end) and writes them, with the machine's
facts, to benchmarks/results/chapter_times_cpu.json, which every build renders into the guide's table.

    aconv book --profile smoke --no-build        # execute the chapters (one after the other, nothing else running)
    python scripts/chapter_times.py              # collect and write the timing file; review `git diff`
"""
from __future__ import annotations

import argparse
from pathlib import Path

from aconvlib.book.course import TIMES_FILE, collect_times, save_times, times_markdown
from aconvlib.book.runner import book_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chapters-dir", default=None, help="executed chapters (default: book/chapters)")
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--out", default=None, help=f"default: {TIMES_FILE}")
    a = ap.parse_args()
    root = book_root()
    doc = collect_times(Path(a.chapters_dir or root / "book" / "chapters"), a.profile)
    out = save_times(doc, Path(a.out or root / TIMES_FILE))
    print(times_markdown(doc))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
