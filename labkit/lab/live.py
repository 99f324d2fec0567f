"""A live chart of the events watchers receive, fed by a background asyncio task.

:class:`LiveChart` watches the gateway's ``/consume-events`` with
:func:`labkit.client.watch` and draws, over a rolling window, each event type's
value over time, events per second, and a histogram of end-to-end latency (the
sender's ``sent_at`` to arrival here)::

    from labkit.lab.live import LiveChart
    chart = LiveChart()
    chart                        # the figure with its counters and a Pause button
    chart.received, chart.counts, chart.latency_percentiles()
    chart.pause(); chart.resume(); await chart.aclose()

Events are gathered as they come; the figure (a :class:`~labkit.lab.chart.StreamChart`)
gets only the new points, in one delta at most ``fps`` times a second, however fast
events arrive. Creating a chart in a notebook cell closes the chart that cell made before.
"""

from __future__ import annotations

import asyncio
import html
import math
import time
import weakref
from collections import Counter, deque
from collections.abc import Iterable

import ipywidgets as w
import numpy as np
import websockets
from plotly.subplots import make_subplots

from labkit.client import LogRestart, Watch
from labkit.events import Delivered, now_ms
from labkit.lab.chart import StreamChart
from labkit.lab.palette import BLUE, GREEN, RED
from labkit.lab.tasks import cancel, close_tree
from labkit.percentiles import binned_percentiles, percentiles
from labkit.settings import Settings
from labkit.waiting import until

__all__ = ["LiveChart"]

RETRY_S = 1.0  # wait before watching again after the connection dropped
STALE_S = 1.0  # move the window along at least this often, events or not
GAP_S = 5.0  # a line is broken where one type's events are further apart than this
LATENCY_BINS = 40
# Whole-run latency: a histogram over log-spaced bins from 0.01 ms to 1,000 s (about 1% wide), bounded in memory.
RUN_BINS = np.logspace(-2, 6, 1601)
# Markers drawn per line (plotly's marker.maxdisplayed, spread over the window); the line itself joins every point.
# Markers are what a frame costs in the page: in Chromium on a busy 2-core machine (2026-12-04) one Plotly.react of
# this figure took 15 to 31 ms with no marker, 55 to 95 ms with 600, and 150 to 250 ms with one per point (5,000).
MARKERS = 200
BARS, LATENCY = 0, 1  # the fixed traces: events per second, latency histogram


