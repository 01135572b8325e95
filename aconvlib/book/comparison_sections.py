"""Chapter 8's sections as package calls: what the page computes between its tables, so the page only shows and records.

Rows are found by their type (the ``method`` column, ``K``, a :class:`~aconvlib.mini.compare.Variant`), never by
parsing a label; labels come from :mod:`aconvlib.book.labels`. Each function returns the values the page records
and the sentences it prints.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ..mixers.variants import Method

__all__ = ["BUDGET_COLUMNS", "Table1Findings", "adherence_by_variant", "best_table3", "choose_sweeps",
           "controls_na_findings", "erf_medians_line", "live_na_sweeps", "load_benchmarks", "measure_erf",
           "mixer_image_figures", "na_kernel_over_grid", "real_fig9_not_testable", "shipped_student_kernel",
           "stored_quality_verdicts", "student_budgets", "sweep_findings", "table1_findings",
           "table2_cpu_speedups"]

#: the columns of the students' budget table, in order (those present are shown)
BUDGET_COLUMNS = ("model", "student", "start", "machine", "steps_total", "runs", "steps_last_run", "batch", "lr",
                  "feature_weight", "minutes_total", "first_logged_loss", "final_loss", "init_adapter")


def _na_kernel(na_kernel, model: str) -> int:
    from ..mini.compare import per_model

    return int(per_model(na_kernel, model))


# ------------------------------------------------------------------------------------------------ Table 1
_DISPLAY = {"pixart": "PixArt", "sd15": "SD1.5"}   # Table 1's model keys as the text names them


@dataclass
class Table1Findings:
    """What the page says under Table 1: LinFusion ours / paper per model (``{"min", "max"}``, rows whose paper
    entry uses our frame), LinFusion / ΔConv over all rows, and the sentences."""

    linfusion_over_paper: dict = field(default_factory=dict)
    linfusion_over_deltaconv_range: list = field(default_factory=list)
    lines: list = field(default_factory=list)


def table1_findings(t1) -> Table1Findings:
    """:class:`Table1Findings` of a :func:`~aconvlib.book.table1.table1_comparison` frame (with baselines)."""
    tokens = t1["tokens"]
    same_frame = (t1["LinFusion paper tokens"] - tokens).abs() <= 0.01 * tokens   # the paper's entry: our frame
    lf = t1[same_frame].groupby("model")["LinFusion ours/paper"].agg(["min", "max"])
    lf1 = t1[same_frame].groupby("model")["LinFusion ours (1 head)/paper"].agg(["min", "max"])
    other = t1[~same_frame].iloc[0]
    dfa = t1[t1["DiTFastAttn kept N² share"].notna()]
    rho = dfa["DiTFastAttn kept N² share"]
    wn = dfa["DiTFastAttn window (1d)"] / dfa["tokens"]
    lf_vs_dc = t1["LinFusion ours"] / t1["ΔConv ours"]
    out = Table1Findings()
    for m in lf.index:
        out.linfusion_over_paper[m] = lf.loc[m].round(4).to_dict()
        out.lines.append(f"{m}: LinFusion ours / paper = {lf.loc[m, 'min']:.2f}–{lf.loc[m, 'max']:.2f} with the"
                         f" module's heads, {lf1.loc[m, 'min']:.3f}–{lf1.loc[m, 'max']:.3f} counting the"
                         " linear-attention state as one C×C head.")
    name = f"{_DISPLAY.get(other['model'], other['model'])} {other['size']}"
    out.lines.append(f"{name}: LinFusion ours / paper {other['LinFusion ours/paper']:.2f} because the paper's"
                     f" entry implies {other['LinFusion paper tokens']:,} tokens, not the"
                     f" {other['grid']} grid of its self-attention column.")
    out.lines.append(f"PixArt DiTFastAttn: the paper's entries keep {rho.iloc[0]:.2f} (512), {rho.iloc[1]:.2f}"
                     f" (1024) and {rho.iloc[2:].min():.2f}–{rho.iloc[2:].max():.2f} (2K–16K) of self-attention's N²"
                     f" work; the equivalent 1-D window spans {wn.iloc[0]:.2f}× to {wn.iloc[-1]:.2f}× the sequence"
                     " length N.")
    out.lines.append(f"LinFusion / ΔConv FLOPs (ours): {lf_vs_dc.min():.1f}× to {lf_vs_dc.max():.1f}× over all rows.")
    out.linfusion_over_deltaconv_range = [round(lf_vs_dc.min(), 3), round(lf_vs_dc.max(), 3)]
    return out


# ------------------------------------------------------------------------------------------------ Table 2
def load_benchmarks(results_dir, files: Sequence[str]) -> tuple[dict, dict, list]:
    """Stored token-mixer benchmark runs: ``(runs, markdown, missing)`` — file name → its JSON, file name → its
    Markdown table, and one sentence per file not stored."""
    runs, markdown, missing = {}, {}, []
    for fname in files:
        f = Path(results_dir) / fname
        if f.exists():
            runs[fname] = json.loads(f.read_text())
            markdown[fname] = f"### {f.name}\n\n" + f.with_suffix(".md").read_text()
        else:
            missing.append(f"{f} not found: no run of the token-mixer benchmark on that device is stored "
                           "(run `aconv bench-mixers --out benchmarks/results` there).")
    return runs, markdown, missing


def table2_cpu_speedups(cpu: dict) -> tuple[str, dict, str]:
    """From a stored CPU run of the token-mixer benchmark: the record name, self-attention ms / method ms of the
    largest forward shape timed with SDPA (ΔConv K=13 and 25, LinFusion, NA), and the sentence."""
    big = [r for r in cpu["rows"] if r["mode"] == "fwd" and r.get("sdpa_ms")]
    big = max(big, key=lambda r: r["tokens"])
    na_key = f"na_k{cpu['meta']['na_kernel']}"
    name = f"table2_cpu/{big['model']}@{big['size']}/fwd_sdpa_ms_over_method_ms"
    speed = {k: float(f"{big[k + '_vs_sdpa']:.4g}") for k in ("deltaconv_k13_torch", "deltaconv_k25_torch", "linear",
                                                               na_key)}
    line = (f"CPU, {big['model']} at {big['size']} ({big['tokens']} tokens), forward: ΔConv K=13"
            f" {speed['deltaconv_k13_torch']:.1f}×, K=25 {speed['deltaconv_k25_torch']:.1f}×, LinFusion"
            f" {speed['linear']:.1f}×, NA (dense masked) {speed[na_key]:.2f}× self-attention's speed"
            f" (load average {cpu['meta']['load_avg_1min']:.1f} on {cpu['meta']['device']}).")
    return name, speed, line


# ------------------------------------------------------------------------------------------------ Table 3
def student_budgets(models: Sequence[str]):
    """The distilled students of the embedded models and their budgets (a DataFrame: one row per model and
    student, shipped first) and one sentence per CPU-budget student that is not there."""
    import pandas as pd

    from ..mini import adapter_dir
    from ..mini.compare import student_dir, student_info
    from .distill_claims import student_budget
    from .labels import method_title

    rows, missing = [], []
    for m in models:
        rows.append({"model": m, "student": "ΔConv (shipped)", "machine": "1× H100", "start": "fresh blocks",
                     **student_info(adapter_dir(m)), **student_budget(adapter_dir(m))})
        for method, start in ((Method.DELTACONV, "fresh blocks (from scratch)"),
                              (Method.LINEAR, "the teacher's q/k/v/out projections (not from scratch)")):
            d, title = student_dir(m, method.value), f"{method_title(method)} (CPU budget)"
            if (d / "adapter" / "config.json").exists():
                rows.append({"model": m, "student": title, "machine": "2-core shared CPU", "start": start,
                             **student_info(d), **student_budget(d)})
            else:
                missing.append(f"{m}: {title} not found in {d}; its rows are left out"
                               " (scripts/distill_cpu_comparison.sh makes it).")
    return pd.DataFrame(rows), missing


def adherence_by_variant(frame, model: str, decimals: Optional[int] = None) -> dict:
    """``{variant label: prompt adherence}`` of ``model``'s rows of a Table-3 frame (rounded when asked)."""
    rows = frame[frame["model"] == model]
    values = rows["prompt_adherence"] if decimals is None else rows["prompt_adherence"].round(decimals)
    return dict(zip(rows["variant"], values))


