import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from aconvlib.book.runner import (ChapterError, check_offline, execute_chapter, external_resources, load_profile,
                           select_chapters)


def _notebook(path: Path, body: str) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = new_code_cell("x = 1\nprofile = 'none'")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, new_code_cell("y = x + 1"), new_code_cell(body)]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def profiles(tmp_path):
    f = tmp_path / "profiles.yml"
    f.write_text("smoke:\n  defaults: {x: 2}\n  chapters:\n    99_ok: {x: 5}\nfull:\n  defaults: {x: 3}\n")
    return f


def test_profiles_merge_defaults_and_chapter_overrides(profiles):
    assert load_profile("smoke", "99_ok", profiles) == {"x": 5}
    assert load_profile("smoke", "98_other", profiles) == {"x": 2}
    with pytest.raises(ChapterError, match="unknown profile"):
        load_profile("fast", "99_ok", profiles)


def test_repository_profiles_cover_every_chapter():
    import papermill
    import yaml

    from aconvlib.book.runner import profiles_file

    profiles = yaml.safe_load(profiles_file().read_text())
    chapters = select_chapters(None)
    assert len(chapters) >= 8
    for prof in ("smoke", "full"):
        # every chapter has its own entry (not only the defaults), and every key is a declared parameter
        assert set(profiles[prof]["chapters"]) == {ch.stem for ch in chapters}, prof
        for ch in chapters:
            declared = set(papermill.inspect_notebook(str(ch)))
            params = load_profile(prof, ch.stem)
            assert {"device", "seed", "output_dir"} <= set(params), (prof, ch.stem)
            assert set(params) <= declared, (prof, ch.stem, set(params) - declared)


def test_undeclared_parameters_are_errors(tmp_path, profiles):
    src = _notebook(tmp_path / "99_ok.ipynb", "assert y == 6, y")
    with pytest.raises(ChapterError, match="declares no parameter model"):
        execute_chapter(src, "smoke", out_dir=tmp_path / "out", profiles_path=profiles, extra={"model": "sd15"})
    bad = tmp_path / "bad.yml"
    bad.write_text("smoke:\n  defaults: {x: 2, typo_key: 1}\n")
    with pytest.raises(ChapterError, match="typo_key"):
        execute_chapter(src, "smoke", out_dir=tmp_path / "out", profiles_path=bad)


def test_chapter_executes_with_profile_parameters(tmp_path, profiles):
    src = _notebook(tmp_path / "99_ok.ipynb", "assert y == 6, y")
    out = execute_chapter(src, "smoke", out_dir=tmp_path / "out", profiles_path=profiles)
    nb = nbformat.read(out, 4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)


def test_broken_chapter_fails_loudly_with_name_and_cell(tmp_path, profiles):
    src = _notebook(tmp_path / "99_broken.ipynb", "raise ValueError('boom in chapter')")
    with pytest.raises(ChapterError) as e:
        execute_chapter(src, "smoke", out_dir=tmp_path / "out", profiles_path=profiles)
    msg = str(e.value)
    assert "99_broken" in msg and "ValueError" in msg and "boom in chapter" in msg and "cell" in msg


def test_select_chapters_by_number_and_unknown():
    assert select_chapters(["00"])[0].stem == "00_models"
    with pytest.raises(ChapterError, match="no chapter matches"):
        select_chapters(["42"])


def test_offline_check_finds_external_resources(tmp_path):
    (tmp_path / "index.html").write_text(
        '<html><head><script src="https://cdn.example.com/x.js"></script>'
        '<link rel="stylesheet" href="_static/a.css"><link rel="stylesheet" href="//fonts.example.com/f.css">'
        '</head><body><a href="https://arxiv.org">paper</a><img src="_static/i.png"></body></html>')
    (tmp_path / "a.css").write_text("@font-face { src: url('https://fonts.example.com/f.woff2'); }")
    bad = {u for _, u in external_resources(tmp_path)}
    assert bad == {"https://cdn.example.com/x.js", "//fonts.example.com/f.css", "https://fonts.example.com/f.woff2"}
    with pytest.raises(ChapterError, match="3 external"):
        check_offline(tmp_path)


def test_cli_lists_models(capsys):
    from aconvlib.cli import main
    assert main(["models"]) == 0
    assert "sd15" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # argparse usage error: one line, exit 2
        main(["layers", "no-such-model"])
    assert e.value.code == 2


# ---------------------------------------------------------------------------------------------------------------
# ci-real: the `full` code on the CPU, in minutes (every chapter against the tiny hub fixtures, in CI)
# ---------------------------------------------------------------------------------------------------------------

#: What ci-real may change relative to `full`: where it runs and how big it is; nothing that changes the code path.
CI_REAL_MAY_CHANGE = {
    "device", "dtype", "threads", "output_dir",                                   # where and how
    "n_prompts", "steps", "n_images", "height", "width", "batch_size",            # sizes
    "n_classifier", "n_real", "n_show", "n_cross", "na_prompts", "na_eval_prompts", "n_real_prompts",   # counts
}


