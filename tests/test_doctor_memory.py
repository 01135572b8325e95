"""Memory estimates refuse an over-budget run before any work, with the numbers; `aconv doctor` reports what the
(fixture) cache holds."""
import pytest

from aconvlib.analysis.capture import MemoryBudgetError
from aconvlib.book import setup as book_setup
from aconvlib.models.memory import estimate_run_bytes

REAL = ("sd15", "sdxl", "pixart-sigma-512", "pixart-sigma-1024")


def test_check_memory_refuses_an_over_budget_run_with_the_numbers(empty_hub):
    est = estimate_run_bytes("sdxl", "float16", 1024, 1024, batch=2, capture=True)
    assert est.total > 7 * 2**30   # published sizes (nothing cached): 3.5 G parameters in fp16 alone
    with pytest.raises(MemoryBudgetError) as e:
        book_setup.check_memory(["sdxl"], "cuda", "float16", height=1024, width=1024, batch_size=2,
                                available=4 * 2**30)
    msg = str(e.value)
    assert "sdxl on cuda in float16" in msg and est.describe() in msg and "4.0 GiB are available (the figure passed as `available`)" in msg
    assert "batch_size (now 2)" in msg and "README" in msg
    ok = book_setup.check_memory(["sd15"], "cuda", "float16", height=512, width=512, available=64 * 2**30)
    assert ok["sd15"].total < 64 * 2**30


def test_a_locality_chapter_refuses_before_loading_anything(empty_hub, monkeypatch, tmp_path):
    from aconvlib.book import studies

    from aconvlib.book import budget

    monkeypatch.setattr(budget, "available_memory", lambda device: budget.MemoryFigure(2 * 2**30, "test"))
    monkeypatch.setattr(studies, "capture_study", lambda *a, **k: pytest.fail("capture started before the check"))
    with pytest.raises(MemoryBudgetError, match="pixart-sigma-512"):
        book_setup.locality_studies(["pixart-sigma-512"], device="cuda", dtype="float16", output_dir=tmp_path)


def test_estimates_count_cached_checkpoints_and_not_the_companion_denoiser_twice(fixture_hub):
    from aconvlib.models.memory import cached_params, denoiser_params

    base = "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"
    own = cached_params("PixArt-alpha/PixArt-Sigma-XL-2-512-MS")
    rest = cached_params(base, exclude=("transformer",))
    assert 0 < rest < cached_params(base)
    est = estimate_run_bytes("pixart-sigma-512", "float32", 64, 64, cfg=False)
    assert est.weights == 4 * (own + rest)            # the tiny fixture weights, not the published sizes
    assert est.weights < 4 * denoiser_params("pixart-sigma-512")


def test_doctor_lists_fixture_checkpoints_as_cached(fixture_hub, capsys):
    from aconvlib.cli import main
    from aconvlib.cli.doctor import report

    rows = {r["model"]: r for r in report()["models"]}
    assert all(rows[m]["cached"] for m in REAL) and rows["mini-sd"]["cached"]
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split() and ln.split()[0] in REAL}
    assert set(lines) == set(REAL) and all(lines[m][1] == "yes" for m in REAL), out
    assert "07_distillation" in out and "sdxl" in out.split("07_distillation")[1].splitlines()[0]


def test_doctor_without_checkpoints(empty_hub, capsys):
    from aconvlib.cli import main

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split() and ln.split()[0] in REAL}
    assert all(lines[m][1] == "no" and lines[m][-1] == "no" for m in REAL), out
    ch = {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln.startswith("  0")}
    assert ch["02_attention_maps"] == "no" and ch["00_models"] == "yes" and ch["06_deltaconv_block"] == "yes"


# --- issue 19.1: the CPU figure is MemAvailable, not MemFree -------------------------------------------------
FAKE_MEMINFO = """MemTotal:       24576000 kB
MemFree:         3460000 kB
MemAvailable:   23068672 kB
Buffers:          102400 kB
Cached:         19000000 kB
"""


def test_host_memory_is_memavailable_not_memfree(tmp_path):
    from aconvlib.book.budget import host_available_memory

    f = tmp_path / "meminfo"
    f.write_text(FAKE_MEMINFO)
    fig = host_available_memory(f, cgroup=None)
    assert fig.bytes == 23068672 * 1024            # 22 GiB available, although only 3.3 GiB are "free"
    assert "MemAvailable" in fig.source and str(f) in fig.source


def test_a_cgroup_limit_below_memavailable_is_honoured(tmp_path):
    from aconvlib.book.budget import host_available_memory

    (tmp_path / "meminfo").write_text(FAKE_MEMINFO)
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "memory.max").write_text(str(8 * 2**30) + "\n")
    (cg / "memory.current").write_text(str(2 * 2**30) + "\n")
    fig = host_available_memory(tmp_path / "meminfo", cgroup=cg)
    assert fig.bytes == 6 * 2**30 and "memory.max" in fig.source
    (cg / "memory.max").write_text("max\n")
    assert host_available_memory(tmp_path / "meminfo", cgroup=cg).bytes == 23068672 * 1024


def test_the_refusal_on_the_cpu_uses_and_names_memavailable(tmp_path, monkeypatch, empty_hub):
    """The issue's case: 6.9 GiB needed, 3.3 GiB MemFree, 22 GiB MemAvailable → the run goes ahead; with a
    MemAvailable below the need, the refusal says which figure it used."""
    from aconvlib.book import budget

    f = tmp_path / "meminfo"
    f.write_text(FAKE_MEMINFO)
    monkeypatch.setattr(budget, "available_memory", lambda device: budget.host_available_memory(f, cgroup=None))
    est = estimate_run_bytes("sd15", "float32", 512, 512, batch=1, capture=True)
    assert 3.5 * 2**30 < est.total < 22 * 2**30
    assert "sd15" in budget.check_memory(["sd15"], "cpu", "float32", height=512, width=512)
    f.write_text(FAKE_MEMINFO.replace("23068672", "2097152"))
    with pytest.raises(MemoryBudgetError, match=r"2\.0 GiB are available \(MemAvailable in .*meminfo\)"):
        budget.check_memory(["sd15"], "cpu", "float32", height=512, width=512)