def _teacher_row(frame, model: str):
    rows = frame[(frame["model"] == model) & (frame["method"] == Method.TEACHER.value)]
    return None if rows.empty else rows.iloc[0]


def stored_quality_verdicts(t3_stored, model: str, tolerance: float, chapter: str = "08_comparison") -> list:
    """Table 3's quality verdict of every stored student and baseline of ``model`` against its teacher:
    ``(label, verdict, recorded)`` per row, ``recorded`` for the CPU-budget ΔConv student (the page's verdict)."""
    from ..mini.compare import Variant
    from .distill_claims import quality_verdict
    from .labels import variant_label

    teacher = _teacher_row(t3_stored, model)
    cpu_deltaconv = variant_label(Variant(Method.DELTACONV, student="cpu"))
    out = []
    for _, r in t3_stored[t3_stored["model"] == model].iterrows():
        if r["method"] == Method.TEACHER.value:
            continue
        v = quality_verdict(model, teacher, r, tolerance=tolerance, chapter=chapter, student_label=r["variant"],
                            where=f", stored CPU run, {int(r['n_prompts'])} prompts each")
        main = r["variant"] == cpu_deltaconv
        if main:
            v.model = f"{model} (CPU-budget ΔConv)"
        out.append((r["variant"], v, main))
    return out


