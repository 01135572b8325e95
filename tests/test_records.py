"""Regression records (aconvlib.book.records) and their comparison with references (aconv regress).

Everything runs in a throw-away book checkout (ACONV_BOOK_ROOT) with hand-written records files, so no
chapter is executed, except one test that runs a two-cell notebook through the runner to check that
the records reach their file from the kernel.
"""
import json
import math

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from aconvlib.book import records
from aconvlib.book.records import Recorder, flatten, matches, record, to_jsonable
from aconvlib.book.regression import compare_record, run_regression
from aconvlib.cli import main

CHAPTERS = ("01_alpha", "02_beta")


@pytest.fixture
def book(tmp_path, monkeypatch):
    """A minimal book checkout: two chapters (never executed here), profiles, an empty book/."""
    root = tmp_path / "checkout"
    (root / "notebooks").mkdir(parents=True)
    (root / "book").mkdir()
    (root / "book" / "_config.yml").write_text("title: test\n")
    (root / "notebooks" / "profiles.yml").write_text("smoke:\n  defaults: {x: 2}\nfull:\n  defaults: {x: 3}\n")
    for stem in CHAPTERS:
        nbformat.write(new_notebook(), root / "notebooks" / f"{stem}.ipynb")
    monkeypatch.setenv("ACONV_BOOK_ROOT", str(root))
    monkeypatch.chdir(root)
    for var in (records.ENV_PATH, records.ENV_CHAPTER, records.ENV_PROFILE):
        monkeypatch.delenv(var, raising=False)
    return root


def write_records(root, chapter, values: dict, profile="smoke", **tolerances):
    """The records file an executed ``chapter`` would leave: ``values`` name -> value, tolerance per name."""
    rec = Recorder(chapter, profile, root / "book" / "chapters" / f"{chapter}.records.json")
    for name, value in values.items():
        rtol, atol = tolerances.get(name, (0.0, 0.0))
        rec.record(name, value, rtol=rtol, atol=atol, reason="sampled" if rtol or atol else None)
    rec.save()
    return rec.path


BASE = {
    "01_alpha": {"mini-sd/layers": 10, "mini-sd/median_local_x": 3.2, "verdict": "concentrated",
                 "mini-sd/erf": {"down.0": 5, "down.1": 7, "mid": 3}},
    "02_beta": {"flops/sd15@512": 123456789012, "mini-dit/adherence": 0.75},
}
TOL = {"mini-sd/median_local_x": (0.05, 0.0), "mini-sd/erf": (0.0, 1.0), "mini-dit/adherence": (0.0, 0.0625)}


def write_all(root, changes=None, drop=(), profile="smoke"):
    for ch, values in BASE.items():
        vals = {k: v for k, v in {**values, **(changes or {}).get(ch, {})}.items() if k not in drop}
        write_records(root, ch, vals, profile, **TOL)


def regress(*args):
    return main(["regress", "--no-execute", *args])


# ------------------------------------------------------------------------------------------- recording

def test_record_returns_the_value_and_stores_json():
    rec = Recorder()
    s = pd.Series([1.5, 2.5], index=["a", "b"])
    assert rec.record("s", s, rtol=0.1, reason="why") is s
    assert rec.record("x", np.float32(0.25)) == np.float32(0.25)
    rec.record("df", pd.DataFrame({"erf": [5, 7]}, index=["down.0", ("up", 1)]))
    rec.record("t", torch.tensor([[1, 2], [3, 4]]))
    rec.record("n", np.int64(7))
    rec.record("px", pd.Series([1.0, 2.0], index=[256.0, 512.0]))
    assert rec.records["s"] == {"value": {"a": 1.5, "b": 2.5}, "rtol": 0.1, "atol": 0.0, "reason": "why"}
    assert rec.records["x"]["value"] == 0.25 and type(rec.records["n"]["value"]) is int
    assert rec.records["df"]["value"] == {"down.0": {"erf": 5}, "up / 1": {"erf": 7}}
    assert rec.records["t"]["value"] == [[1, 2], [3, 4]]
    assert rec.records["px"]["value"] == {"256": 1.0, "512": 2.0}
    json.dumps(rec.document())       # everything is plain JSON


