"""Real browser: JupyterLab + headless Chromium run notebook 02, move the α slider, see the plot change.

What a student sees and the papermill harness cannot: the live explorer (ipywidgets + plotly
``FigureWidget``) rendered by JupyterLab, key presses on the α slider, the kernel's callback, and the
plot's data changing in the page after each press. It fails if the slider stops updating the plot, if a
widget shows an error, or if the page's plot lacks an array the kernel's figure holds (a curve drawn
against its indices because its x never reached the browser).

Setup (TOOLCHAIN.md): JupyterLab on a free loopback port with a token and ``expose_app_in_browser`` (so
``window.jupyterapp`` can run all cells), fresh settings and workspace folders, and Debian's Chromium
driven by Playwright through ``executable_path`` (no browser download). Every request that leaves the
loopback is refused, so the plots must render offline. The kernel gets ``SPECDEF_LITE_HEADLESS=0``: it is
a front end, whatever the harness's environment says. A screenshot goes to build/screenshots/; set
``SPECDEF_LITE_UPDATE_DOCS=1`` (or delete docs/explorer.png) to refresh the README's screenshot. The
key press → plot latencies it sees go to build/browser-latency.json for the speed report.

Skipped, with the reason, only when Chromium or Playwright is missing and ``CI`` is not set; CI
(``.ci/run``) installs Chromium, so there a missing browser is a failure.
Debugging aid: ``SPECDEF_LITE_BROWSER_NOTEBOOK=path/relative/to/repo.ipynb`` drives another notebook.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = os.environ.get("SPECDEF_LITE_BROWSER_NOTEBOOK", "notebooks/02_spectral_deformation.ipynb")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "build" / "screenshots"
DOCS_SHOT = ROOT / "docs" / "explorer.png"
LATENCY = ROOT / "build" / "browser-latency.json"  # key press → plot changed, read by benchmarks/bench_widgets.py
LAUNCH_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Lab settings for the run: no news toast, every cell kept in the DOM (windowing would detach outputs
# scrolled out of view), no autosave (the test never writes the notebook).
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}
ERROR_TEXTS = ("Error displaying widget", "Error rendering", "model not found", "Failed to load model",
               "Traceback (most recent call last)")
SERVER_START_S, RUN_ALL_S, UPDATE_S = 60, 240, 20


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


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free loopback port: yields (base_url, token); shuts kernels down after."""
    _require_browser()
    tmp = tmp_path_factory.mktemp("lab")
    settings = tmp / "settings"
    for name, value in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "SPECDEF_LITE_HEADLESS": "0", "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp / "config"), "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={ROOT}", "--LabApp.expose_app_in_browser=True",
           f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
           f"--FileCheckpoints.checkpoint_dir={tmp / 'checkpoints'}"]  # no .ipynb_checkpoints in notebooks/
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
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
        yield base, token
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


# --- page scripts -------------------------------------------------------------------------------------
# The notebook panel open on `path` (kept in window.__specdef_panel), once its kernel is ready.
_READY = """(path) => {
  if (!window.jupyterapp || !window.jupyterapp.shell) return false;
  let panel = null;
  for (const w of window.jupyterapp.shell.widgets('main')) {
    if (w.context && w.context.path === path) panel = w;
  }
  if (!panel || !panel.context.isReady || !panel.sessionContext.isReady) return false;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  if (!kernel || kernel.status !== 'idle') return false;
  window.__specdef_panel = panel;
  return true;
}"""
# Run all cells; remember whether every cell succeeded.
_RUN_ALL = """() => { window.__specdef_run = null;
  window.jupyterapp.shell.activateById(window.__specdef_panel.id);
  window.jupyterapp.commands.execute('notebook:run-all-cells')
    .then(ok => { window.__specdef_run = ok ? 'ok' : 'a cell failed'; },
          err => { window.__specdef_run = 'error: ' + err; }); }"""
