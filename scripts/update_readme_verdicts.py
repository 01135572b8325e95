"""Write the README's verdict table from the reviewed references (data/regression/smoke.json).

    python scripts/update_readme_verdicts.py        # after `aconv regress --profile smoke --update`

The table sits between the markers <!-- verdicts:start --> and <!-- verdicts:end --> in README.md;
tests/test_verdicts.py fails when it differs from the references.
"""
import json
import re
import sys
from pathlib import Path

from aconvlib.book.verdicts import readme_table

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- verdicts:start -->", "<!-- verdicts:end -->"


def main() -> int:
    refs = json.loads((ROOT / "data/regression/smoke.json").read_text())
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"README.md lacks the markers {START} / {END}", file=sys.stderr)
        return 1
    new = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: f"{START}\n{readme_table(refs)}\n{END}", text,
                 flags=re.S)
    readme.write_text(new)
    print("README.md verdict table updated" if new != text else "README.md verdict table already current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