def test_record_checks_its_arguments():
    rec = Recorder()
    with pytest.raises(ValueError, match="needs a reason"):
        rec.record("a", 1.0, rtol=0.1)
    with pytest.raises(ValueError, match="compared exactly"):
        rec.record("a", "text", atol=1, reason="r")
    with pytest.raises(ValueError, match="rtol must be"):
        rec.record("a", 1.0, rtol=-1, reason="r")
    with pytest.raises(ValueError, match="one line"):
        rec.record("a", 1.0, rtol=0.1, reason="two\nlines")
    with pytest.raises(ValueError, match="name"):
        rec.record("", 1)
    with pytest.raises(TypeError, match="cannot record"):
        rec.record("a", object())
    with pytest.raises(ValueError, match="small tables"):
        rec.record("a", list(range(records.MAX_ELEMENTS + 1)))
    with pytest.raises(ValueError, match="unique labels"):
        to_jsonable({1: 1, "1": 2})


def test_record_without_a_destination_keeps_records_in_memory(monkeypatch, tmp_path):
    monkeypatch.delenv(records.ENV_PATH, raising=False)
    monkeypatch.chdir(tmp_path)
    rec = records.start(user_ns={})
    assert record("a/b", 2.0) == 2.0 and records.current() is rec and rec.path is None
    assert rec.records["a/b"]["value"] == 2.0 and not list(tmp_path.iterdir())


def test_context_from_papermill_output_path_and_profile_parameter(monkeypatch, tmp_path):
    monkeypatch.delenv(records.ENV_PATH, raising=False)
    monkeypatch.delenv(records.ENV_CHAPTER, raising=False)
    monkeypatch.delenv(records.ENV_PROFILE, raising=False)
    monkeypatch.setattr(records, "_CHAPTER_HINT", None)
    out = tmp_path / "run" / "03_x.ipynb"
    rec = records.start(user_ns={"PAPERMILL_OUTPUT_PATH": str(out), "profile": "full"})
    assert rec.path == tmp_path / "run" / "03_x.records.json" and rec.chapter == "03_x" and rec.profile == "full"
    record("n", 3)
    assert records.load_sidecar(rec.path)["records"]["n"]["value"] == 3
    monkeypatch.setenv(records.ENV_PATH, str(tmp_path / "env.records.json"))
    monkeypatch.setenv(records.ENV_CHAPTER, "05_erf")
    monkeypatch.setenv(records.ENV_PROFILE, "smoke")
    rec = records.start(user_ns={"PAPERMILL_OUTPUT_PATH": str(out), "profile": "full"})   # the runner wins
    assert (rec.path.name, rec.chapter, rec.profile) == ("env.records.json", "05_erf", "smoke")


def test_sidecar_carries_environment_and_weights_fingerprints(tmp_path):
    rec = Recorder("01_alpha", "smoke", tmp_path / "01_alpha.records.json")
    rec.record("mini-sd/x", 1.0)
    rec.record("sd15/layers", 16)
    doc = records.load_sidecar(rec.path)
    assert {"aconvlib", "torch", "diffusers", "numpy", "python", "device"} <= set(doc["environment"])
    assert doc["models"]["mini-sd"].startswith("sha256:")
    assert "sd15" in doc["models"]                      # named by a record: hub snapshot or shipped config
    assert (doc["chapter"], doc["profile"], doc["format"]) == ("01_alpha", "smoke", records.FORMAT)


# ------------------------------------------------------------------------------------------ tolerances

def test_tolerances_as_documented():
    # relative: |now - ref| <= rtol * |ref|, relative to the reference
    assert matches(105.0, 100.0, rtol=0.05) and not matches(105.01, 100.0, rtol=0.05)
    assert matches(95.0, 100.0, rtol=0.05) and not matches(94.99, 100.0, rtol=0.05)
    # absolute, and both added
    assert matches(0.55, 0.5, atol=0.05 + 1e-12) and not matches(0.56, 0.5, atol=0.05)
    assert matches(1.0, 0.0, rtol=0.5, atol=1.0) and not matches(1.01, 0.0, rtol=0.5, atol=1.0)
    assert matches(1.59, 1.0, rtol=0.1, atol=0.5) and not matches(1.61, 1.0, rtol=0.1, atol=0.5)
    # exact: ints, floats, strings, bools; NaN matches NaN
    assert matches(10**17 + 1, 10**17 + 1) and not matches(10**17 + 1, 10**17)
    assert not matches(0.1 + 0.2, 0.3) and matches(0.3, 0.3)
    assert matches("a", "a") and not matches("a", "b", rtol=1.0) and not matches(True, 1)
    assert matches(math.nan, math.nan) and not matches(math.nan, 1.0, rtol=1.0)
    assert matches(3, 3.0) and not matches(math.inf, 1e308, rtol=1.0)
    # the same rule for an element of a table
    row = compare_record("c", "t", {"value": {"a": 1.0, "b": 2.0}, "rtol": 0.1, "atol": 0.0},
                         {"value": {"a": 1.09, "b": 2.0}, "rtol": 0.1, "atol": 0.0})
    assert row.ok


