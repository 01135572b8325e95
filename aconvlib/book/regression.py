"""Regression runs: the chapters' records compared with reviewed references (``aconv regress``).

Every chapter records the numbers its text states (:mod:`aconvlib.book.records`). The references of a
profile live in the repository, ``data/regression/<profile>.json``; ``aconv regress --update`` writes
them from the current records, and the diff is reviewed in a commit. A comparison checks every record
of every selected chapter against its reference with the *reference's* tolerance:

=============  ============================================================================================
verdict        meaning (everything but ``ok`` fails the run, exit code 1)
=============  ============================================================================================
``ok``         within tolerance (tables: every element, same keys and lengths)
``drift``      outside tolerance; the message names the element, both values and the bound
``missing``    in the references, not recorded by this run
``new``        recorded, not in the references (not reviewed yet)
``tolerance``  the chapter now asks for another tolerance than the reviewed one
``not run``    the chapter has no records file (not executed)
``failed``     the chapter stopped with an error (its records are partial)
``profile``    the records were made under another profile
``orphan``     references for a chapter that no longer exists
=============  ============================================================================================

A changed tolerance, a new record and a removed one all need ``--update`` and so show up in the
reviewed diff. ``--update`` leaves a chapter's entry untouched when its records did not change, so the
diff shows only what moved.

References format (``format: aconv-regression-references/1``)::

    {"format": "aconv-regression-references/1", "profile": "smoke",
     "chapters": {"03_asm_highpass": {"updated": "2026-05-01T10:00:00+00:00",
                                      "environment": {...}, "models": {...},
                                      "records": {"mini-dit/hp11": {"value": ..., "rtol": ..., "atol": ...,
                                                                    "reason": "..."}}}}}

Each comparison is written as a report, Markdown (``book/regression_report.md``, included by the book's
appendix page ``book/regression.md``) and JSON (``book/regression_report.json``), with, per record, the
last time it matched (carried over from the previous report).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from ..utils import atomic_write
from .records import flatten, format_tolerance, load_sidecar, matches, records_path_for, write_json
from .runner import REGRESSION_REPORT, book_root, execute_chapter, load_profile, select_chapters

REF_FORMAT = "aconv-regression-references/1"
REPORT_FORMAT = "aconv-regression-report/1"
FAILING = ("drift", "missing", "new", "tolerance", "not run", "failed", "profile", "orphan")
CHAPTER_ROW = "(chapter)"

__all__ = ["Comparison", "RegressionError", "Row", "compare", "compare_record", "load_references",
           "references_path", "run_regression", "update_references", "write_report"]


class RegressionError(RuntimeError):
    """Records drifted, are missing, new or otherwise unreviewed (one line naming chapter and record)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ formatting

_MESSAGE_LEAVES = 12   # a new or missing table longer than this is shown by its first elements in messages


