"""The page's frames (course.widgets.page): keys the page and the kernel compute alike, frames as the page
draws them, sent most urgent first and the rest while the kernel idles.

Each explorer's own test drives its page path state by state (``_explorers.assert_page_draws_every_next_state``);
``tests/test_browser.py`` checks in JupyterLab that the page draws the changes itself.
"""
import asyncio
import json
import shutil
import subprocess

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import pytest

from specdef_lite.course.widgets.conditioning import ConditioningExplorer
from specdef_lite.course.widgets.controls import alpha_slider, log_slider, toggle
from specdef_lite.course.widgets.live import LiveFigure
from specdef_lite.course.widgets.page import _ESM, PageFrames, neighbours, page_key, position, positions, to_page


def test_page_key_is_javascripts_json():
    # JSON.stringify(["1e+2", 3, null, "η = 1e-3"]): no spaces, characters as they are
    assert page_key(["1e+2", 3, None, "η = 1e-3"]) == '["1e+2",3,null,"η = 1e-3"]'


def test_positions_of_every_control_kind():
    kappa = log_slider(10.0, 1.0, 1e3, 8, "κ")
    for i in range(25):  # 10^(i/8): the slider's own values, as Python computes them
        kappa.value = 10 ** (i / 8)
        assert position(kappa) == i
        assert position(kappa, value=float(np.nextafter(10 ** (i / 8), np.inf))) == i  # an ulp off: same step
    assert position(kappa, value=10 ** 0.5) == 4 and position(kappa, value=50.0) == "@13591760"  # 8·log₁₀ 50 = 13.59176…
    k = W.IntSlider(value=2, min=1, max=4)
    assert position(k) == 1 and position(k, value=4) == 3
    alpha = alpha_slider(1e2, [1.0, 1e2, 1e4])
    assert position(alpha) == alpha._options_labels[1] and position(alpha, value=1e4) == alpha._options_labels[2]
    opt = toggle(["GD", "Adam"], "GD", "optimizer")
    assert position(opt) == "GD" and position(opt, label="Adam") == "Adam" and position(opt, value="nope") is None
    # one student action away: a slider's next step either way (none past an end), every other option
    assert [p for _, p in neighbours(k)] == [0, 2]
    assert [v for v, _ in neighbours(W.IntSlider(value=4, min=1, max=4))] == [3]
    kappa.value = 1.0
    assert [p for _, p in neighbours(kappa)] == [1] and next(neighbours(kappa))[0] == pytest.approx(10 ** (1 / 8))
    assert [v for v, _ in neighbours(alpha)] == [1.0, 1e4]
    kappa.value = 50.0  # between steps 13 and 14
    assert [p for _, p in neighbours(kappa)] == [13, 14]
    assert list(neighbours(opt)) == [("Adam", "Adam")]
    assert positions(opt) == [("GD", "GD"), ("Adam", "Adam")] and positions(k) == [(1, 0), (2, 1), (3, 2), (4, 3)]
    assert [p for _, p in positions(kappa)] == list(range(25)) and positions(kappa)[8][0] == pytest.approx(10.0)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's own position()")
def test_the_pages_position_is_the_kernels(tmp_path):
    """The page's ``position`` (JavaScript, on values JavaScript computes) agrees with the kernel's."""
    kappa = log_slider(10.0, 1.0, 1e3, 8, "κ")
    k = W.IntSlider(value=2, min=1, max=4)
    opt = toggle(["GD", "Adam", "Newton"], "Adam", "optimizer")
    js = _ESM.split("export default")[0] + """
const model = a => ({get: n => a[n]});
const out = [];
for (let i = 0; i <= 16; i++) out.push(position(model({value: Math.pow(10, 0 + i * 0.125), base: 10, min: 0, step: 0.125})));
for (let v = 1; v <= 4; v++) out.push(position(model({value: v, min: 1, step: 1})));
out.push(position(model({_options_labels: ["GD", "Adam", "Newton"], index: 1})));
for (const v of [0.05, 3e-5, 123.456]) out.push(position(model({value: v, base: 10, min: -5, step: 0.125})));
console.log(JSON.stringify(out));
"""
    (tmp_path / "p.mjs").write_text(js)
    got = json.loads(subprocess.run(["node", str(tmp_path / "p.mjs")], capture_output=True, text=True,
                                    check=True, timeout=60).stdout)
    want = [position(kappa, value=10 ** (i / 8)) for i in range(17)] + [position(k, value=v) for v in range(1, 5)]
    eta = log_slider(0.05, 1e-5, 10.0, 8, "η")  # values between two steps, as a notebook cell may set them
    off = [position(eta, value=v) for v in (0.05, 3e-5, 123.456)]
    assert got == want + [position(opt)] + off == list(range(17)) + [0, 1, 2, 3] + ["Adam"] + off
    assert all(isinstance(p, str) for p in off)


def test_to_page_says_what_a_transition_cannot_draw():
    fig = go.Figure([go.Scatter(x=[0, 1], y=[0, 1], name="shown"),  # 0: in the legend
                     go.Scatter(x=[0, 1], y=[1, 0], showlegend=False),  # 1: not
                     go.Scatter(x=[0], y=[0], xaxis="x2", yaxis="y2", showlegend=False),  # 2: autoranged axes
                     go.Heatmap(z=[[1, 2]], showlegend=False)])  # 3: no transitions
    fig.update_layout(xaxis=dict(range=[0, 2]), yaxis=dict(range=[0, 2]), xaxis2=dict(domain=[0.6, 1]),
                      yaxis2=dict(anchor="x2"))
    page = to_page(fig, {0: {"y": np.array([1.0, np.nan]), "line": {"color": "red"}}, 1: {"marker": {"color": "red"}},
                         2: {"x": [1.0]}, 3: {"z": [[3, 4]]}})
    assert page["traces"] == [0, 1, 2, 3]
    assert page["data"][0] == {"y": [1.0, None], "line.color": "red"}  # plotly's dotted paths, NaN as a gap
    assert json.loads(page["style"]) == {"0": {"line.color": "red"}, "2": {"x": [1.0]}, "3": {"z": [[3, 4]]}}
    # the data of a legend trace and a colour off the legend are drawn by a transition: no style
    assert to_page(fig, {0: {"x": [1, 2], "y": [2, 3]}, 1: {"line": {"color": "blue"}}})["style"] == "{}"


