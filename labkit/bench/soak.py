"""The soak: steady load through the gateway for minutes, counting losses and watching memory.

A sender sends at a fixed rate through ``/produce-events``; watchers read
``/consume-events``; every few seconds the resident memory of each component is
sampled. At the end every acknowledged id must have reached every watcher. A
growing memory line is the leak to look for.

    result = asyncio.run(run_soak(stack, minutes=5))
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from labkit.client import Sender, watch
from labkit.events import now_ms
from labkit.pacing import Schedule, due_ranges
from labkit.ops.stack import Stack

__all__ = ["SoakResult", "run_soak", "write_soak"]

SoakProgress = Callable[[float, int, int], None]  # elapsed seconds, acked, received by the slowest watcher


@dataclass
class SoakResult:
    minutes: float
    rate: float
    watchers: int
    sent: int = 0
    acked: int = 0
    refused: int = 0
    lost_per_watcher: list[int] = field(default_factory=list)
    duplicates_per_watcher: list[int] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    # [seconds since start, {component: resident MB}]
    memory: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(self.lost_per_watcher)

    def memory_growth_mb(self) -> dict[str, float]:
        """Resident memory at the end minus at the first sample after warm-up, per component."""
        if len(self.memory) < 2:
            return {}
        first, last = self.memory[min(1, len(self.memory) - 1)][1], self.memory[-1][1]
        return {name: round(last[name] - first.get(name, last[name]), 1) for name in last}


def _resident_mb(stack: Stack) -> dict[str, float]:
    sizes = {}
    for row in stack.status():
        if row["pid"] is None:
            continue
        try:
            family = [psutil.Process(row["pid"]), *psutil.Process(row["pid"]).children(recursive=True)]
            sizes[row["component"]] = round(sum(p.memory_info().rss for p in family) / 2**20, 1)
        except psutil.NoSuchProcess:
            pass
    return sizes


async def run_soak(
    stack: Stack,
    minutes: float,
    rate: float = 200.0,
    watchers: int = 2,
    sample_every_s: float = 5.0,
    on_progress: SoakProgress | None = None,
) -> SoakResult:
    """Run steady load for ``minutes`` and return what was lost and how memory moved."""
    settings = stack.settings
    result = SoakResult(minutes=minutes, rate=rate, watchers=watchers)
    event_type = f"soak-{int(time.time())}"
    received: list[list[str]] = [[] for _ in range(watchers)]
    latencies: list[float] = []
    opened = [asyncio.Event() for _ in range(watchers)]

    async def watcher(index: int) -> None:
        # Raw: every frame as delivered, so a frame delivered twice shows in the duplicate count.
        async for event in watch(settings=settings, types=[event_type], opened=opened[index], raw=True):
            received[index].append(event.id)
            if index == 0:
                latencies.append(now_ms() - event.sent_at)

    tasks = [asyncio.create_task(watcher(i)) for i in range(watchers)]
    await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 10)
    acked: list[str] = []
    began = time.monotonic()
    next_sample = began
    # Ten frames a second, each with the events due by then: the rate holds without a frame per event.
    schedule = Schedule.from_now(rate, round(minutes * 60 * rate))
    async with Sender(settings=settings) as sender, aclosing(due_ranges(schedule, frame_interval_s=0.1)) as ranges:
        pending: list[asyncio.Future] = []
        async for first, end in ranges:
            pending += await sender.submit([{"type": event_type, "value": seq % 100} for seq in range(first, end)])
            result.sent = end
            if time.monotonic() >= next_sample:
                result.memory.append((round(time.monotonic() - began, 1), await asyncio.to_thread(_resident_mb, stack)))
                next_sample += sample_every_s
            if on_progress is not None:
                on_progress(time.monotonic() - began, result.sent, min(len(r) for r in received))
        replies = await sender.replies(pending, raise_on_error=False)
    acked = [reply.ack for reply in replies if reply.ok]
    result.acked, result.refused = len(acked), len(replies) - len(acked)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and min(len(set(r)) for r in received) < len(acked):
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    result.memory.append((round(time.monotonic() - began, 1), await asyncio.to_thread(_resident_mb, stack)))
    wanted = set(acked)
    result.lost_per_watcher = [len(wanted - set(ids)) for ids in received]
    result.duplicates_per_watcher = [len(ids) - len(set(ids)) for ids in received]
    if len(latencies) >= 2:
        cuts = statistics.quantiles(latencies, n=100)
        result.latency_ms = {"p50": round(cuts[49], 2), "p99": round(cuts[98], 2), "max": round(max(latencies), 2)}
    return result


def write_soak(result: SoakResult, folder: Path) -> list[Path]:
    """The result as JSON and the memory over time as a plotly HTML page."""
    import json

    import plotly.graph_objects as go

    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data: dict[str, Any] = {**asdict(result), "lost": result.lost, "memory_growth_mb": result.memory_growth_mb()}
    json_path = folder / f"soak-{stamp}.json"
    json_path.write_text(json.dumps(data, indent=2))
    figure = go.Figure()
    for name in sorted({name for _, sizes in result.memory for name in sizes}):
        points = [(t, sizes[name]) for t, sizes in result.memory if name in sizes]
        figure.add_scatter(x=[t for t, _ in points], y=[mb for _, mb in points], name=name, mode="lines+markers")
    figure.update_layout(
        title=f"Resident memory during a {result.minutes:g}-minute soak at {result.rate:g} events/s",
        xaxis_title="seconds", yaxis_title="MB",
    )
    html_path = folder / f"soak-{stamp}.html"
    figure.write_html(html_path, include_plotlyjs=True)
    return [json_path, html_path]
