"""Real browser: the course as a student sees it — every explorer of notebooks 00–07 driven in JupyterLab.

What the papermill harness cannot see: the live explorers (ipywidgets + plotly ``FigureWidget``) rendered
by JupyterLab in headless Chromium, every control pressed or clicked the way a student does, the kernel's
callback, the plot changing in the page, and what the page and JupyterLab's Log Console say meanwhile.
The ``browser`` fixture opens each notebook (a copy with its test parameters injected, like papermill's)
in its own tab and runs all its cells, one notebook after the other; then, for each notebook, the test

* fails on an error output of the run, and if the kernel status said idle for more than 2 s while cells
  still waited for their turn (the status bar showed Idle beside ``[*]`` cells);
* finds every explorer, drives **every** control (sliders by arrow keys, toggle buttons and drop-downs by
  clicks) and fails if an action leaves the plot's data unchanged; each action's key press → plot changed
  time is recorded (median, n and the load go to ``build/browser-latency.json``, which
  ``benchmarks/bench_widgets.py`` folds into RESULTS.md — reported, not asserted here), with where it went,
  timed in the page from the event's own time stamp: until the plot's data changed and until that frame was
  painted, and, for a change the kernel drew, the widget's own handling until it sends the value, the round
  trip through server, kernel and Python callback until plotly's update arrives, and from there to the
  frame. Fails if no action of a control was drawn by the page itself (``course.widgets.page``: the frames
  one step away are in the page before the student moves), so a broken page path cannot hide behind the
  kernel's;
* fails if an explorer does not fit a 900 px output area (the notebook or a widget scrolls sideways, a
  plot is wider than the area, the controls or a toggle's buttons wrap onto a second row), and checks
  the fit again in a 1400 px window, where it takes the explorer screenshots;
* fails on any error or warning in the page console and on any entry in JupyterLab's Log Console (the
  logger JupyterLab keeps per notebook; a widget callback's traceback lands there);
* saves the notebook and fails if the file keeps a widget view that no new kernel could restore, or
  lacks an explorer's static copy (``display.explorer_bundle`` + the server's ``display.pre_save_hook``,
  configured from ``.jupyter/``). The last test closes every notebook, ends the sessions, reopens them
  all on fresh kernels and fails if an output shows "Error displaying widget" / "model not found" or an
  explorer's static copy is not drawn in its place (and the tqdm bars are gone).

The page and the kernel must also agree: the plot in the page holds every array the kernel's figure
holds (an x lost on the way draws a curve against its indices).

Setup (TOOLCHAIN.md): JupyterLab on a free loopback port with a token and ``expose_app_in_browser``, fresh
settings and workspace folders, the server config in ``.jupyter/`` (the save hook) and Debian's Chromium
driven by Playwright through ``executable_path`` (no browser download). Every request that leaves the
loopback is refused, so the plots must render offline. Kernels get ``SPECDEF_LITE_HEADLESS=0``: a front
end is watching, whatever the harness's environment says. Screenshots go to build/screenshots/; set
``SPECDEF_LITE_UPDATE_DOCS=1`` (or delete them) to refresh docs/explorer_*.png, which the README shows.

Skipped, with the reason, only when Chromium or Playwright is missing and ``CI`` is not set; CI
(``.ci/run``) installs Chromium, so there a missing browser is a failure.
Debugging: ``SPECDEF_LITE_BROWSER_NOTEBOOKS=01,03`` drives only those notebooks.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from specdef_lite.common.checkpoint import atomic_file

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ALL_NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
_ONLY = [s.strip() for s in os.environ.get("SPECDEF_LITE_BROWSER_NOTEBOOKS", "").split(",") if s.strip()]
NOTEBOOKS = [p for p in ALL_NOTEBOOKS if not _ONLY or p.name[:2] in _ONLY or p.stem in _ONLY]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "build" / "screenshots"
DOCS = ROOT / "docs"
LATENCY = ROOT / "build" / "browser-latency.json"  # read by benchmarks/bench_widgets.py
LAUNCH_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Lab settings for the run: no news toast, every cell kept in the DOM (windowing would detach outputs
# scrolled out of view), no autosave (the test saves when it means to).
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}
ERROR_TEXTS = ("Error displaying widget", "Error rendering", "model not found", "Failed to load model",
               "Traceback (most recent call last)")
OUTPUT_WIDTH = 900    # px: the narrow output area every explorer must fit
WIDE_WINDOW = 1400    # px: the window a student has (file browser open): screenshots are taken there
PRESSES = 5           # key presses per slider (n of its latency median)
SERVER_START_S, RUN_ALL_S, UPDATE_S = 60, 300, 20
IDLE_WHILE_QUEUED_MS = 2000  # between two queued cells the kernel is idle for a few ms (~1 s under heavy load)
# Sizes beyond a notebook's test_parameters, for the browser only (none now): notebooks 06 and 07 once ran here at
# 2 steps, too few for the undefended model to reach τ, and their best-response cells then (rightly) refused to
# compute a slowdown without a reference. Every notebook runs at its own test_parameters, lesson included.
BROWSER_PARAMETERS: dict[str, dict] = {}


def _require_browser():
    """Skip (locally) or fail (CI) when the browser stack is missing."""
    missing = []
    if not (shutil.which("chromium") or Path(CHROMIUM).exists()):
        missing.append("Debian chromium (apt-get install chromium chromium-driver)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e .[test])")
    if missing:
        why = "real-browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(why + "; .ci/run installs them, so CI must not lack them")
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET"):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


def _load() -> float:
    return os.getloadavg()[0]


# --- the course as the browser gets it --------------------------------------------------------------------

def course_copy(src: Path, dst: Path) -> None:
    """``src`` with its test parameters injected after the ``parameters`` cell (as papermill does)."""
    nb = json.loads(src.read_text())
    params = dict(nb["metadata"].get("specdef_lite", {}).get("test_parameters", {}))
    extra = BROWSER_PARAMETERS.get(src.stem, {})
    params.update(extra)
    cells = nb["cells"]
    if extra:  # smaller than the lesson needs: leave the lesson's assertions out
        code = [c for c in cells if c["cell_type"] == "code"]
        lesson = [c for c in code if "lesson" in c["metadata"].get("tags", [])] or code[-1:]
        cells = [c for c in cells if c not in lesson]
    i = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    injected = {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "execution_count": None, "outputs": [],
                "source": "# injected by tests/test_browser.py\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())}
    if (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5):  # cell ids exist from nbformat 4.5 on
        injected["id"] = "injected-parameters"
    nb["cells"] = cells[:i + 1] + [injected] + cells[i + 1:]
    dst.write_text(json.dumps(nb, indent=1))


@pytest.fixture(scope="module")
def lab():
    """A JupyterLab server on a free loopback port over a copy of the course: yields (base_url, token, dir).

    Its folder is made with ``tempfile``, not pytest's ``tmp_path``: pytest deletes all but the last three
    numbered temp folders of a user, so another pytest run of the same user (a shared machine) could delete
    the running server's runtime folder and course copy under it."""
    _require_browser()
    tmp = Path(tempfile.mkdtemp(prefix="specdef-lab-"))
    course = tmp / "course"
    course.mkdir()
    for src in NOTEBOOKS:
        course_copy(src, course / src.name)
    settings = tmp / "settings"
    for name, value in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "SPECDEF_LITE_HEADLESS": "0", "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_CONFIG_PATH": str(ROOT / ".jupyter"),
           "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={course}", "--LabApp.expose_app_in_browser=True",
           f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
           f"--FileCheckpoints.checkpoint_dir={tmp / 'checkpoints'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=course, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{(tmp / 'lab.log').read_text()[-3000:]}")
            try:
                _api(base, token, "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab not up in {SERVER_START_S} s:\n{(tmp / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.25)
        yield base, token, course
    finally:
        try:  # shut every kernel down through the REST API, then the server
            for k in _api(base, token, "/api/kernels") or []:
                _api(base, token, f"/api/kernels/{k['id']}", method="DELETE")
        except OSError:
            pass
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp / "lab.log", SCREENSHOTS / "lab.log")  # the server's log, for a failure's story
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Browser:
    page: object
    version: str
    console: list = field(default_factory=list)   # page console errors and warnings, uncaught exceptions
    blocked: list = field(default_factory=list)   # requests that tried to leave the machine
    rows: list = field(default_factory=list)      # latency rows for build/browser-latency.json
    runs: dict = field(default_factory=dict)      # notebook -> what running all its cells gave
    explorers: dict = field(default_factory=dict)  # notebook -> how many explorers it drew
    run_console: list = field(default_factory=list)  # console lines logged while the course ran
    timings: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def browser(lab):
    """One headless Chromium page with JupyterLab loaded (network refused) and every notebook of the course
    run in its own tab (the controls are driven later, one notebook at a time, every kernel idle). Writes
    the latency table when the module is done."""
    from playwright.sync_api import sync_playwright

    base, token, _ = lab
    t0 = time.perf_counter()
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_FLAGS)
        try:
            page = chromium.new_page(viewport={"width": WIDE_WINDOW, "height": 1000})
            b = Browser(page, chromium.version)
            page.on("console", lambda m: b.console.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: b.console.append(f"uncaught: {e}"))

            def offline(route):  # the course must render with nothing leaving the machine
                if urlsplit(route.request.url).hostname in {"127.0.0.1", "localhost"}:
                    route.continue_()
                else:
                    b.blocked.append(route.request.url)
                    route.abort()
            page.route("**/*", offline)
            page.add_init_script("Error.stackTraceLimit = 60;")
            page.add_init_script(_TIMELINE)
            page.goto(f"{base}/lab/workspaces/specdef-test-{secrets.token_hex(4)}?reset&token={token}")
            page.wait_for_function("() => !!(window.jupyterapp && window.jupyterapp.shell)", timeout=60_000)
            page.evaluate("() => window.jupyterapp.restored.then(() => true)")  # plugins active, layout restored
            page.wait_for_function("() => ['docmanager:open', 'notebook:run-all-cells']"
                                   ".every(c => window.jupyterapp.commands.hasCommand(c))", timeout=60_000)
            page.evaluate(_SETUP)
            b.timings["lab"] = time.perf_counter() - t0
            _run_course(b, [nb.name for nb in NOTEBOOKS])
            b.timings["course run"] = time.perf_counter() - t0 - b.timings["lab"]
            yield b
        finally:
            chromium.close()
            if b.rows:
                atomic_file(LATENCY, json.dumps({
                    "when": time.strftime("%Y-%m-%d %H:%M"), "chromium": b.version, "cores": os.cpu_count(),
                    "output_width": OUTPUT_WIDTH, "seconds": round(time.perf_counter() - t0, 1),
                    "partial": len(NOTEBOOKS) < len(ALL_NOTEBOOKS),  # SPECDEF_LITE_BROWSER_NOTEBOOKS chose some
                    "rows": b.rows}, indent=1))