# The first α slider whose output area also holds a rendered plotly plot: tag both for later lookups.
_FIND_EXPLORER = """() => {
  const panel = window.__specdef_panel.node;
  for (const s of panel.querySelectorAll('.widget-slider')) {
    const label = s.querySelector('.widget-label');
    if (!label || label.textContent.trim() !== 'α') continue;
    const area = s.closest('.jp-OutputArea-output');
    const gd = area && area.querySelector('.js-plotly-plot');
    if (!gd || !gd.data || !gd.data.length || !gd._fullLayout) continue;
    area.setAttribute('data-specdef-explorer', '1');
    return true;
  }
  return false;
}"""
# A fingerprint of the explorer plot's trace data as plotly.js holds it in the page.
_PLOT_DATA = """() => {
  const gd = document.querySelector('[data-specdef-explorer] .js-plotly-plot');
  const plain = v => (v && ArrayBuffer.isView(v)) ? Array.from(v) : v;
  return JSON.stringify(gd.data.map(t => [plain(t.x), plain(t.y), plain(t.z)]));
}"""
# Which traces carry x and y, and how long: in the page (plotly.js) ...
_PAGE_SHAPES = """() => {
  const gd = document.querySelector('[data-specdef-explorer] .js-plotly-plot');
  const n = v => (v === undefined || v === null) ? null : v.length;
  return gd.data.map(t => [n(t.x), n(t.y)]);
}"""
# ... and in the kernel, for every live explorer of the notebook (the page must show what Python holds).
_KERNEL_SHAPES_CODE = """
import json as _json
from specdef_lite.widgets import Explorer as _Explorer
_n = lambda v: None if v is None else len(v)
print(_json.dumps([[[_n(t.x), _n(t.y)] for t in _e.figure.data]
                   for _e in {id(v): v for v in list(globals().values()) if isinstance(v, _Explorer) and v.live}.values()]))
"""
_KERNEL_SHAPES = """async (code) => {
  const kernel = window.__specdef_panel.sessionContext.session.kernel;
  const future = kernel.requestExecute({code, silent: false, store_history: false});
  let out = '';
  future.onIOPub = msg => { if (msg.header.msg_type === 'stream') out += msg.content.text; };
  await future.done;
  return out;
}"""
_ERRORS = """(texts) => {
  const panel = window.__specdef_panel.node;
  const found = [];
  for (const o of panel.querySelectorAll('.jp-OutputArea-output')) {
    const t = o.innerText || '';
    const err = o.getAttribute('data-mime-type') === 'application/vnd.jupyter.stderr' && /Error|Traceback/.test(t);
    if (err || texts.some(x => t.includes(x))) found.push(t.slice(0, 400));
  }
  return found;
}"""


