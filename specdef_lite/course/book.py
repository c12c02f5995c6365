"""The course as a static HTML book: papermill executes each notebook, nbconvert renders it, index.html links them.

Why these choices (measured in TOOLCHAIN.md):
- Notebooks run headless (``SPECDEF_LITE_HEADLESS=1``), so every explorer leaves a plain plotly figure
  whose own slider steps through precomputed α values: the book keeps working sliders with no kernel.
- nbconvert cannot show plotly's JSON output, and plotly's CDN renderers show nothing offline. So each
  ``application/vnd.plotly.v1+json`` output becomes a ``<div>`` + ``Plotly.newPlot`` script, and every
  page loads ONE shared ``_static/plotly.min.js`` copied from plotly's package data (zoom, hover and the
  sliders work from ``file://``, no network).
- The ``parameters`` and ``injected-parameters`` cells are hidden (TagRemovePreprocessor); nbconvert's
  require.js and mermaid loaders (CDN) are left out; MathJax 2.7 is copied from the
  ``jupyter-server-mathjax`` package when it is installed (else nbconvert's CDN default: math then needs
  a network). Math renders as the browser's own MathML (MathJax's NativeMML output, inside the combined
  config file; every current browser draws MathML Core): the HTML-CSS output probes web fonts with an
  ``about:blank`` font that a ``file://`` page refuses (a console error on every page) and asks for TeX
  fonts the copy does not ship (``MathJax_Script-Regular.otf`` for ℒ on 01, 02, 03, 06).
- ``params="test"`` runs each notebook with its ``test_parameters`` into build/executed/ (the folder the
  papermill tests write), ``params="default"`` as a student would, into build/executed-default/
  (``execution.execute``; ``reuse=True`` keeps fresh copies).

Run:  python -m specdef_lite.course.book [--params test|default] [--reuse] [--out book]   (make book)
"""
from __future__ import annotations

import argparse
import html
import json
import shutil
import sys
import time
from pathlib import Path

from .execution import execute

__all__ = ["build", "notebook_title", "plotly_outputs_to_html"]

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
HIDDEN_TAGS = ("parameters", "injected-parameters")
STATIC = "_static"
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"

_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block extra_css %}
<script src="{{ resources.specdef_plotly_js }}"></script>
{%- if resources.specdef_mathjax_local %}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({jax: ["input/TeX", "input/MathML", "output/NativeMML"], menuSettings: {renderer: "NativeMML"},
                    "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null}});
</script>
{%- endif %}
<style>{{ resources.specdef_css }}</style>
{% endblock extra_css %}
{%- block body_header -%}
{{ super() }}
<nav class="specdef-nav">{{ resources.specdef_nav }}</nav>
{%- endblock body_header -%}
{% block body_footer %}
<nav class="specdef-nav">{{ resources.specdef_nav }}</nav>
{{ super() }}
{% endblock body_footer %}
"""
_CSS = """
/* MathJax's NativeMML output styles these variants with its TeX web fonts, which the local MathJax copy does
   not ship (a failed MathJax_Script-Regular.otf request for every ℒ): use the page's own serif instead */
math [mathvariant="script"], math [mathvariant="bold-script"], math [mathvariant="fraktur"],
math [mathvariant="bold-fraktur"], math [mathvariant="double-struck"] { font-family: serif !important; }
.specdef-nav { display: flex; justify-content: space-between; gap: 1em; padding: 0.6em 1em;
  font-family: var(--jp-ui-font-family, sans-serif); font-size: 14px; border-bottom: 1px solid #ddd; }
.specdef-nav a { text-decoration: none; }
"""


def notebook_title(nb: dict, fallback: str) -> str:
    """The first Markdown ``# `` heading of the notebook (its number and question), else ``fallback``."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        for line in "".join(cell.get("source", "")).splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return fallback


def plotly_outputs_to_html(nb: dict, prefix: str = "fig") -> int:
    """Replace each plotly JSON output by HTML (a div + ``Plotly.newPlot``; plotly.js loaded by the page).

    Widget views lose their widget mimetype and keep their text fallback (no widget state is saved).
    Returns the number of figures converted; ``nb`` is changed in place.
    """
    import plotly.io as pio

    n = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data")
            if not data:
                continue
            if PLOTLY_MIME in data:
                fig = dict(data[PLOTLY_MIME])
                layout = dict(fig.get("layout") or {})
                layout.pop("width", None)  # fit the page: the figure follows its container's width
                fig["layout"] = layout
                height = layout.get("height")
                div = pio.to_html(fig, include_plotlyjs=False, full_html=False, validate=False,
                                  div_id=f"{prefix}-{n}", default_height=f"{height}px" if height else "500px",
                                  config={"displaylogo": False, "responsive": True})
                out["data"] = {"text/html": div}
                n += 1
            elif WIDGET_MIME in data:
                data.pop(WIDGET_MIME)
                if not data:
                    data["text/plain"] = ""
    return n


def _mathjax(out: Path) -> str | None:
    """Copy MathJax 2.7 (from jupyter-server-mathjax, minus translations) into the book; its URL, or None.

    That copy ships the STIX-Web fonts only (no TeX fonts): the page template selects them.
    """
    try:
        import jupyter_server_mathjax
    except ImportError:
        return None
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    dst = out / STATIC / "mathjax"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("localization"), dirs_exist_ok=True)
    return f"{STATIC}/mathjax/MathJax.js?config={MATHJAX_CONFIG}"


def _nav(pages: list[tuple[str, str]], i: int) -> str:
    link = lambda j, text: f'<a href="{pages[j][0]}">{text}</a>' if 0 <= j < len(pages) else "<span></span>"  # noqa: E731
    prev_ = link(i - 1, "← " + html.escape(pages[i - 1][1])) if i > 0 else "<span></span>"
    next_ = link(i + 1, html.escape(pages[i + 1][1]) + " →") if i + 1 < len(pages) else "<span></span>"
    return f'{prev_}<a href="index.html">Contents</a>{next_}'


def _index(pages: list[tuple[str, str]], params: str) -> str:
    items = "\n".join(f'  <li><a href="{href}">{html.escape(title)}</a></li>' for href, title in pages)
    sizes = ("small test sizes (each notebook's <code>test_parameters</code>)" if params == "test"
             else "the notebooks' own parameters")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8" />
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>specdef-lite: the course</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 46em; margin: 2em auto; padding: 0 1em; line-height: 1.5; }}
ul.toc {{ list-style: none; padding-left: 0; }}
li {{ margin: 0.5em 0; }}
</style>
</head>
<body>
<h1>specdef-lite: the course</h1>
<p>A teaching explorer for SpecDef, the spectral deformation that makes a released model hard to fine-tune
without changing what it computes, and for the attacks that undo it. Read the notebooks in this order.</p>
<ul class="toc">
{items}
</ul>
<p>Executed headless with {sizes}. The figures are interactive without a kernel or a network: zoom, hover,
and each explorer's own slider steps through precomputed values of α. To drag the live widgets, open the
notebooks in JupyterLab (<code>make lab</code>).</p>
</body>
</html>
"""


def render(executed_nb: Path, out_html: Path, *, nav: str, title: str, mathjax_url: str | None) -> int:
    """One executed notebook → one HTML page; returns the number of plotly figures on it."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = nbformat.read(str(executed_nb), as_version=4)
    nb.metadata["title"] = title
    nb.metadata.pop("widgets", None)
    n_figures = plotly_outputs_to_html(nb, prefix=executed_nb.stem)
    exporter = HTMLExporter(template_name="lab", extra_loaders=[jinja2.DictLoader({"book.html.j2": _TEMPLATE})],
                            template_file="book.html.j2")
    if mathjax_url:
        exporter.mathjax_url = mathjax_url
    exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags=set(HIDDEN_TAGS), enabled=True),
                                   enabled=True)
    resources = {"specdef_nav": nav, "specdef_plotly_js": f"{STATIC}/plotly.min.js", "specdef_css": _CSS,
                 "specdef_mathjax_local": bool(mathjax_url)}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    out_html.write_text(body, encoding="utf-8")
    return n_figures


