"""The course guide's chapter times: stamped by the runner, collected with the machine's facts, rendered with the
Colab column marked as an estimate; the committed timing file covers every chapter."""
import json
from pathlib import Path

import pytest

from aconvlib.book.course import (FIXED_S, GPU_SPEEDUP, TIMES_FILE, collect_times, colab_gpu_estimate,
                                  times_markdown, write_course_times)

ROOT = Path(__file__).resolve().parents[1]


def _sidecar(d: Path, chapter: str, seconds: float, profile="smoke", **run):
    doc = {"format": "aconv-records/1", "chapter": chapter, "profile": profile, "written": "2026-01-01T00:00:00+00:00",
           "environment": {"torch_threads": 2}, "records": {}, "status": "complete", "executed_s": seconds,
           "run_machine": {"cpus": 2, **run}}
    (d / f"{chapter}.records.json").write_text(json.dumps(doc))


def test_collect_and_render_times(tmp_path):
    _sidecar(tmp_path, "00_models", 30.0, kernel_cpu_s=40.0, load_1min_start=0.5, load_1min_end=1.9)
    _sidecar(tmp_path, "07_distillation", 170.0, kernel_cpu_s=300.0, load_1min_start=1.0, load_1min_end=2.0)
    _sidecar(tmp_path, "03_asm_highpass", 10.0, profile="full")            # another profile: left out
    doc = collect_times(tmp_path)
    assert list(doc["chapters"]) == ["00_models", "07_distillation"]
    assert doc["chapters"]["07_distillation"]["kernel_cpu_s"] == 300.0 and doc["machine"]["cpus"] >= 1
    text = times_markdown(doc, {"00_models": "0. Models"})
    assert "| 0. Models | 30 s | 40 s | 0.5 → 1.9 |" in text
    assert "| 07_distillation | 2.8 min | 300 s | 1.0 → 2.0 | ≈ 76 s (estimate) |" in text   # 20 + 280 / 5 s
    assert "**all 2 chapters** | **3.3 min** | 340 s |" in text and "Estimate" in text
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match="aconv book --profile full"):
        collect_times(tmp_path / "nothing", "full")


def test_colab_estimate_rule():
    assert colab_gpu_estimate(10.0) == 10.0                                # below the fixed part: as measured
    assert colab_gpu_estimate(FIXED_S + 100.0) == pytest.approx(FIXED_S + 100.0 / GPU_SPEEDUP)


def test_guide_table_is_written_from_the_timing_file(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    out = write_course_times(book, root=tmp_path)                          # no timing file: a note
    assert "No timing file" in out.read_text()
    (tmp_path / TIMES_FILE).parent.mkdir(parents=True)
    _sidecar(tmp_path, "00_models", 30.0)
    (tmp_path / TIMES_FILE).write_text(json.dumps(collect_times(tmp_path)))
    assert "| 00_models | 30 s | — |" in write_course_times(book, root=tmp_path).read_text()


def test_committed_timing_file_covers_every_chapter():
    doc = json.loads((ROOT / TIMES_FILE).read_text())
    chapters = {p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert set(doc["chapters"]) == chapters, sorted(chapters ^ set(doc["chapters"]))
    assert doc["profile"] == "smoke" and doc["machine"]["cpus"] and doc["machine"]["cpu"]
    assert all(r["status"] == "complete" and r["seconds"] > 0 for r in doc["chapters"].values())
