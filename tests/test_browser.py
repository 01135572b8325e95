"""The explorer page and the built book in a real browser (headless Chromium through selenium).

Checks, at desktop (1280×900) and phone (390×844) sizes: no console errors and no request that leaves the machine
(every URL the browser asks for is file:, data:, blob: or about:, read from Chrome's network log); on the explorer,
a click on a query token shows exactly that query's captured row (within half its uint8 step), its high-pass map
and its ASM curves, and the same check rejects a neighbouring query's row.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BOOK_HTML = ROOT / "book" / "_build" / "html"
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome-error:")

# tiny settings: the embedded mini-dit (one 16×16 grid), 4 sampling steps, two step groups
TINY = dict(models=["mini-dit"], steps=4, guidance_scale=4.0, seed=0, groups=("all", "late"), discover=False,
            verbose=False)


def _need_browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (`make setup`)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("headless Chromium and chromedriver are not installed: `make setup` installs them "
                    "(apt-get install chromium chromium-driver)")
    return webdriver, chromium, driver


def _browser(size):
    webdriver, chromium, driver = _need_browser()
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={size[0]},{size[1]}"):
        opts.add_argument(flag)
    opts.binary_location = chromium
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # an explicit driver: selenium-manager would look for one on the internet
    drv = webdriver.Chrome(options=opts, service=Service(driver))
    # headless Chrome keeps windows at least 500 px wide: set the viewport to the phone's width instead (no
    # mobile zoom-out, so the page is laid out and clicked at exactly that width)
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": size[0], "height": size[1],
                                                                "deviceScaleFactor": 1, "mobile": False})
    drv.aconv_width = size[0]
    return drv


@pytest.fixture(params=list(SIZES), scope="module")
def browser(request):
    drv = _browser(SIZES[request.param])
    yield drv
    drv.quit()


def _load(drv, path: Path, wait_for_bokeh=False):
    drv.get_log("browser")          # drop what earlier pages left
    drv.get_log("performance")
    drv.get(path.resolve().as_uri())
    assert drv.execute_script("return window.innerWidth") == drv.aconv_width
    if wait_for_bokeh:
        for _ in range(100):
            if drv.execute_script("return !!(window.Bokeh && Bokeh.documents.length && "
                                  "Bokeh.documents[0].get_model_by_name('explorer_state').data.query[0] >= 0)"):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"{path}: the explorer did not render its first query")
    time.sleep(0.3)


def _requested_urls(drv) -> list[str]:
    urls = []
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


# Console errors of the book's theme, not of this project's pages: jupyter-book 1.x / sphinx-book-theme writes the
# thebe configuration script (`const THEBE_JS_URL = ...`) twice into every page, so the second copy throws, and
# pydata-sphinx-theme logs an error when it finds no stored light/dark mode (a fresh browser). Tolerated on the
# book's pages only, each by its exact text; test_book_theme_errors_are_gone (strict xfail) fails once they are gone, so
# the list cannot outlive them. The explorer page tolerates nothing.
# jupyter-book 1.x's theme logged two errors on every page (a doubled sphinx-thebe script, an empty theme
# mode); aconvlib.book.runner.fix_theme_scripts removes both at build time, so no error is tolerated.
KNOWN_BOOK_ERRORS = ()


def _console_errors(drv, tolerated=()):
    errors = [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]
    return [e for e in errors if not any(t in e for t in tolerated)], [e for e in errors if any(t in e for t in tolerated)]


def _assert_clean(drv, page: str, tolerated=()):
    errors, _ = _console_errors(drv, tolerated)
    assert not errors, f"{page}: console errors: {errors}"
    urls = _requested_urls(drv)
    assert urls, f"{page}: the network log recorded no request at all (the check would be blind)"
    external = [u for u in urls if not u.startswith(LOCAL_SCHEMES)]
    assert not external, f"{page}: requests that leave the machine: {external[:10]}"


# --- the explorer ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    from aconvlib.book.explorer import build_explorer
    from aconvlib.book.studies import capture_study, default_prompts

    run = tmp_path_factory.mktemp("run")
    t0 = time.time()
    html = build_explorer(run / "explorer.html", run_dir=run, **TINY)
    # the same captures, from the cache the build filled: the rows the page must show
    prompt = default_prompts("mini-dit", 1)[0]
    studies = {g: capture_study("mini-dit", [prompt], steps=4, guidance_scale=4.0, seed=0, output_dir=run,
                                capture_steps=sel, verbose=False)
               for g, sel in (("all", None), ("late", [2, 3]))}
    print(f"explorer built in {time.time() - t0:.1f} s, {html.stat().st_size / 1e6:.2f} MB")
    return html, studies


def _js(drv, code):
    return drv.execute_script("const doc = Bokeh.documents[0]; const m = n => doc.get_model_by_name(n);\n" + code)


def _tap_token(drv, row, col, grid):
    """A real mouse click on the centre of token (row, col) of the image plot (positions from Bokeh's own view)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    box = _js(drv, """
        const p = m('explorer_image_plot');
        function find(v) { if (v.model === p) return v; for (const c of (v.child_views || [])) { const r = find(c); if (r) return r; } return null; }
        let v = null; for (const r of Bokeh.index.roots) { v = find(r); if (v) break; }
        v.el.scrollIntoView();
        const f = v.frame.bbox, c = v.canvas_view.el.getBoundingClientRect();
        return [c.left + f.left, c.top + f.top, f.width, f.height];""")
    x = box[0] + (col + 0.5) / grid[1] * box[2]
    y = box[1] + (row + 0.5) / grid[0] * box[3]
    actions = ActionBuilder(drv)
    actions.pointer_action.move_to_location(int(round(x)), int(round(y))).click()   # viewport coordinates
    actions.perform()
    time.sleep(0.3)


def _select(drv, name, value):
    _js(drv, f"m({name!r}).value = {value!r};")
    time.sleep(0.2)


def _shown(drv):
    return _js(drv, """
        const flat = a => Array.from(a.length !== undefined && a.shape ? a : a.flat());
        const s = m('explorer_state').data, c = m('explorer_curves').data;
        return {row: s.row[0], col: s.col[0], query: s.query[0], layer: s.layer[0], group: s.group[0],
                map: flat(m('explorer_map').data.image[0]), hp: flat(m('explorer_hp').data.image[0]),
                asm: Array.from(c.asm), hpasm: Array.from(c.hpasm), uni: Array.from(c.uni), k: Array.from(c.k)};""")


def _matches(shown_map, row) -> bool:
    """The shown map is ``row`` within half the row's uint8 step (plus float32 rounding of the stored scale)."""
    row = np.asarray(row, dtype=np.float64)
    return bool(np.abs(np.asarray(shown_map) - row).max() <= row.max() / 510 * (1 + 1e-6) + 1e-12)


def test_explorer_shows_the_clicked_querys_row(browser, explorer):
    from aconvlib.analysis import locality as L

    html, studies = explorer
    _load(browser, html, wait_for_bokeh=True)
    study = studies["late"]
    layer = 3
    name = study.layers[layer]["name"]
    grid = tuple(study.layers[layer]["grid"])                     # (16, 16): every query offered
    _select(browser, "explorer_layer", str(layer))
    _select(browser, "explorer_group", "1")                       # "late: steps 2–3"
    A = study.maps[name].double()                                 # [N, N]
    for row, col in [(3, 11), (12, 4)]:
        _tap_token(browser, row, col, grid)
        shown = _shown(browser)
        q = row * grid[1] + col
        assert (shown["row"], shown["col"], shown["query"], shown["layer"], shown["group"]) == (row, col, q, layer, 1)
        assert len(shown["map"]) == grid[0] * grid[1]
        assert _matches(shown["map"], A[q]), "the page shows another row than the clicked query's"
        # the check discriminates: the neighbouring queries' rows and the other step group's row are rejected
        for other in (q + 1, q - 1, q + grid[1]):
            assert not _matches(shown["map"], A[other]), f"query {q}'s map is indistinguishable from {other}'s"
        assert not _matches(shown["map"], studies["all"].maps[name].double()[q])
        # high-pass: the page's Butterworth filter of the shown row equals aconvlib's (norm="none")
        hp = L.highpass(torch.tensor([shown["map"]], dtype=torch.float64), grid, 0.1, 2, norm="none")[0]
        np.testing.assert_allclose(shown["hp"], hp.numpy(), rtol=0, atol=1e-9 * float(A[q].max()))
        # curves: computed in Python from the captured row, stored as uint16 (step 1/65535)
        ks = L.odd_kernel_sizes(grid)
        assert shown["k"] == ks
        _, asm = L.asm_curve(A[q][None], grid, ks, per_query=True, query_index=torch.tensor([q]))
        hpn = L.highpass(A[q][None], grid, 0.1, 2, norm="abs")
        _, hpasm = L.asm_curve(hpn, grid, ks, per_query=True, query_index=torch.tensor([q]))
        uni = torch.full((1, grid[0] * grid[1]), 1.0 / (grid[0] * grid[1]), dtype=torch.float64)
        _, ua = L.asm_curve(uni, grid, ks, per_query=True, query_index=torch.tensor([q]))
        for got, want in ((shown["asm"], asm), (shown["hpasm"], hpasm), (shown["uni"], ua)):
            np.testing.assert_allclose(got, want[0].numpy(), rtol=0, atol=0.6 / 65535)
    _assert_clean(browser, html.name)


def test_explorer_check_rejects_a_neighbours_map(browser, explorer):
    """The comparison used above fails when the click shows another query's map (here: the neighbour's)."""
    html, studies = explorer
    _load(browser, html, wait_for_bokeh=True)
    study = studies["all"]
    name, grid = study.layers[0]["name"], tuple(study.layers[0]["grid"])
    A = study.maps[name].double()
    _tap_token(browser, 7, 8, grid)
    shown = _shown(browser)
    assert _matches(shown["map"], A[7 * grid[1] + 8])
    assert not _matches(shown["map"], A[7 * grid[1] + 9]), "a click on (7, 9) showing (7, 8)'s map would pass"
    _assert_clean(browser, html.name)


def test_explorer_rejects_bad_input(tmp_path):
    from aconvlib.book.explorer import build_explorer
    from aconvlib.models.registry import UnknownModelError

    with pytest.raises(UnknownModelError, match="unknown model"):
        build_explorer(tmp_path / "x.html", models=["no-such-model"], run_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="aconv book 02"):
        build_explorer(tmp_path / "x.html", models=["mini-dit"], run_dir=tmp_path, generate=False)
    with pytest.raises(FileNotFoundError, match="aconv book 02"):
        build_explorer(tmp_path / "x.html", models=["sd15"], run_dir=tmp_path)
    assert not (tmp_path / "x.html").exists()


# --- the built book ----------------------------------------------------------------------------------------------

def test_every_book_page_loads_offline_without_errors(browser):
    if not (BOOK_HTML / "index.html").exists():
        pytest.skip(f"no built book at {BOOK_HTML}: `make book` (or `aconv book --profile smoke`) builds it")
    pages = sorted(p for p in BOOK_HTML.rglob("*.html")
                   if not any(part.startswith("_") or part == "mathjax" for part in p.relative_to(BOOK_HTML).parts))
    assert any(p.name == "index.html" for p in pages)
    for page in pages:
        _load(browser, page)
        _assert_clean(browser, str(page.relative_to(BOOK_HTML)), tolerated=KNOWN_BOOK_ERRORS)

