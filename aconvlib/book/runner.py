"""Execute the book's chapters with papermill and build the offline HTML book.

Chapter sources are the notebooks in ``notebooks/`` of the book's checkout; each has a cell tagged
``parameters``. Parameter profiles (``smoke``: CPU, minutes, used by CI; ``full``: GPU, the paper's
settings) live in one place, ``notebooks/profiles.yml``: a ``defaults`` block plus per-chapter
overrides. Executed notebooks are written to ``book/chapters/`` and the HTML is built from them with
jupyter-book 1.x without re-executing. The checkout is found from the current directory upwards
(or ``ACONV_BOOK_ROOT``), never from where the package is installed. Each executed notebook gets a
records file beside it (``<chapter>.records.json``: the numbers the chapter states, for ``aconv regress``;
see :mod:`aconvlib.book.records`), whose path reaches the chapter's kernel in ``$ACONV_RECORDS``.
"""
from __future__ import annotations

import contextlib
import html.parser
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from .figures import missing_figures
from .records import ENV_CHAPTER, ENV_PATH, ENV_PROFILE, records_path_for


INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
REGRESSION_REPORT = "regression_report.md"   # in book/: written by `aconv regress`, included by book/regression.md


class ChapterError(RuntimeError):
    """A chapter failed to execute; the message names the chapter and the failing cell."""


