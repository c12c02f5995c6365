"""What a live explorer sends the browser on each control change: plotly's update or an instant transition."""
from __future__ import annotations

import math
from typing import Any

from specdef_lite.course.widgets.live import DATA_ONLY, INSTANT


def sent_by(explorer, **values: Any) -> list[tuple[str, dict]]:
    """``explorer.set(**values)``; the messages its ``FigureWidget`` sent: ("animate" | "update", message)."""
    sent: list[tuple[str, dict]] = []

    def record(change):
        if change["new"] is not None:
            sent.append((change["name"].removeprefix("_py2js_"), change["new"]))

    explorer.figure.observe(record, names=["_py2js_animate", "_py2js_update"])
    try:
        explorer.set(**values)
    finally:
        explorer.figure.unobserve(record, names=["_py2js_animate", "_py2js_update"])
    return sent


def assert_every_change_redraw_free(explorer, changes: list[dict[str, Any]]) -> int:
    """Each change in ``changes`` (control → value, applied in turn) reaches the browser as one instant
    ``Plotly.animate`` of data only, and every point it draws on an axis ``fix_ranges`` fixed lies inside
    that range (a transition does not rescale it; axes the explorer set itself may clip on purpose, e.g. a
    diverging path leaving 01's window). Returns how many changes sent a message (a change to a state
    already shown sends none)."""
    n = 0
    for values in changes:
        sent = sent_by(explorer, **values)
        assert len(sent) <= 1, f"{values}: {len(sent)} messages"
        if not sent:
            continue
        kind, msg = sent[0]
        assert kind == "animate", f"{type(explorer).__name__}.set({values}) redraws the whole figure: {msg}"
        assert msg["animation_opts"] == INSTANT and not msg["layout_data"]
        for i, style in zip(msg["style_traces"], msg["style_data"]):
            assert set(style) <= DATA_ONLY, f"trace {i}: {sorted(style)}"
            trace = explorer.figure.data[i]
            for dim in ("x", "y"):
                key = dim + "axis" + (getattr(trace, dim + "axis") or dim)[1:]
                if key not in explorer.fixed_axes:
                    continue
                axis = explorer.figure.layout[key]
                lo, hi = axis.range
                for v in getattr(trace, dim) or ():
                    if v is None or not math.isfinite(v) or (axis.type == "log" and v <= 0):
                        continue
                    p = math.log10(v) if axis.type == "log" else v
                    assert lo - 1e-9 <= p <= hi + 1e-9, (f"{type(explorer).__name__}.set({values}): trace {i} "
                                                         f"({trace.name}) has {dim} = {v} outside its axis {lo} … {hi}")
        n += 1
    return n