def test_table_drift_names_the_element():
    ref = {"value": {"down.0": 5, "down.1": 7, "mid": 3}, "rtol": 0.0, "atol": 1.0}
    row = compare_record("05_erf", "mini-sd/erf", ref, {**ref, "value": {"down.0": 5, "down.1": 9, "mid": 3}})
    assert row.verdict == "drift" and row.element == "[down.1]"
    assert "[down.1]" in row.message and "reference 7" in row.message and "now 9" in row.message
    assert "1 of 3 elements" in row.message
    shape = compare_record("05_erf", "mini-sd/erf", ref, {**ref, "value": {"down.0": 5, "down.1": 7}})
    assert shape.verdict == "drift" and "[mid]" in shape.message
    nested = compare_record("c", "t", {"value": [[1, 2], [3, 4]], "rtol": 0, "atol": 0},
                            {"value": [[1, 2], [3, 5]], "rtol": 0, "atol": 0})
    assert nested.element == "[1][1]" and flatten([[1, 2], [3, 4]])["[1][1]"] == 4


# ---------------------------------------------------------------------------------------- comparisons

def test_update_then_round_trip_passes(book, capsys):
    write_all(book)
    assert regress("--update") == 0
    refs = json.loads((book / "data" / "regression" / "smoke.json").read_text())
    assert set(refs["chapters"]) == set(CHAPTERS)
    assert refs["chapters"]["01_alpha"]["records"]["mini-sd/median_local_x"]["rtol"] == 0.05
    capsys.readouterr()
    assert regress() == 0
    out = capsys.readouterr().out
    assert "all match" in out and "mini-sd/median_local_x" in out and "rtol 0.05" in out
    report = json.loads((book / "book" / "regression_report.json").read_text())
    assert report["ok"] and all(r["verdict"] == "ok" and r["last_matched"] for r in report["rows"])
    md = (book / "book" / "regression_report.md").read_text()
    assert "| 01_alpha | `mini-sd/median_local_x` | 3.2 | 3.2 | rtol 0.05 | ok |" in md
    assert "## Why these tolerances" in md


def test_perturbed_number_fails_naming_chapter_record_and_values(book, capsys):
    write_all(book)
    assert regress("--update") == 0
    write_all(book, {"01_alpha": {"mini-sd/median_local_x": 3.5}})          # 9% off, tolerance 5%
    capsys.readouterr()
    assert regress() == 1
    err = capsys.readouterr().err
    assert "01_alpha mini-sd/median_local_x drifted (reference 3.2, now 3.5)" in err
    assert "|Δ| = 0.3 > 0.16 (rtol 0.05)" in err
    report = json.loads((book / "book" / "regression_report.json").read_text())
    bad = [r for r in report["rows"] if r["verdict"] != "ok"]
    assert [(r["chapter"], r["name"]) for r in bad] == [("01_alpha", "mini-sd/median_local_x")]
    assert bad[0]["last_matched"]            # carried over from the previous, passing run
    write_all(book, {"01_alpha": {"mini-sd/median_local_x": 3.3}})          # 3%: within tolerance
    assert regress() == 0


def test_exact_records_fail_on_any_change(book, capsys):
    write_all(book)
    assert regress("--update") == 0
    write_all(book, {"02_beta": {"flops/sd15@512": 123456789013}, "01_alpha": {"verdict": "close to uniform"}})
    capsys.readouterr()
    assert regress() == 1
    err = capsys.readouterr().err
    assert "02_beta: flops/sd15@512 drift: reference 123456789012, now 123456789013: exact match required" in err
    assert '01_alpha: verdict drift: reference "concentrated", now "close to uniform"' in err


def test_missing_and_new_records_fail(book, capsys):
    write_all(book)
    assert regress("--update") == 0
    write_all(book, drop=("mini-dit/adherence",))
    capsys.readouterr()
    assert regress() == 1
    assert "02_beta mini-dit/adherence missing" in capsys.readouterr().err
    write_all(book, {"02_beta": {"mini-dit/fdd": 120.0}})
    assert regress() == 1
    assert "02_beta mini-dit/fdd new" in capsys.readouterr().err
    assert regress("--update") == 0              # reviewed: now part of the references
    assert regress() == 0


def test_missing_references_fail(book, capsys):
    write_all(book)
    assert regress() == 1                        # no data/regression/smoke.json yet: every record is new
    captured = capsys.readouterr()
    assert "01_alpha mini-sd/layers new" in captured.err and "--update" in captured.out
    assert regress("--profile", "full") == 1     # records made under smoke
    assert "executed under profile 'smoke', not 'full'" in capsys.readouterr().err