@contextlib.contextmanager
def _environ(values: dict):
    """Set environment variables for the duration (the chapter's kernel inherits them), then restore."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _machine_now() -> dict:
    """CPU seconds used by finished child processes (the chapter's kernel, once papermill has shut it down) and
    the 1-minute load average: with the wall time they say how busy the machine was while a chapter ran."""
    out = {"cpus": os.cpu_count()}
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["children_cpu_s"] = r.ru_utime + r.ru_stime
        out["load_1min"] = os.getloadavg()[0]
    except (ImportError, OSError):   # not on every platform
        pass
    return out


def _finish_records(sidecar: Path, chapter: str, profile: str, status: str, seconds: float,
                    start: dict | None = None) -> None:
    """Stamp the chapter's records file with how the run ended (created, empty, if the chapter recorded nothing):
    ``status``, ``executed_s`` and, from ``start`` (:func:`_machine_now` when the run began), ``run_machine``: the
    CPU count, the kernel's CPU seconds and the load average at start and end (the course guide's timings)."""
    from . import records

    doc = records.load_sidecar(sidecar) if sidecar.exists() else records.Recorder(chapter, profile).document()
    doc.update(status=status, executed_s=round(seconds, 1))
    if start is not None:
        end = _machine_now()
        run = {"cpus": end["cpus"]}
        if "children_cpu_s" in end and "children_cpu_s" in start:
            run["kernel_cpu_s"] = round(end["children_cpu_s"] - start["children_cpu_s"], 1)
            run["load_1min_start"], run["load_1min_end"] = round(start["load_1min"], 2), round(end["load_1min"], 2)
        doc["run_machine"] = run
    records.write_json(sidecar, doc)


def book_root(start: Path | None = None) -> Path:
    """The checkout holding ``notebooks/profiles.yml`` and ``book/_config.yml``: ``$ACONV_BOOK_ROOT``, else the
    current directory or the nearest parent that has them."""
    env = os.environ.get("ACONV_BOOK_ROOT")
    candidates = [Path(env)] if env else [p for p in (Path(start or Path.cwd()).resolve(), *Path(start or Path.cwd()).resolve().parents)]
    for c in candidates:
        if (c / "notebooks" / "profiles.yml").exists() and (c / "book" / "_config.yml").exists():
            return c
    raise ChapterError(f"no book checkout found from {candidates[0]}"
                       f"{'' if env else ' upwards'}: the book's commands run inside a clone of the repository "
                       "(the folder with notebooks/ and book/), or set ACONV_BOOK_ROOT")


def notebook_dir() -> Path:
    return book_root() / "notebooks"


def book_dir() -> Path:
    return book_root() / "book"


def profiles_file() -> Path:
    return notebook_dir() / "profiles.yml"


def chapters(notebook_dir: Path | None = None) -> list[Path]:
    """Chapter notebooks in book order (file names start with their number, e.g. ``00_models.ipynb``)."""
    return sorted(p for p in Path(notebook_dir or globals()["notebook_dir"]()).glob("[0-9][0-9]_*.ipynb"))


def select_chapters(selection: list[str] | None, notebook_dir: Path | None = None) -> list[Path]:
    """Chapters matching the given names or number prefixes (all when ``selection`` is empty)."""
    every = chapters(notebook_dir)
    if not selection:
        return every
    chosen = []
    for sel in selection:
        hits = [p for p in every if p.stem == sel or p.stem.startswith(f"{sel}_") or p.name == sel]
        if not hits:
            raise ChapterError(f"no chapter matches {sel!r}; chapters: {', '.join(p.stem for p in every)}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def load_profile(profile: str, chapter: str, profiles_path: Path | None = None) -> dict:
    """Parameters of ``chapter`` (notebook stem) under ``profile``: defaults updated by chapter overrides.

    A profile with ``inherits: <other>`` starts from the other profile's parameters for the chapter
    (its defaults and chapter overrides) and applies its own defaults, then its own chapter overrides.
    """
    profiles = yaml.safe_load(Path(profiles_path or profiles_file()).read_text())
    return _resolve_profile(profiles, profile, chapter, ())


def _resolve_profile(profiles: dict, profile: str, chapter: str, seen: tuple) -> dict:
    if profile not in profiles:
        raise ChapterError(f"unknown profile {profile!r}; profiles: {', '.join(profiles)}")
    if profile in seen:
        raise ChapterError(f"profiles inherit in a cycle: {' -> '.join(seen + (profile,))}")
    prof = profiles[profile] or {}
    params = _resolve_profile(profiles, prof["inherits"], chapter, seen + (profile,)) if prof.get("inherits") else {}
    params.update(prof.get("defaults") or {})
    params.update((prof.get("chapters") or {}).get(chapter) or {})
    return params


def _notebook_parameters(path: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(path)).keys())


def execute_chapter(path: Path, profile: str = "smoke", out_dir: Path | None = None,
                    extra: dict | None = None, profiles_path: Path | None = None, timeout: int = 3600) -> Path:
    """Execute one chapter with papermill under ``profile``; return the executed notebook's path.

    Raises:
        ChapterError: naming the chapter, the failing cell and the exception.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    path = Path(path)
    declared = _notebook_parameters(path)
    params = load_profile(profile, path.stem, profiles_path)
    unknown = sorted(set(params) - declared)
    if unknown:
        raise ChapterError(f"profile {profile!r} sets {unknown} for chapter {path.stem!r}, which declares no such "
                           f"parameter; declared: {sorted(declared)}")
    bad = sorted(set(extra or {}) - declared)
    if bad:
        raise ChapterError(f"chapter {path.stem!r} declares no parameter {', '.join(bad)}; "
                           f"declared: {', '.join(sorted(declared))}")
    params.update(extra or {})
    if "profile" in declared:
        params["profile"] = profile
    out_dir = Path(out_dir or book_dir() / "chapters")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    # The chapter's record() calls write beside the executed notebook (aconvlib.book.records).
    sidecar = records_path_for(out)
    sidecar.unlink(missing_ok=True)
    # The kernel draws inline whatever the caller's environment says (MPLBACKEND=Agg, CI's and many servers'
    # setting, would make every plt.show() draw nothing); the book's own figures are PNGs either way (figures.py).
    env = {ENV_PATH: str(sidecar.resolve()), ENV_CHAPTER: path.stem, ENV_PROFILE: profile,
           "MPLBACKEND": INLINE_BACKEND,
           # tqdm.auto warns on import when ipywidgets is missing (a chapter's first imports, before its setup)
           "PYTHONWARNINGS": "ignore:IProgress not found"}
    t0, machine0 = time.time(), _machine_now()
    try:
        with _environ(env):
            papermill.execute_notebook(str(path), str(out), parameters=params, cwd=str(path.parent),
                                       progress_bar=False, kernel_name="python3", execution_timeout=timeout)
    except PapermillExecutionError as e:
        _finish_records(sidecar, path.stem, profile, f"failed in cell {e.cell_index}: {e.ename}", time.time() - t0,
                        machine0)
        raise ChapterError(f"chapter {path.stem!r} failed in cell {e.cell_index} "
                           f"(execution count {e.exec_count}): {e.ename}: {e.evalue}") from None
    except Exception as e:  # kernel died, timeout, bad notebook
        _finish_records(sidecar, path.stem, profile, f"failed: {type(e).__name__}", time.time() - t0, machine0)
        raise ChapterError(f"chapter {path.stem!r} failed: {type(e).__name__}: {e}") from None
    missing = missing_figures(out)
    if missing:
        _finish_records(sidecar, path.stem, profile, f"failed: missing figures {missing}", time.time() - t0,
                        machine0)
        raise ChapterError(f"chapter {path.stem!r} executed but lacks declared figure(s) {', '.join(missing)}: "
                           "its cells declare them (mystnb.figure metadata) and none produced them (show_figure)")
    present_for_readers(out, profile, params)
    _finish_records(sidecar, path.stem, profile, "complete", time.time() - t0, machine0)
    print(f"[aconv] {path.stem}: executed under profile {profile!r} in {time.time() - t0:.1f} s -> {out}")
    return out