# --- page scripts -------------------------------------------------------------------------------------
_SETUP = """() => {
  const S = window.__specdef = {panels: {}, runs: {}};
  const plain = v => (v && ArrayBuffer.isView(v)) ? Array.from(v) : v;
  S.gd = id => document.querySelector(`[data-specdef-explorer="${id}"] .js-plotly-plot`);
  S.fp = id => JSON.stringify(S.gd(id).data.map(t => [plain(t.x), plain(t.y), plain(t.z), t.text, t.name]));
  // the notebook panel open on `path`, once its kernel is idle
  S.ready = path => {
    let panel = null;
    for (const w of window.jupyterapp.shell.widgets('main')) if (w.context && w.context.path === path) panel = w;
    if (!panel || !panel.context.isReady || !panel.sessionContext.isReady) return false;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    if (!kernel || kernel.status !== 'idle') return false;
    S.panels[path] = panel;
    return true;
  };
  // run all cells of `path`; record the result and every stretch of "idle" the kernel status showed while a
  // cell of the notebook still waited for its turn ([cells queued, ms])
  S.runAll = path => {
    const panel = S.panels[path];
    const run = S.runs[path] = {status: null, idle: [], t0: performance.now(), seconds: null};
    let idleSince = null, idleQueued = 0;
    const onStatus = (ctx, status) => {
      const queued = [...panel.node.querySelectorAll('.jp-InputPrompt')].filter(p => p.textContent.includes('*')).length;
      if (status === 'idle' && queued > 0) { idleSince = performance.now(); idleQueued = queued; }
      else if (status !== 'idle' && idleSince !== null) {
        run.idle.push([idleQueued, Math.round(performance.now() - idleSince)]); idleSince = null; }
    };
    panel.sessionContext.statusChanged.connect(onStatus);
    return window.jupyterapp.commands.execute('notebook:run-all-cells', {widgetId: panel.id, activate: false})
      .then(ok => { run.status = ok ? 'ok' : 'a cell failed'; }, err => { run.status = 'error: ' + err; })
      .finally(() => { run.seconds = (performance.now() - run.t0) / 1000;
                       panel.sessionContext.statusChanged.disconnect(onStatus); });
  };
  S.errors = (path, texts) => {
    const found = [];
    for (const o of S.panels[path].node.querySelectorAll('.jp-OutputArea-output')) {
      const t = o.innerText || '';
      const err = o.getAttribute('data-mime-type') === 'application/vnd.jupyter.stderr' && /Error|Traceback/.test(t);
      if (err || texts.some(x => t.includes(x))) found.push(t.slice(0, 600));
    }
    return found;
  };
  return true;
}"""
# Every explorer of a notebook: an output holding a widget box with a plotly plot, tagged "<stem>-<i>".
_FIND_EXPLORERS = """([path, stem]) => window.__specdef.find(path, stem)"""
_FIND = """(path, stem) => {
  const S = window.__specdef, found = [];
  for (const area of S.panels[path].node.querySelectorAll('.jp-OutputArea-output')) {
    const box = area.querySelector('.widget-vbox');
    const gd = box && box.querySelector('.js-plotly-plot');
    if (!gd || !gd.data || !gd.data.length || !gd._fullLayout) continue;
    const id = `${stem}-${found.length}`;
    area.setAttribute('data-specdef-explorer', id);
    area.querySelector('.widget-vbox > .widget-hbox').querySelectorAll(':scope > *').forEach(
      (c, j) => c.setAttribute('data-specdef-control', String(j)));
    found.push(id);
  }
  return found;
}"""
_SETUP = _SETUP.replace("  return true;\n}", f"  S.find = {_FIND};\n  return true;\n}}")
_CONTROLS = """(id) => [...document.querySelectorAll(`[data-specdef-explorer="${id}"] [data-specdef-control]`)].map(c => {
  const label = c.querySelector('.widget-label');
  const kind = c.classList.contains('widget-toggle-buttons') ? 'toggle'
             : c.querySelector('select') ? 'dropdown' : c.querySelector('.noUi-handle') ? 'slider' : 'other';
  return [c.getAttribute('data-specdef-control'), kind, label ? label.textContent.trim() : ''];
})"""
# Layout of one explorer at the current width: what overflows, what wraps.
_LAYOUT = """(id) => {
  const area = document.querySelector(`[data-specdef-explorer="${id}"]`);
  const r = area.getBoundingClientRect();
  const out = {width: Math.round(r.width), problems: []};
  if (area.scrollWidth > area.clientWidth + 1) out.problems.push(`output scrolls sideways: ${area.scrollWidth} > ${area.clientWidth}`);
  for (const el of area.querySelectorAll('.js-plotly-plot .main-svg, .widget-inline-hbox, .widget-toggle-buttons, .widget-vbox, .widget-hbox')) {
    const b = el.getBoundingClientRect();
    if (b.width > 0 && b.right > r.right + 1) out.problems.push(`${el.className.baseVal || el.className} ends at ${Math.round(b.right - r.left)} px of ${Math.round(r.width)}`);
  }
  for (const el of area.querySelectorAll('.widget-vbox, .widget-hbox')) {
    if (el.scrollWidth > el.clientWidth + 1) out.problems.push(`${el.className} scrolls: ${el.scrollWidth} > ${el.clientWidth}`);
  }
  const oneRow = els => { const b = els.map(e => e.getBoundingClientRect());  // all overlap the first vertically
    return b.every(x => x.top < b[0].bottom - 2 && x.bottom > b[0].top + 2); };
  if (!oneRow([...area.querySelectorAll('[data-specdef-control]')])) out.problems.push('the controls wrap onto a second row');
  for (const t of area.querySelectorAll('.widget-toggle-buttons')) {
    if (!oneRow([...t.querySelectorAll('button')])) out.problems.push(`the buttons of "${t.textContent.trim().slice(0, 30)}" wrap`);
  }
  return out;
}"""
# Which traces carry x and y, and how long: in the page (plotly.js) ...
_PAGE_SHAPES = """(id) => {
  const a = v => (v === undefined || v === null) ? null : Array.from(v, e => (typeof e === 'number' && !isFinite(e)) ? null : e);
  return window.__specdef.gd(id).data.map(t => [a(t.x), a(t.y), t.text === undefined ? null : t.text]);
}"""
# ... and in the kernel, for every live explorer of the notebook (the page must show what Python holds).
_KERNEL_CODE = """
import json as _json
from specdef_lite.course.widgets import Explorer as _Explorer
_n = lambda v: None if v is None else list(v)
print(_json.dumps([[type(_e).__name__, [[_n(t.x), _n(t.y), _n(t.text) if isinstance(t.text, tuple) else t.text]
                                        for t in _e.figure.data]]
                   for _e in {id(v): v for v in list(globals().values()) if isinstance(v, _Explorer) and v.live}.values()]))
"""
_STATE_CODE = """
from specdef_lite.course.widgets import Explorer as _Explorer
for _e in {id(v): v for v in list(globals().values()) if isinstance(v, _Explorer) and v.live}.values():
    print(type(_e).__name__, _e.state(), len(_e.latencies), "updates")
"""
_KERNEL_RUN = """async ([path, code]) => {
  const kernel = window.__specdef.panels[path].sessionContext.session.kernel;
  const future = kernel.requestExecute({code, silent: false, store_history: false});
  let out = '';
  future.onIOPub = msg => { if (msg.header.msg_type === 'stream') out += msg.content.text; };
  await future.done;
  return out;
}"""
# JupyterLab's Log Console for this notebook: what its logger holds (level warning and above).
_LOG_CONSOLE = """(path) => {
  const plugin = window.jupyterapp.pluginRegistry._plugins.get('@jupyterlab/logconsole-extension:plugin');
  const registry = plugin && plugin.service;
  if (!registry) return ['no Log Console registry found'];
  const logger = registry.getLoggers().find(l => l.source === path);
  if (!logger) return [];
  return logger.outputAreaModel.toJSON().map(o => JSON.stringify(o).replace(/\\\\u001b\\[[0-9;]*m/g, '').slice(0, 600));
}"""


