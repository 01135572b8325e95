"""The README's GPU section cannot rot: its commands run exactly as written, against tiny random-weight checkpoints
in the published hub layouts, on the CPU; its memory table matches the estimates.

How the GPU commands are made to run here (the only changes): ``--profile full`` becomes ``--profile ci-real`` (the
same parameters as `full` on the CPU and smaller; tests/test_book_runner.py checks it differs from `full` only in
device, dtype, threads, output folder and sizes), ``runs/full`` becomes ``runs/ci-real``, plain papermill's
``-p device cuda -p dtype float16`` become ``cpu``/``float32`` and it gets ci-real's sizes for the chapter appended
(``-p`` after the README's own options). Commands run in a copy of the checkout (``ACONV_BOOK_ROOT``), so the book's
own chapters are untouched. The every-chapter command is, after the same substitution, the command ``make ci-real``
runs (checked here; executing it twice in CI would add ~10 minutes).
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Running a chapter on a real model (GPU, profile `full`)"


def gpu_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return text[start:end]


def fenced_blocks(section: str) -> list[list[str]]:
    """Commands of each ```bash block: one per line, comments stripped."""
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [[ln.split("  #")[0].strip() for ln in b.splitlines() if ln.strip() and not ln.startswith("#")]
            for b in blocks]


def run_commands() -> list[str]:
    blocks = fenced_blocks(gpu_section())
    runs = [b for b in blocks if any("aconv book" in c for c in b)]
    assert len(runs) == 1, blocks
    return runs[0]


def on_cpu(cmd: str) -> list[str]:
    """The README command with the documented substitutions (see the module docstring)."""
    from aconvlib.book.runner import load_profile

    cmd = cmd.replace("--profile full", "--profile ci-real").replace("runs/full/", "runs/ci-real/")
    cmd = cmd.replace("-p device cuda", "-p device cpu").replace("-p dtype float16", "-p dtype float32")
    args = shlex.split(cmd)
    if args[0] == "papermill":
        chapter = Path(args[1]).stem
        sizes = {k: v for k, v in load_profile("ci-real", chapter).items()
                 if k in ("n_prompts", "steps", "batch_size", "height", "width", "threads")}
        for k, v in sizes.items():
            args += ["-p", k, str(v)]
        args = [str(Path(sys.executable).with_name("papermill"))] + args[1:]
    elif args[0] == ".venv/bin/aconv":
        args = [str(Path(sys.executable).with_name("aconv"))] + args[1:]
    return args


def _downloads() -> list[list[str]]:
    return [c.split()[2:] for b in fenced_blocks(gpu_section()) for c in b if c.startswith("huggingface-cli download")]


def test_gpu_section_downloads_every_checkpoint_the_registry_needs():
    from aconvlib.book.runner import load_profile
    from aconvlib.models import list_models, released_for

    downloads = {d[0] for d in _downloads()}
    needed = {r for s in list_models() if not s.embedded for r in (s.hub_id, s.components_from) if r}
    # the authors' students that chapters 07/08 use under `full`, and the bases they were distilled from
    real = {m for ch in ("07_distillation", "08_comparison") for m in load_profile("full", ch)["real_models"]}
    students = [c for c in (released_for(m) for m in sorted(real)) if c is not None]   # none for FLUX/SD3.5
    needed |= {c.hub_id for c in students} | {c.base for c in students}
    assert downloads == needed
    files = {f for d in _downloads() if d[0] == students[0].hub_id for f in d[1:]}
    assert files == {c.filename for c in students}
    assert "-p model=" not in gpu_section() and "-p model " not in gpu_section()


def test_gpu_section_downloads_run_as_written_against_the_fixture_cache(hub_root):
    """Every download line, with `hf download` (huggingface_hub >= 1's name of `huggingface-cli download`), offline
    against the fixture cache: every repo and file it names exists in the published layouts."""
    from aconvlib.testing.hub_fixtures import hub_cache_dir

    hf = Path(sys.executable).with_name("hf")
    if not hf.exists():
        pytest.skip("no `hf` command next to this Python")
    from aconvlib.testing.hub_fixtures import FIXTURE_REPOS

    env = dict(os.environ, HF_HOME=str(hub_root), HF_HUB_CACHE=str(hub_cache_dir(hub_root)), HF_HUB_OFFLINE="1")
    # repos the README names that have no tiny fixture of their layout (same pipeline class as one that has)
    no_fixture = {"stabilityai/stable-diffusion-3.5-large"}
    assert {a[0] for a in _downloads()} - set(FIXTURE_REPOS) == no_fixture
    for args in (a for a in _downloads() if a[0] not in no_fixture):
        res = subprocess.run([str(hf), "download", *args], env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, (args, res.stdout[-2000:], res.stderr[-2000:])


def test_memory_table_matches_the_estimates(empty_hub):
    from aconvlib.models.memory import estimate_run_bytes

    rows = re.findall(r"^\| (sd15|sdxl|pixart-sigma-512|pixart-sigma-1024) \| (.*)$", gpu_section(), re.M)
    assert len(rows) == 4
    settings = [dict(batch=1, capture=True), dict(batch=2, capture=True), dict(batch=1, capture=False)]
    t4 = float(re.search(r"T4 \(Colab\) has about ([\d.]+) GiB free", gpu_section()).group(1))
    for model, rest in rows:
        cells = [c.strip() for c in rest.strip(" |").split("|")]
        for cell, kw in zip(cells[:3], settings):
            est = estimate_run_bytes(model, "float16", **kw).total / 2**30
            assert cell == f"{est:.1f} GiB", (model, kw, cell, est)
        fits = all(float(c.split()[0]) < t4 for c in cells[:3])
        assert (cells[3] == "all") == fits, (model, cells[3])
        assert cells[4] == cells[5] == "all" and max(float(c.split()[0]) for c in cells[:3]) < 22.0


@pytest.mark.slow
def test_gpu_section_commands_run_as_written(hub_root, tmp_path):
    from aconvlib.testing.hub_fixtures import hub_cache_dir

    commands = run_commands()
    assert any(c.startswith("papermill ") for c in commands)
    # a copy of the checkout's book sources: the commands write its book/chapters and runs/, not ours
    work = tmp_path / "checkout"
    for rel in ("notebooks", "book", "benchmarks/results"):
        shutil.copytree(ROOT / rel, work / rel, ignore=shutil.ignore_patterns("_build", "chapters", "*.records.json"))
    env = dict(os.environ, ACONV_BOOK_ROOT=str(work), HF_HOME=str(hub_root), HF_HUB_CACHE=str(hub_cache_dir(hub_root)),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    makefile = (ROOT / "Makefile").read_text()
    for cmd in commands:
        args = on_cpu(cmd)
        if "--out-dir" in args and not any(a.isdigit() or re.match(r"\d\d_", a) for a in args[2:4]):
            # every chapter: what `make ci-real` runs in CI
            assert " ".join(["$(BIN)/aconv"] + args[1:]) in makefile.replace("\\\n\t\t", ""), cmd
            continue
        res = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
        assert res.returncode == 0, (cmd, res.stdout[-3000:], res.stderr[-3000:])
        if args[1] == "book":
            assert "profile 'ci-real'" in res.stdout
        if args[1] == "doctor":
            assert re.search(r"^sd15\s+yes", res.stdout, re.M), res.stdout
    assert (work / "book" / "chapters" / "03_asm_highpass.ipynb").exists()
    assert (work / "notebooks" / "03_sd15.ipynb").exists() or (work / "03_sd15.ipynb").exists()