def _cell_id() -> str | None:
    """The notebook cell being run (JupyterLab and nbclient send its id), if any."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell.kernel.get_parent("shell")["metadata"].get("cellId") if shell and shell.kernel else None
    except Exception:  # no kernel, or an older one: then no cell owns the chart
        return None


class LiveChart(w.VBox):
    """A plotly.js chart of the live event stream, with a Pause button and counters above it.

    ``received`` counts every event, ``counts`` per type; :meth:`latency_percentiles`
    summarises end-to-end latency. :meth:`pause` freezes the drawing (events are
    still counted, and the counters stay live), :meth:`resume` catches up,
    :meth:`stop` ends the watch and :meth:`aclose` also closes the widgets, leaving
    no task or connection. ``redraws`` counts the updates sent to the figure,
    ``draw_passes`` the passes of the redraw loop (drawn or not).
    """

    _watcher: asyncio.Task[None] | None = None
    _drawer: asyncio.Task[None] | None = None
    _by_cell: weakref.WeakValueDictionary[str, LiveChart] = weakref.WeakValueDictionary()

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
        cell = _cell_id()
        if cell is not None:
            previous = LiveChart._by_cell.get(cell)
            if previous is not None:
                previous.close()  # the cell runs again: its old chart stops watching
            LiveChart._by_cell[cell] = self
        self.settings = settings
        self.types = list(types) if types else None
        self.window_s = window_s
        self.fps = fps
        self.max_traces = max_traces
        self.received = 0
        self.counts: Counter[str] = Counter()
        self.redraws = 0
        self.draw_passes = 0
        self.reconnects = 0
        self._watching: Watch | None = None
        self._restarts_before: list[LogRestart] = []
        self._gaps_before: list[str] = []
        self.last_error: str | None = None
        self.paused = False
        self.stopped = False
        self.connected = asyncio.Event()
        self.stream: Watch | None = None  # its recovered and reason say how the last resume went
        self.marks: list[tuple[str, float, float]] = []  # (label, start, end) on the time axis

        self._t0 = time.monotonic()
        self._max_points = max_points
        self._new: dict[str, list[tuple[float, float]]] = {}  # points not sent to the figure yet
        self._dropped = False  # some were dropped while paused: redraw from a snapshot
        self._per_second: deque[list[float]] = deque(maxlen=int(window_s) + 2)  # [second, count]
        self._latencies: deque[tuple[float, float]] = deque(maxlen=100_000)  # (arrival, latency ms), recent
        self._run_counts = np.zeros(len(RUN_BINS) + 1, dtype=np.int64)  # every latency since the chart started
        self._run_max = 0.0
        # The value panel draws at most this many points a second per type, so it covers the whole window at any
        # rate (max_points over window_s), as the bars do; the counters count every event. The points drawn are
        # spread: one at most every 1/points_per_second s (the first N of each second drew a clump a second).
        self.points_per_second = max(1, int(max_points / window_s))
        self._last_drawn: dict[str, float] = {}  # per type: when its last drawn point arrived (chart seconds)
        self.thinned = 0  # events counted but not drawn as points
        self._dirty = False
        self._last_draw = 0.0
        self._shown = ""

        self.figure = self._make_figure()
        self.counters = w.HTML("")
        self.counters.add_class("labkit-live-counters")
        self.pause_button = w.ToggleButton(value=False, description="Pause", icon="pause", tooltip="freeze the chart")
        self.pause_button.add_class("labkit-pause")
        self.pause_button.observe(lambda change: self.pause() if change["new"] else self.resume(), "value")
        # A click freezes the page's drawing at once, in the browser; the kernel stops sending when it hears of it.
        # One way only (button to figure): pause() and resume() set the button, and a two-way link echoed stale values.
        self._pause_link = w.jsdlink((self.pause_button, "value"), (self.figure, "paused"))
        super().__init__([w.HBox([self.pause_button, self.counters]), self.figure])
        self.add_class("labkit-live")

        self._watcher = loop.create_task(self._watch())
        self._drawer = loop.create_task(self._draw_loop())
        self._show_counters()

    # -- the figure ------------------------------------------------------------------

    def _make_figure(self) -> StreamChart:
        fig = make_subplots(
            rows=3, cols=1, vertical_spacing=0.15, row_heights=[0.45, 0.25, 0.30],
            subplot_titles=("value by event type", "events per second", "end-to-end latency (sent_at to arrival)"),
        )
        fig.update_layout(
            width=680, height=700, margin=dict(l=60, r=20, t=40, b=50), template="plotly_white",
            legend=dict(orientation="h", y=1.1, x=0), uirevision="labkit",
        )
        fig.update_xaxes(title_text="seconds since the chart started", row=1, col=1)
        fig.update_yaxes(title_text="value", row=1, col=1)
        fig.update_xaxes(title_text="seconds since the chart started", row=2, col=1)
        fig.update_yaxes(title_text="events/s", rangemode="tozero", row=2, col=1)
        fig.update_xaxes(title_text="latency (ms)", row=3, col=1)
        fig.update_yaxes(title_text="events", rangemode="tozero", row=3, col=1)
        bars = dict(type="bar", x=[], y=[], name="events/s", marker=dict(color="#90a4ae"), showlegend=False,
                    xaxis="x2", yaxis="y2")
        latency = dict(type="bar", x=[], y=[], name="latency ms", marker=dict(color="#ffb74d"), showlegend=False,
                       xaxis="x3", yaxis="y3")
        return StreamChart(
            fig.layout.to_plotly_json(), [bars, latency],
            line=dict(type="scatter", mode="lines+markers", marker=dict(size=5, maxdisplayed=MARKERS),
                      xaxis="x", yaxis="y"),
            max_points=self._max_points, gap=GAP_S,
        )

    # -- watching ----------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            try:
                self.stream = self._watching = Watch(settings=self.settings, types=self.types, opened=self.connected,
                                                     report_gap=False)
                async for event in self.stream:
                    self._add(event)
                self.last_error = "the consumer closed the connection"
            except (OSError, websockets.InvalidStatus, websockets.ConnectionClosed, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            if self._watching is not None:
                self._restarts_before += self._watching.restarts
                self._gaps_before += self._watching.gaps
            self._watching = None
            self.connected.clear()
            self.reconnects += 1
            self._dirty = True
            await asyncio.sleep(RETRY_S)

    def _add(self, event: Delivered) -> None:
        arrived = now_ms()
        now = time.monotonic() - self._t0
        self.received += 1
        self.counts[event.type] += 1
        second = float(int(now))
        if now - self._last_drawn.get(event.type, -math.inf) < 1 / self.points_per_second:
            self.thinned += 1
        elif (event.type in self._new or event.type in self.figure.lines
              or len(self.figure.lines) + len(self._new) < self.max_traces):
            self._last_drawn[event.type] = now
            new = self._new.setdefault(event.type, [])
            new.append((now, float(event.value)))
            if len(new) > 2 * self._max_points:  # paused for long: keep the newest
                del new[: -self._max_points]
                self._dropped = True
        if self._per_second and self._per_second[-1][0] == second:
            self._per_second[-1][1] += 1
        else:
            self._per_second.append([second, 1])
        if isinstance(event.sent_at, (int, float)):
            latency = arrived - event.sent_at
            self._latencies.append((now, latency))
            self._run_counts[np.searchsorted(RUN_BINS, latency)] += 1
            self._run_max = max(self._run_max, latency)
        self._dirty = True

    # -- drawing -------------------------------------------------------------------------

    async def _draw_loop(self) -> None:
        while True:
            await asyncio.sleep(1 / self.fps)
            stale = time.monotonic() - self._last_draw > STALE_S and self.received
            if not self.paused and (self._dirty or stale):
                self._draw()
            self._show_counters()  # live while paused too
            self.draw_passes += 1

    def _draw(self) -> None:
        self._dirty = False
        self._last_draw = time.monotonic()
        now = self._last_draw - self._t0
        start = max(0.0, now - self.window_s)
        end = max(now, 10.0) + 0.04 * self.window_s  # room at the right edge for the next points
        seconds = [s for s, _ in self._per_second if s >= start]
        per_second = [c for s, c in self._per_second if s >= start]
        recent = self._recent_latencies()
        if len(recent):
            counts, edges = np.histogram(recent, bins=LATENCY_BINS)
            centers, width = ((edges[:-1] + edges[1:]) / 2).tolist(), float(edges[1] - edges[0]) or 1.0
        else:
            counts, centers, width = np.zeros(0), [], 1.0
        new, self._new = self._new, {}
        self.figure.extend(
            new,
            {BARS: {"x": seconds, "y": per_second, "width": None},
             LATENCY: {"x": centers, "y": counts.tolist(), "width": [width] * len(centers)}},
            {"xaxis.range": [start, end], "xaxis2.range": [start - 0.5, end]},
            resync=self._dropped,
        )
        self._dropped = False
        self.figure.trim(start)
        self.redraws += 1

    def events_per_second(self) -> float:
        """Events that arrived during the last complete second."""
        last = float(int(time.monotonic() - self._t0)) - 1
        return next((count for second, count in reversed(self._per_second) if second == last), 0.0)

    def _recent_latencies(self) -> np.ndarray:
        start = self.now() - self.window_s
        return np.array([latency for at, latency in self._latencies if at >= start], dtype=float)

    def latency_percentiles(self) -> dict[str, float]:
        """p50, p90, p99 and max of end-to-end latency in ms over the window's events (empty if none)."""
        return percentiles(self._recent_latencies())

    def run_percentiles(self) -> dict[str, float]:
        """p50, p90, p99 and max over every event since the chart started (to about 1%), so a past stall shows."""
        return binned_percentiles(self._run_counts, np.append(RUN_BINS, self._run_max), self._run_max)

    @property
    def gaps(self) -> list[str]:
        """Why each resume since the chart started had a gap (events it could not get back), oldest first."""
        watching = getattr(self, "_watching", None)
        return [*self._gaps_before, *(watching.gaps if watching is not None else [])]

    @property
    def restarts(self) -> list[LogRestart]:
        """Each time the broker's log lost its tail while this chart watched (see :class:`labkit.client.Watch`)."""
        watching = getattr(self, "_watching", None)
        return [*self._restarts_before, *(watching.restarts if watching is not None else [])]

    def _show_counters(self) -> None:
        latency, run = self.latency_percentiles(), self.run_percentiles()
        lat = (f"last {self.window_s:g} s: p50 <b>{latency['p50']:.1f}</b> ms · p99 <b>{latency['p99']:.1f}</b> ms"
               f" · <span class='labkit-run-latency'>whole run: p50 {run['p50']:.1f}"
               f" · p99 <b>{run['p99']:.1f}</b> ms</span>"
               if latency and run else "no latency yet")
        if self.stopped:
            state = "<b>stopped</b>: the picture is frozen as it was"
        elif self.connected.is_set():
            state = f"<span style='color:{GREEN}'>watching</span>"
        else:
            state = f"<span style='color:{RED}'>not connected</span> {html.escape(self.last_error or '')}"
        gaps = self.gaps
        if gaps or (self.stream is not None and self.stream.recovered is not None):
            # A later whole resume does not hide an earlier gap.
            news = (f"with a gap: {gaps[-1]}" + (f" ({len(gaps)} resumes had gaps)" if len(gaps) > 1 else "")
                    if gaps else "nothing missed")
            state += f" · <span class='labkit-resumed' style='color:{BLUE}'>resumed {html.escape(news)}</span>"
        if self.paused:
            state += " · <b>paused</b>: events are counted, the chart catches up on Resume"
        restarts = self.restarts
        if restarts:  # a broker crash lost records: said under the chart, never hidden
            last = restarts[-1]
            state += (f" · <span class='labkit-restarted' style='color:{RED}'>the broker's log restarted "
                      f"{len(restarts)}×</span>: partition {last.partition} lost offsets {last.lost_from} to "
                      f"{last.lost_to}")
        per_type = ", ".join(f"{html.escape(k)}: {v}" for k, v in self.counts.most_common(5))
        shown = (
            f"<span class='labkit-received'>received <b>{self.received}</b></span> · "
            f"<b>{self.events_per_second():g}</b> ev/s · {lat}<br>{state}"
            + (f" · {per_type}" if per_type else "")
        )
        if shown != self._shown:  # send the counters only when they changed
            self.counters.value = self._shown = shown

    # -- control -------------------------------------------------------------------------

    async def ready(self, timeout: float = 10.0) -> None:
        """Return once the watcher is connected, so nothing sent from now on is missed."""
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def wait_for(self, count: int, kind: str | None = None, timeout: float = 30.0) -> None:
        """Return once ``count`` events (of type ``kind``, if given) were received; TimeoutError otherwise."""
        await until(lambda: (self.counts[kind] if kind else self.received) >= count,
                    lambda: f"{self.counts[kind] if kind else self.received} of {count} events received", timeout)
        if not self.paused:
            self._draw()
        self._show_counters()

    def now(self) -> float:
        """The chart's time: seconds since it started, as on its time axis."""
        return time.monotonic() - self._t0

    def mark(self, label: str, start: float, end: float | None = None) -> None:
        """Shade ``start`` to ``end`` (chart seconds, see :meth:`now`) on both time panels, labelled ``label``."""
        self.marks.append((label, start, self.now() if end is None else end))
        shapes = []
        for label, x0, x1 in self.marks:
            for axis in ("", "2"):
                shapes.append({
                    "type": "rect", "xref": f"x{axis}", "yref": f"y{axis} domain", "x0": x0, "x1": x1, "y0": 0, "y1": 1,
                    "fillcolor": "#ef9a9a", "opacity": 0.35, "line": {"width": 0}, "layer": "below",
                    **({"label": {"text": label, "textposition": "top center", "font": {"size": 11}}}
                       if not axis else {}),
                })
        self.figure.extend({}, {}, {"shapes": shapes})

    def pause(self) -> None:
        """Freeze the figure; events are still received and counted."""
        self.paused = True
        self.pause_button.value = True
        self.pause_button.description, self.pause_button.icon = "Resume", "play"
        self._show_counters()

    def resume(self) -> None:
        """Draw again, with everything received while paused."""
        self.paused = False
        self.pause_button.value = False
        self.pause_button.description, self.pause_button.icon = "Pause", "pause"
        self._draw()
        self._show_counters()

    def _tasks(self) -> list[asyncio.Task[None]]:
        return [task for task in (self._watcher, self._drawer) if task is not None]

    @property
    def running(self) -> bool:
        return any(not task.done() for task in self._tasks())

    def stop(self) -> None:
        """End the watch and the redraws; the figure keeps its last picture, and the counters say it is frozen."""
        cancel(self._tasks())
        if hasattr(self, "counters"):
            self.connected.clear()
            self.stopped = True
            self._show_counters()

    async def astop(self) -> None:
        """Stop, and return once the watcher and the redraws have ended (the picture stays, frozen)."""
        tasks = self._tasks()
        self.stop()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Stop, and close the figure and counters."""
        self.stop()
        if hasattr(self, "_pause_link"):
            self._pause_link.close()
        close_tree(self)
        super().close()

    async def aclose(self) -> None:
        """Close, and return once the watcher's connection is closed and no task is left."""
        self.close()
        await asyncio.gather(*self._tasks(), return_exceptions=True)
