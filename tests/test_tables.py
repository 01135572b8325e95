"""Reading tables (aconvlib.book.tables): named columns, rounding, no index, unbroken names, clear errors."""
import pandas as pd
import pytest

from aconvlib.book.tables import reading_table


def test_reading_table_renames_rounds_and_hides_the_index():
    df = pd.DataFrame({"model": ["pixart-sigma-1024", "mini-sd"], "asm3": [0.123456, float("nan")],
                       "share": [0.5, 0.25], "measurable": [True, False], "extra": [1, 2]}, index=[7, 9])
    html = reading_table(df, {"model": "model", "asm3": "ASM(3)", "share": "below bound", "measurable": "measurable"},
                         digits={"ASM(3)": 2}, pct=["share"], caption="Per level").to_html()
    assert "ASM(3)" in html and "0.12" in html and "0.123" not in html and "—" in html
    assert "50%" in html and "yes" in html and "no" in html and "extra" not in html and "Per level" in html
    assert ">7<" not in html and ">9<" not in html                       # no index column
    assert "white-space: nowrap" in html and "asm3" not in html
    assert list(df.columns) == ["model", "asm3", "share", "measurable", "extra"]   # the frame is unchanged


def test_reading_table_names_missing_columns():
    with pytest.raises(KeyError, match="no column.*'fdd'"):
        reading_table(pd.DataFrame({"model": ["a"]}), ["model", "fdd"])


def test_auto_number_and_a_meaningful_index_becomes_a_column():
    from aconvlib.book.tables import auto_number

    assert [auto_number(v) for v in (12345.6, 3.14159, 0.000312, 0.0, float("nan"))] == \
        ["12,346", "3.14", "0.000312", "0", "—"]
    df = pd.DataFrame({"GFLOPs": [1.5, 2.25]}, index=pd.Index(["sd15", "sdxl"], name="model"))
    html = reading_table(df).to_html()
    assert "sd15" in html and "model" in html and "1.50" in html