# --- helpers ------------------------------------------------------------------------------------------

def _diagnose(page, what: str) -> str:
    """What the page shows when a wait timed out: dialogs, tabs and their kernels."""
    try:
        info = page.evaluate("""() => ({
          dialogs: [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText.slice(0, 300)),
          tabs: [...window.jupyterapp.shell.widgets('main')].map(w => [w.title.label, w.context ? w.context.path : null,
            w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel
              ? w.sessionContext.session.kernel.status : 'no kernel',
            [...w.node.querySelectorAll('.jp-OutputArea-output')].filter(o => o.querySelector('.widget-vbox, .js-plotly-plot'))
              .map(o => [o.querySelectorAll('.widget-vbox').length, [...o.querySelectorAll('.js-plotly-plot')].map(
                 g => [!!g.data && g.data.length, !!g._fullLayout, g.getBoundingClientRect().width]), o.innerText.slice(0, 80)])])})""")
    except Exception as e:  # noqa: BLE001 - a diagnosis must not hide the failure it explains
        info = f"(page not readable: {e})"
    name = f"timeout-{re.sub(r'[^A-Za-z0-9_.-]', '_', what)}"
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    (SCREENSHOTS / f"{name}.json").write_text(json.dumps(info, indent=1, ensure_ascii=False))
    return f"{what} timed out; the page shows {info}"


