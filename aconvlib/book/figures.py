"""The book's figures: rendered to PNG whatever the matplotlib backend, glued under a name, declared and checked.

A chapter shows a figure with :func:`show_figure` (``fig`` or a list of figures, one per model, stacked into one
image) and places it, numbered and captioned with alt text, in a Markdown cell::

    ```{glue:figure} ch02-overlays
    :alt: Attention maps of three query points over the generated image, one row per layer
    :name: fig-ch02-overlays

    **Where three queries attend.** ...
    ```

The PNG is made by the figure itself (``savefig``), so it exists under ``MPLBACKEND=Agg`` or any other
backend; under the book runner (``$ACONV_RECORDS`` set) it is only glued, and the captioned figure is where the
reader sees it; in Jupyter or Colab it is also displayed in place. Every ``{glue:figure}`` of a chapter is a
*declared* figure: :func:`missing_figures` lists the declared names an executed chapter did not produce, and the
runner fails the chapter on any (:func:`aconvlib.book.runner.execute_chapter`).
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Sequence, Union

__all__ = ["declared_figures", "figure_png", "missing_figures", "produced_figures", "show_figure"]

#: page width the PNGs are rendered for (pixels at ``DPI``): a figure made ``figsize=(10, h)`` fills it
DPI = 110
_GLUE_FIGURE = re.compile(r"^```+\{glue:figure\}\s+(\S+)", re.MULTILINE)


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


def _in_book_run() -> bool:
    from .records import ENV_PATH

    return bool(os.environ.get(ENV_PATH))


def show_figure(fig: Union[object, Sequence[object]], name: str, dpi: int = DPI):
    """Render ``fig`` (a matplotlib figure, or a list of them stacked into one image) to PNG and glue it under
    ``name`` for the chapter's ``{glue:figure}``; displayed in place too outside the book runner. Returns nothing
    (a cell ending in this call shows the figure once). ``name``: lower-case letters, digits and dashes, e.g. ``"ch03-asm-curves"``."""
    from IPython.display import Image, display

    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise ValueError(f"figure name {name!r}: use lower-case letters, digits and dashes (e.g. 'ch03-asm-curves')")
    figs = list(fig) if isinstance(fig, (list, tuple)) else [fig]
    if not figs:
        raise ValueError(f"figure {name!r}: no figure to show")
    pngs = [figure_png(f, dpi) for f in figs]
    img = Image(data=pngs[0] if len(pngs) == 1 else _stack(pngs), format="png")
    in_book = _in_book_run()
    try:
        from myst_nb import glue

        glue(name, img, display=not in_book)
    except ImportError:          # plain Jupyter without the book's extras: just show it
        display(img)


def declared_figures(notebook: Union[str, Path, dict]) -> list[str]:
    """The names of every ``{glue:figure}`` in the notebook's Markdown cells, in order."""
    nb = json.loads(Path(notebook).read_text()) if not isinstance(notebook, dict) else notebook
    names = []
    for c in nb.get("cells", []):
        if c.get("cell_type") == "markdown":
            src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            names += _GLUE_FIGURE.findall(src)
    return names


def produced_figures(notebook: Union[str, Path, dict]) -> set[str]:
    """The glue names of every PNG output of an executed notebook."""
    nb = json.loads(Path(notebook).read_text()) if not isinstance(notebook, dict) else notebook
    out = set()
    for c in nb.get("cells", []):
        for o in c.get("outputs", []) if c.get("cell_type") == "code" else []:
            name = (o.get("metadata") or {}).get("scrapbook", {}).get("name")
            # glue(display=False) stores the data under a prefixed MIME type (application/papermill.record/image/png)
            if name and any(k.endswith("image/png") for k in (o.get("data") or {})):
                out.add(name)
    return out


def missing_figures(notebook: Union[str, Path, dict]) -> list[str]:
    """Declared figures (:func:`declared_figures`) that the executed notebook did not produce as a PNG."""
    produced = produced_figures(notebook)
    return [n for n in declared_figures(notebook) if n not in produced]
