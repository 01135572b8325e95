"""The GitHub Pages workflow publishes what the README's book command builds (it cannot run here: parsed only)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "pages.yml"


def _readme_book_command() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^(make book)\b", text, re.M)
    assert m, "README.md no longer names `make book` at the start of a line: update this test and the workflow"
    return m.group(1)


def _steps(job):
    return job.get("steps") or []


def test_pages_workflow_builds_with_the_readme_command_and_deploys_the_html():
    wf = yaml.safe_load(WORKFLOW.read_text())
    triggers = wf.get("on", wf.get(True))          # YAML 1.1 reads a bare `on:` key as True
    assert "push" in triggers and "workflow_dispatch" in triggers
    assert wf["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    jobs = wf["jobs"]
    build = jobs["build"]
    uses = [s.get("uses", "") for s in _steps(build)]
    assert any(u.startswith("actions/setup-python@") for u in uses)
    command = _readme_book_command()
    runs = [s["run"] for s in _steps(build) if "run" in s]
    assert any(re.match(rf"^{re.escape(command)}(\s|$)", r.strip()) for r in runs), (runs, command)
    upload = [s for s in _steps(build) if s.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert len(upload) == 1 and upload[0]["with"]["path"].rstrip("/") == "book/_build/html"
    # the build step comes before the upload
    assert uses.index(upload[0]["uses"]) > max(i for i, s in enumerate(_steps(build)) if "run" in s)
    deploy = [j for j in jobs.values() if any(s.get("uses", "").startswith("actions/deploy-pages@") for s in _steps(j))]
    assert len(deploy) == 1 and deploy[0]["needs"] in ("build", ["build"])
    assert deploy[0]["environment"]["name"] == "github-pages"


def test_the_html_folder_is_where_the_book_command_builds_it():
    # `aconv book` builds book/_build/html (aconvlib.book.runner.build_html); the workflow uploads that folder
    from aconvlib.book import runner

    src = Path(runner.__file__).read_text()
    assert '"_build" / "html"' in src
    assert "book/_build/html" in (ROOT / "README.md").read_text()
