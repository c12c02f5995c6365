"""The HTML book (specdef_lite.course.book): one page per notebook, an index in reading order, interactive figures.

Built once per session from the executed notebooks in build/executed/ (the papermill harness writes
them; copies older than their notebook or the library, or run with other parameters, are executed
again), into a temporary folder. The last test opens every page in headless Chromium from ``file://``
with the network refused, as a class without a kernel would, and drags a kernel-free α slider.
"""
from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from specdef_lite.course import book

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXECUTED = ROOT / "build" / "executed"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"])


def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _plotly_outputs(nb_path: Path) -> int:
    nb = json.loads(nb_path.read_text())
    return sum(book.PLOTLY_MIME in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    pages = book.build(out, notebooks=ROOT / "notebooks", executed=EXECUTED, params="test", reuse=True,
                       log=lambda *a: None)
    return out, pages


def test_title_is_the_first_heading():
    nb = {"cells": [{"cell_type": "code", "source": "# not a title"},
                    {"cell_type": "markdown", "source": ["Some text\n", "# 07 · A question?\n", "more"]}]}
    assert book.notebook_title(nb, "fallback") == "07 · A question?"
    assert book.notebook_title({"cells": []}, "fallback") == "fallback"


def test_plotly_json_becomes_html_without_plotlyjs():
    fig = {"data": [{"type": "scatter", "x": [1, 2], "y": [3, 4]}], "layout": {"height": 300, "width": 900}}
    nb = {"cells": [{"cell_type": "code", "outputs": [{"output_type": "display_data",
                                                       "data": {book.PLOTLY_MIME: fig}, "metadata": {}}]}]}
    assert book.plotly_outputs_to_html(nb, prefix="t") == 1
    div = nb["cells"][0]["outputs"][0]["data"]["text/html"]
    assert 'id="t-0"' in div and "Plotly.newPlot" in div and "height:300px" in div
    assert "<script src" not in div, "plotly.js must come from the page's one shared copy"
    assert fig["layout"]["width"] == 900, "the notebook's own figure is not modified"


def test_every_notebook_has_a_page_in_reading_order(built):
    out, pages = built
    assert [p for p, _ in pages] == [f"{nb.stem}.html" for nb in NOTEBOOKS]
    for (page, title), nb in zip(pages, NOTEBOOKS):
        assert (out / page).is_file(), page
        assert title.startswith(nb.name[:2]), f"{page}: title {title!r} should start with its number"
        assert f"<title>{html.escape(title, quote=False)}</title>" in (out / page).read_text(encoding="utf-8"), page
    index = (out / "index.html").read_text(encoding="utf-8")
    positions = [index.index(f'href="{p}"') for p, _ in pages]
    assert positions == sorted(positions), "index must list the notebooks in reading order"


def test_every_link_resolves(built):
    out, pages = built
    for page in ["index.html", *(p for p, _ in pages)]:
        links = _parse(out / page)
        local = [h for h in links.hrefs if not h.startswith(("#", "http://", "https://", "mailto:"))]
        if page == "index.html":
            assert len(local) == len(pages)
        for href in local:
            target = out / href.split("#")[0].split("?")[0]
            assert target.is_file(), f"{page} links to missing {href}"


def test_each_page_carries_its_figures(built):
    out, pages = built
    plotly_js = out / book.STATIC / "plotly.min.js"
    assert plotly_js.is_file() and plotly_js.stat().st_size > 1_000_000
    for (page, _), nb in zip(pages, NOTEBOOKS):
        text = (out / page).read_text(encoding="utf-8")
        scripts = _parse(out / page).scripts
        expected = _plotly_outputs(EXECUTED / nb.name)
        assert expected >= 1, f"{nb.name}: the executed notebook shows no plotly figure"
        assert text.count('class="plotly-graph-div"') == expected, f"{page}: {expected} figures expected"
        assert scripts.count(f"{book.STATIC}/plotly.min.js") == 1, f"{page}: must load the one local plotly.js"
        remote = [s for s in scripts if re.match(r"(https?:)?//", s)]
        assert not remote, f"{page} loads scripts from the network: {remote}"
        for s in scripts:
            assert (out / s.split("?")[0]).is_file(), f"{page}: script {s} missing"
        assert "celltag_parameters" not in text and "celltag_injected-parameters" not in text, \
            f"{page}: papermill's parameter cells must be hidden"
        assert "application/vnd.plotly.v1+json" not in text


@pytest.mark.browser
def test_pages_render_offline_with_working_sliders(built):
    """Every figure draws from file:// with no network; a kernel-free α slider restyles its plot; no page
    logs an error or a warning in the console or asks for anything that is not in the book."""
    from test_browser import CHROMIUM, LAUNCH_FLAGS, _require_browser

    _require_browser()
    from playwright.sync_api import sync_playwright

    out, pages = built
    slid = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(f"{name}: {e}"))
            page.on("console", lambda m: errors.append(f"{name}: console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("requestfailed", lambda r: errors.append(f"{name}: request failed: {r.url}"))
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else r.abort())
            for name, _ in pages:
                n = (out / name).read_text(encoding="utf-8").count('class="plotly-graph-div"')
                page.goto((out / name).as_uri())
                page.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot').length === {n}",
                                       timeout=30_000)
                drawn = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')]"
                                      ".map(g => !!(g._fullLayout && g.data.length && g.querySelector('.main-svg')))")
                assert all(drawn), f"{name}: a figure did not draw: {drawn}"
                # the first figure with a kernel-free slider: click both ends of its rail, the data must change
                sliders = page.locator(".js-plotly-plot:has(.slider-rail-rect)")
                if sliders.count():
                    gd = sliders.first
                    gd.scroll_into_view_if_needed()
                    data = lambda: gd.evaluate("g => JSON.stringify(g.data.map(t => [t.x, t.y, t.z]))")  # noqa: E731
                    rail = gd.locator(".slider-rail-rect").first.bounding_box()
                    seen = {data()}
                    for x in (rail["x"] + 2, rail["x"] + rail["width"] - 2):
                        page.mouse.click(x, rail["y"] + rail["height"] / 2)
                        page.wait_for_timeout(200)
                        seen.add(data())
                    assert len(seen) >= 2, f"{name}: the kernel-free slider did not change the plot"
                    slid += 1
                page.wait_for_function("() => !window.MathJax || !window.MathJax.Hub || "
                                       "window.MathJax.Hub.queue.pending === 0", timeout=30_000)  # math typeset
                page.wait_for_timeout(300)
            assert not errors, f"the pages logged or requested: {errors}"
        finally:
            browser.close()
    assert slid >= 1, "no page has a kernel-free slider (every explorer should leave one)"