def build(out: Path | str = "book", *, notebooks: Path | str = "notebooks", executed: Path | str | None = None,
          params: str = "test", reuse: bool = False, log=print) -> list[tuple[str, str]]:
    """Execute (or reuse) and render the course into ``out``; returns [(page file, title)] in reading order."""
    import plotly

    out, notebooks = Path(out), Path(notebooks)
    sources = sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))
    if not sources:
        raise ValueError(f"no notebooks NN_*.ipynb in {notebooks}")
    if executed is None:
        executed = notebooks.parent / "build" / ("executed" if params == "test" else "executed-default")
    executed = Path(executed)
    t0 = time.perf_counter()
    log(f"executing {len(sources)} notebooks ({params} parameters) into {executed}")
    seconds = execute(sources, executed, params=params, reuse=reuse, log=log)

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.html"):
        old.unlink()
    (out / STATIC).mkdir(exist_ok=True)
    shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", out / STATIC / "plotly.min.js")
    mathjax_url = _mathjax(out)
    if mathjax_url is None:
        log("  jupyter-server-mathjax not installed: pages load MathJax from nbconvert's CDN default")
    pages = []
    for src in sources:
        nb = json.loads((executed / src.name).read_text())
        pages.append((f"{src.stem}.html", notebook_title(nb, src.stem)))
    for i, src in enumerate(sources):
        n = render(executed / src.name, out / pages[i][0], nav=_nav(pages, i), title=pages[i][1],
                   mathjax_url=mathjax_url)
        log(f"  render  {pages[i][0]}: {n} interactive figure(s)")
    (out / "index.html").write_text(_index(pages, params), encoding="utf-8")
    ran = sum(s for s in seconds.values() if s is not None)
    log(f"book: {out / 'index.html'} ({len(pages)} pages; executing {ran:.0f} s, "
        f"total {time.perf_counter() - t0:.0f} s)")
    return pages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m specdef_lite.course.book", description=__doc__.split("\n")[0])
    ap.add_argument("--params", choices=["test", "default"], default="test",
                    help="each notebook's small test_parameters (test, the default: fast) or the notebooks' "
                         "own parameters (default: as students run them)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse executed copies newer than their notebook and the library, same parameters")
    ap.add_argument("--out", default="book", help="output folder (default: book/)")
    ap.add_argument("--notebooks", default="notebooks")
    ap.add_argument("--executed", default=None,
                    help="where executed notebooks go (default: build/executed for test, build/executed-default)")
    a = ap.parse_args(argv)
    build(a.out, notebooks=a.notebooks, executed=a.executed, params=a.params, reuse=a.reuse)
    return 0


if __name__ == "__main__":
    sys.exit(main())
