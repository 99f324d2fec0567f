"""plotly.js charts in the notebook that the kernel draws from snapshots: a live one fed deltas, and any figure.

:class:`StreamChart` is a small anywidget (its front end is ``chart.js``). The kernel
holds the authoritative recent points; each view asks for a full snapshot when it
renders (and again if it missed a delta), then, as deltas arrive, appends their points
to its own copy of the figure and draws it with one ``Plotly.react`` per animation
frame, instead of the kernel resending whole traces. plotly.js
itself comes from the plotly package's bundled ``plotly.min.js``, sent once per page on
the view's request, so the chart works offline and its ESM loads in milliseconds.
:class:`FigureView` shows any plotly figure through the same front end: the kernel holds
the figure's JSON, each view asks for it as a snapshot, and a new ``figure`` redraws them.

Why not plotly's FigureWidget: its comm opens with an empty figure and the figure follows
in later messages; anywidget 0.11 drops every message for a widget whose 5 MB ESM takes
more than 2 s to load, and FigureWidget's view draws the model once and never again, so
a slow load left a blank default canvas for good. (A plain ``go.Figure`` shows nothing in a
JupyterLab without plotly's mimetype renderer extension.)
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import anywidget
import plotly
import traitlets
from plotly.utils import PlotlyJSONEncoder

__all__ = ["DELTAS_IN_FLIGHT", "FigureView", "StreamChart", "Trace"]

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
CONFIG = {"displaylogo": False, "responsive": True}
# A delta not acknowledged by any view within this long no longer holds the next one back (no view is open,
# or it was closed): the kernel then sends at most DELTAS_IN_FLIGHT deltas per ACK_TIMEOUT_S, so nothing piles up.
ACK_TIMEOUT_S = 2.0
# Deltas sent and not yet acknowledged, at most: a window, not one at a time, because on a busy 2-core machine the
# round trip kernel -> Jupyter server -> page -> kernel took 0.3 to 0.7 s while the page drew a frame in 60 to 110 ms
# (2026-12-04): one delta at a time capped the chart at 1.5 to 3 frames a second. The page draws what arrives
# between two animation frames at once, so a larger window only makes the frames larger.
DELTAS_IN_FLIGHT = 3


@cache
def plotly_js() -> bytes:
    return PLOTLY_JS.read_bytes()


class Trace:
    """One line of points as the views have it: ``x``, ``y`` (``None`` in ``y`` breaks the line)."""

    def __init__(self, name: str, max_points: int) -> None:
        self.name = name
        self.points: deque[tuple[float, float | None]] = deque(maxlen=max_points)

    @property
    def x(self) -> list[float]:
        return [x for x, _ in self.points]

    @property
    def y(self) -> list[float | None]:
        return [y for _, y in self.points]


class PlotlyView(anywidget.AnyWidget):
    """The kernel side of a ``chart.js`` view: plotly.js when a view lacks it, a snapshot when one says hello."""

    _esm = Path(__file__).with_name("chart.js")

    def __init__(self) -> None:
        super().__init__()
        self.on_msg(self._on_view_message)

    def snapshot(self) -> dict[str, Any]:
        """Everything a view needs to draw from nothing: ``type``, ``seq``, ``traces``, ``layout``, ``config``."""
        raise NotImplementedError

    def _flush(self, force: bool = False) -> None:
        """Nothing to send by default (see StreamChart)."""

    def _acked(self, seq: Any) -> None:
        """A view drew up to ``seq`` (see StreamChart)."""

    def _on_view_message(self, _widget: object, content: Mapping[str, Any], _buffers: object) -> None:
        kind, view = content.get("type"), content.get("view")
        if kind == "hello":
            self._flush(force=True)  # what is pending goes to every view first, so the snapshot's seq covers it
            self.send({**self.snapshot(), "view": view})
        elif kind == "ack":
            self._acked(content.get("seq"))
        elif kind == "need-plotly":
            self.send({"type": "plotly-js", "view": view}, [plotly_js()])


class StreamChart(PlotlyView):
    """A plotly.js figure: ``fixed`` traces set whole, then one line per name given to :meth:`extend`.

    ``layout`` is a plotly layout (JSON); ``line`` the style of each new line; a line is
    broken (a ``None`` point) where two points are more than ``gap`` apart in x.
    ``paused`` (synced with the views) freezes their drawing at once, in the page, before
    the kernel hears of it: link a Pause button to it with ``ipywidgets.jsdlink``.
    """

    paused = traitlets.Bool(False).tag(sync=True)

    def __init__(
        self,
        layout: Mapping[str, Any],
        fixed: Iterable[Mapping[str, Any]] = (),
        *,
        line: Mapping[str, Any] | None = None,
        max_points: int = 5_000,
        gap: float = math.inf,
    ) -> None:
        super().__init__()
        self.plot_layout = dict(layout)
        self.fixed = [dict(trace) for trace in fixed]
        self.line = dict(line or {"type": "scatter", "mode": "lines+markers"})
        self.max_points = max_points
        self.gap = gap
        self.lines: dict[str, Trace] = {}
        self.seq = 0  # deltas sent; a view that sees a hole in the numbers asks for a snapshot
        # Flow control: at most DELTAS_IN_FLIGHT deltas are in flight to the views; what comes meanwhile is merged
        # into ``_pending`` (bounded: max_points per line) and sent when a view acknowledges having drawn one.
        self._pending: dict[str, Any] | None = None
        self._sent: deque[tuple[int, float]] = deque()  # (seq, when sent) of the deltas not acknowledged yet
        self.acks = 0  # deltas a view said it drew
        self.coalesced = 0  # extends merged into a later delta instead of sent on their own

    @property
    def data(self) -> list[Trace]:
        """The lines, as drawn."""
        return list(self.lines.values())

    def _index(self, name: str) -> int:
        return len(self.fixed) + list(self.lines).index(name)

    def _line_json(self, trace: Trace) -> dict[str, Any]:
        return {**self.line, "name": trace.name, "x": trace.x, "y": trace.y}

    def snapshot(self) -> dict[str, Any]:
        """Everything a view needs to draw the chart from nothing."""
        return {
            "type": "snapshot",
            "seq": self.seq,
            "traces": self.fixed + [self._line_json(trace) for trace in self.lines.values()],
            "layout": self.plot_layout,
            "config": CONFIG,
        }

    def extend(
        self,
        points: Mapping[str, Iterable[tuple[float, float]]],
        fixed: Mapping[int, Mapping[str, Any]],
        layout: Mapping[str, Any],
        *,
        resync: bool = False,
    ) -> None:
        """Append ``points`` to their lines, set the ``fixed`` traces' attributes and ``layout``; tell the views.

        With ``resync`` every view redraws from a snapshot instead (after points were dropped).
        """
        new_traces: list[dict[str, Any]] = []
        sent: dict[str, tuple[list[float], list[float | None]]] = {}  # keyed by the trace's index, as JSON keys are
        for name, batch in points.items():
            trace = self.lines.get(name)
            if trace is None:
                trace = self.lines[name] = Trace(name, self.max_points)
                new_traces.append({**self.line, "name": name, "x": [], "y": []})
            xs, ys = sent.setdefault(str(self._index(name)), ([], []))
            for x, y in batch:
                if trace.points and x - trace.points[-1][0] > self.gap:
                    brk = ((x + trace.points[-1][0]) / 2, None)  # plotly breaks a line at a null
                    trace.points.append(brk)
                    xs.append(brk[0])
                    ys.append(None)
                trace.points.append((x, y))
                xs.append(x)
                ys.append(y)
        for index, attributes in fixed.items():
            self.fixed[index].update(attributes)
        self.plot_layout = _relayout(self.plot_layout, layout)
        if resync:
            self.seq += 1
            self._pending = None
            self._sent.append((self.seq, time.monotonic()))
            self.send({**self.snapshot(), "view": "*"})
            return
        self._merge(new_traces, {index: xy for index, xy in sent.items() if xy[0]}, fixed, layout)
        self._flush()

    def _merge(self, traces: list[dict[str, Any]], points: dict[str, tuple[list, list]],
               fixed: Mapping[int, Mapping[str, Any]], layout: Mapping[str, Any]) -> None:
        """Add one extend to what is waiting to be sent.

        New traces and points are appended; attributes and layout are replaced.
        """
        if self._pending is None:
            self._pending = {"traces": [], "points": {}, "fixed": {}, "layout": {}}
        else:
            self.coalesced += 1
        pending = self._pending
        pending["traces"] += traces
        for index, (xs, ys) in points.items():
            px, py = pending["points"].setdefault(index, ([], []))
            px += xs
            py += ys
            del px[: -self.max_points], py[: -self.max_points]  # a view keeps no more than this anyway
        for trace_index, attributes in fixed.items():
            pending["fixed"].setdefault(trace_index, {}).update(attributes)
        pending["layout"].update(layout)

    def _flush(self, force: bool = False) -> None:
        """Send what is pending as one delta, unless DELTAS_IN_FLIGHT are in flight (and not too old)."""
        if self._pending is None or (self.in_flight >= DELTAS_IN_FLIGHT and not force):
            return
        pending, self._pending = self._pending, None
        fixed = pending["fixed"]
        names = sorted({key for attributes in fixed.values() for key in attributes})
        self.seq += 1
        self._sent.append((self.seq, time.monotonic()))
        self.send({
            "type": "delta",
            "seq": self.seq,
            "traces": pending["traces"],
            "points": pending["points"],
            "max_points": self.max_points,
            "restyle": {
                "data": {key: [fixed[i].get(key) for i in fixed] for key in names},
                "layout": pending["layout"],
                "traces": list(fixed),
            },
        })

    def _acked(self, seq: Any) -> None:
        if not isinstance(seq, int) or not self._sent or seq < self._sent[0][0]:
            return  # an old ack (another view's, or one after a timeout) frees nothing
        while self._sent and self._sent[0][0] <= seq:  # a view drew up to seq: those deltas are done
            self._sent.popleft()
        self.acks += 1
        self._flush()

    @property
    def in_flight(self) -> int:
        """Deltas sent that no view has said it drew yet (each counted for ACK_TIMEOUT_S at most)."""
        while self._sent and time.monotonic() - self._sent[0][1] >= ACK_TIMEOUT_S:
            self._sent.popleft()
        return len(self._sent)

    def trim(self, before: float) -> None:
        """Forget points left of ``before`` (the views keep them, off screen, up to ``max_points``)."""
        for trace in self.lines.values():
            while trace.points and trace.points[0][0] < before:
                trace.points.popleft()



class FigureView(PlotlyView):
    """Any plotly figure (a ``go.Figure`` or its JSON dict), drawn by plotly.js in every view of it.

    Each view asks for the figure when it renders, so a slow load or a page reload still
    draws it; assigning ``figure`` redraws every view. ``figure`` reads back the JSON drawn.
    """

    def __init__(self, figure: Any) -> None:
        super().__init__()
        self.seq = 0  # figures assigned after the first
        self._figure = figure_json(figure)

    @property
    def figure(self) -> dict[str, Any]:
        return self._figure

    @figure.setter
    def figure(self, figure: Any) -> None:
        self._figure = figure_json(figure)
        self.seq += 1
        self.send({**self.snapshot(), "view": "*"})

    def snapshot(self) -> dict[str, Any]:
        return {
            "type": "snapshot",
            "seq": self.seq,
            "traces": self._figure["data"],
            "layout": self._figure["layout"],
            "config": CONFIG,
        }


def figure_json(figure: Any) -> dict[str, Any]:
    """``figure``'s ``data`` and ``layout`` as plain JSON (numpy arrays encoded as plotly encodes them)."""
    if hasattr(figure, "to_plotly_json"):
        figure = figure.to_plotly_json()
    if not isinstance(figure, Mapping):
        raise TypeError(
            f"FigureView shows a plotly figure (a go.Figure, or a dict with 'data' and 'layout'), "
            f"not a value of type {type(figure).__name__}: build one with plotly.graph_objects or plotly.express"
        )
    parts = {"data": figure.get("data", []), "layout": figure.get("layout", {})}
    plain = json.loads(json.dumps(parts, cls=PlotlyJSONEncoder))
    return {"data": list(plain["data"]), "layout": dict(plain["layout"])}


def _relayout(layout: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``layout`` with plotly's dotted ``{"xaxis.range": [...]}`` changes applied."""
    result = dict(layout)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = result
        for key in parents:
            node[key] = dict(node.get(key) or {})
            node = node[key]
        node[leaf] = value
    return result