def test_ci_real_differs_from_full_only_in_device_dtype_threads_output_and_sizes():
    import yaml

    from aconvlib.book.runner import profiles_file

    profiles = yaml.safe_load(profiles_file().read_text())
    assert profiles["ci-real"]["inherits"] == "full"
    for ch in select_chapters(None):
        full, ci = load_profile("full", ch.stem), load_profile("ci-real", ch.stem)
        changed = {k for k in set(full) | set(ci) if full.get(k, "<unset>") != ci.get(k, "<unset>")}
        assert changed <= CI_REAL_MAY_CHANGE, (ch.stem, changed - CI_REAL_MAY_CHANGE)
        assert (ci["device"], ci["dtype"], ci["threads"]) == ("cpu", "float32", 1), ch.stem
        assert ci["output_dir"] != full["output_dir"] and "ci-real" in ci["output_dir"]
        for k in ("models", "na_model", "real_models", "real_adapters", "table_model", "weights"):
            assert ci.get(k) == full.get(k), (ch.stem, k)   # the same models as `full`: the real ones


def test_ci_real_keys_are_declared_parameters():
    import papermill

    for ch in select_chapters(None):
        declared = set(papermill.inspect_notebook(str(ch)))
        assert set(load_profile("ci-real", ch.stem)) <= declared, ch.stem


def test_full_profile_selects_the_real_models():
    real = {"sd15", "sdxl", "pixart-sigma-512"}
    joint = {"flux-dev", "sd3.5-medium"}        # joint-attention transformers, each with its own sampler
    for ch in ("02_attention_maps", "03_asm_highpass", "04_prior_context", "05_erf"):
        assert set(load_profile("full", ch)["models"]) == real | joint, ch
        assert set(load_profile("ci-real", ch)["models"]) == real | joint, ch
        assert not set(load_profile("smoke", ch)["models"]) & joint, ch
    ch7 = load_profile("full", "07_distillation")
    assert set(ch7["real_models"]) == real | joint and ch7["real_adapters"] == {}
    assert load_profile("smoke", "07_distillation")["real_models"] == []


def test_out_dir_keeps_the_book_chapters_apart(tmp_path):
    from aconvlib.book.runner import run_book
    from aconvlib.cli import main

    with pytest.raises(ChapterError, match="build=False"):
        run_book(["00"], "smoke", build=True, out_dir=tmp_path)
    assert main(["book", "00", "--out-dir", str(tmp_path)]) == 1   # usage error (needs --no-build), before any work
    assert not any(tmp_path.iterdir())


def test_aconv_book_refreshes_the_regression_report_between_execution_and_build(monkeypatch, tmp_path, capsys):
    """The appendix shows the comparison of the chapters just executed: `aconv book` writes the report after
    executing and before building (and only reports drift; `aconv regress` is what fails on it)."""
    from aconvlib.book import regression, runner
    from aconvlib.cli import book as cli_book
    from aconvlib.cli import main

    calls, refresh = [], cli_book.refresh_regression_report
    monkeypatch.setattr(runner, "execute_chapter", lambda path, *a, **k: calls.append(("execute", path.stem)))
    monkeypatch.setattr(runner, "build_html", lambda: calls.append(("build",)) or tmp_path)
    monkeypatch.setattr(runner, "check_offline", lambda html: calls.append(("check",)))
    monkeypatch.setattr(cli_book, "refresh_regression_report", lambda profile: calls.append(("report", profile)))
    assert main(["book", "00", "--profile", "smoke"]) == 0
    assert calls == [("execute", "00_models"), ("report", "smoke"), ("build",), ("check",)]
    calls.clear()
    assert main(["book", "00", "--no-build"]) == 0
    assert calls == [("execute", "00_models")]                   # no build, no report

    # the report itself: written from the executed records, drift printed, not raised
    seen = {}

    def fake_run(profile, selection, execute, echo):
        seen.update(profile=profile, selection=selection, execute=execute)
        return type("C", (), {"summary": lambda self: "2 records in 1 chapters: 1 failing (1 drift)"})(), []
    monkeypatch.setattr(regression, "run_regression", fake_run)
    monkeypatch.setattr(regression, "references_path", lambda profile, root=None: tmp_path / f"{profile}.json")
    capsys.readouterr()
    refresh("smoke")
    assert "no references for profile 'smoke'" in capsys.readouterr().out and not seen
    (tmp_path / "smoke.json").write_text("{}")
    refresh("smoke")
    assert seen == {"profile": "smoke", "selection": None, "execute": False}
    assert "1 failing (1 drift)" in capsys.readouterr().out


