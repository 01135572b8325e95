"""Result tables made for reading: named columns with units, rounding per column, no index column, names unbroken.

A chapter computes a pandas frame and shows it with :func:`reading_table`::

    reading_table(levels, {"model": "model", "grid": "grid", "asm3": "ASM(3)", "ratio3": "ASM(3) / uniform"},
                  digits={"ASM(3)": 3, "ASM(3) / uniform": 2}, caption="Per grid level, medians over layers")

Only the named columns are shown, in the given order, renamed; floats are rounded per column (``digits``: one
int for all, or column → int; ``pct``: columns shown as percentages); booleans read "yes"/"no"; the index is
hidden; model and layer names do not wrap. The result is a pandas ``Styler`` (HTML in the book and in
Jupyter); the frame itself is unchanged, so the chapter's records keep full precision.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

__all__ = ["RowsReport", "auto_number", "reading_table", "use_reading_tables"]


@dataclass
class RowsReport:
    """What a generating comparison measured: ``rows`` (one dict per model and variant; :attr:`table`),
    ``lines`` (plain-language notes), ``images`` (model → variant → uint8 [P, H, W, 3]), ``prompts`` (model → list)."""

    rows: list = field(default_factory=list)
    lines: list = field(default_factory=list)
    images: dict = field(default_factory=dict)
    prompts: dict = field(default_factory=dict)

    @property
    def table(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

#: columns whose text must not break across lines (model names such as ``pixart-sigma-1024``)
NOWRAP = ("model", "layer", "grid", "variant", "row", "condition", "student", "claim")


def auto_number(v) -> str:
    """A float for reading: thousands separators and no decimals from 100 on, 2 decimals from 1, else 3
    significant digits (0.000312 stays 0.000312); "—" for NaN."""
    import math

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 1:
        return f"{v:.2f}"
    return "0" if a == 0 else f"{v:.3g}"


def reading_table(frame, columns: Union[Mapping[str, str], Sequence[str], None] = None,
                  digits: Union[int, Mapping[str, int], None] = None, pct: Sequence[str] = (),
                  caption: Optional[str] = None):
    """A ``Styler`` of ``frame`` for readers (see the module docstring). ``columns``: source → shown name, or a
    list of source names (shown as they are); None: every column. ``digits``: decimals (one int, or column →
    int); columns not named there use :func:`auto_number`. A meaningful index (not 0, 1, 2 …) becomes the first
    column(s). Raises KeyError naming columns the frame lacks."""
    import pandas as pd

    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
        frame.columns = [" ".join(str(x) for x in c if str(x)) if isinstance(c, tuple) else c for c in frame.columns]
    elif isinstance(frame.columns, pd.MultiIndex):
        frame = frame.copy()
        frame.columns = [" ".join(str(x) for x in c if str(x)) for c in frame.columns]
    if columns is None:
        columns = {c: str(c) for c in frame.columns}
    elif not isinstance(columns, Mapping):
        columns = {c: str(c) for c in columns}
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"reading_table: the frame has no column(s) {missing}; it has {list(frame.columns)}")
    df = frame[list(columns)].rename(columns=dict(columns)).reset_index(drop=True)
    shown = list(df.columns)
    pct = [dict(columns).get(c, c) for c in pct]
    fmt = {}
    for c in shown:
        col = df[c]
        if c in pct:
            fmt[c] = lambda v: "—" if pd.isna(v) else f"{v:.0%}"
        elif pd.api.types.is_bool_dtype(col):
            fmt[c] = lambda v: "yes" if v else "no"
        elif pd.api.types.is_float_dtype(col):
            d = digits.get(c) if isinstance(digits, Mapping) else digits
            fmt[c] = auto_number if d is None else (lambda d: lambda v: "—" if pd.isna(v) else f"{v:,.{d}f}")(int(d))
    sty = df.style.format(fmt, na_rep="—").hide(axis="index")
    nowrap = [c for c in shown if str(c).split(" ")[0].lower() in NOWRAP]
    if nowrap:
        sty = sty.set_properties(subset=nowrap, **{"white-space": "nowrap"})
    sty = sty.set_table_styles([{"selector": "th", "props": [("text-align", "left")]},
                                {"selector": "td", "props": [("text-align", "right")]}])
    if caption:
        sty = sty.set_caption(caption)
    return sty


def use_reading_tables(max_rows: int = 120) -> None:
    """Make every DataFrame a cell shows render as :func:`reading_table` (HTML: no index column unless it means
    something, :func:`auto_number` rounding, names unbroken); text output is unchanged. Called by
    :func:`aconvlib.book.setup.setup_chapter`; a no-op outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return
    import pandas as pd

    def html(df):
        if len(df) > max_rows or df.shape[1] > 40:
            return None                      # pandas' own truncated HTML
        return reading_table(df).to_html()

    ip.display_formatter.formatters["text/html"].for_type(pd.DataFrame, html)
