"""The book's verdicts: one per claim of the paper and model, recorded by the chapters, gathered into one table.

A chapter judges a claim with a :class:`~aconvlib.analysis.evidence.Verdict` and calls :func:`show`, which
records it (:func:`aconvlib.book.records.record_verdict`: the word as an exact regression record, the deciding
numbers in the sidecar), displays it and glues it for the chapter's opening box (``{glue:md}`verdicts_<ch>```).
:func:`collect` reads every executed chapter's sidecar; :func:`matrix` lays them out claims × models (the
verdict page); :func:`readme_table` writes the README's table from the reviewed references, so the README
cannot say more than the book.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

__all__ = ["CLAIMS", "collect", "details_markdown", "glue_recorded", "matrix", "matrix_markdown", "model_groups",
           "readme_table", "show"]

# claim id → (the paper's statement, in short; the chapter that tests it). Order: the paper's.
CLAIMS = {
    "Fig. 2": ("self-attention maps are concentrated around the query", "02_attention_maps"),
    "Fig. 4a": ("ASM(K) grows like a smooth signal, with local concentration at small K", "03_asm_highpass"),
    "Fig. 4b": ("> 80% of the high-pass attention lies within 10×10 (PixArt); high-pass maps are more local",
                "03_asm_highpass"),
    "Sec. 3.2 III": ("attention = nearly constant prior b + localized context r", "04_prior_context"),
    "Fig. 5": ("ERF < 15 (PixArt) / < 20 (SD1.5) in most layers", "05_erf"),
    "Fig. 6": ("neighborhood attention (K = 13) in place of all self-attention keeps the quality", "05_erf"),
    "Table 1": ("ΔConv costs a fraction of self-attention's FLOPs", "06_deltaconv_block"),
    "Table 2": ("ΔConv is faster than attention from 1024 px", "06_deltaconv_block"),
    "Table 3": ("the distilled ΔConv student matches its teacher's quality", "07_distillation"),
    "Fig. 8": ("the student generalizes to other resolutions", "07_distillation"),
    "Fig. 9": ("the student's ERF matches the teacher's", "08_comparison"),
}


def show(verdicts: Iterable, key: Optional[str] = None):
    """Record each verdict, display them as a Markdown list and glue it under ``key`` (default
    ``verdicts_<chapter>``) for the chapter's opening. Returns the Markdown text."""
    from IPython.display import Markdown, display

    from .records import current, record_verdict

    lines = [f"- {record_verdict(v)}" for v in verdicts]
    text = "\n".join(lines)
    display(Markdown(text))
    chapter = current().chapter or "chapter"
    try:
        from myst_nb import glue

        glue(key or f"verdicts_{chapter}", Markdown(text), display=False)
    except ImportError:   # outside the book build (plain Jupyter without myst-nb)
        pass
    return text


def glue_recorded(key: Optional[str] = None) -> str:
    """Display and glue (for the chapter's opening) every verdict this chapter has recorded so far with
    :func:`aconvlib.book.records.record_verdict`; returns the Markdown list."""
    from IPython.display import Markdown, display

    from ..analysis.evidence import Verdict
    from .records import current

    rec = current()
    lines = []
    for d in rec.verdicts.values():
        fields = {k: d.get(k) for k in ("claim", "model", "verdict", "deciding", "n", "baseline", "how_to_test",
                                        "chapter")}
        lines.append(f"- {Verdict(**fields).sentence()}")
    text = "\n".join(lines) or "- (no verdict recorded under this profile)"
    display(Markdown(text))
    try:
        from myst_nb import glue

        glue(key or f"verdicts_{rec.chapter or 'chapter'}", Markdown(text), display=False)
    except ImportError:
        pass
    return text


def collect(records_dir: str | Path) -> "pd.DataFrame":  # noqa: F821
    """Every verdict in the sidecars ``<records_dir>/*.records.json``: one row per claim and model."""
    import pandas as pd

    rows = []
    for f in sorted(Path(records_dir).glob("*.records.json")):
        doc = json.loads(f.read_text())
        for v in (doc.get("verdicts") or {}).values():
            rows.append({**v, "profile": doc.get("profile"), "status": doc.get("status", "")})
    cols = ["claim", "model", "verdict", "deciding", "n", "baseline", "how_to_test", "chapter", "profile", "status"]
    return pd.DataFrame(rows, columns=cols)