FIGURE_CELL = """import matplotlib.pyplot as plt
from aconvlib.book.figures import show_figure
fig, ax = plt.subplots()
ax.plot([1, 2])
plt.show()                      # an undeclared figure: the inline backend draws it
fig, ax = plt.subplots()
ax.plot([2, 1])
show_figure(fig, "t-line")"""
def _figure_notebook(path: Path, body: str = FIGURE_CELL, declared=("t-line",)) -> Path:
    """A chapter whose figure cell declares ``declared`` (MyST-NB figure metadata, as the book's chapters do)."""
    _notebook(path, body)
    nb = nbformat.read(path, 4)
    for i, name in enumerate(declared):
        cell = nb.cells[-1] if i == 0 else nbformat.v4.new_code_cell("x = 3")
        cell.metadata["mystnb"] = {"figure": {"name": f"fig-{name}", "caption": "A falling line."},
                                   "image": {"alt": "a line", "width": "100%"}}
        if i:
            nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


def test_figures_render_under_agg_and_a_missing_declared_figure_fails_the_chapter(tmp_path, profiles, monkeypatch):
    from aconvlib.book.figures import declared_figures, missing_figures, produced_figures

    monkeypatch.setenv("MPLBACKEND", "Agg")          # what .ci/run exports: plt.show() would draw nothing
    out = execute_chapter(_figure_notebook(tmp_path / "99_ok.ipynb"), "smoke", out_dir=tmp_path / "out",
                          profiles_path=profiles)
    nb = nbformat.read(out, 4)
    pngs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 2                               # plt.show()'s inline figure and the declared one
    assert declared_figures(out) == ["t-line"] and produced_figures(out) == {"t-line"}
    # a chapter that declares a figure it never makes fails, naming chapter and figure
    src = _figure_notebook(tmp_path / "99_gap.ipynb", declared=("t-line", "t-missing"))
    with pytest.raises(ChapterError, match=r"99_gap.*t-missing"):
        execute_chapter(src, "smoke", out_dir=tmp_path / "out", profiles_path=profiles)
    # an executed chapter whose figure output was removed is caught by the same check
    raw = json.loads(out.read_text())
    for c in raw["cells"]:
        if c["cell_type"] == "code":
            c["outputs"] = [o for o in c.get("outputs", []) if (o.get("metadata") or {}).get("aconv_figure")
                            != "t-line"]
    assert missing_figures(raw) == ["t-line"]


def test_plumbing_cells_are_hidden_and_the_run_is_described(tmp_path, profiles):
    out = execute_chapter(_figure_notebook(tmp_path / "99_ok.ipynb"), "smoke", out_dir=tmp_path / "out",
                          profiles_path=profiles)
    nb = nbformat.read(out, 4)
    for c in nb.cells:
        tags = c.metadata.get("tags", [])
        if {"parameters", "injected-parameters"} & set(tags):
            assert "remove-cell" in tags
    box = [c for c in nb.cells if "aconv-run-box" in c.metadata.get("tags", [])]
    assert len(box) == 1 and "`smoke` profile" in box[0].source and "| `x` | `5` |" in box[0].source
    execute_chapter(out.parent.parent / "99_ok.ipynb", "smoke", out_dir=tmp_path / "out", profiles_path=profiles)
    nb = nbformat.read(out, 4)
    assert sum("aconv-run-box" in c.metadata.get("tags", []) for c in nb.cells) == 1   # replaced, not added


def test_every_chapter_gets_a_colab_link_from_the_one_repository_url(tmp_path, profiles):
    from aconvlib.book.runner import book_dir, colab_url

    import yaml

    url = yaml.safe_load((book_dir() / "_config.yml").read_text())["repository"]["url"]
    link = colab_url("03_asm_highpass")
    assert link == (f"https://colab.research.google.com/github/{url.split('github.com/')[1]}/blob/main/"
                    "notebooks/03_asm_highpass.ipynb")
    src = _figure_notebook(tmp_path / "99_ok.ipynb")
    nb = nbformat.read(src, 4)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("# 99. A chapter"))
    nbformat.write(nb, src)
    for _ in range(2):                                   # a rerun replaces the badge, it does not add one
        out = execute_chapter(src, "smoke", out_dir=tmp_path / "out", profiles_path=profiles)
    cells = nbformat.read(out, 4).cells
    badges = [c for c in cells if "aconv-colab" in c.metadata.get("tags", [])]
    assert len(badges) == 1 and cells[1] is badges[0] and "notebooks/99_ok.ipynb" in badges[0].source
    bad = tmp_path / "_config.yml"
    bad.write_text("repository:\n  url: https://example.org/x\n")
    assert colab_url("03_asm_highpass", bad) is None


def test_theme_script_fixes(tmp_path):
    from aconvlib.book.runner import fix_theme_scripts

    page = tmp_path / "p.html"
    cfg = '<script>const THEBE_JS_URL = "x"; const a = 1</script>\n'
    page.write_text(f'<html><head>{cfg}<script>other()</script>{cfg}<script>document.documentElement.dataset.mode = '
                    'localStorage.getItem("mode") || "";</script></head><body data-default-mode=""></body></html>')
    assert fix_theme_scripts(tmp_path) == 1
    text = page.read_text()
    assert text.count("THEBE_JS_URL") == 1 and "other()" in text
    assert 'getItem("mode") || "auto"' in text and 'data-default-mode="auto"' in text
    assert fix_theme_scripts(tmp_path) == 0                         # idempotent