def mixer_image_figures(t3_live, images: Mapping, models: Sequence[str], prompts: Sequence[str], n_show: int) -> list:
    """One figure per model: every token mixer's images (rows) for the first ``n_show`` prompts."""
    from .plotting import plot_image_rows

    figs = []
    for m in models:
        labels = list(t3_live.loc[t3_live["model"] == m, "variant"])
        rows = {label: images[(m, label)][:n_show].permute(0, 2, 3, 1).numpy() for label in labels}
        figs.append(plot_image_rows(rows, list(prompts[:n_show]), title=f"{m}: every token mixer, same prompts and noise"))
    return figs


def best_table3(t3_stored, t3_live, models: Sequence[str]):
    """Per model the stored rows when there are any (``source`` "stored CPU run"), else the live ones ("live")."""
    import pandas as pd

    stored = set(t3_stored["model"]) if t3_stored is not None else set()
    return pd.concat([t3_stored[t3_stored["model"] == m].assign(source="stored CPU run") if m in stored
                      else t3_live[t3_live["model"] == m].assign(source="live") for m in models])


# ------------------------------------------------------------------------------------------------ Fig. 6
def live_na_sweeps(models: Sequence[str], t3_live, prompts, *, sweep_kernels, na_kernel, **evaluate) -> dict:
    """``{model: NA sweep frame}`` (:func:`aconvlib.mini.compare.na_sweep`) over ``sweep_kernels`` and Table 3's
    K, reusing the live Table 3's teacher and NA rows (same prompts, noise and settings)."""
    from ..mini.compare import na_sweep, per_model

    out = {}
    for m in models:
        k = _na_kernel(na_kernel, m)
        na = t3_live[(t3_live["model"] == m) & (t3_live["method"] == Method.NA.value)].iloc[0]
        known = {None: _teacher_row(t3_live, m).to_dict(), k: na.to_dict()}
        ks = sorted(set(per_model(sweep_kernels, m)) | {k})
        out[m] = na_sweep(m, ks, prompts, known=known, **evaluate)
    return out


def choose_sweeps(sw_stored, live: Mapping, models: Sequence[str]) -> tuple[dict, dict, str]:
    """``(sweeps, stored, which)``: per model the stored NA sweep when it has a teacher row, else the live one;
    the stored ones; and a phrase saying which is which."""
    stored = {m: sw_stored[sw_stored["model"] == m] for m in models} if sw_stored is not None else {}
    stored = {m: f for m, f in stored.items() if len(f) and f["K"].isna().any()}
    sweeps = {m: stored.get(m, live[m]) for m in models}
    which = ", ".join(f"{m}: {'stored' if m in stored else 'live'}" for m in models)
    return sweeps, stored, which