def test_changed_tolerance_needs_review(book, capsys):
    write_all(book)
    assert regress("--update") == 0
    write_records(book, "02_beta", BASE["02_beta"], **{**TOL, "mini-dit/adherence": (0.0, 0.5)})
    capsys.readouterr()
    assert regress() == 1
    assert "02_beta mini-dit/adherence tolerance" in capsys.readouterr().err
    assert regress("--update") == 0
    assert regress() == 0


def test_unexecuted_and_failed_chapters_fail(book, capsys):
    write_records(book, "01_alpha", BASE["01_alpha"], **TOL)
    assert regress("--update") == 1              # 02_beta has no records: nothing is written
    assert "cannot update 02_beta" in capsys.readouterr().err
    assert not (book / "data" / "regression" / "smoke.json").exists()
    assert regress("--update", "01") == 0        # a selection updates only its chapters
    assert regress() == 1
    assert "02_beta not run" in capsys.readouterr().err
    path = book / "book" / "chapters" / "01_alpha.records.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "status": "failed in cell 3: ValueError"}))
    assert regress("01") == 1
    assert "01_alpha failed" in capsys.readouterr().err


def test_paths_are_injectable(tmp_path, book, capsys):
    elsewhere = tmp_path / "elsewhere"
    write_records(elsewhere, "01_alpha", BASE["01_alpha"], **TOL)
    write_records(elsewhere, "02_beta", BASE["02_beta"], **TOL)
    args = ["--records-dir", str(elsewhere / "book" / "chapters"), "--references", str(tmp_path / "refs.json"),
            "--report", str(tmp_path / "report.md")]
    assert regress("--update", *args) == 0 and regress(*args) == 0
    assert (tmp_path / "refs.json").exists() and (tmp_path / "report.json").exists()
    assert not (book / "data").exists()
    assert main(["regress", "--no-execute", "--profile", "nope"]) == 1           # unknown profile: one line
    assert "unknown profile" in capsys.readouterr().err
    assert main(["regress", "--no-execute", "42"]) == 1
    assert "no chapter matches" in capsys.readouterr().err


def test_update_keeps_unchanged_chapters_byte_for_byte(book):
    write_all(book)
    run_regression("smoke", execute=False, update=True)
    refs = book / "data" / "regression" / "smoke.json"
    before = refs.read_text()
    write_all(book)                              # same numbers, new files
    _, changes = run_regression("smoke", execute=False, update=True)
    assert changes == [] and refs.read_text() == before
    write_all(book, {"02_beta": {"mini-dit/adherence": 0.8125}})
    _, changes = run_regression("smoke", execute=False, update=True)
    assert changes == ["02_beta: 1 changed: mini-dit/adherence"]
    after = json.loads(refs.read_text())["chapters"]
    assert after["01_alpha"] == json.loads(before)["chapters"]["01_alpha"]


def test_runner_passes_the_records_file_to_the_kernel(book, capsys):
    """One real execution: the chapter's record() calls reach book/chapters/<chapter>.records.json."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell("profile = 'none'\nx = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell(
        "from aconvlib.book import record\n"
        "print(f\"x is {record('demo/x', x * 2.5, rtol=0.01, reason='test'):.1f}\")\n"
        "record('demo/table', {'a': x, 'b': [1, 2]})")]
    nbformat.write(nb, book / "notebooks" / "01_alpha.ipynb")
    assert main(["regress", "--update", "01"]) == 0
    side = records.load_sidecar(book / "book" / "chapters" / "01_alpha.records.json")
    assert (side["chapter"], side["profile"], side["status"]) == ("01_alpha", "smoke", "complete")
    assert side["records"]["demo/x"] == {"value": 5.0, "rtol": 0.01, "atol": 0.0, "reason": "test"}
    assert side["records"]["demo/table"]["value"] == {"a": 2, "b": [1, 2]}
    executed = nbformat.read(book / "book" / "chapters" / "01_alpha.ipynb", 4)
    assert "x is 5.0" in "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert main(["regress", "--no-execute", "01"]) == 0


def test_messages_show_a_long_table_by_its_first_elements():
    from aconvlib.book.regression import _fmt

    table = {f"layer{i}": float(i) for i in range(40)}
    text = _fmt(table, short=False)
    assert text.startswith("{[layer0]: 0, [layer1]: 1") and text.endswith("… (40 values in all)}")
    assert "layer6" not in text and len(text) < 200
    assert _fmt({"a": 1.5, "b": 2.0}, short=False) == "{a: 1.5, b: 2}"      # short tables stay whole
