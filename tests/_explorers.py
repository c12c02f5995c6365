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


def assert_page_draws_every_next_state(explorer) -> int:
    """The page's path (``course.widgets.page``), without a browser: once the page has said hello it holds the
    current state's frame and, for every control, the frame of each state one student action away, filed
    under the key the page computes at that action (the moved control's new position, the others as they
    stood); moving there sends no plotly message, the kernel's copy of the figure equals that frame, and the
    state the explorer settles in is filed too. Returns how many moves were checked."""
    from specdef_lite.course.widgets.page import neighbours, page_key, position, to_page

    ex = explorer
    sent: list[dict] = []
    ex.page.send = lambda content, buffers=None: sent.append(content)
    ex.page.hello()
    assert ex.page.ready

    def held() -> dict[str, dict]:
        return {k: f for m in sent for f in m["frames"] for k in f["keys"]}

    start = ex.state()
    assert ex.page_key(start) in held(), "the page lacks the state it shows"
    n = 0
    for name, w in ex.controls.items():
        ex.set(**start)
        for value, _ in list(neighbours(w)):
            ex.set(**start)
            here, before = {c: position(x) for c, x in ex.controls.items()}, held()
            plotly: list = []
            record = lambda change: plotly.append(change["name"]) if change["new"] is not None else None  # noqa: E731
            ex.figure.observe(record, names=["_py2js_animate", "_py2js_update"])
            try:
                w.value = value  # as the student does (the widget's own change; no set() checks in between)
            finally:
                ex.figure.unobserve(record, names=["_py2js_animate", "_py2js_update"])
            assert not plotly, f"{name}={value!r}: the kernel sent plotly {plotly}"
            at_action = page_key({**here, name: position(w)}.values())
            frame = before.get(at_action)
            assert frame is not None, f"{name}={value!r}: the page held no frame under its key {at_action}"
            assert ex.page_key(ex.state()) in before, f"{name}={value!r}: the settled state was not filed"
            now = to_page(ex.figure, ex.page_frame(ex.state()))
            assert frame["traces"] == now["traces"] and frame["data"] == now["data"], f"{name}={value!r}"
            for i, edits in zip(frame["traces"], frame["data"]):  # the kernel's copy, kept in step quietly
                for key, v in edits.items():
                    got = ex.figure.data[i]
                    for part in key.split("."):
                        got = got[part]
                    got = list(got) if isinstance(got, tuple) else got
                    assert got == v or (isinstance(v, list) and [None if x is None else x for x in got] == v), (
                        f"{name}={value!r}: trace {i} {key} in the kernel's figure differs from the page's frame")
            n += 1
    ex.set(**start)
    return n
