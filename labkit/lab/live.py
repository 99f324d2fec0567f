"""A live chart of the events watchers receive, fed by a background asyncio task.

:class:`LiveChart` watches the gateway's ``/consume-events`` with
:func:`labkit.client.watch` and draws, over a rolling window, each event type's
value over time, events per second, and a histogram of end-to-end latency (the
sender's ``sent_at`` to arrival here)::

    from labkit.lab.live import LiveChart
    chart = LiveChart()
    chart                        # the figure with its counters
    chart.received, chart.counts, chart.latency_percentiles()
    chart.pause(); chart.resume(); await chart.aclose()

Events are gathered as they come; the figure is redrawn in one batch at most
``fps`` times a second, however fast events arrive, from bounded buffers.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections import Counter, deque
from collections.abc import Iterable

import ipywidgets as w
import numpy as np
import plotly.graph_objects as go
import websockets
from plotly.subplots import make_subplots

from labkit.client import watch
from labkit.events import Delivered, now_ms
from labkit.settings import Settings

__all__ = ["LiveChart"]

RETRY_S = 1.0  # wait before watching again after the connection dropped


class LiveChart(w.VBox):
    """A plotly FigureWidget of the live event stream, with counters above it.

    ``received`` counts every event, ``counts`` per type; :meth:`latency_percentiles`
    summarises end-to-end latency. :meth:`pause` freezes the drawing (events
    are still counted), :meth:`resume` catches up, :meth:`stop` ends the watch
    and :meth:`aclose` also closes the widgets, leaving no task or connection.
    """

    _watcher: asyncio.Task[None] | None = None
    _drawer: asyncio.Task[None] | None = None

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        types: Iterable[str] | None = None,
        window_s: float = 60.0,
        max_points: int = 5_000,
        fps: float = 10.0,
        max_traces: int = 10,
    ) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "LiveChart runs on an asyncio event loop: create it in a Jupyter notebook or in async code"
            ) from None
        self.settings = settings
        self.types = list(types) if types else None
        self.window_s = window_s
        self.fps = fps
        self.max_traces = max_traces
        self.received = 0
        self.counts: Counter[str] = Counter()
        self.redraws = 0
        self.draw_passes = 0  # passes of the redraw loop, drawn or not: shows the loop runs while paused
        self.reconnects = 0
        self.last_error: str | None = None
        self.paused = False
        self.connected = asyncio.Event()

        self._t0 = time.monotonic()
        self._points: dict[str, deque[tuple[float, float]]] = {}
        self._max_points = max_points
        self._per_second: deque[list[float]] = deque(maxlen=int(window_s) + 2)  # [second, count]
        self._latencies: deque[float] = deque(maxlen=max_points * 2)  # the latency of the most recent events
        self._dirty = False
        self._last_draw = 0.0

        self.figure = self._make_figure()
        self.counters = w.HTML("")
        self.counters.add_class("labkit-live-counters")
        self.pause_button = w.ToggleButton(value=False, description="Pause", icon="pause")
        self.pause_button.observe(lambda change: self.pause() if change["new"] else self.resume(), "value")
        super().__init__([w.HBox([self.pause_button, self.counters]), self.figure])

        self._watcher = loop.create_task(self._watch())
        self._drawer = loop.create_task(self._draw_loop())
        self._show_counters()

    # -- the figure ------------------------------------------------------------------

    def _make_figure(self) -> go.FigureWidget:
        fig = make_subplots(
            rows=3, cols=1, vertical_spacing=0.09, row_heights=[0.45, 0.25, 0.30],
            subplot_titles=(
                "value by event type (x: seconds since the chart started)",
                "events per second",
                "end-to-end latency in ms (sent_at to arrival)",
            ),
        )
        fig.add_bar(x=[], y=[], name="events/s", marker_color="#90a4ae", showlegend=False, row=2, col=1)
        fig.add_histogram(x=[], nbinsx=40, name="latency ms", marker_color="#ffb74d", showlegend=False, row=3, col=1)
        fig.update_layout(
            width=680, height=620, margin=dict(l=50, r=20, t=40, b=40), template="plotly_white",
            legend=dict(orientation="h", y=1.08, x=0), uirevision="labkit",
        )
        return go.FigureWidget(fig)

    def _trace_for(self, kind: str, create: bool = True) -> go.Scatter | None:
        for trace in self.figure.data:
            if trace.name == kind and isinstance(trace, go.Scatter):
                return trace
        if not create or sum(isinstance(t, go.Scatter) for t in self.figure.data) >= self.max_traces:
            return None
        self.figure.add_scatter(x=[], y=[], mode="lines+markers", name=kind, marker_size=5, row=1, col=1)
        return self.figure.data[-1]

    # -- watching ----------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            try:
                async for event in watch(settings=self.settings, types=self.types, opened=self.connected):
                    self._add(event)
                self.last_error = "the consumer closed the connection"
            except (OSError, websockets.InvalidStatus, websockets.ConnectionClosed, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            self.connected.clear()
            self.reconnects += 1
            self._dirty = True
            await asyncio.sleep(RETRY_S)

    def _add(self, event: Delivered) -> None:
        arrived = now_ms()
        now = time.monotonic() - self._t0
        self.received += 1
        self.counts[event.type] += 1
        points = self._points.get(event.type)
        if points is None:
            points = self._points[event.type] = deque(maxlen=self._max_points)
        points.append((now, float(event.value)))
        second = float(int(now))
        if self._per_second and self._per_second[-1][0] == second:
            self._per_second[-1][1] += 1
        else:
            self._per_second.append([second, 1])
        if isinstance(event.sent_at, (int, float)):
            self._latencies.append(arrived - event.sent_at)
        self._dirty = True

    # -- drawing -------------------------------------------------------------------------

    async def _draw_loop(self) -> None:
        while True:
            await asyncio.sleep(1 / self.fps)
            stale = time.monotonic() - self._last_draw > 1.0 and self.received
            if not self.paused and (self._dirty or stale):
                self._draw()
            self.draw_passes += 1

    def _draw(self) -> None:
        self._dirty = False
        self._last_draw = time.monotonic()
        now = self._last_draw - self._t0
        start = max(0.0, now - self.window_s)
        for kind, points in list(self._points.items()):
            while points and points[0][0] < start:
                points.popleft()
            if not points and self._trace_for(kind, create=False) is None:
                del self._points[kind]  # a type not drawn and not seen for a whole window
        traces = {kind: self._trace_for(kind) for kind in self._points}
        seconds = np.array([s for s, _ in self._per_second], dtype=float)
        per_second = np.array([c for _, c in self._per_second], dtype=float)
        keep = seconds >= start
        with self.figure.batch_update():
            for kind, trace in traces.items():
                if trace is None:
                    continue
                xy = np.array(self._points[kind], dtype=float).reshape(-1, 2)
                trace.x, trace.y = xy[:, 0], xy[:, 1]
            self.figure.data[0].x, self.figure.data[0].y = seconds[keep], per_second[keep]
            self.figure.data[1].x = np.array(self._latencies, dtype=float)
            self.figure.layout.xaxis.range = [start, max(now, 10.0)]
            self.figure.layout.xaxis2.range = [start - 0.5, max(now, 10.0) + 0.5]
        self.redraws += 1
        self._show_counters()

    def events_per_second(self) -> float:
        """Events that arrived during the last complete second."""
        last = float(int(time.monotonic() - self._t0)) - 1
        return next((count for second, count in reversed(self._per_second) if second == last), 0.0)

    def latency_percentiles(self) -> dict[str, float]:
        """p50, p90, p99 and max of end-to-end latency in ms over the recent events (empty if none)."""
        if not self._latencies:
            return {}
        values = np.array(self._latencies, dtype=float)
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(values.max())}

    def _show_counters(self) -> None:
        latency = self.latency_percentiles()
        lat = f"p50 <b>{latency['p50']:.1f}</b> ms · p99 <b>{latency['p99']:.1f}</b> ms" if latency else "no latency yet"
        if self.connected.is_set():
            state = "<span style='color:#2e7d32'>watching</span>"
        else:
            state = f"<span style='color:#c62828'>not connected</span> {html.escape(self.last_error or '')}"
        if self.paused:
            state += " · paused"
        per_type = ", ".join(f"{html.escape(k)}: {v}" for k, v in self.counts.most_common(5))
        self.counters.value = (
            f"<span class='labkit-received'>received <b>{self.received}</b></span> · "
            f"<b>{self.events_per_second():g}</b> ev/s · {lat}<br>{state}"
            + (f" · {per_type}" if per_type else "")
        )

    # -- control -------------------------------------------------------------------------

    async def ready(self, timeout: float = 10.0) -> None:
        """Return once the watcher is connected, so nothing sent from now on is missed."""
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def wait_for(self, count: int, kind: str | None = None, timeout: float = 30.0) -> None:
        """Return once ``count`` events (of type ``kind``, if given) were received; TimeoutError otherwise."""

        async def enough() -> None:
            while (self.counts[kind] if kind else self.received) < count:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(enough(), timeout)
        if not self.paused:
            self._draw()

    def pause(self) -> None:
        """Freeze the figure and counters; events are still received and counted."""
        self.paused = True
        self.pause_button.value = True
        self._show_counters()

    def resume(self) -> None:
        """Draw again, with everything received while paused."""
        self.paused = False
        self.pause_button.value = False
        self._draw()

    def _tasks(self) -> list[asyncio.Task[None]]:
        return [task for task in (self._watcher, self._drawer) if task is not None]

    @property
    def running(self) -> bool:
        return any(not task.done() for task in self._tasks())

    def stop(self) -> None:
        """End the watch and the redraws; the figure keeps its last picture."""
        for task in self._tasks():
            task.cancel()
        if hasattr(self, "connected"):
            self.connected.clear()

    def close(self) -> None:
        """Stop, and close the figure and counters."""
        self.stop()
        for child in self.children:
            for widget in getattr(child, "children", ()):
                widget.close()
            child.close()
        super().close()

    async def aclose(self) -> None:
        """Close, and return once the watcher's connection is closed and no task is left."""
        self.close()
        await asyncio.gather(*self._tasks(), return_exceptions=True)
