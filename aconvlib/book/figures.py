"""The book's figures: rendered to PNG whatever the matplotlib backend, captioned, declared and checked.

A chapter shows a figure with :func:`show_figure` (``fig`` or a list of figures, one per model, stacked into one
image). The PNG is made by the figure itself (``savefig``), so it exists under ``MPLBACKEND=Agg`` or any other
backend, and it is an ordinary output of the cell: visible in Jupyter, Colab and the executed notebook. The cell
declares the figure in its metadata, which MyST-NB renders as a numbered, captioned figure with alt text::

    "mystnb": {"figure": {"name": "fig-ch02-overlays", "caption": "**Where three queries attend.** ..."},
               "image": {"alt": "Attention maps of three query points ...", "width": "100%"}}

Every such cell is a *declared* figure (name without the ``fig-`` prefix): :func:`missing_figures` lists the
declared names an executed chapter did not produce, and the runner fails the chapter on any
(:func:`aconvlib.book.runner.execute_chapter`).
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Sequence, Union

__all__ = ["declared_figures", "figure_png", "missing_figures", "produced_figures", "show_figure"]

#: page width the PNGs are rendered for (pixels at ``DPI``): a figure made ``figsize=(10, h)`` fills it
DPI = 110
FIGURE_KEY = "aconv_figure"   # output metadata: the name of the figure the output is


def figure_png(fig, dpi: int = DPI) -> bytes:
    """``fig`` as PNG bytes (tight bounding box), independent of the active backend; closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def _stack(pngs: Sequence[bytes]) -> bytes:
    """PNG images stacked top to bottom on white, left-aligned (one row per model)."""
    from PIL import Image as PILImage

    ims = [PILImage.open(io.BytesIO(p)).convert("RGB") for p in pngs]
    w, h = max(i.width for i in ims), sum(i.height for i in ims)
    out = PILImage.new("RGB", (w, h), "white")
    y = 0
    for im in ims:
        out.paste(im, (0, y))
        y += im.height
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def show_figure(fig: Union[object, Sequence[object]], name: str, dpi: int = DPI) -> None:
    """Render ``fig`` (a matplotlib figure, or a list of them stacked into one image) to PNG and display it as the
    cell's figure ``name`` (the cell's ``mystnb.figure`` metadata gives its caption). ``name``: lower-case letters,
    digits and dashes, e.g. ``"ch03-asm-curves"``; the output carries it for the declared-figure check."""
    from IPython.display import Image, display

    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise ValueError(f"figure name {name!r}: use lower-case letters, digits and dashes (e.g. 'ch03-asm-curves')")
    figs = list(fig) if isinstance(fig, (list, tuple)) else [fig]
    if not figs:
        raise ValueError(f"figure {name!r}: no figure to show")
    pngs = [figure_png(f, dpi) for f in figs]
    display(Image(data=pngs[0] if len(pngs) == 1 else _stack(pngs), format="png"), metadata={FIGURE_KEY: name})


def _cells(notebook) -> list:
    nb = json.loads(Path(notebook).read_text()) if not isinstance(notebook, dict) else notebook
    return nb.get("cells", [])


def declared_figures(notebook: Union[str, Path, dict]) -> list[str]:
    """The names of the figures a chapter declares (code cells with ``mystnb.figure.name``, ``fig-`` prefix
    dropped), in order."""
    names = []
    for c in _cells(notebook):
        name = ((c.get("metadata") or {}).get("mystnb") or {}).get("figure", {}).get("name")
        if c.get("cell_type") == "code" and name:
            names.append(name[4:] if name.startswith("fig-") else name)
    return names


def produced_figures(notebook: Union[str, Path, dict]) -> set[str]:
    """The names of the figures an executed notebook shows: PNG outputs of a declaring cell whose output carries
    the name (:func:`show_figure`)."""
    out = set()
    for c in _cells(notebook):
        for o in c.get("outputs", []) if c.get("cell_type") == "code" else []:
            name = (o.get("metadata") or {}).get(FIGURE_KEY)
            if name and "image/png" in (o.get("data") or {}):
                out.add(name)
    return out


def missing_figures(notebook: Union[str, Path, dict]) -> list[str]:
    """Declared figures (:func:`declared_figures`) that the executed notebook did not produce as a PNG."""
    produced = produced_figures(notebook)
    return [n for n in declared_figures(notebook) if n not in produced]