def _wait(page, script: str, arg=None, timeout_s: float = 60, what: str = "") -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    try:
        page.wait_for_function(script, arg=arg, timeout=timeout_s * 1000)
    except PlaywrightTimeout:
        pytest.fail(_diagnose(page, what or script[:60]))


def _open_all(page, paths: list[str]) -> None:
    """Open every notebook in its own tab, one after the other: each kernel is up before the next starts
    (kernels started together made jupyter_server answer GET /api/kernels with a 500 — a kernel still
    starting has no last_activity yet — which the page console logged)."""
    for path in paths:
        page.evaluate("(path) => { window.jupyterapp.commands.execute('docmanager:open', {path}); }", path)
        _wait(page, "(path) => window.__specdef.ready(path)", path, 120, f"the kernel of {path}")


def _close_all(page) -> None:
    """Close every document tab, unsaved changes dropped (views go before kernels)."""
    page.evaluate("""() => { for (const w of [...window.jupyterapp.shell.widgets('main')])
                               if (w.context) { w.context.model.dirty = false; w.close(); } }""")
    _wait(page, "() => ![...window.jupyterapp.shell.widgets('main')].some(w => w.context)", None, 30, "closing")


def _run_course(b: Browser, paths: list[str]) -> None:
    """Open each notebook in its own tab and run all its cells, one notebook after the other; record the
    results and the console lines. One at a time: anywidget gives a widget model 2 s to load its front-end
    module (plotly's is 5 MB) and fails it for good after that ("[anywidget] Failed to initialize model."),
    which five explorers loading at once beside running kernels exceeded on this 2-core machine."""
    page = b.page
    mark = len(b.console)
    for path in paths:
        _open_all(page, [path])
        page.evaluate("(path) => { window.__specdef.runAll(path); }", path)
        _wait(page, "(p) => window.__specdef.runs[p].status !== null", path, RUN_ALL_S, f"running all cells of {path}")
        run = page.evaluate("(path) => window.__specdef.runs[path]", path)
        run["errors"] = page.evaluate("([p, t]) => window.__specdef.errors(p, t)", [path, list(ERROR_TEXTS)])
        b.runs[path] = run
    b.run_console = b.console[mark:]


