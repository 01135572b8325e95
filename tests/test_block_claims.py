"""Chapter 6's Table 1/2 verdicts (issue 20)."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_flops_per_call_and_table1_verdicts():
    from aconvlib.book.block_claims import flops_per_call, table1_verdicts

    f = flops_per_call(["sd15", "pixart-sigma-512"], sizes=(512, 1024))
    r = f.set_index(["model", "px"])["ratio"]
    assert r[("sd15", 512)] == pytest.approx(12.38, abs=0.01)          # whole U-Net at 512 px, not the top layer's 25×
    assert r[("pixart-sigma-512", 512)] == pytest.approx(5.28, abs=0.01)
    v = {x.model: x for x in table1_verdicts(f)}
    assert v["sd15"].verdict == "holds" and "architecture, no weights" in v["sd15"].deciding


def test_savings_range_is_not_one_to_four_orders():
    from aconvlib.book.block_claims import savings_range
    from aconvlib.book.table1 import table1_comparison

    s = savings_range(table1_comparison(baselines=False))
    assert s["ours_min_at"] == "pixart 512" and s["ours_min"] == pytest.approx(5.28, abs=0.01)   # < one order
    assert s["paper_min"] == pytest.approx(31.42 / 8.43, abs=0.01)                              # 3.7×


def test_table2_verdicts_from_stored_h100_run():
    from aconvlib.book.block_claims import table2_verdicts
    from aconvlib.book.benchmark_tables import block_frame
    from aconvlib.models import paper_table

    cuda = json.loads((ROOT / "benchmarks" / "results" / "bench_cuda.json").read_text())
    v = {x.model: x for x in table2_verdicts(block_frame(cuda), paper_table("table2_latency_ms"), cuda["meta"]["device"])}
    assert v["pixart-sigma"].verdict == "fails"       # 0.8× at 1024 px vs the paper's 3.5× (RTX 4090)
    assert v["sd15-top"].verdict == "holds"           # 3.5× at 1024 px, beyond ±0.2 ms
    assert "H100" in v["pixart-sigma"].deciding