def _store(wanted):
    fig = LiveFigure(data=[{"type": "scatter", "x": [0], "y": [0]}])
    page = PageFrames(fig, [W.IntSlider()], wanted)
    sent = []
    page.send = lambda content, buffers=None: sent.append(content)
    return page, sent


def _item(key, calls=None):
    def make():
        if calls is not None:
            calls.append(key)
        return {0: {"y": [float(len(key))]}}
    return (key,), make


def test_nothing_before_hello_then_the_first_now_and_the_rest_while_idle():
    calls = []
    items = [_item(k, calls) for k in ("a", "b", "c", "d")]
    page, sent = _store(lambda: iter(items))
    page.refresh()
    assert sent == [] and not page.ready  # no page yet: the explorer draws through plotly as before

    async def run():
        page.hello()
        first = [f["keys"] for m in sent for f in m["frames"]]
        for _ in range(10):
            await asyncio.sleep(0)
        return first
    assert asyncio.run(run()) == [["a"]]  # the current state at once, its neighbours on later turns of the loop
    assert [f["keys"] for m in sent for f in m["frames"]] == [["a"], ["b"], ["c"], ["d"]]
    page.refresh()
    assert len(sent) == 4 and calls == ["a", "b", "c", "d"]  # each at most once per page: nothing computed again
    page.hello()  # a page loaded anew has nothing: everything again
    assert len(sent) == 8


def test_a_newer_state_abandons_the_older_ones_neighbours_and_a_failing_frame_is_skipped():
    wanted = [[_item(k) for k in ("a", "b", "c")]]
    page, sent = _store(lambda: iter(wanted[0]))

    def broken():
        raise ValueError("the maths refuses this state")

    async def run():
        page.hello()  # sends a; b and c are queued
        wanted[0] = [_item("x"), ((("y",), broken)), _item("z")]
        page.refresh()  # the state moved on before the loop turned: x now, then z (y fails), never b or c
        for _ in range(10):
            await asyncio.sleep(0)
    asyncio.run(run())
    assert [k for m in sent for f in m["frames"] for k in f["keys"]] == ["a", "x", "z"]
    assert page.sent == {"a", "x", "y", "z"}  # y is not tried again: moving there, the explorer says why


def test_the_page_asks_for_what_it_lacks_and_forgets_on_reset():
    calls = []
    page, sent = _store(lambda: iter([_item("a", calls), _item("b", calls)]))
    page._on_page(page, {"hello": True}, [])  # the page's first message, as it arrives
    assert calls == ["a", "b"]
    page._on_page(page, {"need": "b"}, [])  # the page dropped b (or never got it): sent again
    assert calls == ["a", "b", "b"] and [f["keys"] for f in sent[-1]["frames"]] == [["b"]]
    page._on_page(page, {"need": 3}, [])  # not a key: ignored
    page.reset()  # the axes changed: the page forgets, and everything comes again
    assert sent[-3] == {"reset": True} and calls == ["a", "b", "b", "a", "b"]


def test_a_page_that_holds_the_frames_gets_no_plotly_message():
    ex = ConditioningExplorer(kappa=10.0, lr=0.1, steps=60, live=True)
    plotly = []
    ex.figure.observe(lambda c: plotly.append(c["name"]) if c["new"] else None, names=["_py2js_animate", "_py2js_update"])
    ex.set(lr=0.2)
    assert plotly == ["_py2js_animate"]  # no page has said hello: plotly's own message, as before
    sent = []
    ex.page.send = lambda content, buffers=None: sent.append(content)
    ex.page.hello()
    ex.set(lr=0.05)  # far from the neighbours sent: its frame goes first, then its own neighbours
    assert plotly == ["_py2js_animate"]
    assert sent[len(sent) - 7]["frames"][0]["keys"] == [ex.page_key(ex.state())]
    assert list(ex.figure.data[8].x) == [0.05]  # the kernel's copy follows, quietly


def test_an_axis_the_student_changes_makes_the_page_forget_its_frames():
    ex = ConditioningExplorer(kappa=10.0, lr=0.1, steps=60, live=True)
    sent = []
    ex.page.send = lambda content, buffers=None: sent.append(content)
    ex.page.hello()
    assert all(f["style"] == "{}" for m in sent for f in m["frames"])  # data on fixed axes: transitions
    ex.figure._js2py_relayout = {"relayout_data": {"autosize": True}, "source_view_id": None}  # a resize
    assert {"reset": True} not in sent
    # a double-click on the loss plot: its x axis autoranges, which a transition would not redo
    ex.figure._js2py_relayout = {"relayout_data": {"xaxis2.autorange": True}, "source_view_id": None}
    after = sent[sent.index({"reset": True}) + 1:]
    assert ex.figure.layout.xaxis2.autorange is True
    styles = [json.loads(f["style"]) for m in after for f in m["frames"]]
    assert styles and all(set(s) == {"4", "5"} for s in styles)  # the loss curve and its verdict: redrawn
