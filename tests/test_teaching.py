"""The book's teaching material: every chapter has learning objectives, a primer and at least three exercises with
solutions, in the directives both the instructor and the student edition rely on; a computational solution with a
wrong answer fails the chapter's execution; the student edition carries no solution text, the instructor edition does.
"""
import json
import re
import shutil
from pathlib import Path

import pytest

from aconvlib.book.figures import declared_figures
from aconvlib.book.student import SOLUTION_TAG, strip_solutions, student_source

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXERCISE = re.compile(r"^```\{exercise\}\n:label: (ex-(\d\d)-\d+)\n", re.M)
SOLUTION = re.compile(r"^```\{(solution|solution-start)\} (ex-\d\d-\d+)\n:class: dropdown\n", re.M)


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _src(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _tags(cell) -> set:
    return set(cell.get("metadata", {}).get("tags", []))


def _heading(cells, prefix) -> list[int]:
    return [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and
            any(line.startswith(prefix) for line in _src(c).splitlines())]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_opens_with_learning_objectives(path):
    cells = _cells(path)
    assert _src(cells[0]).startswith("# "), f"{path.name}: the first cell is not the title"
    text = _src(cells[1])
    assert cells[1]["cell_type"] == "markdown" and text.startswith("```{admonition} Learning objectives\n"
                                                                     ":class: objectives\n"), \
        f"{path.name}: the cell after the title is not the learning-objectives admonition"
    bullets = [line for line in text.splitlines() if line.startswith("- ")]
    assert 3 <= len(bullets) <= 5, f"{path.name}: {len(bullets)} objectives (3 to 5 expected)"
    verbs = [re.match(r"- \*\*(\w+)\*\*", b) for b in bullets]
    assert all(verbs), f"{path.name}: every objective starts with a bold verb (**Compute**, **Explain** ...): {bullets}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_has_a_primer_with_a_figure_before_its_exercises(path):
    cells = _cells(path)
    primer = _heading(cells, "## Primer: ")
    assert len(primer) == 1, f"{path.name}: expected one '## Primer: <topic>' section, found {len(primer)}"
    start = primer[0]
    end = next((i for i in range(start + 1, len(cells)) if cells[i]["cell_type"] == "markdown"
                and _src(cells[i]).startswith("## ")), len(cells))
    code = [c for c in cells[start:end] if c["cell_type"] == "code"]
    assert code, f"{path.name}: the primer has no code cell"
    assert any("aconvlib.book" in _src(c) for c in code), f"{path.name}: the primer calls no package function"
    assert declared_figures({"cells": code}), f"{path.name}: the primer declares no figure (mystnb.figure)"
    assert start < _heading(cells, "## Exercises")[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_has_three_exercises_each_with_a_solution(path):
    cells = _cells(path)
    number = path.stem[:2]
    ex_section = _heading(cells, "## Exercises")
    assert len(ex_section) == 1, f"{path.name}: expected one '## Exercises' section"
    learned = _heading(cells, "## What we learned")
    assert not learned or learned[0] < ex_section[0], f"{path.name}: Exercises must follow 'What we learned'"
    exercises, solutions = [], {}
    for i, c in enumerate(cells):
        text = _src(c)
        for label, num in EXERCISE.findall(text):
            assert i > ex_section[0], f"{path.name}: exercise {label} outside the Exercises section"
            assert num == number, f"{path.name}: exercise label {label} does not carry the chapter number {number}"
            assert SOLUTION_TAG not in _tags(c), f"{path.name}: the exercise {label} itself is tagged solution"
            exercises.append(label)
        for kind, label in SOLUTION.findall(text):
            solutions.setdefault(label, []).append(kind)
    assert len(exercises) >= 3, f"{path.name}: {len(exercises)} exercises (at least 3)"
    assert len(set(exercises)) == len(exercises), f"{path.name}: duplicate exercise labels {exercises}"
    assert set(solutions) == set(exercises), (f"{path.name}: exercises without a solution "
                                              f"{sorted(set(exercises) - set(solutions))}, solutions without an "
                                              f"exercise {sorted(set(solutions) - set(exercises))}")
    assert all(len(v) == 1 for v in solutions.values()), f"{path.name}: an exercise with two solutions {solutions}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_solution_cell_is_tagged_and_computations_check_their_answers(path):
    cells = _cells(path)
    inside, checked, computational = None, set(), set()
    for i, c in enumerate(cells):
        text = _src(c)
        start = re.search(r"^```\{solution-start\} (ex-\d\d-\d+)", text, re.M)
        if "{solution}" in text or start or "{solution-end}" in text or inside:
            assert SOLUTION_TAG in _tags(c), f"{path.name}: cell {i} is part of a solution but not tagged solution"
        if start:
            assert inside is None, f"{path.name}: solution-start inside {inside}"
            inside = start.group(1)
            computational.add(inside)
        elif "{solution-end}" in text:
            assert inside, f"{path.name}: solution-end without a solution-start (cell {i})"
            inside = None
        elif inside and c["cell_type"] == "code" and re.search(r"\bcheck(_block)?\(", text):
            checked.add(inside)
        if SOLUTION_TAG in _tags(c):
            assert inside or "{solution" in text, f"{path.name}: cell {i} is tagged solution outside any solution"
    assert inside is None, f"{path.name}: solution {inside} never ends"
    assert computational, f"{path.name}: no computational exercise (a solution-start ... solution-end block)"
    assert computational == checked, (f"{path.name}: computational solutions that never check their answer "
                                      f"against an independent value: {sorted(computational - checked)}")


def test_glossary_notation_and_bibliography_pages_exist_and_are_linked():
    book = ROOT / "book"
    toc = (book / "_toc.yml").read_text()
    for page in ("guide", "glossary", "notation", "bibliography"):
        assert f"file: {page}\n" in toc, page
    glossary = (book / "glossary.md").read_text()
    terms = re.findall(r"^(\S.*)$", glossary.split("```{glossary}")[1].split("\n```")[0], re.M)
    cited = set()
    for p in NOTEBOOKS:
        text = "".join(_src(c) for c in _cells(p) if c["cell_type"] == "markdown")
        for t in re.findall(r"\{term\}`([^`<]+?)(?: <([^`>]+)>)?`", text):
            target = (t[1] or t[0]).strip()
            assert target in terms, f"{p.name}: {{term}} {target!r} is not in the glossary"
        cited |= {k.strip() for group in re.findall(r"\{cite(?::\w)?\}`([^`]+)`", text) for k in group.split(",")}
    bib = set(re.findall(r"^@\w+\{([^,]+),", (book / "references.bib").read_text(), re.M))
    assert cited and cited <= bib, f"cited keys missing from references.bib: {sorted(cited - bib)}"
    for key in ("deltaconv2025", "linfusion2024", "natten2023", "ditfastattn2024", "clear2024", "dinov2_2023",
                "clip2021", "dpmsolver2022", "minsnr2023", "butterworth1930", "erf2016"):
        assert key in bib, key


# ------------------------------------------------------------------------------ executed solutions


def _solution_notebook(path: Path, answer: str) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = new_code_cell("x = 1\nprofile = 'none'")
    p.metadata["tags"] = ["parameters"]
    cells = [new_markdown_cell("```{exercise}\n:label: ex-99-1\n\nHow many FLOPs?\n```"),
             new_markdown_cell("```{solution-start} ex-99-1\n:class: dropdown\n```"),
             new_code_cell("from aconvlib.book.exercises import check\nfrom aconvlib.mixers.flops import attention_flops\n"
                           f"check('ex-99-1', attention_flops(16, 8), {answer})"),
             new_markdown_cell("```{solution-end}\n```")]
    for c in cells[1:]:
        c.metadata["tags"] = ["solution"]
    nb.cells = [p, *cells]
    nbformat.write(nb, path)
    return path


def test_a_wrong_computational_solution_fails_the_chapter(tmp_path):
    from aconvlib.book.runner import ChapterError, execute_chapter

    profiles = tmp_path / "profiles.yml"
    profiles.write_text("smoke:\n  defaults: {x: 2}\n")
    # 4·16·8² + 4·16²·8 + 4·16² = 4,096 + 8,192 + 1,024 (the hand count of chapter 0's primer)
    execute_chapter(_solution_notebook(tmp_path / "99_right.ipynb", "13_312"), "smoke", out_dir=tmp_path / "out",
                    profiles_path=profiles)
    stamp = json.loads((tmp_path / "out" / "99_right.records.json").read_text())   # the course guide's timing
    assert stamp["status"] == "complete" and stamp["executed_s"] > 0 and stamp["run_machine"]["cpus"] >= 1
    assert stamp["run_machine"]["kernel_cpu_s"] > 0 and "load_1min_start" in stamp["run_machine"]
    with pytest.raises(ChapterError, match=r"99_wrong.*SolutionMismatch: exercise ex-99-1: the solution computes "
                                           r"13312, but the independently derived answer is 13313"):
        execute_chapter(_solution_notebook(tmp_path / "99_wrong.ipynb", "13_313"), "smoke",
                        out_dir=tmp_path / "out", profiles_path=profiles)


# ------------------------------------------------------------------------------ the two editions

def test_strip_solutions_removes_exactly_the_tagged_cells(tmp_path):
    nb = _solution_notebook(tmp_path / "99_x.ipynb", "13_312")
    assert strip_solutions(nb, tmp_path / "stripped.ipynb") == 3
    cells = json.loads((tmp_path / "stripped.ipynb").read_text())["cells"]
    assert [c["cell_type"] for c in cells] == ["code", "markdown"] and "exercise" in _src(cells[1])
    assert "solution" not in (tmp_path / "stripped.ipynb").read_text().replace("ex-99-1", "")


SECRET = "the-answer-is-forty-two"


def _tiny_book(tmp_path: Path) -> Path:
    """A two-page book with the real configuration: an intro and one executed chapter with an exercise, a prose
    solution and a computational (gated) solution whose code and output carry SECRET."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    book = tmp_path / "book"
    (book / "chapters").mkdir(parents=True)
    for name in ("_config.yml", "references.bib", "_static"):
        src = ROOT / "book" / name
        shutil.copytree(src, book / name) if src.is_dir() else shutil.copy(src, book / name)
    shutil.copytree(ROOT / "book" / "_extra" / "mathjax", book / "_extra" / "mathjax")
    (book / "intro.md").write_text("# Tiny\n\nA test book {cite}`deltaconv2025`.\n\n```{bibliography}\n```\n")
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: chapters/99_tiny\n")
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    code = new_code_cell(f"print('{SECRET}')", execution_count=1,
                         outputs=[new_output("stream", name="stdout", text=f"{SECRET} (output)\n")])
    nb.cells = [new_markdown_cell("# 99. Tiny chapter"),
                new_markdown_cell("```{exercise}\n:label: ex-99-1\n\nVisible question text.\n```"),
                new_markdown_cell(f"```{{solution}} ex-99-1\n:class: dropdown\n\nProse {SECRET}.\n```"),
                new_markdown_cell("```{exercise}\n:label: ex-99-2\n\nSecond question text.\n```"),
                new_markdown_cell("```{solution-start} ex-99-2\n:class: dropdown\n```"), code,
                new_markdown_cell("```{solution-end}\n```")]
    for c in nb.cells[2:3] + nb.cells[4:]:
        c.metadata["tags"] = ["solution"]
    nbformat.write(nb, book / "chapters" / "99_tiny.ipynb")
    return book


@pytest.mark.slow
def test_student_edition_has_no_solution_text_and_the_instructor_edition_has_it(tmp_path):
    from aconvlib.book.runner import build_html, check_offline
    from aconvlib.book.student import build_student

    book = _tiny_book(tmp_path)
    instructor = build_html(book)
    check_offline(instructor)
    page = (instructor / "chapters" / "99_tiny.html").read_text()
    assert page.count(SECRET) >= 3, "the instructor edition lost a solution (prose, code or output)"
    assert "Visible question text." in page and "dropdown" in page
    assert "Dong <em>et al.</em>, 2025" in (instructor / "intro.html").read_text()   # author-year, offline
    student = build_student(book)
    check_offline(student)
    assert student == book / "_build" / "student" and (student / "index.html").exists()
    text = "\n".join(p.read_text(errors="replace") for p in student.rglob("*") if p.is_file()
                     and p.suffix in (".html", ".ipynb", ".md", ".txt", ".js", ".json"))
    assert SECRET not in text, "solution text in the student edition"
    assert "Visible question text." in text and "Second question text." in text
    assert "student edition" in (student / "index.html").read_text() or "student edition" in text
    # the instructor edition is untouched by the student build
    assert SECRET in (instructor / "chapters" / "99_tiny.html").read_text()


def test_student_source_strips_every_chapter_and_hides_solutions(tmp_path):
    import yaml

    book = _tiny_book(tmp_path)
    src = student_source(book, tmp_path / "student_src")
    assert SECRET not in (src / "chapters" / "99_tiny.ipynb").read_text()
    assert SECRET in (book / "chapters" / "99_tiny.ipynb").read_text()        # the original is left alone
    cfg = yaml.safe_load((src / "_config.yml").read_text())
    assert cfg["sphinx"]["config"]["hide_solutions"] is True
    assert cfg["sphinx"]["extra_extensions"] == ["sphinx_exercise"]


def test_the_built_student_edition_of_this_book_has_no_solution_code():
    """After `aconv book --profile smoke --student` (CI): no line of any solution's code is in the student edition,
    and each is in the instructor edition."""
    html, student = ROOT / "book" / "_build" / "html", ROOT / "book" / "_build" / "student"
    if not (student / "index.html").exists() or not (html / "index.html").exists():
        pytest.skip("no built editions: `aconv book --profile smoke --student` builds both")
    import html as html_lib

    def corpus(folder):
        return html_lib.unescape(re.sub(r"<[^>]+>", "", "\n".join(
            p.read_text(errors="replace") for p in folder.rglob("*.html"))))

    teacher_text, student_text = corpus(html), corpus(student)
    elsewhere = "\n".join([_src(c) for p in NOTEBOOKS for c in _cells(p) if SOLUTION_TAG not in _tags(c)]
                          + [p.read_text() for p in (ROOT / "book").glob("*.md")])
    probes = [line.strip() for p in NOTEBOOKS for c in _cells(p) if SOLUTION_TAG in _tags(c)
              and c["cell_type"] == "code" for line in _src(c).splitlines()
              if len(line.strip()) > 30 and not line.strip().startswith(("from ", "import "))
              and line.strip() not in elsewhere][:300]
    assert len(probes) >= 20
    assert not [l for l in probes if l in student_text], "solution code in the student edition"
    missing = [l for l in probes if l not in teacher_text]
    assert len(missing) <= len(probes) // 10, f"solution code missing from the instructor edition: {missing[:5]}"