def _end_sessions(base: str, token: str) -> None:
    """Delete every session (its kernel shut down), all at once, and return when they are gone."""
    from concurrent.futures import ThreadPoolExecutor
    sessions = _api(base, token, "/api/sessions") or []
    with ThreadPoolExecutor(max(1, len(sessions))) as pool:
        list(pool.map(lambda s: _api(base, token, f"/api/sessions/{s['id']}", method="DELETE"), sessions))


def _activate(page, path: str) -> None:
    page.evaluate("(path) => window.jupyterapp.shell.activateById(window.__specdef.panels[path].id)", path)
    page.wait_for_timeout(200)


def _output_width(page, eid: str) -> float:
    return page.evaluate("(id) => document.querySelector(`[data-specdef-explorer=\"${id}\"]`).getBoundingClientRect().width", eid)


def _set_output_width(page, eid: str, target: float) -> None:
    """Resize the window until explorer ``eid``'s output area is ``target`` px wide (the layout follows)."""
    for _ in range(4):
        w = _output_width(page, eid)
        if abs(w - target) < 1:
            break
        vp = page.viewport_size
        page.set_viewport_size({"width": int(round(vp["width"] + target - w)), "height": vp["height"]})
        page.wait_for_timeout(400)
    _settle(page, eid)


def _settle(page, eid: str, quiet_ms: int = 300, limit_ms: int = 10_000) -> None:
    """Wait until explorer ``eid``'s plot data did not change for ``quiet_ms`` (resizes, the kernel's echoes)."""
    page.evaluate(f"""(id) => new Promise(resolve => {{
      const fp = () => window.__specdef.fp(id);
      let last = fp(), since = performance.now(); const t0 = since;
      const tick = () => {{ const now = fp(); if (now !== last) {{ last = now; since = performance.now(); }}
        if (performance.now() - since >= {quiet_ms} || performance.now() - t0 > {limit_ms}) resolve(); else setTimeout(tick, 40); }};
      tick(); }})""", eid)


def _fp(page, eid: str) -> str:
    return page.evaluate("(id) => window.__specdef.fp(id)", eid)


# Where a key press's time goes, timed in the page: the user's event (keydown, mousedown, input, change), the
# first message the page then sends on a websocket (the control's new value, to the kernel), the largest
# message it receives before the plot changes (plotly's update from the kernel), and the plot's data changed
# (the first animation frame that sees it). Parts of each action: "to send" (the widget's own handling),
# "round trip" (server, kernel, the Python callback, back), "render" (from plotly's message to the frame).
_TIMELINE = """(() => {
  const T = window.__specdefT = {sends: [], recvs: [], action: null, changed: null, painted: null, armed: false};
  const size = d => typeof d === 'string' ? d.length : (d.byteLength || d.size || 0);
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (d) { T.sends.push([performance.now(), size(d)]); return send.call(this, d); };
  const stamp = ev => { T.recvs.push([performance.now(), size(ev.data)]); };
  const add = WebSocket.prototype.addEventListener;
  WebSocket.prototype.addEventListener = function (type, fn, opts) {
    if (type === 'message') add.call(this, 'message', stamp, opts);
    return add.call(this, type, fn, opts);
  };
  const on = Object.getOwnPropertyDescriptor(WebSocket.prototype, 'onmessage');
  Object.defineProperty(WebSocket.prototype, 'onmessage', {configurable: true, enumerable: true,
    get() { return on.get.call(this); },
    set(fn) { on.set.call(this, typeof fn === 'function' ? function (ev) { stamp(ev); return fn.call(this, ev); } : fn); }});
  for (const type of ['keydown', 'mousedown', 'input', 'change'])
    document.addEventListener(type, ev => {  // the event's own time stamp: input that waited in the queue counts
      if (T.armed && T.action === null) T.action = Math.min(ev.timeStamp, performance.now()); }, true);
})();"""
# Armed before the action: the page checks the plot's data on every animation frame from then on, so a change
# drawn in the page itself (PageFrames, before any message) is timed when it happens, not when the driver's
# own round trips let it look.
_ARM = """([id, before]) => {
  const T = window.__specdefT, gen = (T.gen || 0) + 1;
  Object.assign(T, {gen, action: null, changed: null, painted: null, armed: true, sends: [], recvs: []});
  const tick = () => {
    if (T.gen !== gen || !T.armed) return;
    if (window.__specdef.fp(id) !== before) {  // this frame paints next: a task queued now runs after that paint
      T.changed = performance.now(); setTimeout(() => { T.painted = performance.now(); }, 0); return; }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""
_PARTS = """() => {
  const T = window.__specdefT, a = T.action, c = T.changed;
  T.armed = false;
  if (a === null || c === null) return null;
  const sent = T.sends.find(x => x[0] >= a);
  const big = T.recvs.filter(x => x[0] >= a && x[0] <= c).reduce((m, x) => x[1] > m[1] ? x : m, [null, -1]);
  const kernel = big[1] >= 1000;  // plotly's update came from the kernel; else the page drew it (PageFrames)
  return {page: c - a, painted: T.painted === null ? null : T.painted - a, to_send: sent ? sent[0] - a : null,
          round_trip: sent && kernel ? big[0] - sent[0] : null, render: kernel ? c - big[0] : null,
          bytes: kernel ? big[1] : null, in_page: !kernel};
}"""
PARTS: list[dict] = []  # each timed action's parts (ms), collected by the test per control
# the median cost of one evaluation of the change probe (the JSON of every trace's data), which "render" includes
_PROBE_COST = """(id) => { const t = [];
  for (let i = 0; i < 11; i++) { const a = performance.now(); window.__specdef.fp(id); t.push(performance.now() - a); }
  return t.sort((a, b) => a - b)[5]; }"""


def _arm(page, eid: str, before: str) -> None:
    page.evaluate(_ARM, [eid, before])


def _changed(page, eid: str, before: str, t0: float) -> float | None:
    """ms from ``t0`` until explorer ``eid``'s plot data differs from ``before`` (None: it never did), as the
    driver sees it; the page's own times of the action go to ``PARTS``. Armed (``_arm``) before the action."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    try:
        page.wait_for_function("() => window.__specdefT.changed !== null", timeout=UPDATE_S * 1000, polling="raf")
    except PlaywrightTimeout:
        return None
    ms = 1e3 * (time.perf_counter() - t0)
    page.wait_for_function("() => window.__specdefT.painted !== null", timeout=5000)
    parts = page.evaluate(_PARTS)
    if parts:
        PARTS.append(parts)
    _settle(page, eid, quiet_ms=120)
    return ms


