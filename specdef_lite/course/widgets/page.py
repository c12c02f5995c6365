"""Frames in the page: an explorer's next states, sent ahead, so the browser draws a control change itself.

A control change used to travel key press → kernel → Python callback → plotly's message → plot: 60–180 ms on
this host, most of it JupyterLab's and the kernel's own per-message work, not ours. ``PageFrames`` is a
widget without a view whose front end keeps the frames the kernel sent (keyed by the controls' positions)
and, on the control's own change event in the page, hands the frame for the new position to plotly's view
as plotly's own message would (``Plotly.animate`` when only data changes, else ``Plotly.update``): the
kernel is off the path. The kernel keeps its copy of the figure in step without sending anything
(``LiveFigure.quiet``), sends the frame of any state the page lacks, and, while idle, the frames one step
from the current state (``Explorer.page_wanted``). Until a page says it is there (its first message),
the explorer draws through plotly as before, so a front end where this never loads loses nothing — unless
another front end on the same kernel has said hello: from then on only pages with this code follow.
"""
from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import anywidget
import traitlets

from ...common.display import plain
from .live import INSTANT, Frame, undrawn

__all__ = ["PageFrames", "position", "page_key", "to_page", "neighbours", "positions"]

# The front end. ``position`` must match the Python ``position`` below: the kernel files each frame under
# the key the page computes when the student moves a control there.
_ESM = r"""
const INSTANT = %(instant)s;
const KEEP = 400;  // frames the page keeps, the least recently used dropped first (the kernel resends on need)

function position(m) {
  const labels = m.get("_options_labels");
  if (Array.isArray(labels)) { const i = m.get("index"); return i === null || i === undefined ? null : labels[i]; }
  const v = m.get("value"), base = m.get("base");
  const p = ((base ? Math.log(v) / Math.log(base) : v) - m.get("min")) / m.get("step");
  return Math.abs(p - Math.round(p)) < 1e-6 ? Math.round(p) : "@" + Math.round(p * 1e6);  // off the steps
}

function restyle(f) {  // the frame as Plotly.update's per-trace arrays (undefined: leave as is)
  const out = {};
  f.data.forEach((trace, j) => {
    for (const [k, v] of Object.entries(trace)) (out[k] ??= new Array(f.traces.length).fill(undefined))[j] = v;
  });
  return out;
}

function give(fig, name, msg) {  // what a message from the kernel does: plotly's model and views react to it
  fig.attributes[name] = msg;
  fig.trigger("change:" + name, fig, msg, {});
  fig.attributes[name] = null;
}

export default {
  async initialize({ model }) {
    const manager = model.widget_manager;
    const fig = await manager.get_model(model.get("figure"));
    const controls = await Promise.all(model.get("controls").map(id => manager.get_model(id)));
    const frames = new Map();
    let shown = null, style = null, asked = null, drawn = null;
    const draw = () => {
      const key = JSON.stringify(controls.map(position)), f = frames.get(key);
      if (f === undefined) {  // not sent yet, or dropped: the kernel sends the frame of the state it reaches
        if (key !== asked) { asked = key; model.send({ need: key }); }
        return;
      }
      frames.delete(key); frames.set(key, f);  // the most recently used last
      asked = null;
      if (key === shown) return;
      shown = key;
      if (f === drawn) return;  // the same frame under another key (03: the state η then settles in)
      const common = {style_traces: f.traces, layout_data: {}, trace_edit_id: -1, layout_edit_id: -1,
                      source_view_id: null};
      if (f.style === style) give(fig, "_py2js_animate", {...common, style_data: f.data, animation_opts: INSTANT});
      else give(fig, "_py2js_update", {...common, style_data: restyle(f)});
      drawn = f; style = f.style;
    };
    for (const c of controls) c.on("change", draw);
    model.on("msg:custom", msg => {
      if (msg.reset) { frames.clear(); shown = style = asked = drawn = null; }  // the frames' style is stale
      for (const f of msg.frames || []) for (const k of f.keys) frames.set(k, f);
      while (frames.size > KEEP) frames.delete(frames.keys().next().value);
      draw();
    });
    model.send({ hello: true });
    return () => { for (const c of controls) c.off("change", draw); };
  },
};
""" % {"instant": json.dumps(INSTANT)}


def position(widget: Any, value: Any = None, label: str | None = None) -> str | int | None:
    """Where a control stands, as the page computes it: a selection's label, a slider's step number
    p = (log_base(v) − min) / step (v for a linear slider) — an integer on a step, else "@" and p·10⁶ rounded
    (a value set from code between two steps has a frame of its own; integers, so no decimal formatting can
    differ between the two languages). ``value``/``label``: a position the control could take."""
    labels = getattr(widget, "_options_labels", None)
    if labels is not None:
        if label is not None:
            return label
        if value is not None:
            values = [o[1] if isinstance(o, tuple) else o for o in widget.options]
            return labels[values.index(value)] if value in values else None
        return None if widget.index is None else labels[widget.index]
    v = widget.value if value is None else value
    base = getattr(widget, "base", None)
    x = math.log(v) / math.log(base) if base else v
    p = (x - widget.min) / widget.step
    step = math.floor(p + 0.5)  # JavaScript's Math.round
    return step if abs(p - step) < 1e-6 else f"@{math.floor(p * 1e6 + 0.5)}"


def page_key(positions: Iterable[str | int | None]) -> str:
    """The page's key for the controls' positions: ``JSON.stringify`` of the list, character for character."""
    return json.dumps(list(positions), ensure_ascii=False, separators=(",", ":"))