def shipped_student_kernel(model: str) -> int:
    """K of the shipped ΔConv student of an embedded model (its first layer's, as its adapter saved it)."""
    from ..mini import adapter_dir
    from ..mini.compare import adapter_kernel_sizes

    ks = adapter_kernel_sizes(adapter_dir(model))
    if len(ks) != 1:
        raise ValueError(f"the shipped {model} student has several kernel sizes {ks}")
    return ks[0]


def na_kernel_over_grid(models: Sequence[str], na_kernel, live: Mapping) -> tuple[dict, str]:
    """NA K of Table 3 / the largest grid side per model, and the paper's 13/64 (rounded to 4 places), with the
    sentence."""
    from .comparison import k_over_grid

    side = {m: int(live[m]["grid"].iloc[0]) for m in models}
    ks = {m: _na_kernel(na_kernel, m) for m in models}
    kg = {k: round(v, 4) for k, v in k_over_grid(ks, side).items()}
    line = ("NA K of Table 3 / largest grid side: "
            + ", ".join(f"{m} K={ks[m]} on {side[m]} → {kg[m]:.2f}" for m in models)
            + f" (the paper: 13/64 = {kg['paper']:.2f})")
    return kg, line


def sweep_findings(stored: Mapping, live: Mapping, tolerance: float, map_erf: Mapping, student_k: Mapping) -> list:
    """Per sweep (stored first, then live): ``(model, source, smallest K keeping the teacher's adherence,
    sentence)``."""
    from ..mini.compare import describe_smallest_kernel, keep_tolerance, smallest_kernel_keeping

    out = []
    for source, sweeps in (("stored", stored), ("live", live)):
        for m, f in sweeps.items():
            k_min = smallest_kernel_keeping(f, tolerance)
            line = (f"{m} ({source}, {int(f['n_prompts'].iloc[0])} prompts): the smallest NA K that keeps"
                    f" the teacher's adherence (within {keep_tolerance(f, tolerance):.1%}) is"
                    f" {describe_smallest_kernel(f, k_min)}; chapter 5's median map ERF {map_erf[m]:.0f}"
                    f" ({map_erf[m] / int(f['grid'].iloc[0]):.2f} of the side); the shipped ΔConv student"
                    f" uses K = {student_k[m]}.")
            out.append((m, source, k_min, line))
    return out


# ------------------------------------------------------------------------------------------------ Fig. 9
def _erf_pipelines(model: str, device) -> dict:
    from ..mini import adapter_dir
    from ..mini.compare import student_dir
    from ..mixers.convert import load_mixer
    from ..models import load_pipeline

    pipes = {"teacher": load_pipeline(model, device=device),
             "ΔConv (shipped)": load_mixer(load_pipeline(model, device=device), str(adapter_dir(model) / "adapter"),
                                           kind="deltaconv")}
    for method in (Method.DELTACONV, Method.LINEAR):
        d = student_dir(model, method.value) / "adapter"
        if (d / "config.json").exists():
            title = "ΔConv" if method is Method.DELTACONV else "LinFusion"
            pipes[f"{title} (CPU budget)"] = load_mixer(load_pipeline(model, device=device), str(d))
    return pipes


def measure_erf(models: Sequence[str], *, device="cpu", **measure) -> tuple[dict, dict]:
    """Gradient ERF of the teacher and its students per model (:func:`~aconvlib.mini.compare.mini_receptive_fields`
    with ``measure``): ``(fields, tables)`` — model → label → receptive fields, model → :func:`erf_table`."""
    from ..mini.compare import mini_receptive_fields
    from .comparison import erf_table
    from .studies import layer_label

    fields, tables = {}, {}
    for m in models:
        fields[m] = {k: mini_receptive_fields(p, **measure) for k, p in _erf_pipelines(m, device).items()}
        tables[m] = erf_table(fields[m], {rf.name: layer_label(rf.name) for rf in fields[m]["teacher"]})
    return fields, tables


