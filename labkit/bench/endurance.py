"""Endurance and idle: does the stack hold a whole lab session, and what does it cost when nobody sends?

``labkit bench endurance``: one event per frame through the gateway, open loop, for
N events (default 50,000), read back by a plain ``websockets`` watcher (no labkit
client, so nothing is deduplicated or resumed on its behalf). It prints the
latency per window of 5,000 events with the broker's memory and CPU in that
window, and at the end how many acknowledged events were lost or delivered twice.
The goal: the last window's p99 within 2x the first's, nothing lost.

``labkit bench idle``: the stack up with no traffic; each component's CPU over
30 s. The goal: under 5% of one core for all of them together.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import websockets

from labkit.client import Sender, lab_api_key
from labkit.events import decode_delivered, now_ms
from labkit.procstats import cpu_cores, cpu_seconds, family, rss_bytes
from labkit.ops.stack import Stack
from labkit.bench.load import BENCH_TYPE, LoadPlan, run_open_loop, split_id

__all__ = ["EnduranceResult", "run_endurance", "run_idle", "write_endurance"]

Progress = Callable[[int, int], None]  # events sent, events received
QUIET_S = 10.0  # after the last send, wait this long without a new arrival before counting losses


@dataclass
class Window:
    first: int
    last: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    broker_rss_mb: float
    broker_cpu_cores: float


@dataclass
class EnduranceResult:
    broker: str
    events: int
    rate: float
    window: int
    acked: int = 0
    refused: int = 0
    received: int = 0
    lost: int = 0
    duplicates: int = 0
    windows: list[Window] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def p99_ratio(self) -> float | None:
        """Last window's p99 over the first's: the goal is at most 2."""
        full = [w for w in self.windows if w.p99_ms > 0]
        return round(full[-1].p99_ms / full[0].p99_ms, 2) if len(full) >= 2 else None

    @property
    def passed(self) -> bool:
        return self.lost == 0 and self.duplicates == 0 and (self.p99_ratio or 0) <= 2.0


def _quantile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100)[q - 1]


async def run_endurance(
    stack: Stack, events: int = 50_000, rate: float = 1000.0, window: int = 5_000, on_progress: Progress | None = None
) -> EnduranceResult:
    settings = stack.settings
    result = EnduranceResult(settings.broker, events, rate, window)
    broker_pid = next((row["pid"] for row in stack.status() if row["component"] == "broker"), None)
    broker_procs = family(broker_pid) if broker_pid else []
    tag = f"endurance{int(time.time())}"
    latency: dict[int, float] = {}
    seen: set[tuple[int, int]] = set()
    last_arrival = [time.monotonic()]
    key = lab_api_key(settings)
    headers = {"apikey": key} if key else None

    async def read(ws: websockets.ClientConnection) -> None:
        async for frame in ws:
            event = decode_delivered(frame)
            place = (event.partition, event.offset)
            if place in seen:
                result.duplicates += 1
                continue
            seen.add(place)
            owner, seq = split_id(event.id if isinstance(event.id, str) else "")
            if owner == tag:
                latency[seq] = now_ms() - event.sent_at
                last_arrival[0] = time.monotonic()

    # Per window: broker memory and CPU, sampled when the sending passes the window's end.
    marks: list[tuple[int, float, float, float]] = []  # (seq, monotonic, broker cpu seconds, rss)

    def mark(sent: int) -> None:
        if on_progress is not None:
            on_progress(sent, len(latency))
        if not marks or sent // window > marks[-1][0] // window or sent == events:
            marks.append((sent, time.monotonic(), cpu_seconds(broker_procs), rss_bytes(broker_pid) if broker_pid else 0))

    began = time.monotonic()
    async with websockets.connect(f"{settings.consume_url}?types={BENCH_TYPE}", additional_headers=headers,
                                  max_size=None, compression=None) as watcher:
        reader = asyncio.create_task(read(watcher))
        async with Sender(settings=settings) as sender:
            futures: list[asyncio.Future[Any]] = []

            async def send(batch: list) -> None:
                futures.extend(await sender.submit(batch))

            plan = LoadPlan(tag, rate, events / rate, now_ms() + 200)
            mark(0)
            await run_open_loop(plan, send, max_batch=1, frame_interval_s=0.0005, on_progress=mark)
            replies = await sender.replies(futures, raise_on_error=False, timeout=120)
        acked = {split_id(r.ack)[1] for r in replies if r.ok}
        result.acked, result.refused = len(acked), len(replies) - len(acked)
        while not acked <= latency.keys() and time.monotonic() - last_arrival[0] < QUIET_S:
            await asyncio.sleep(0.05)  # a measurement window: arrivals are counted as they come
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    result.seconds = round(time.monotonic() - began, 1)
    result.received = len(latency)
    result.lost = len(acked - latency.keys())
    for (start, t0, cpu0, _), (end, t1, cpu1, rss1) in zip(marks, marks[1:]):
        values = [latency[s] for s in range(start, end) if s in latency]
        result.windows.append(Window(
            start, end - 1, round(_quantile(values, 50), 2), round(_quantile(values, 99), 2),
            round(max(values, default=0.0), 2), round(rss1 / 2**20, 1), round((cpu1 - cpu0) / max(t1 - t0, 1e-6), 3),
        ))
    return result


def run_idle(stack: Stack, seconds: float = 30.0) -> dict[str, float]:
    """Cores each component uses with the stack up and nobody sending or watching."""
    pids = {row["component"]: row["pid"] for row in stack.status() if row["pid"]}
    return {name: round(cores, 4) for name, cores in cpu_cores(pids, seconds).items()}


def write_endurance(result: EnduranceResult, folder: Path) -> list[Path]:
    """The result as JSON, and p50/p99 per window with the broker's memory as a plotly page."""
    from plotly.subplots import make_subplots

    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = {**asdict(result), "p99_ratio": result.p99_ratio, "passed": result.passed}
    json_path = folder / f"endurance-{result.broker}-{stamp}.json"
    json_path.write_text(json.dumps(data, indent=2))
    x = [w.last + 1 for w in result.windows]
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_scatter(x=x, y=[w.p50_ms for w in result.windows], name="p50", mode="lines+markers")
    figure.add_scatter(x=x, y=[w.p99_ms for w in result.windows], name="p99", mode="lines+markers")
    figure.add_scatter(x=x, y=[w.broker_rss_mb for w in result.windows], name="broker RSS (MB)",
                       mode="lines+markers", line={"dash": "dot"}, secondary_y=True)
    figure.update_layout(title=f"Endurance on {result.broker}: {result.events:,} events at {result.rate:g}/s, one per frame")
    figure.update_xaxes(title_text="events sent")
    figure.update_yaxes(title_text="latency (ms, log)", type="log", secondary_y=False)
    figure.update_yaxes(title_text="broker RSS (MB)", secondary_y=True)
    html_path = json_path.with_suffix(".html")
    figure.write_html(html_path, include_plotlyjs=True)
    return [json_path, html_path]