def to_page(fig: Any, frame: Frame) -> dict[str, Any]:
    """A frame as the page keeps it: trace indices, each trace's edits as plotly's dotted paths with plain
    values, and ``style`` — the edits a transition would not draw (``live.undrawn``: what ``redraw_free``
    refuses), as text. The page
    animates a frame whose style is the one shown, and otherwise redraws the figure with it."""
    traces, edits, style = [], [], {}
    for i, attrs in sorted(frame.items()):
        flat = _flat(plain(attrs))
        kept = undrawn(fig, i, flat)
        if kept:
            style[str(i)] = {k: flat[k] for k in sorted(kept)}
        traces.append(i)
        edits.append(flat)
    return {"traces": traces, "data": edits, "style": json.dumps(style, sort_keys=True)}


def _flat(attrs: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"line": {"color": c}, "x": [...]} → {"line.color": c, "x": [...]}: the paths plotly's messages use."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


Wanted = tuple[tuple[str, ...], Callable[[], Frame]]  # the page keys of one state, and how to make its frame


class PageFrames(anywidget.AnyWidget):
    """The page's store of an explorer's frames; no view. See the module's docstring.

    ``wanted()`` lists what the page should hold, most urgent first: the current state, then the states one
    step away. ``refresh()`` sends the first at once (the page needs it now) and the rest one per turn of the
    kernel's event loop, between the messages it handles, each once (``sent``: a page that loads anew says
    hello, and every page gets everything again; a page that lacks the frame of a position it reached — one
    it dropped, or lost — says ``need`` and the kernel sends it again). ``reset()``: the page forgets its
    frames and gets them anew (the student changed the axes: which frames a transition can draw changed)."""

    _esm = _ESM
    figure = traitlets.Unicode().tag(sync=True)
    controls = traitlets.List(traitlets.Unicode()).tag(sync=True)

    def __init__(self, figure: Any, controls: Iterable[Any], wanted: Callable[[], Iterable[Wanted]]):
        super().__init__(figure=figure.model_id, controls=[c.model_id for c in controls])
        self._fig, self._wanted = figure, wanted
        self.ready = False  # the page has said hello: it draws the control changes
        self.sent: set[str] = set()
        self.messages = 0  # frames messages sent (tests, benchmarks)
        self.busy = False  # frames still queued for the kernel's idle turns
        self._generation = 0
        self.on_msg(self._on_page)

    def _on_page(self, _widget, content: dict, _buffers) -> None:
        if not isinstance(content, dict):
            return
        if content.get("hello"):
            self.hello()
        elif isinstance(content.get("need"), str) and self.ready:
            self.sent.discard(content["need"])
            self.refresh()

    def hello(self) -> None:
        """What the page's first message does: from now on the page draws the changes, starting empty."""
        self.ready, self.sent = True, set()
        self.refresh()

    def reset(self) -> None:
        """The page drops every frame and gets them again, computed against the figure as it now is."""
        if self.ready:
            self.send({"reset": True})
            self.sent = set()
            self.refresh()

    def refresh(self) -> None:
        """Send what the page lacks of ``wanted()``: the first item now, the others while the kernel is idle
        (one frame per turn of its event loop, abandoned when the state changes again); without a running
        event loop (a script, a test), all now."""
        if not self.ready:
            return
        self._generation += 1
        generation, items = self._generation, iter(self._wanted())
        for item in items:
            self._send_frame(item)
            break
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            for item in items:
                self._send_frame(item)
            return

        def step() -> None:
            if generation != self._generation:
                return
            try:
                for item in items:
                    if self._send_frame(item):
                        loop.call_soon(step)
                        return
            except BaseException:
                self.busy = False
                raise
            self.busy = False
        self.busy = True
        loop.call_soon(step)

    def _send_frame(self, item: Wanted) -> bool:
        """Send one state's frame under those of its keys the page lacks; False if it lacked none (nothing
        was computed). A state whose frame fails is marked sent, not retried: moving there, the explorer's
        own update says why."""
        keys, make = item
        new = [k for k in keys if k not in self.sent]
        if not new:
            return False
        try:
            frame = make()
        except Exception:  # noqa: BLE001 - a state the maths refuses: the page lacks it; moving there says why
            self.sent.update(new)
            return True
        self.send({"frames": [{"keys": new, **to_page(self._fig, frame)}]})
        self.sent.update(new)
        self.messages += 1
        return True


def neighbours(widget: Any) -> Iterator[tuple[Any, str | int | None]]:
    """(value, position) of each place ``widget`` reaches in one student action: a slider's next step either
    way, any other option of toggles and drop-downs."""
    options = getattr(widget, "options", None)
    if options is not None:
        labels = list(widget._options_labels)
        values = [o[1] if isinstance(o, tuple) else o for o in options]
        i = widget.index
        slider = type(widget).__name__ == "SelectionSlider"
        for j in ([i - 1, i + 1] if slider else range(len(values))):
            if j != i and 0 <= j < len(values):
                yield values[j], labels[j]
        return
    here = position(widget)
    if isinstance(here, str):  # between two steps (set from code): the steps either side
        p = int(here[1:]) / 1e6
        steps = {math.floor(p), math.ceil(p)}
    else:
        steps = {here - 1, here + 1}
    yield from ((v, p) for v, p in positions(widget) if p in steps)


def positions(widget: Any) -> list[tuple[Any, str | int | None]]:
    """(value, position) of every place ``widget`` can take: each option, each step of a slider."""
    options = getattr(widget, "options", None)
    if options is not None:
        return [(o[1] if isinstance(o, tuple) else o, label) for o, label in zip(options, widget._options_labels)]
    base = getattr(widget, "base", None)
    n = int(math.floor((widget.max - widget.min) / widget.step + 1e-9)) + 1
    out = []
    for p in range(n):
        x = widget.min + p * widget.step
        v = base ** x if base else x
        out.append(((int(round(v)) if isinstance(widget.value, int) else float(v)), p))
    return out