def erf_medians_line(model: str, table, labels: Sequence[str], n_images: int) -> tuple[dict, str]:
    """Median gradient ERF per pipeline (``labels``) and of the uniform field, and the sentence about them."""
    rel = {k: float(table[f"ERF/side {k}"].median()) for k in labels}
    med = {k: float(table[f"ERF {k}"].median()) for k in labels}
    med["uniform field"] = float(table["ERF uniform"].median())
    agree = float((table["ERF ΔConv (shipped)"] == table["ERF teacher"]).mean())
    at_uniform = float((table["ERF teacher"] >= table["ERF uniform"]).mean())
    line = (f"{model} ({len(table)} layers, {n_images} images, {int(table['positions'].iloc[0])} output positions"
            f" each): median gradient ERF teacher {med['teacher']:.0f} ({rel['teacher']:.2f} of the"
            f" side), shipped ΔConv student {med['ΔConv (shipped)']:.0f} ({rel['ΔConv (shipped)']:.2f})"
            + (f", CPU-budget ΔConv {med['ΔConv (CPU budget)']:.0f}" if "ΔConv (CPU budget)" in med else "")
            + (f", LinFusion {med['LinFusion (CPU budget)']:.0f}" if "LinFusion (CPU budget)" in med else "")
            + f"; uniform field at the same positions {med['uniform field']:.0f}; same ERF as the"
            f" teacher in {agree:.0%} of the layers; the teacher's ERF is as wide as the uniform"
            f" field's in {at_uniform:.0%} of them.")
    return med, line


def real_fig9_not_testable(model: str, chapter: str = "08_comparison"):
    """Fig. 9 on a real model without published ΔConv weights: not testable, and how to test it."""
    from ..analysis.evidence import NOT_TESTABLE, Verdict

    return Verdict(claim="Fig. 9", model=model, verdict=NOT_TESTABLE,
                   deciding="no distilled ΔConv weights of this model are published",
                   how_to_test=(f"{model} + a distilled ΔConv adapter on a GPU: aconv book 08 --profile full "
                                f"(real_adapters: {{'{model}': {{'deltaconv': <adapter folder>}}}})"),
                   chapter=chapter)


# ------------------------------------------------------------------------------------------------ controls
def controls_na_findings(ctl, na_model_live: Optional[str], chapter: str = "08_comparison") -> tuple[list, list]:
    """From the stored controls: per model a sentence on the from-scratch students, and (for the models chapter 5
    does not judge live) Fig. 6's verdict from NA at the paper-scaled K against self-attention and none.
    Returns ``(lines, verdicts)``."""
    from ..mini.compare import Variant, finest_grid_side, paper_scaled_kernel
    from .labels import variant_label
    from .locality_claims import na_control_verdict

    scratch_labels = [variant_label(Variant(m, student="cpu", start="scratch", names_start=True))
                      for m in (Method.DELTACONV, Method.LINEAR)]
    lines, verdicts = [], []
    for m, g in ctl.groupby("model", sort=False):
        counts = {r["row"]: (int(r["k"]), int(r["n"])) for _, r in g.iterrows()}
        label = {meth: g.loc[g["method"] == meth.value, "row"].iloc[0] for meth in (Method.TEACHER, Method.NONE)}
        scaled = paper_scaled_kernel(finest_grid_side(m))
        na = g.loc[((g["method"] == Method.NA.value) & (g["K"] == scaled)).fillna(False), "row"].iloc[0]
        scratch = {r: counts[r] for r in counts if r in scratch_labels}
        lines.append(f"{m}: " + "; ".join(f"{r}: {k}/{n}" for r, (k, n) in scratch.items()))
        if m != na_model_live:   # this page adds the other model's Fig. 6 verdict, from the stored controls
            verdicts.append(na_control_verdict(m, {"self-attention": counts[label[Method.TEACHER]], na: counts[na],
                                                   "no self-attention": counts[label[Method.NONE]]}, na,
                                               chapter=chapter))
    return lines, verdicts
