"""Display labels of the comparison rows: the book makes them from typed rows (:class:`aconvlib.mini.compare.Variant`,
:class:`aconvlib.mixers.variants.Method`); nothing below the book looks a row up by its label.

The strings are the ones the stored tables (``benchmarks/results/cpu_comparison``, ``cpu_controls``) and the
chapters' records carry.
"""
from __future__ import annotations

from ..mixers.variants import Method

__all__ = ["ROLE_TEXT", "labelled_receptive_field", "method_title", "receptive_field_label", "variant_label",
           "variant_setting", "variant_training"]

#: the roles of an NA / small-K row as the labels say them
ROLE_TEXT = {"paper-scaled": "paper-scaled", "chapter": "chapter's K"}
_TITLES = {Method.TEACHER: "self-attention (teacher)", Method.NONE: "no self-attention",
           Method.UNIFORM: "uniform attention", Method.DELTACONV: "ΔConv", Method.LINEAR: "LinFusion"}


def method_title(method) -> str:
    """A mixer's name in the tables: ``self-attention (teacher)``, ``ΔConv``, ``LinFusion``, ``NA``, …"""
    method = Method(method)
    return _TITLES.get(method, {Method.WINDOW: "window attention", Method.NA: "NA"}.get(method, method.value))


def variant_label(v) -> str:
    """The row label of a :class:`~aconvlib.mini.compare.Variant` (``"NA K=7 (chapter's K)"``, ``"ΔConv (CPU budget)"``)."""
    m = Method(v.method)
    if m in (Method.TEACHER, Method.NONE, Method.UNIFORM):
        return _TITLES[m]
    if m is Method.WINDOW:
        return f"window attention ({v.window} keys)"
    if m is Method.NA:
        roles = ", ".join(ROLE_TEXT[r] for r in v.roles)
        return f"NA K={v.kernel}" + (f" ({roles})" if roles else "")
    title = _TITLES[m]
    if v.student == "shipped":
        return f"{title} (shipped, H100 budget)"
    if v.student == "given":
        return f"{title} (distilled)"
    if not v.names_start:
        return f"{title} (CPU budget)"
    if "paper-scaled" in v.roles:
        return f"{title} K={v.kernel} (CPU budget, from scratch, paper-scaled K)"
    start = "from scratch" if v.start == "scratch" else "from the teacher's weights"
    return f"{title} (CPU budget, {start})"


def variant_training(v) -> str:
    """How a variant's weights came about (the ``training`` column)."""
    m = Method(v.method)
    if m is Method.TEACHER:
        return "teacher"
    if m in (Method.NONE, Method.UNIFORM):
        return "training-free (control)"
    if not m.trained:
        return "training-free"
    if v.student == "shipped":
        return "distilled on an H100 (see chapter 7)"
    info = v.info
    if m is Method.DELTACONV:
        start = "from fresh blocks"
    else:
        start = "from fresh weights" if v.start == "scratch" else "from the teacher's attn1 weights"
    return f"distilled on the CPU, {info.get('steps')} steps × batch {info.get('batch')}, {start}"


def variant_setting(v) -> str:
    """A variant's setting (the ``setting`` column): ``K=9``, ``1-D band, 49 keys``, …"""
    m = Method(v.method)
    if m is Method.NONE:
        return "every attn1 outputs 0"
    if m is Method.UNIFORM:
        return "every query: mean of all values"
    if m is Method.WINDOW:
        return f"1-D band, {v.window} keys"
    if m is Method.NA:
        return f"K={v.kernel}"
    if m is Method.DELTACONV:
        return "K=" + ("/".join(map(str, v.kernels)) or "?")
    if m is Method.LINEAR:
        return "hidden ratio 1"
    return ""


def receptive_field_label(key: str, block) -> str:
    """The panel label of a :func:`~aconvlib.mixers.deltaconv.stage_gradient_maps` key: ``"stage 0 (s=1, K=9)"``,
    ``"total w/o pool branch"`` (``local``), ``"total"``."""
    if key.startswith("stage_"):
        i = int(key.split("_")[1])
        return f"stage {i} (s={block.stages[i].scale:g}, K={block.stages[i].kernel_size})"
    return {"local": "total w/o pool branch", "total": "total"}[key]


def labelled_receptive_field(block, grid, **options) -> dict:
    """:func:`~aconvlib.mixers.deltaconv.stage_gradient_maps` of ``block`` keyed by the book's panel labels, in order."""
    from ..mixers.deltaconv import stage_gradient_maps

    return {receptive_field_label(k, block): v for k, v in stage_gradient_maps(block, grid, **options).items()}
