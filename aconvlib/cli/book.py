"""``aconv book``, ``aconv build``, ``aconv check-offline``: execute the chapters and build the HTML book."""
from __future__ import annotations

from pathlib import Path


def _params(pairs: list[str]) -> dict:
    import yaml

    from .options import UsageError

    out = {}
    for s in pairs:
        if "=" not in s:
            raise UsageError(f"-p expects KEY=VALUE, got {s!r}")
        k, v = s.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _book(a) -> None:
    from ..book.runner import load_profile, run_book, select_chapters

    chapters = select_chapters(a.chapters)          # unknown chapter names fail here, before any work
    load_profile(a.profile, chapters[0].stem)       # unknown profile fails here
    if a.out_dir and not a.no_build:
        from .options import UsageError

        raise UsageError("--out-dir writes the executed chapters outside the book: add --no-build")
    if a.student and a.no_build:
        from .options import UsageError

        raise UsageError("--student builds the student edition after the book: drop --no-build")
    run_book(a.chapters, a.profile, not a.no_build, _params(a.param), Path(a.out_dir) if a.out_dir else None,
             before_build=lambda: refresh_regression_report(a.profile))
    if a.student:
        _student()


def _student() -> None:
    from ..book.runner import check_offline
    from ..book.student import build_student

    html = build_student()
    check_offline(html)
    print(f"[aconv] student edition built: {html / 'index.html'} (no solutions, no external resources)")


def refresh_regression_report(profile: str) -> None:
    """Compare the executed chapters' records with the profile's references, if there are any, and write the
    report the book's appendix includes; drift is reported here, not raised (``aconv regress`` fails on it)."""
    from ..book.regression import references_path, run_regression
    from ..book.runner import book_root

    if not references_path(profile, book_root()).exists():
        print(f"[aconv] regression: no references for profile {profile!r}; the appendix keeps its last report "
              f"(`aconv regress --profile {profile} --update` records them)")
        return
    comp, _ = run_regression(profile, None, execute=False, echo=lambda *_: None)
    print(f"[aconv] regression: {comp.summary()} (in the book's appendix; `aconv regress` fails on drift)")


def register(sub) -> None:
    p = sub.add_parser("book", help="execute chapters with papermill under a profile, then build the HTML book")
    p.add_argument("chapters", nargs="*", help="chapter names or numbers (default: all)")
    p.add_argument("--profile", default="smoke", help="parameter profile from notebooks/profiles.yml")
    p.add_argument("--no-build", action="store_true", help="only execute the chapters")
    p.add_argument("--out-dir", default=None, metavar="DIR",
                   help="write the executed chapters here instead of book/chapters (needs --no-build), e.g. "
                        "runs/ci-real/chapters, so that a ci-real or full run leaves the book's chapters as they are")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override a chapter parameter (YAML value), e.g. -p models=[sd15]; a parameter the "
                        "chapter does not declare is an error")
    p.add_argument("--student", action="store_true",
                   help="also build the student edition (no solutions) into book/_build/student")
    p.set_defaults(func=_book)

    def _build(a):
        from ..book.runner import build_html, check_offline

        if a.student:
            _student()
            return
        check_offline(build_html())

    b = sub.add_parser("build", help="build the HTML book from already executed chapters")
    b.add_argument("--student", action="store_true",
                   help="build the student edition instead: the same pages without any solution "
                        "(book/_build/student; the chapter sources without solutions in book/_build/student_notebooks)")
    b.set_defaults(func=_build)

    def _check(a):
        from ..book.runner import check_offline

        check_offline(Path(a.html_dir) if a.html_dir else None)

    c = sub.add_parser("check-offline", help="fail if the built HTML loads anything from the internet")
    c.add_argument("html_dir", nargs="?", default=None, help="default: book/_build/html of the checkout")
    c.set_defaults(func=_check)