#: cells a reader of the HTML does not need: the Colab install cell, the parameters cell and papermill's injected one
PLUMBING_TAGS = ("aconv-install", "parameters", "injected-parameters")
RUN_BOX_TAG = "aconv-run-box"


def present_for_readers(executed: Path, profile: str, params: dict) -> None:
    """Prepare an executed chapter for the HTML: the plumbing cells (:data:`PLUMBING_TAGS`) get ``remove-cell``
    (they stay in the notebook for Jupyter, Colab and papermill), and a collapsed "How this page was run" box at
    the end lists the profile and every parameter the run used (replaced on a rerun)."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    nb.cells = [c for c in nb.cells if not {RUN_BOX_TAG, COLAB_TAG} & set(c.metadata.get("tags", []))]
    colab = colab_url(executed.stem)
    if colab and nb.cells and nb.cells[0].cell_type == "markdown":
        badge = nbformat.v4.new_markdown_cell(
            f'<a class="aconv-colab" href="{colab}">Open this chapter in Colab</a> (the notebook installs '
            "aconvlib in its first cell and runs on Colab's CPU or GPU; `full` needs the real checkpoints)")
        badge.metadata["tags"] = [COLAB_TAG]
        nb.cells.insert(1, badge)
    for c in nb.cells:
        tags = c.metadata.get("tags", [])
        if any(t in tags for t in PLUMBING_TAGS) and "remove-cell" not in tags:
            c.metadata["tags"] = [*tags, "remove-cell"]
    rows = "\n".join(f"| `{k}` | `{_short(v)}` |" for k, v in params.items())
    box = nbformat.v4.new_markdown_cell(
        f"<details class=\"aconv-run\"><summary>How this page was run</summary>\n\n"
        f"Executed with papermill under the `{profile}` profile (`notebooks/profiles.yml`; rerun with "
        f"`aconv book {executed.stem} --profile {profile}`). Parameters:\n\n| parameter | value |\n|---|---|\n{rows}\n\n"
        "</details>")
    box.metadata["tags"] = [RUN_BOX_TAG]
    nb.cells.append(box)
    nbformat.write(nb, str(executed))


COLAB_TAG = "aconv-colab"


def colab_url(chapter: str, config: Path | None = None) -> str | None:
    """The Colab link of a chapter's source notebook, from the one repository URL in ``book/_config.yml``
    (``repository.url`` and ``branch``); None when the config names no GitHub repository."""
    try:
        cfg = yaml.safe_load(Path(config or book_dir() / "_config.yml").read_text())
    except (OSError, ChapterError):
        return None
    repo = (cfg.get("repository") or {})
    m = re.match(r"https://github\.com/([^/]+/[^/]+?)/?$", str(repo.get("url", "")))
    if not m:
        return None
    return (f"https://colab.research.google.com/github/{m.group(1)}/blob/{repo.get('branch', 'main')}/"
            f"notebooks/{chapter}.ipynb")


def _short(v, limit: int = 90) -> str:
    text = str(v).replace("|", "\\|").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_html(book_path: Path | None = None) -> Path:
    """Build the HTML book with jupyter-book 1.x (no execution); return ``_build/html``."""
    exe = Path(sys.executable).with_name("jupyter-book")
    book_path = Path(book_path or book_dir())
    report = book_path / REGRESSION_REPORT      # the appendix includes it; a fresh checkout has none yet
    if (book_path / "regression.md").exists() and not report.exists():
        report.write_text("No comparison has been run in this checkout yet: `aconv regress --profile smoke` "
                          "executes the chapters and compares their records with the references "
                          "(`--no-execute` reuses executed chapters), then `aconv build` shows the result here.\n")
    if (book_path / "guide.md").exists():       # the course guide includes the measured chapter times
        from .course import write_course_times

        write_course_times(book_path)
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(book_path), "--builder", "html"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise ChapterError(f"jupyter-book build failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    html_dir = book_path / "_build" / "html"
    point_launch_links_at_sources(html_dir)
    fix_theme_scripts(html_dir)
    # MathJax is served from the build (book/_extra/mathjax, copied by Sphinx's html_extra_path).
    if not (html_dir / "mathjax" / "tex-mml-chtml.js").exists():
        raise ChapterError(f"MathJax is missing from {html_dir / 'mathjax'}; the book would not render math offline")
    return html_dir


_EXECUTED_NOTEBOOK_LINK = re.compile(r"(https://colab\.research\.google\.com/github/[^\"'\s]+?/blob/[^/\"'\s]+/)"
                                     r"book/chapters/([\w.-]+\.ipynb)")


def point_launch_links_at_sources(html_dir: Path) -> int:
    """Point the pages' Colab launch links at the chapter sources in ``notebooks/``.

    jupyter-book links a page to its own file, ``book/chapters/<chapter>.ipynb``: an executed copy that is
    not in the repository (git ignores it), so the link would 404. The source in ``notebooks/`` runs as is on
    Colab (its first cell installs aconvlib). Returns the number of links rewritten.
    """
    n = 0
    for page in Path(html_dir).rglob("*.html"):
        text = page.read_text(errors="replace")
        new, k = _EXECUTED_NOTEBOOK_LINK.subn(r"\1notebooks/\2", text)
        if k:
            page.write_text(new)
            n += k
    return n


_THEME_MODE = re.compile(r'(localStorage\.getItem\("(?:mode|theme)"\) \|\| )""')
_DEFAULT_MODE_ATTR = 'data-default-mode=""'


def fix_theme_scripts(html_dir: Path) -> int:
    """Remove the two console errors every page of a jupyter-book 1.x build throws (a browser test reads them).

    - sphinx-thebe adds its configuration script twice (``const THEBE_JS_URL`` declared twice: a SyntaxError
      in the second copy): keep the first copy of every identical inline ``<script>``.
    - pydata-sphinx-theme, without a ``default_mode`` theme option (jupyter-book passes none), starts with the
      empty mode and logs "Got invalid theme mode": start from ``"auto"``, the mode it falls back to anyway.

    Returns the number of pages changed."""
    n = 0
    for page in Path(html_dir).rglob("*.html"):
        text = page.read_text(errors="replace")
        seen, out, pos = set(), [], 0
        for m in re.finditer(r"<script>(.*?)</script>\s*", text, flags=re.S):
            if m.group(1) in seen:
                out.append(text[pos:m.start()])
                pos = m.end()
            seen.add(m.group(1))
        new = "".join(out) + text[pos:]
        new = _THEME_MODE.sub(r'\1"auto"', new).replace(_DEFAULT_MODE_ATTR, 'data-default-mode="auto"')
        if new != text:
            page.write_text(new)
            n += 1
    return n


class _ResourceFinder(html.parser.HTMLParser):
    """Collects URLs that a browser would fetch when showing a page (not plain hyperlinks)."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "video", "audio", "embed") and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("href") and (a.get("rel") or "") not in ("canonical",):
            self.urls.append(a["href"])
        if tag == "object" and a.get("data"):
            self.urls.append(a["data"])


