"""Live or static: is a front end watching? Explorers become FigureWidgets if so, static figures if not.

papermill and nbconvert run a real kernel with comms open, so kernel introspection cannot tell a
browser from a headless run (TOOLCHAIN.md). The decision is therefore explicit, in this order:
  1. the ``live=`` argument of the call;
  2. the environment variable ``SPECDEF_LITE_HEADLESS`` ("1" → static, "0" → live), which the test and
     book harnesses set, read in one place (``headless_flag``) for explorers and progress bars alike;
  3. a guess: ``JPY_SESSION_NAME`` is set in kernels that a Jupyter server started, absent under papermill;
  4. otherwise static — a static figure is always safe, a widget without a front end shows nothing.

Static is still interactive: ``slider_figure`` builds a plain plotly figure whose own slider steps
through precomputed frames (restyle), so the HTML book keeps zoom, hover and a working α slider.

What a saved notebook keeps (measured in JupyterLab 4 + ipywidgets 8, tests/test_browser.py): a widget
view's model lives in the kernel, so a notebook reopened on a new kernel shows "Error displaying widget:
model not found" for every widget output it saved — JupyterLab's widget renderer outranks every other
mimetype in the bundle and does not fall back. Two pieces avoid that: a live explorer's output carries,
beside its widget view, a static plotly figure of the state it was shown in (``explorer_bundle``), and
the server's ``pre_save_hook`` (installed by ``make venv`` and ``postBuild``) saves each widget output
without its widget view: the explorer becomes that static figure, a bare widget (a tqdm bar) disappears.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

__all__ = ["headless_flag", "is_live", "progress_disabled", "slider_figure", "show", "plain", "gaps", "fmt", "explorer_bundle",
           "pre_save_hook"]

ENV = "SPECDEF_LITE_HEADLESS"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"


def headless_flag() -> bool | None:
    """``SPECDEF_LITE_HEADLESS`` as a flag: False for "0", "false", "no" (any case), None unset or blank, else True.

    The one reader of the variable: explorers (``is_live``) and progress bars (``progress_disabled``) agree.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {ENV: " No "}):
        ...     headless_flag(), is_live(), progress_disabled()
        (False, True, False)
        >>> with mock.patch.dict(os.environ, {ENV: "1"}):
        ...     headless_flag(), is_live(), progress_disabled(), progress_disabled(True)
        (True, False, True, False)
    """
    flag = os.environ.get(ENV, "").strip().lower()
    if not flag:
        return None
    return flag not in {"0", "false", "no"}


def is_live(live: bool | None = None) -> bool:
    """True if explorers should be FigureWidgets with ipywidgets controls (see the module docstring)."""
    if live is not None:
        return bool(live)
    headless = headless_flag()
    if headless is not None:
        return not headless
    return bool(os.environ.get("JPY_SESSION_NAME"))


def progress_disabled(progress: bool | None = None) -> bool:
    """An explicit ``progress`` wins; otherwise ``tqdm.auto`` bars are off only when headless (``headless_flag``):
    they would leave stale widget output in notebooks papermill executes."""
    if progress is not None:
        return not progress
    return headless_flag() is True


def slider_figure(fig: go.Figure, frames: Sequence[dict[int, dict]], labels: Sequence[str], *,
                  prefix: str = "α = ", active: int = 0) -> go.Figure:
    """A kernel-free slider: step i restyles the traces named in ``frames[i]`` (trace index → {attr: value}).

    Every frame must name the same traces and attributes. The figure shows ``frames[active]`` first.
    Args:
        fig: a figure holding every trace the frames restyle.
        frames: one dict per slider step, e.g. ``{0: {"y": ys}, 2: {"x": xs, "y": ys2}}``.
        labels: the slider's label for each step (same length as ``frames``).
    """
    if len(frames) != len(labels) or not frames:
        raise ValueError(f"need one label per frame, got {len(frames)} frames and {len(labels)} labels")
    idx = sorted(frames[0])
    attrs = sorted({a for i in idx for a in frames[0][i]})
    steps = []
    for frame, label in zip(frames, labels):
        if sorted(frame) != idx:
            raise ValueError("every frame must restyle the same traces")
        # an attribute a frame leaves out keeps the trace's own value (None would reset it, e.g. drop x)
        update = {a: [plain(frame[i][a]) if a in frame[i] else plain(fig.data[i][a]) for i in idx]
                  for a in attrs}
        steps.append(dict(method="restyle", args=[update, idx], label=label))
    for i in idx:
        fig.data[i].update(frames[active][i])
    fig.update_layout(sliders=[dict(active=active, steps=steps, currentvalue=dict(prefix=prefix),
                                    pad=dict(t=40))])
    return fig


def plain(value: Any) -> Any:
    """Plain JSON values for plotly: arrays (numpy, torch) → nested lists, NaN/±inf → None (a gap), recursively.

    Why a ``FigureWidget`` must only hold lists: plotly.py sends numpy arrays as typed-array specs, plotly.js
    decodes them into new typed arrays in ``_fullData``, and the widget then reports those as "defaults"
    that differ from the data; plotly.py's ``_remove_overlapping_props`` meets them as ``not ndarray`` and
    raises "The truth value of an array … is ambiguous" (plotly.py #4160) on every update — the ValueError
    JupyterLab's Log Console showed for notebooks 01 and 02. A plain list reaches plotly.js as the array it
    keeps, so no such delta is ever sent.

    Example:
        >>> plain({"y": np.array([1.0, np.nan]), "marker": {"size": np.int64(3)}})
        {'y': [1.0, None], 'marker': {'size': 3}}
    """
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "fc":
            out = value.astype(object)
            out[~np.isfinite(value)] = None
            return out.tolist()
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def gaps(values: Any, *, log: bool = False) -> list[float | None]:
    """y for a plotly line: y_i if finite (and > 0 when ``log``), else None — a gap, not a point at 0 or ∞.

    A diverged loss (inf, NaN) is not drawn; on a log axis an exact zero (no error at all) cannot be drawn.

    Example:
        >>> gaps([1.0, float("inf"), 0.0]), gaps([1.0, 0.0], log=True)
        ([1.0, None, 0.0], [1.0, None])
    """
    y = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=float).ravel()
    keep = np.isfinite(y) & (y > 0) if log else np.isfinite(y)
    return [float(v) if k else None for v, k in zip(y, keep)]


def fmt(value: float, trim: bool = True) -> str:
    """A number as plotly's and ipywidgets' d3-format prints it with ``~.3g`` (``trim=False``: ``.3g``).

    Three significant digits, exponent without padding, exponential when the exponent is ≥ 3 or < −6
    (JavaScript's ``toPrecision``); ``trim`` drops trailing zeros. Explorers label α with it on their
    sliders and in their plots alike, so a readout and a plot never disagree (3.16e+5 in both).

    Example:
        >>> [fmt(v) for v in (316227.766, 1e6, 17.78, 100.0, 0.00031623, 1.0)]
        ['3.16e+5', '1e+6', '17.8', '100', '0.000316', '1']
        >>> [fmt(v, trim=False) for v in (0.1, 1e6, 10.0)]
        ['0.100', '1.00e+6', '10.0']
    """
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0" if trim else "0.00"
    exp = math.floor(math.log10(abs(v)))
    mant = round(v / 10.0 ** exp, 2)
    if abs(mant) >= 10:  # rounding carried into the next decade
        exp, mant = exp + 1, mant / 10
    if exp >= 3 or exp < -6:
        m = f"{mant:.2f}"
        if trim:
            m = m.rstrip("0").rstrip(".")
        return f"{m}e{'+' if exp >= 0 else '-'}{abs(exp)}"
    text = f"{mant * 10.0 ** exp:.{max(2 - exp, 0)}f}"
    return text.rstrip("0").rstrip(".") if trim and "." in text else text


def show(fig: go.Figure) -> None:
    """Display a static plotly figure as its plotly JSON bundle (what the default renderer stores).

    Emitting the bundle directly skips ``fig.show()``'s first-call import of nbformat and jsonschema,
    measured at 1.8 s per kernel on a quiet machine and 5–7 s under load. Outside IPython it falls back
    to ``fig.show()``.
    """
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython ships with every notebook stack
        get_ipython = lambda: None  # noqa: E731
    if get_ipython() is None:
        fig.show()
        return
    bundle = {"application/vnd.plotly.v1+json": json.loads(fig.to_json()),
              "text/plain": f"<plotly figure: {len(fig.data)} traces>"}
    display(bundle, raw=True)


def explorer_bundle(widget, fig: go.Figure, name: str) -> dict:
    """The output of a live explorer: its widget view, and beside it a static copy of the figure it showed.

    JupyterLab draws the widget view while the kernel that owns it runs; ``pre_save_hook`` saves the output
    without it, so a reopened notebook shows the static copy (labelled as such) instead of an error.
    """
    if isinstance(fig, go.FigureWidget):  # what displaying a FigureWidget does: its view draws this data
        fig._repr_mimebundle_()           # and layout (else the state from construction time)
    static = go.Figure(fig)
    static.add_annotation(text=f"Static copy saved with the notebook: run the cell to drag the {name}'s controls.",
                          xref="paper", yref="paper", x=0.0, y=-0.02, xanchor="left", yanchor="top",
                          showarrow=False, font=dict(size=12, color="#b22222"))
    margin_b = (static.layout.margin.b or 40) + 30
    static.update_layout(margin=dict(b=margin_b), height=(static.layout.height or 450) + 30)
    bundle = dict(widget._repr_mimebundle_())
    bundle[PLOTLY_MIME] = json.loads(static.to_json())
    bundle["text/plain"] = f"<{name}: run the cell to see the live explorer>"
    return bundle


def pre_save_hook(model: dict, **kwargs) -> None:
    """Jupyter server pre-save hook: save each widget output without a view whose model the file cannot restore.

    A widget view refers to a model that lives in the kernel; unless the notebook's metadata carries that
    model's state, reopening the notebook on another kernel shows "Error displaying widget: model not
    found". So an output keeps its other representations (an explorer's static figure) and loses the
    view; an output with nothing else to show but a ``text/plain`` repr (a tqdm bar's stale "0%") is
    dropped. The live page is untouched: only the file changes. Configured as
    ``ContentsManager.pre_save_hook = "specdef_lite.common.display.pre_save_hook"`` (``.jupyter/jupyter_server_config.json``).
    """
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    nb = model["content"]
    saved = (nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE_MIME, {}) or {}).get("state", {}) or {}
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            view = data.get(WIDGET_MIME)
            if isinstance(view, dict) and view.get("model_id") not in saved:
                rest = {k: v for k, v in data.items() if k != WIDGET_MIME}
                if set(rest) <= {"text/plain"}:
                    continue
                out["data"] = rest
            kept.append(out)
        cell["outputs"] = kept