def _fmt(v: Any, short: bool = True) -> str:
    """A value for a table cell (short) or a message (enough digits to see a difference)."""
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return f"{v:.4g}" if short and abs(v) >= 10**12 else f"{v:,}" if short else str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if short else f"{v:.10g}"
    if isinstance(v, str):
        s = json.dumps(v, ensure_ascii=False)
        return s if len(s) <= 32 or not short else s[:30] + "…\""
    leaves = flatten(v)
    if not short and len(leaves) > _MESSAGE_LEAVES:   # a message names a few elements, not a whole table
        head = ", ".join(f"{k}: {_fmt(x)}" for k, x in list(leaves.items())[:_MESSAGE_LEAVES // 2])
        return "{" + head + f", … ({len(leaves)} values in all)}}"
    if not short or len(leaves) <= 4:
        inner = ", ".join(f"{k.strip('[]') if k.count('[') == 1 else k}: {_fmt(x)}" for k, x in leaves.items())
        text = "{" + inner + "}" if isinstance(v, dict) else "[" + ", ".join(_fmt(x) for x in leaves.values()) + "]"
        return text if len(text) <= 48 or not short else text[:46] + "…" + text[-1]
    nums = [x for x in leaves.values() if isinstance(x, (int, float)) and not isinstance(x, bool)
            and math.isfinite(x)]
    rng = f", {_fmt(min(nums))}…{_fmt(max(nums))}" if nums else ""
    return f"{len(leaves)} values{rng}"


# ------------------------------------------------------------------------------------------ comparison

@dataclass
class Row:
    """One record's verdict."""

    chapter: str
    name: str
    verdict: str
    reference: Any = None
    now: Any = None
    rtol: float = 0.0
    atol: float = 0.0
    reason: Optional[str] = None
    detail: str = ""
    element: Optional[str] = None
    last_matched: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.verdict not in FAILING

    @property
    def tolerance(self) -> str:
        return format_tolerance(self.rtol, self.atol)

    @property
    def message(self) -> str:
        """The full account: chapter, record (and element), verdict, both values and the bound."""
        what = "" if self.name == CHAPTER_ROW else f" {self.name}{self.element or ''}"
        return f"{self.chapter}:{what} {self.verdict}: {self.detail}".rstrip(": ")

    @property
    def short(self) -> str:
        """One clause for a one-line error: chapter, record (and element), verdict, the two values of a drift."""
        what = "" if self.name == CHAPTER_ROW else f" {self.name}{self.element or ''}"
        if self.verdict != "drift":
            return f"{self.chapter}{what} {self.verdict}"
        ref, now = flatten(self.reference), flatten(self.now)
        key = self.element or ""
        if key in ref and key in now:
            return (f"{self.chapter}{what} drifted (reference {_fmt(ref[key], short=False)}, "
                    f"now {_fmt(now[key], short=False)})")
        return f"{self.chapter}{what} drifted ({self.detail})"

    def cells(self) -> list[str]:
        """chapter, name, reference, now, tolerance, verdict (drifted elements show their own values)."""
        if self.element and self.verdict == "drift":
            ref, now = flatten(self.reference).get(self.element), flatten(self.now).get(self.element)
            ref_s = "—" if self.element not in flatten(self.reference) else _fmt(ref)
            now_s = "—" if self.element not in flatten(self.now) else _fmt(now)
            ref_s, now_s = f"{self.element} {ref_s}", f"{self.element} {now_s}"
        else:
            ref_s = "—" if self.verdict in ("new", "not run", "profile", "failed") else _fmt(self.reference)
            now_s = "—" if self.verdict in ("missing", "not run", "orphan", "profile", "failed") else _fmt(self.now)
        if self.name == CHAPTER_ROW:
            ref_s = now_s = "—"
        return [self.chapter, self.name, ref_s, now_s, self.tolerance if self.name != CHAPTER_ROW else "—",
                self.verdict if self.ok else self.verdict.upper()]


def compare_record(chapter: str, name: str, ref: dict, now: dict) -> Row:
    """Compare one record with its reference under the reference's tolerance."""
    rtol, atol = float(ref.get("rtol", 0.0)), float(ref.get("atol", 0.0))
    row = Row(chapter, name, "ok", ref["value"], now["value"], rtol, atol, ref.get("reason"))
    fr, fn = flatten(ref["value"]), flatten(now["value"])
    table = not (set(fr) == {""})
    if set(fr) != set(fn):
        gone, added = [k for k in fr if k not in fn], [k for k in fn if k not in fr]
        if "" in fr or "" in fn:
            shape = "a scalar" if "" in fr else f"a table of {len(fr)}"
            detail = f"was {shape}, now {'a scalar' if '' in fn else f'a table of {len(fn)}'}"
        else:
            detail = "table changed shape:" + (f" elements gone {', '.join(gone[:5])}" if gone else "") + \
                     (";" if gone and added else "") + (f" new elements {', '.join(added[:5])}" if added else "")
        scalar_swap = "" in fr or "" in fn
        row.verdict, row.element, row.detail = "drift", None if scalar_swap else (gone or added)[0], detail
        return row
    bad = []
    for k, r in fr.items():
        n = fn[k]
        if not matches(n, r, rtol, atol):
            num = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (n, r))
            bound = atol + rtol * abs(r) if num and math.isfinite(r) else 0.0
            excess = abs(n - r) / bound if num and bound and math.isfinite(n - r) else math.inf
            bad.append((excess, k, r, n, bound, num))
    now_tol = (float(now.get("rtol", 0.0)), float(now.get("atol", 0.0)))
    tol_changed = now_tol != (rtol, atol)
    tol_note = (f"tolerance changed from {format_tolerance(rtol, atol)} (reviewed) to "
                f"{format_tolerance(*now_tol)}: review it and run `aconv regress --update`")
    if bad:
        bad.sort(key=lambda b: -b[0])
        _, k, r, n, bound, num = bad[0]
        if num and (rtol or atol):
            cmp = f"|Δ| = {abs(n - r):.3g} > {bound:.3g} ({format_tolerance(rtol, atol)})"
        else:
            cmp = "exact match required" if num else "compared exactly"
        detail = f"reference {_fmt(r, short=False)}, now {_fmt(n, short=False)}: {cmp}"
        if table:
            detail = f"element {k}: {detail}; {len(bad)} of {len(fr)} elements outside tolerance"
        if tol_changed:
            detail += f"; {tol_note}"
        row.verdict, row.element, row.detail = "drift", (k if table else None), detail
    elif tol_changed:
        row.verdict, row.detail = "tolerance", tol_note
    return row


@dataclass
class Comparison:
    """Every row of one comparison, with where the numbers came from."""

    profile: str
    rows: list[Row]
    references: str
    records_dir: str
    created: str = field(default_factory=_now)
    environments: dict = field(default_factory=dict)      # chapter -> this run's environment
    reference_info: dict = field(default_factory=dict)    # chapter -> {updated, environment}
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def n_records(self) -> int:
        return sum(1 for r in self.rows if r.name != CHAPTER_ROW)

    def summary(self) -> str:
        bad = self.failures
        counts = {}
        for r in bad:
            counts[r.verdict] = counts.get(r.verdict, 0) + 1
        head = f"{self.n_records} records in {len({r.chapter for r in self.rows})} chapters, profile {self.profile!r}"
        if not bad:
            return f"{head}: all match their references"
        return f"{head}: {len(bad)} failing (" + ", ".join(f"{n} {v}" for v, n in counts.items()) + ")"

    def table_text(self, width: int = 36) -> str:
        header = ["chapter", "name", "reference", "now", "tolerance", "verdict"]
        cells = [[c if len(c) <= width else c[: width - 1] + "…" for c in r.cells()] for r in self.rows]
        w = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]
        line = lambda cs: "  ".join(c.ljust(w[i]) for i, c in enumerate(cs)).rstrip()  # noqa: E731
        return "\n".join([line(header), line(["-" * x for x in w])] + [line(c) for c in cells])

    def to_json(self) -> dict:
        return {"format": REPORT_FORMAT, "profile": self.profile, "created": self.created, "ok": self.ok,
                "summary": self.summary(), "references": self.references, "records_dir": self.records_dir,
                "environments": self.environments, "reference_info": self.reference_info, "notes": self.notes,
                "rows": [{**asdict(r), "tolerance": r.tolerance, "message": r.message} for r in self.rows]}

    def to_markdown(self) -> str:
        esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
        day = self.created[:16].replace("T", " ") + " UTC"
        verdict = "**all match their references**" if self.ok else f"**{len(self.failures)} fail**"
        out = [f"Last comparison: {day}, profile `{self.profile}`: {self.n_records} records in "
               f"{len({r.chapter for r in self.rows})} chapters, {verdict}. References: `{self.references}`.", ""]
        envs: dict[str, tuple[dict, list[str]]] = {}
        for ch, e in self.environments.items():
            if e:
                envs.setdefault(json.dumps(e, sort_keys=True), (e, []))[1].append(ch)
        for e, chapters in envs.values():
            which = "" if len(envs) == 1 else f" ({', '.join(chapters)})"
            threads = e.get("torch_threads")
            out += [f"This run{which}: aconvlib {e.get('aconvlib')}, torch {e.get('torch')}, diffusers {e.get('diffusers')}, "
                    f"numpy {e.get('numpy')}, Python {e.get('python')}, {e.get('device')}"
                    + (f", {threads} torch thread{'s' if threads != 1 else ''}" if threads else "") + ".", ""]
        refs = {}
        for ch, info in self.reference_info.items():
            refs.setdefault((info.get("updated") or "")[:10], []).append(ch)
        if refs:
            out += ["References set: " + "; ".join(f"{d or 'unknown'} ({', '.join(chs)})" for d, chs in sorted(refs.items()))
                    + ".", ""]
        out += [f"- {esc(n)}" for n in self.notes] + ([""] if self.notes else [])
        out += ["| chapter | record | reference | now | tolerance | verdict | last matched |",
                "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            c = r.cells()
            verdict = c[5] if r.ok else f"**{c[5]}**"
            out.append(f"| {esc(c[0])} | `{esc(c[1])}` | {esc(c[2])} | {esc(c[3])} | {esc(c[4])} | {esc(verdict)} | "
                       f"{(r.last_matched or 'never')[:10]} |")
        if self.failures:
            out += ["", "## What failed", ""] + [f"- {esc(r.message)}" for r in self.failures]
        reasons = [r for r in self.rows if r.reason]
        if reasons:
            out += ["", "## Why these tolerances", ""]
            out += [f"- {esc(r.chapter)} `{esc(r.name)}` ({r.tolerance}): {esc(r.reason)}" for r in reasons]
        return "\n".join(out) + "\n"


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def compare(profile: str, chapters: list[str], references: dict, records_dir: Path,
            references_label: str = "") -> Comparison:
    """Compare the sidecars of ``chapters`` in ``records_dir`` with ``references`` (a references document)."""
    records_dir = Path(records_dir)
    ref_chapters = references.get("chapters") or {}
    comp = Comparison(profile, [], references_label, str(records_dir))
    for chapter in chapters:
        ref = ref_chapters.get(chapter) or {}
        if ref:
            comp.reference_info[chapter] = {"updated": ref.get("updated"), "environment": ref.get("environment")}
        path = records_path_for(records_dir / f"{chapter}.ipynb")
        if not path.exists():
            comp.rows.append(Row(chapter, CHAPTER_ROW, "not run", detail=f"no records at {_shown(path)}: execute it "
                                 f"(`aconv book --profile {profile} {chapter}`, or `aconv regress` without --no-execute)"))
            continue
        try:
            side = load_sidecar(path)
        except ValueError as e:
            comp.rows.append(Row(chapter, CHAPTER_ROW, "not run", detail=str(e)))
            continue
        comp.environments[chapter] = side.get("environment") or {}
        if side.get("profile") not in (None, profile):
            comp.rows.append(Row(chapter, CHAPTER_ROW, "profile", detail=f"executed under profile "
                                 f"{side.get('profile')!r}, not {profile!r}: execute it under {profile!r}"))
            continue
        status = str(side.get("status") or "")
        if status.startswith("failed"):
            comp.rows.append(Row(chapter, CHAPTER_ROW, "failed", detail=f"the chapter {status}; its records are partial"))
        refs, now = ref.get("records") or {}, side["records"]
        changed = sorted(m for m, fp in (ref.get("models") or {}).items()
                         if (side.get("models") or {}).get(m) not in (None, fp))
        for name, entry in now.items():
            if name in refs:
                row = compare_record(chapter, name, refs[name], entry)
                if row.verdict == "drift" and changed:
                    row.detail += f" (weights changed since the reference: {', '.join(changed)})"
            else:
                row = Row(chapter, name, "new", None, entry["value"], entry.get("rtol", 0.0), entry.get("atol", 0.0),
                          entry.get("reason"), detail=f"now {_fmt(entry['value'], short=False)}, not in the "
                          f"references: review it and run `aconv regress --profile {profile} --update`")
            comp.rows.append(row)
        for name, entry in refs.items():
            if name not in now:
                comp.rows.append(Row(chapter, name, "missing", entry["value"], None, entry.get("rtol", 0.0),
                                     entry.get("atol", 0.0), entry.get("reason"),
                                     detail=f"reference {_fmt(entry['value'], short=False)} was not recorded by this run"))
        if changed:
            comp.notes.append(f"{chapter}: weights changed since its references were set: {', '.join(changed)}")
    return comp


# ------------------------------------------------------------------------------------------ references

def references_path(profile: str, root: Optional[Path] = None) -> Path:
    """``data/regression/<profile>.json`` of the book's checkout."""
    return Path(root or book_root()) / "data" / "regression" / f"{profile}.json"


def load_references(path: Path, profile: Optional[str] = None) -> dict:
    """The references document (an empty one when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return {"format": REF_FORMAT, "profile": profile, "chapters": {}}
    doc = json.loads(path.read_text())
    if doc.get("format") != REF_FORMAT:
        raise RegressionError(f"{path} is not a references file (format {REF_FORMAT})")
    if profile and doc.get("profile") not in (None, profile):
        raise RegressionError(f"{path} holds references of profile {doc.get('profile')!r}, not {profile!r}")
    return doc


def update_references(path: Path, profile: str, chapters: list[str], records_dir: Path,
                      drop_others: bool = False) -> list[str]:
    """Set the references of ``chapters`` from their sidecars; return one line per change.

    A chapter whose records did not change keeps its entry (date and environment included), so the
    reviewed diff shows only what moved. ``drop_others`` removes chapters not in ``chapters``.

    Raises:
        RegressionError: a chapter has no records, failed, or ran under another profile (nothing is written).
    """
    path, records_dir = Path(path), Path(records_dir)
    doc = load_references(path, profile)
    doc["profile"] = profile
    sides = {}
    for chapter in chapters:
        p = records_path_for(records_dir / f"{chapter}.ipynb")
        if not p.exists():
            raise RegressionError(f"cannot update {chapter}: no records at {p}; execute it first")
        side = load_sidecar(p)
        if side.get("profile") not in (None, profile):
            raise RegressionError(f"cannot update {chapter}: its records were made under profile {side['profile']!r}")
        if str(side.get("status") or "").startswith("failed"):
            raise RegressionError(f"cannot update {chapter}: the chapter {side['status']}")
        sides[chapter] = side
    changes, old_all = [], doc.get("chapters") or {}
    new_all = {ch: v for ch, v in old_all.items() if not drop_others or ch in chapters}
    changes += [f"{ch}: chapter removed ({len(v.get('records') or {})} records)" for ch, v in old_all.items()
                if ch not in new_all]
    for chapter, side in sides.items():
        old, recs = (old_all.get(chapter) or {}).get("records") or {}, side["records"]
        if old == recs:
            continue
        added = [n for n in recs if n not in old]
        removed = [n for n in old if n not in recs]
        changed = [n for n in recs if n in old and recs[n] != old[n]]
        for label, names in (("new", added), ("removed", removed), ("changed", changed)):
            if names:
                changes.append(f"{chapter}: {len(names)} {label}: {', '.join(names)}")
        if recs:
            new_all[chapter] = {"updated": _now(), "environment": side.get("environment") or {},
                                "models": side.get("models") or {}, "records": recs}
        else:
            new_all.pop(chapter, None)
    doc["chapters"] = dict(sorted(new_all.items()))
    if changes or not path.exists():
        write_json(path, doc)
    return changes


# ---------------------------------------------------------------------------------------------- report

def write_report(comp: Comparison, md_path: Path) -> tuple[Path, Path]:
    """Write the comparison as Markdown and JSON (``.md``/``.json`` beside each other), carrying over each
    record's last match from the previous JSON report of the same profile."""
    md_path = Path(md_path).with_suffix(".md")
    json_path = md_path.with_suffix(".json")
    last = {}
    if json_path.exists():
        try:
            prev = json.loads(json_path.read_text())
            if prev.get("profile") == comp.profile:
                last = {(r["chapter"], r["name"]): r.get("last_matched") for r in prev.get("rows", [])}
        except (ValueError, KeyError, TypeError):
            last = {}
    for r in comp.rows:
        r.last_matched = comp.created if r.ok else last.get((r.chapter, r.name))
    write_json(json_path, comp.to_json())
    atomic_write(md_path, comp.to_markdown())
    return md_path, json_path


def run_regression(profile: str = "smoke", selection: Optional[list[str]] = None, *, execute: bool = True,
                   update: bool = False, records_dir: Optional[Path] = None, references: Optional[Path] = None,
                   report: Optional[Path] = None, extra: Optional[dict] = None,
                   echo=print) -> tuple[Comparison, list[str]]:
    """Execute (unless ``execute=False``) and compare the selected chapters (all when ``selection`` is
    empty); with ``update``, first set their references from this run. Writes the report; returns the
    comparison and the reference changes. Does not raise on failing rows (see :attr:`Comparison.ok`).

    Paths default to the book's checkout: ``book/chapters/`` (executed notebooks and their sidecars),
    ``data/regression/<profile>.json`` and ``book/regression_report.md`` (+ ``.json``).
    """
    root = book_root()
    notebooks = select_chapters(selection)
    load_profile(profile, notebooks[0].stem if notebooks else "")      # unknown profile: ChapterError
    records_dir = Path(records_dir or root / "book" / "chapters")
    references = Path(references or references_path(profile, root))
    report = Path(report or root / "book" / REGRESSION_REPORT)
    if execute:
        for nb in notebooks:
            execute_chapter(nb, profile, out_dir=records_dir, extra=extra)
    chapters = [nb.stem for nb in notebooks]
    changes = []
    if update:
        changes = update_references(references, profile, chapters, records_dir, drop_others=not selection)
    doc = load_references(references, profile)
    try:
        label = str(references.resolve().relative_to(root.resolve()))
    except ValueError:
        label = str(references)
    comp = compare(profile, chapters, doc, records_dir, label)
    if not selection:
        for ch, entry in (doc.get("chapters") or {}).items():
            if ch not in chapters:
                comp.rows.append(Row(ch, CHAPTER_ROW, "orphan", detail=f"{len(entry.get('records') or {})} references "
                                     "but no such chapter in notebooks/: run `aconv regress --update` to drop them"))
    if not references.exists():
        comp.notes.append(f"no references for profile {profile!r} yet ({label}): create them with "
                          f"`aconv regress --profile {profile} --update` and commit the file after review")
    write_report(comp, report)
    return comp, changes