def matrix(df, models: Optional[list] = None):
    """Claims (rows, the paper's order) × models (columns): the verdict word, or "not run" where the chapter
    did not judge that model under this profile."""
    import pandas as pd

    models = models or list(dict.fromkeys(df["model"]))
    out = pd.DataFrame("not run", index=list(CLAIMS), columns=models)
    for _, r in df.iterrows():
        if r["claim"] in out.index and r["model"] in out.columns:
            out.loc[r["claim"], r["model"]] = r["verdict"]
    out.insert(0, "the paper's claim", [CLAIMS[c][0] for c in out.index])
    out.index.name = "claim"
    return out


def readme_table(references: dict) -> str:
    """The README's verdict table (Markdown) from the reviewed references (``data/regression/<profile>.json``):
    claims × models, each cell the recorded verdict word."""
    recs = {}
    for ch, doc in references.get("chapters", references).items():
        for name, entry in (doc.get("records", doc) if isinstance(doc, dict) else {}).items():
            if name.startswith("verdict/"):
                _, claim, model = name.split("/", 2)
                recs[(claim, model)] = entry["value"] if isinstance(entry, dict) else entry
    models = list(dict.fromkeys(m for _, m in recs))
    head = "| claim | the paper says | " + " | ".join(f"`{m}`" for m in models) + " |"
    lines = [head, "|" + "---|" * (len(models) + 2)]
    for claim, (text, _) in CLAIMS.items():
        if any((claim, m) in recs for m in models):
            lines.append(f"| {claim} | {text} | " + " | ".join(recs.get((claim, m), "—") for m in models) + " |")
    return "\n".join(lines)


def _md_table(header: list, rows: list) -> str:
    cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")   # noqa: E731
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def matrix_markdown(df, models: Optional[list] = None, claim_text: bool = True, skip_empty_rows: bool = False) -> str:
    """:func:`matrix` as a Markdown table (claims with the paper's words unless ``claim_text=False``; models that
    judged nothing are left out; with ``skip_empty_rows`` so are claims no listed model judged)."""
    m = matrix(df, models)
    cols = [c for c in m.columns[1:] if (m[c] != "not run").any()]
    claims = [c for c in m.index if not skip_empty_rows or (m.loc[c, cols] != "not run").any()]
    rows = [[f"**{claim}**", *([m.loc[claim, "the paper's claim"]] if claim_text else []),
             *[m.loc[claim, c] for c in cols]] for claim in claims]
    return _md_table(["claim", *(["the paper says"] if claim_text else []), *[f"`{c}`" for c in cols]], rows)


def model_groups(df) -> dict[str, list]:
    """The verdict table's column groups, narrow enough for a page: ``"embedded"`` (the ``mini-*`` models and
    their variants) and ``"real"`` (real checkpoints, their fixtures and module-level rows)."""
    models = list(dict.fromkeys(df["model"])) if len(df) else []
    emb = [m for m in models if str(m).startswith("mini")]
    return {"embedded": emb, "real": [m for m in models if m not in emb]}


def details_markdown(df) -> str:
    """One paragraph per claim: each model's verdict with its deciding numbers, baseline, n, chapter and, for
    "not testable here", what would test it."""
    order = {c: i for i, c in enumerate(CLAIMS)}
    out = []
    for claim, g in sorted(df.groupby("claim"), key=lambda kv: order.get(kv[0], 99)):
        out.append(f"**{claim}** ({CLAIMS.get(claim, ('', ''))[0]})")
        for _, r in g.sort_values("model").iterrows():
            n = f", n={int(r['n'])}" if r["n"] == r["n"] and r["n"] else ""
            base = f"; baseline: {r['baseline']}" if r["baseline"] else ""
            test = f" *What would test it:* {r['how_to_test']}" if r["how_to_test"] else ""
            out.append(f"- `{r['model']}`: **{r['verdict']}**: {r['deciding']}{n}{base} ({r['chapter']}).{test}")
        out.append("")
    return "\n".join(out)
