"""The verdict table: recorded by the chapters, gathered from their sidecars, the README's table from references."""
import json

import pytest

from aconvlib.analysis.evidence import FAILS, HOLDS, NOT_TESTABLE, Verdict
from aconvlib.book import records, verdicts


def test_a_recorded_verdict_is_an_exact_record_and_a_sidecar_entry(tmp_path):
    side = tmp_path / "03_asm_highpass.records.json"
    rec = records.Recorder("03_asm_highpass", "smoke", side)
    rec.verdict(Verdict("Fig. 4b", "mini-dit", FAILS, "high-pass 0.60 ≤ raw 0.67", n=4))
    doc = json.loads(side.read_text())
    assert doc["records"]["verdict/Fig. 4b/mini-dit"] == {"value": "fails", "rtol": 0.0, "atol": 0.0}
    assert doc["verdicts"]["verdict/Fig. 4b/mini-dit"]["deciding"] == "high-pass 0.60 ≤ raw 0.67"
    assert doc["verdicts"]["verdict/Fig. 4b/mini-dit"]["chapter"] == "03_asm_highpass"


def test_collect_and_matrix_read_every_sidecar(tmp_path):
    a = records.Recorder("02_attention_maps", "smoke", tmp_path / "02_attention_maps.records.json")
    a.verdict(Verdict("Fig. 2", "mini-sd", FAILS, "1.0×", n=4))
    a.verdict(Verdict("Fig. 2", "mini-dit", HOLDS, "5.4×", n=4))
    b = records.Recorder("07_distillation", "smoke", tmp_path / "07_distillation.records.json")
    b.verdict(Verdict("Fig. 8", "mini-sd", NOT_TESTABLE, "0/8 vs 0/8 (floor)", n=8, how_to_test="sd15 at 1024 px"))
    df = verdicts.collect(tmp_path)
    assert len(df) == 3 and set(df["chapter"]) == {"02_attention_maps", "07_distillation"}
    m = verdicts.matrix(df)
    assert m.loc["Fig. 2", "mini-sd"] == "fails" and m.loc["Fig. 2", "mini-dit"] == "holds"
    assert m.loc["Fig. 8", "mini-sd"] == NOT_TESTABLE and m.loc["Fig. 8", "mini-dit"] == "not run"
    assert list(m.index) == list(verdicts.CLAIMS)


def test_readme_table_comes_from_the_references():
    refs = {"chapters": {"02_attention_maps": {"records": {
        "verdict/Fig. 2/mini-sd": {"value": "fails"}, "verdict/Fig. 2/mini-dit": {"value": "holds"},
        "mini-sd/layers": {"value": 10}}}}}
    t = verdicts.readme_table(refs)
    assert "| Fig. 2 | self-attention maps are concentrated around the query | fails | holds |" in t
    assert "Fig. 5" not in t


def test_the_readme_verdict_table_matches_the_reviewed_references():
    """README.md shows the verdicts of data/regression/smoke.json: regenerate it with
    `python scripts/update_readme_verdicts.py` after `aconv regress --update`."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    refs = json.loads((root / "data/regression/smoke.json").read_text())
    table = verdicts.readme_table(refs)
    if "| claim |" not in table.splitlines()[0] or len(table.splitlines()) < 3:
        pytest.fail("the references hold no verdicts")
    assert table in (root / "README.md").read_text()


def test_a_verdict_on_random_fixture_weights_names_the_fixture(fixture_hub, tmp_path):
    from aconvlib.models import weights_source

    assert weights_source("sd15") == "fixture" and weights_source("mini-sd") == "embedded"
    assert weights_source("not-a-model") is None
    rec = records.Recorder("02_attention_maps", "ci-real", tmp_path / "02.records.json")
    rec.verdict(Verdict("Fig. 2", "sd15", FAILS, "ASM(3) 1.0× uniform", n=2, chapter="02_attention_maps"))
    rec.verdict(Verdict("Table 1", "sd15", HOLDS, "FLOPs from the config", chapter="06_deltaconv_block"))
    rec.verdict(Verdict("Fig. 2", "mini-sd", FAILS, "x", n=2, chapter="02_attention_maps"))
    assert set(rec.verdicts) == {"verdict/Fig. 2/sd15 (fixture)", "verdict/Table 1/sd15", "verdict/Fig. 2/mini-sd"}


def test_a_model_with_nothing_cached_keeps_its_name(empty_hub):
    from aconvlib.book.records import weights_label

    assert weights_label("sd15", "Fig. 2") == "sd15"
