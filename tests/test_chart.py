"""The chart widgets without a browser: what they send the views, and when.

:class:`StreamChart` keeps the recent points in the kernel, answers a view's hello with a
full snapshot and its request for plotly.js with the plotly package's own file, and sends
numbered deltas that only append. :class:`FigureView` holds any figure's JSON and sends
it as a snapshot on hello and to every view when a new figure is assigned. The browser side
is tested in ``test_browser.py`` and ``test_browser_figure.py``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pytest

from labkit.lab.chart import DELTAS_IN_FLIGHT, PLOTLY_JS, FigureView, PlotlyView, StreamChart


def recording(chart: PlotlyView) -> list[tuple[dict[str, Any], list[bytes]]]:
    sent: list[tuple[dict[str, Any], list[bytes]]] = []
    chart.send = lambda content, buffers=None: sent.append((content, list(buffers or [])))
    return sent


def test_deltas_append_numbered_points_and_break_lines_across_gaps():
    chart = StreamChart({"title": {"text": "t"}}, [{"type": "bar", "x": [], "y": []}], max_points=4, gap=5.0)
    sent = recording(chart)
    chart.extend({"a": [(0.0, 1.0), (1.0, 2.0)]}, {0: {"x": [0], "y": [2]}}, {"xaxis.range": [0, 10]})
    chart._on_view_message(chart, {"type": "ack", "seq": 1, "view": "v1"}, None)  # the view drew it: the next may go
    chart.extend({"a": [(9.0, 3.0)], "b": [(9.5, 7.0)]}, {}, {})
    first, second = (content for content, _ in sent)
    assert (first["type"], first["seq"], second["seq"]) == ("delta", 1, 2)
    assert first["traces"][0]["name"] == "a" and first["points"] == {"1": ([0.0, 1.0], [1.0, 2.0])}
    assert first["restyle"] == {"data": {"x": [[0]], "y": [[2]]}, "layout": {"xaxis.range": [0, 10]}, "traces": [0]}
    # 8 s without an "a": a null point between, so no line is drawn across the gap
    assert second["points"]["1"] == ([5.0, 9.0], [None, 3.0]) and [t["name"] for t in second["traces"]] == ["b"]
    line = chart.data[0]
    assert line.x == [0.0, 1.0, 5.0, 9.0] and line.y == [1.0, 2.0, None, 3.0]  # the kernel's copy, max_points long
    assert chart.plot_layout["xaxis"] == {"range": [0, 10]}


def test_a_view_gets_a_snapshot_of_everything_and_plotly_js_on_request():
    chart = StreamChart({}, [], max_points=100)
    sent = recording(chart)
    chart.extend({"a": [(float(i), float(i)) for i in range(50)]}, {}, {})
    chart.trim(10.0)
    chart._on_view_message(chart, {"type": "hello", "view": "v1"}, [])
    snapshot = sent[-1][0]
    assert (snapshot["type"], snapshot["view"], snapshot["seq"]) == ("snapshot", "v1", 1)
    assert snapshot["traces"][0]["x"] == [float(i) for i in range(10, 50)]
    chart._on_view_message(chart, {"type": "need-plotly", "view": "v1"}, [])
    content, buffers = sent[-1]
    assert content["type"] == "plotly-js" and buffers == [PLOTLY_JS.read_bytes()]


def test_a_resync_sends_every_view_a_snapshot():
    chart = StreamChart({}, [])
    sent = recording(chart)
    chart.extend({"a": [(0.0, 1.0)]}, {}, {}, resync=True)
    assert sent[-1][0]["type"] == "snapshot" and sent[-1][0]["view"] == "*" and sent[-1][0]["seq"] == 1


def test_a_figure_view_sends_the_figure_on_hello_and_a_new_figure_to_every_view():
    view = FigureView(go.Figure(go.Scatter(x=np.arange(3), y=np.array([1.0, 4.0, 9.0]), name="squares"),
                                {"title": {"text": "t"}}))
    sent = recording(view)
    view._on_view_message(view, {"type": "hello", "view": "v1"}, [])
    snapshot = sent[-1][0]
    assert (snapshot["type"], snapshot["view"], snapshot["seq"]) == ("snapshot", "v1", 0)
    assert snapshot["traces"][0]["name"] == "squares" and snapshot["layout"]["title"]["text"] == "t"
    json.dumps(snapshot)  # numpy arrays arrive as plotly's JSON (typed arrays), which the comm can send
    view._on_view_message(view, {"type": "need-plotly", "view": "v1"}, [])
    assert sent[-1][0]["type"] == "plotly-js" and sent[-1][1] == [PLOTLY_JS.read_bytes()]
    view.figure = {"data": [{"type": "bar", "x": [1, 2], "y": [3, 4]}], "layout": {}}
    redraw = sent[-1][0]
    assert (redraw["type"], redraw["view"], redraw["seq"]) == ("snapshot", "*", 1)
    assert redraw["traces"] == [{"type": "bar", "x": [1, 2], "y": [3, 4]}] == view.figure["data"]


def test_a_figure_view_of_something_else_says_what_it_needs():
    with pytest.raises(TypeError, match=re.escape("a go.Figure, or a dict with 'data' and 'layout'")):
        FigureView([1, 2, 3])


def test_a_few_deltas_in_flight_the_rest_merged_until_a_view_acknowledges():
    chart = StreamChart({}, [{"type": "bar", "x": [], "y": []}], max_points=3)
    sent = recording(chart)

    def extend(i: int) -> None:
        chart.extend({"a": [(float(i), float(i))]}, {0: {"y": [i]}}, {"xaxis.range": [0, i]})

    for i in range(DELTAS_IN_FLIGHT):  # the window: these go at once
        extend(i)
    assert [c["seq"] for c, _ in sent] == [1, 2, 3] and chart.in_flight == DELTAS_IN_FLIGHT == 3
    for i in range(3, 8):  # the page has drawn none of them: these wait in the kernel, merged, bounded
        extend(i)
    assert len(sent) == 3 and chart.coalesced == 4
    chart._on_view_message(chart, {"type": "ack", "seq": 1, "view": "v1"}, None)  # one drawn: one more may go
    assert [c["seq"] for c, _ in sent] == [1, 2, 3, 4] and chart.in_flight == 3
    merged = sent[-1][0]
    assert merged["points"]["1"] == ([5.0, 6.0, 7.0], [5.0, 6.0, 7.0])  # the newest max_points only
    assert merged["restyle"]["data"] == {"y": [[7]]} and merged["restyle"]["layout"] == {"xaxis.range": [0, 7]}
    chart._on_view_message(chart, {"type": "ack", "seq": 1, "view": "v2"}, None)  # an old ack frees nothing
    extend(8)
    assert len(sent) == 4
    chart._on_view_message(chart, {"type": "ack", "seq": 4, "view": "v1"}, None)  # drawn up to 4: all of them
    assert [c["seq"] for c, _ in sent] == [1, 2, 3, 4, 5] and chart.in_flight == 1
    for i in range(9, 12):
        extend(i)
    assert len(sent) == 7 and chart.in_flight == 3
    chart._on_view_message(chart, {"type": "hello", "view": "v3"}, None)  # a new view: pending first, then its snapshot
    assert [c["type"] for c, _ in sent[-2:]] == ["delta", "snapshot"] and sent[-1][0]["seq"] == sent[-2][0]["seq"] == 8