def _control(page, eid: str, j: str):
    return page.locator(f'[data-specdef-explorer="{eid}"] [data-specdef-control="{j}"]')


def _drive_slider(page, eid: str, j: str, label: str) -> list[float]:
    control = _control(page, eid, j)
    readout = control.locator(".widget-readout")
    handle = control.locator(".noUi-handle").first
    if handle.get_attribute("aria-valuemin") == handle.get_attribute("aria-valuemax"):
        return []  # a slider with one position (e.g. one η tried): nothing to drive
    key, latencies = "ArrowRight", []
    while len(latencies) < PRESSES:
        handle.focus()
        now, lo, hi = (float(handle.get_attribute(f"aria-value{a}")) for a in ("now", "min", "max"))
        if (key == "ArrowRight" and now >= hi) or (key == "ArrowLeft" and now <= lo):  # at the end: turn round
            key = "ArrowLeft" if key == "ArrowRight" else "ArrowRight"
        before, value = _fp(page, eid), readout.inner_text()
        _arm(page, eid, before)  # everything the driver reads is read before the clock starts
        t0 = time.perf_counter()
        page.keyboard.press(key)
        ms = _changed(page, eid, before, t0)
        moved = readout.inner_text()
        assert moved != value, f"the {label} slider does not move under the arrow keys ({value}, {key})"
        assert ms is not None, (f"{label} moved {value} → {moved} but the plot's data did not "
                                f"change in {UPDATE_S} s: the control no longer updates the plot")
        latencies.append(ms)
    return latencies


def _each_change(page, eid: str, label: str, choices: list, prepare) -> list[float]:
    """Make each choice in turn; each must change explorer ``eid``'s plot data within UPDATE_S: the ms each took.

    ``prepare(c) -> (name, act)`` does the work that is not the user's action (finding a button) off the clock.
    """
    latencies = []
    for c in choices:
        before, (name, act) = _fp(page, eid), prepare(c)
        _arm(page, eid, before)
        t0 = time.perf_counter()
        act()
        ms = _changed(page, eid, before, t0)
        assert ms is not None, (f"{label} → {name!r}: the plot's data did not change in {UPDATE_S} s: "
                                f"the control no longer updates the plot")
        latencies.append(ms)
    return latencies


def _drive_toggle(page, eid: str, j: str, label: str) -> list[float]:
    buttons = _control(page, eid, j).locator("button")
    n = buttons.count()
    start = next(k for k in range(n) if "mod-active" in (buttons.nth(k).get_attribute("class") or ""))

    def prepare(k):
        box = buttons.nth(k).bounding_box()
        return buttons.nth(k).inner_text(), lambda: page.mouse.click(box["x"] + box["width"] / 2,
                                                                      box["y"] + box["height"] / 2)
    return _each_change(page, eid, label, [*(k for k in range(n) if k != start), start], prepare)  # each, then back


def _drive_dropdown(page, eid: str, j: str, label: str) -> list[float]:
    select = _control(page, eid, j).locator("select")
    options = select.locator("option").all_inner_texts()
    start = select.evaluate("s => s.options[s.selectedIndex].text")
    return _each_change(page, eid, label, [*(o for o in options if o != start), start],
                        lambda text: (text, lambda: select.select_option(label=text)))


DRIVERS = {"slider": _drive_slider, "toggle": _drive_toggle, "dropdown": _drive_dropdown}


def _readout_in_plot(page, eid: str) -> None:
    """Where the plot prints α (notebook 02's read-out), it prints it as the α slider's readout does."""
    readout, texts = page.evaluate("""(id) => {
      const area = document.querySelector(`[data-specdef-explorer="${id}"]`);
      const s = [...area.querySelectorAll('.widget-hslider')].find(s => s.querySelector('.widget-label').textContent.trim() === 'α');
      const texts = window.__specdef.gd(id).data.flatMap(t => Array.isArray(t.text) ? t.text : []).filter(t => /α = /.test(t));
      return [s ? s.querySelector('.widget-readout').innerText.trim() : null, texts];
    }""", eid)
    if readout and texts:
        assert any(t.startswith(f"α = {readout},") or f"α = {readout}<" in t for t in texts), (
            f"the α readout says {readout!r} but the plot says {texts}")