_EXTERNAL = re.compile(r"^(https?:)?//", re.I)
_CSS_URL = re.compile(r"url\(\s*['\"]?((?:https?:)?//[^)'\"]+)")
_JS_URL = re.compile(r"[\"'](https?://[^\"']+\.(?:js|css|woff2?|ttf)(?:\?[^\"']*)?)[\"']")


def external_resources(html_dir: Path) -> list[tuple[str, str]]:
    """(file, url) pairs of every resource the built book would load from the network."""
    html_dir = Path(html_dir)
    found = []
    for page in html_dir.rglob("*.html"):
        finder = _ResourceFinder()
        finder.feed(page.read_text(errors="replace"))
        found += [(str(page.relative_to(html_dir)), u) for u in finder.urls if _EXTERNAL.match(u)]
        found += [(str(page.relative_to(html_dir)), u) for u in _CSS_URL.findall(page.read_text(errors="replace"))]
    for css in html_dir.rglob("*.css"):
        found += [(str(css.relative_to(html_dir)), u) for u in _CSS_URL.findall(css.read_text(errors="replace"))]
    return found


def check_offline(html_dir: Path | None = None) -> None:
    """Raise if the built book would load anything from the internet."""
    html_dir = Path(html_dir or book_dir() / "_build" / "html")
    if not (html_dir / "index.html").exists():
        raise ChapterError(f"no built book at {html_dir}; run `aconv book` first")
    bad = external_resources(html_dir)
    if bad:
        lines = "\n".join(f"  {f}: {u}" for f, u in bad[:20])
        raise ChapterError(f"the built book loads {len(bad)} external resource(s):\n{lines}")


