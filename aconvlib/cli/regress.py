"""``aconv regress``: compare every chapter's recorded numbers with the reviewed references."""
from __future__ import annotations

import sys
from pathlib import Path


def _regress(a) -> None:
    from ..book.regression import RegressionError, run_regression
    from .book import _params
    from .options import UsageError

    if a.no_execute and a.param:
        raise UsageError("-p sets chapter parameters for execution; it has no effect with --no-execute")
    comp, changes = run_regression(a.profile, a.chapters, execute=not a.no_execute, update=a.update,
                                   records_dir=Path(a.records_dir) if a.records_dir else None,
                                   references=Path(a.references) if a.references else None,
                                   report=Path(a.report) if a.report else None, extra=_params(a.param))
    for line in changes:
        print(f"[aconv] reference {line}")
    if a.update:
        print(f"[aconv] references: {len(changes)} change(s) in {comp.references}"
              + (" (review the diff and commit it)" if changes else " (nothing changed)"))
    print(comp.table_text())
    for note in comp.notes:
        print(f"[aconv] note: {note}")
    print(f"[aconv] {comp.summary()}; report: {a.report or 'book/regression_report.md'} (+ .json)")
    bad = comp.failures
    if bad:
        for r in bad:
            print(f"FAIL {r.message}", file=sys.stderr)
        shown = "; ".join(r.short for r in bad[:4])
        more = f"; and {len(bad) - 4} more" if len(bad) > 4 else ""
        raise RegressionError(f"{len(bad)} of {len(comp.rows)} checks failed: {shown}{more} (details above)")


def register(sub) -> None:
    p = sub.add_parser("regress", help="execute the chapters and compare the numbers they record with the "
                                       "references in data/regression/<profile>.json (exit 1 on any drift)")
    p.add_argument("chapters", nargs="*", help="chapter names or numbers (default: all)")
    p.add_argument("--profile", default="smoke", help="parameter profile from notebooks/profiles.yml")
    p.add_argument("--no-execute", action="store_true",
                   help="reuse the executed chapters and their records (after `aconv book`)")
    p.add_argument("--update", action="store_true",
                   help="set the references from this run (then review the diff of data/regression/ and commit it)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override a chapter parameter when executing (as in `aconv book`)")
    p.add_argument("--records-dir", default=None,
                   help="executed notebooks and their <chapter>.records.json (default: book/chapters)")
    p.add_argument("--references", default=None, help="references file (default: data/regression/<profile>.json)")
    p.add_argument("--report", default=None,
                   help="report path, Markdown; JSON beside it (default: book/regression_report.md)")
    p.set_defaults(func=_regress)