# --- the tests ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_course_in_the_browser(lab, browser, nb):
    """Run (done by the fixture, all notebooks at once), then drive every control of every explorer."""
    _, _, course = lab
    page, path, stem = browser.page, nb.name, nb.stem
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert not browser.run_console, f"the page console logged while the course ran: {browser.run_console[:5]}"
    run = browser.runs[path]
    assert run["status"] == "ok" and not run["errors"], f"{path}: run all cells: {run['status']}; errors: {run['errors']}"
    longest = max((ms for _, ms in run["idle"]), default=0)
    assert longest < IDLE_WHILE_QUEUED_MS, (f"{path}: the kernel status said idle for {longest} ms while cells still "
                                            f"waited to run ([queued cells, ms]: {run['idle']})")
    mark, t0 = len(browser.console), time.perf_counter()
    page.set_viewport_size({"width": WIDE_WINDOW, "height": 1000})
    _activate(page, path)
    in_kernel = json.loads(page.evaluate(_KERNEL_RUN, [path, _KERNEL_CODE]) or "[]")
    if in_kernel:  # a tab shown for the first time draws its plots now
        _wait(page, "([p, s, n]) => window.__specdef.find(p, s).length >= n", [path, stem, len(in_kernel)], 30,
              f"{len(in_kernel)} explorers drawn in {path}")
    ids = page.evaluate(_FIND_EXPLORERS, [path, stem])
    assert len(ids) == len(in_kernel), f"{path}: {len(in_kernel)} live explorers in the kernel, {len(ids)} drawn"
    browser.explorers[path] = len(ids)
    report = []
    if ids:
        _set_output_width(page, ids[0], OUTPUT_WIDTH)
    for i, eid in enumerate(ids):
        name = in_kernel[i][0]
        area = page.locator(f'[data-specdef-explorer="{eid}"]')
        area.scroll_into_view_if_needed()
        layout = page.evaluate(_LAYOUT, eid)
        assert not layout["problems"], f"{path} {name} in a {layout['width']} px output area: {layout['problems']}"
        area.screenshot(path=str(SCREENSHOTS / f"{stem}_{i}_{OUTPUT_WIDTH}px.png"))
        for j, kind, label in page.evaluate(_CONTROLS, eid):
            assert kind in DRIVERS, f"{path} {name}: control {j} ({label!r}) is neither a slider, toggle nor drop-down"
            PARTS.clear()
            try:
                ms = DRIVERS[kind](page, eid, j, label)
            except AssertionError as e:  # say what the kernel holds: did the change reach it?
                state = page.evaluate(_KERNEL_RUN, [path, _STATE_CODE])
                plot = page.evaluate("""(id) => { const gd = window.__specdef.gd(id); return {width: gd.offsetWidth,
                  promises: (gd._promises || []).length, full: !!gd._fullLayout, hidden: !!gd.closest('.lm-mod-hidden'),
                  transitioning: !!gd._transitioning, traces: gd.data.length, size: gd._fullLayout && gd._fullLayout._size,
                  plots: document.querySelectorAll(`[data-specdef-explorer="${id}"] .js-plotly-plot`).length}; }""", eid)
                raise AssertionError(f"{path} {name}: {e}\nkernel: {state}\nplot: {plot}\n"
                                     f"console: {browser.console[mark:]}") from None
            if not ms:
                continue
            load = _load()
            probe = page.evaluate(_PROBE_COST, eid)  # the change probe runs once inside "render": what it costs
            browser.rows.append({"notebook": stem, "explorer": name, "control": label, "kind": kind,
                                 "n": len(ms), "median_ms": round(statistics.median(ms), 1),
                                 "first_ms": round(ms[0], 1), "max_ms": round(max(ms), 1),
                                 "ms": [round(m, 1) for m in ms], "load": round(load, 2),
                                 "parts_ms": {k: _median_of(PARTS, k)
                                              for k in ("page", "painted", "to_send", "round_trip", "render")},
                                 "update_bytes": _median_of(PARTS, "bytes"), "probe_ms": round(probe, 1),
                                 "in_page": sum(bool(p.get("in_page")) for p in PARTS)})
            assert browser.rows[-1]["in_page"] > 0, (
                f"{path} {name}.{label}: none of {len(ms)} changes was drawn by the page itself (every one waited for "
                f"the kernel): the page's frames (PageFrames) are missing or filed under other keys")
            parts = browser.rows[-1]["parts_ms"]
            report.append(f"{name}.{label}: {statistics.median(ms):.0f} ms (n={len(ms)}, load {load:.1f}; in the page "
                          + ", ".join(f"{k} {v:.0f}" for k, v in parts.items() if v is not None)
                          + f"; drawn in the page {browser.rows[-1]['in_page']}/{len(ms)}; probe {probe:.1f})")
        _readout_in_plot(page, eid)
        _settle(page, eid)
        in_page = page.evaluate(_PAGE_SHAPES, eid)
        now = json.loads(page.evaluate(_KERNEL_RUN, [path, _KERNEL_CODE]))[i][1]
        differs = _differs(in_page, now)
        assert not differs, f"{path} {name}: the page's plot differs from the kernel's figure: {differs}"
    if ids:  # a student's window: the explorers still fit, and that is what the README shows
        page.set_viewport_size({"width": WIDE_WINDOW, "height": 1000})
        page.wait_for_timeout(300)
        for i, eid in enumerate(ids):
            _settle(page, eid)
            area = page.locator(f'[data-specdef-explorer="{eid}"]')
            area.scroll_into_view_if_needed()
            layout = page.evaluate(_LAYOUT, eid)
            assert not layout["problems"], f"{path} explorer {i} in a {layout['width']} px output area: {layout['problems']}"
            shot = SCREENSHOTS / f"{stem}_{i}.png"
            area.screenshot(path=str(shot))
            doc = DOCS / f"explorer_{stem}{'' if i == 0 else f'_{i}'}.png"
            if os.environ.get("SPECDEF_LITE_UPDATE_DOCS") == "1" or not doc.exists():
                shutil.copyfile(shot, doc)
    errors = page.evaluate("([p, t]) => window.__specdef.errors(p, t)", [path, list(ERROR_TEXTS)])
    assert not errors, f"{path}: an output shows an error after the controls were driven: {errors}"
    logged = page.evaluate(_LOG_CONSOLE, path)
    assert not logged, f"{path}: JupyterLab's Log Console holds {len(logged)} entries: {logged[:3]}"
    console = _console_since(browser, mark)
    assert not console, f"{path}: the page console logged while the explorers were driven: {console[:5]}"
    assert not browser.blocked, f"requests tried to leave the machine: {browser.blocked[:5]}"
    # saved, the notebook keeps no widget view a new kernel could not restore: each explorer as its static copy
    page.evaluate("(path) => { window.__specdef.panels[path].context.save(); }", path)
    _wait(page, "(path) => !window.__specdef.panels[path].context.model.dirty", path, 30, f"saving {path}")
    saved = json.loads((course / path).read_text())
    outputs = [o for c in saved["cells"] for o in c.get("outputs", [])]
    views = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    statics = [o for o in outputs if "Static copy saved with the notebook" in json.dumps(o.get("data", {}))]
    assert not views, f"{path} was saved with {len(views)} widget views no kernel can restore"
    assert len(statics) == len(ids), f"{path}: {len(ids)} explorers but {len(statics)} static copies in the saved file"
    print(f"\n{path}: ran in {run['seconds']:.1f} s, {len(ids)} explorer(s) driven in "
          f"{time.perf_counter() - t0:.1f} s; " + "; ".join(report))