def run_book(selection: list[str] | None = None, profile: str = "smoke", build: bool = True,
             extra: dict | None = None, out_dir: Path | None = None,
             before_build: Callable[[], None] | None = None) -> Path | None:
    """Execute the selected chapters under ``profile``, then build and check the HTML book.

    ``out_dir`` sends the executed notebooks (and their records) elsewhere than ``book/chapters`` (e.g.
    ``runs/ci-real/chapters``), leaving the book's chapters untouched; the HTML is built only from
    ``book/chapters``, so ``build`` must be False then. ``before_build`` runs between execution and the
    build (``aconv book`` refreshes the regression report there, so the appendix shows this run).
    """
    if out_dir is not None and build:
        raise ChapterError("chapters executed into another folder (out_dir) are not part of the book: "
                           "pass build=False (`aconv book --no-build --out-dir ...`)")
    for path in select_chapters(selection):
        execute_chapter(path, profile, out_dir=out_dir, extra=extra)
    if not build:
        return None
    if before_build is not None:
        before_build()
    html_dir = build_html()
    check_offline(html_dir)
    print(f"[aconv] book built: {html_dir / 'index.html'} (no external resources)")
    return html_dir


__all__ = ["INLINE_BACKEND", "colab_url", "fix_theme_scripts", "PLUMBING_TAGS", "REGRESSION_REPORT", "ChapterError", "present_for_readers", "book_root", "build_html", "chapters", "check_offline", "execute_chapter",
           "external_resources", "load_profile", "run_book", "select_chapters"]