def test_alpha_slider_updates_plot(lab):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    base, token = lab
    nb_path = NOTEBOOK
    assert (ROOT / nb_path).exists(), f"{nb_path} is missing"
    workspace = f"specdef-test-{secrets.token_hex(4)}"  # fresh: Lab must not restore earlier tabs
    url = f"{base}/lab/workspaces/{workspace}/tree/{nb_path}?reset&token={token}"
    stem = Path(nb_path).stem
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            blocked, console = [], []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)

            def offline(route):  # the explorer must render with nothing leaving the machine
                if urlsplit(route.request.url).hostname in {"127.0.0.1", "localhost"}:
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()
            page.route("**/*", offline)
            page.goto(url)
            page.wait_for_function("() => !!(window.jupyterapp && window.jupyterapp.shell)", timeout=60_000)
            page.wait_for_function(_READY, arg=nb_path, timeout=60_000)
            page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # room for the explorer's full width
            t_ready = time.perf_counter()
            page.evaluate(_RUN_ALL)
            page.wait_for_function("() => window.__specdef_run !== null", timeout=RUN_ALL_S * 1000)
            ran = page.evaluate("() => window.__specdef_run")
            errors = page.evaluate(_ERRORS, list(ERROR_TEXTS))
            assert ran == "ok" and not errors, f"run all cells: {ran}; error outputs: {errors}"
            t_run = time.perf_counter()

            page.wait_for_function(_FIND_EXPLORER, timeout=30_000)
            explorer = page.locator("[data-specdef-explorer]")
            explorer.scroll_into_view_if_needed()
            slider = explorer.locator(".widget-slider", has=page.locator(".widget-label", has_text="α")).first
            readout = slider.locator(".widget-readout")
            slider.locator(".noUi-handle").first.focus()

            def press(key: str):
                """One key press on the α slider: ms until the plot's data changed, 'stuck', or None."""
                before, value = page.evaluate(_PLOT_DATA), readout.inner_text()
                t = time.perf_counter()
                page.keyboard.press(key)
                if readout.inner_text() == value:
                    return "stuck"  # at the end of the slider
                try:
                    page.wait_for_function(f"() => ({_PLOT_DATA})() !== {json.dumps(before)}",
                                           timeout=UPDATE_S * 1000)
                except PlaywrightTimeout:
                    return None
                return 1e3 * (time.perf_counter() - t)

            value0, key = readout.inner_text(), "ArrowRight"
            first = press(key)
            if first == "stuck":
                key = "ArrowLeft"
                first = press(key)
            value1 = readout.inner_text()
            assert first != "stuck", f"the α slider did not move under the keyboard (readout {value0!r})"
            assert first is not None, (f"α moved {value0} → {value1} but the plot's data did not change in "
                                       f"{UPDATE_S} s: the slider no longer updates the plot")
            latencies = [first]
            for _ in range(4):  # a few more presses, one at a time: the key → plot latency a student feels
                ms = press(key)
                if ms == "stuck":
                    key = "ArrowLeft" if key == "ArrowRight" else "ArrowRight"
                    ms = press(key)
                assert ms is not None and ms != "stuck", f"α moved to {readout.inner_text()} but the plot did not follow"
                latencies.append(ms)
            value1 = readout.inner_text()
            LATENCY.write_text(json.dumps({
                "notebook": nb_path, "key_to_plot_ms": latencies, "median_ms": statistics.median(latencies),
                "load": os.getloadavg()[0], "cores": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M"),
                "chromium": browser.version}, indent=1))
            # wait for the plot to stay unchanged for a second (at most 15 s) before comparing it with the kernel
            quiet, last = 0, None
            for _ in range(75):
                now = page.evaluate(_PLOT_DATA)
                quiet = quiet + 1 if now == last else 0
                if quiet >= 5:
                    break
                last = now
                page.wait_for_timeout(200)
            errors = page.evaluate(_ERRORS, list(ERROR_TEXTS))
            assert not errors, f"a widget shows an error after the slider moved: {errors}"
            # the plot in the page holds every array the kernel's figure holds (an x lost on the way to the
            # browser draws a curve against its indices)
            in_page = page.evaluate(_PAGE_SHAPES)
            in_kernel = json.loads(page.evaluate(_KERNEL_SHAPES, _KERNEL_SHAPES_CODE) or "[]")
            assert in_kernel, "no live explorer found in the kernel"
            assert in_page in in_kernel, (f"the page's plot differs from the kernel's figure: [len(x), len(y)] per "
                                          f"trace in the page {in_page}, in the kernel {in_kernel}")

            explorer.screenshot(path=str(SCREENSHOTS / f"{stem}_explorer.png"))
            page.screenshot(path=str(SCREENSHOTS / f"{stem}_page.png"))
            if os.environ.get("SPECDEF_LITE_UPDATE_DOCS") == "1" or not DOCS_SHOT.exists():
                DOCS_SHOT.parent.mkdir(exist_ok=True)
                shutil.copyfile(SCREENSHOTS / f"{stem}_explorer.png", DOCS_SHOT)
        finally:
            browser.close()
    print(f"\n{nb_path}: page + kernel ready {t_ready - t0:.1f} s, run all {t_run - t_ready:.1f} s, "
          f"slider {value0} → {value1}: key press → plot changed in {statistics.median(latencies):.0f} ms "
          f"(median of {len(latencies)}: {', '.join(f'{m:.0f}' for m in latencies)}); "
          f"off-machine requests blocked: {len(blocked)}; console errors: {len(console)}")