def _differs(page_data: list, kernel_data: list) -> str | None:
    """Where the page's traces (x, y, text) differ from the kernel's, None if nowhere: numbers to 1e-9
    relative (a slider's value reaches them through JavaScript), everything else exactly."""
    if len(page_data) != len(kernel_data):
        return f"{len(page_data)} traces in the page, {len(kernel_data)} in the kernel"
    for i, (a, b) in enumerate(zip(page_data, kernel_data)):
        for what, u, v in zip(("x", "y", "text"), a, b):
            if isinstance(u, list) and isinstance(v, list) and len(u) == len(v):
                bad = [j for j, (p, q) in enumerate(zip(u, v))
                       if not (p == q or (isinstance(p, (int, float)) and isinstance(q, (int, float))
                                          and abs(p - q) <= 1e-9 * max(abs(p), abs(q))))]
                if bad:
                    return f"trace {i} {what}[{bad[0]}]: {u[bad[0]]!r} in the page, {v[bad[0]]!r} in the kernel"
            elif u != v and not (u in (None, [], "") and v in (None, [], "")):  # unset either way
                return f"trace {i} {what}: {str(u)[:80]} in the page, {str(v)[:80]} in the kernel"
    return None


def _median_of(parts: list[dict], key: str) -> float | None:
    values = [p[key] for p in parts if p.get(key) is not None]
    return round(statistics.median(values), 1) if values else None


def _console_since(b: Browser, mark: int) -> list[str]:
    return list(b.console[mark:])


def test_reopened_notebooks_show_static_copies(lab, browser):
    """Every notebook, saved after the run, reopened on a fresh kernel: no widget error, each explorer's
    static copy drawn in its place (the tqdm bars gone)."""
    base, token, course = lab
    page = browser.page
    paths = [nb.name for nb in NOTEBOOKS]
    mark, t0 = len(browser.console), time.perf_counter()
    for path in paths:  # any notebook whose drive test stopped early is saved here
        if page.evaluate("(path) => !!window.__specdef.panels[path] && window.__specdef.panels[path].context.model.dirty", path):
            page.evaluate("(path) => { window.__specdef.panels[path].context.save(); }", path)
    _wait(page, "(paths) => paths.every(p => !window.__specdef.panels[p].context.model.dirty)", paths, 30, "saving")
    _close_all(page)
    _end_sessions(base, token)  # else JupyterLab reattaches each notebook to its old session, whose kernel is dying
    page.evaluate("() => { window.__specdef.panels = {}; }")
    _open_all(page, paths)
    _wait(page, """(paths) => paths.every(p => ![...window.__specdef.panels[p].node.querySelectorAll('.jp-OutputArea-output')]
                                      .some(o => (o.innerText || '').includes('Loading widget')))""", paths, 30,
          "widget outputs of the reopened notebooks")
    page.wait_for_timeout(500)  # the widget managers have restored (from the new kernels): errors show by now
    problems = []
    statics = """(p) => [...window.__specdef.panels[p].node.querySelectorAll('.jp-OutputArea-output')]
                 .filter(o => o.querySelector('.js-plotly-plot .main-svg') && o.textContent.includes('Static copy saved')).length"""
    for path in paths:
        _activate(page, path)  # a tab shown for the first time draws its plots now
        expected = browser.explorers.get(path, 0)
        try:
            page.wait_for_function(f"(p) => ({statics})(p) >= {expected}", arg=path, timeout=20_000)
        except Exception:  # noqa: BLE001 - reported below with what was drawn
            pass
        drawn = page.evaluate(statics, path)
        errors = page.evaluate("([p, t]) => window.__specdef.errors(p, t)", [path, list(ERROR_TEXTS)])
        if errors:
            problems.append(f"{path}: {errors}")
        if drawn != expected:
            problems.append(f"{path}: {drawn} static copies drawn for {expected} explorers")
    console = _console_since(browser, mark)
    print(f"\nreopened {len(paths)} notebooks in {time.perf_counter() - t0:.1f} s")
    assert not problems, "reopened after saving: " + "; ".join(problems)
    assert not console, f"the page console logged while the notebooks were reopened: {console[:5]}"
