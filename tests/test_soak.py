"""The soak, a long phase of the bench's runner: a short run loses nothing and reports memory for every component."""

from __future__ import annotations

import json

from labkit import Stack
from labkit.bench import run_soak


async def test_short_soak_loses_nothing_and_samples_memory(stack: Stack, tmp_path):
    result = await run_soak(stack, minutes=0.1, rate=100, watchers=2, sample_every_s=2)
    assert result.sent == result.acked > 400 and result.refused == 0
    assert result.lost_per_watcher == [0, 0] and result.duplicates_per_watcher == [0, 0]
    assert len(result.memory) >= 3
    assert set(result.memory[-1][1]) == {"broker", "producer", "consumer", "gateway"}
    assert all(mb > 1 for mb in result.memory[-1][1].values())
    assert set(result.latency_ms) == {"p50", "p99", "max"}
    json_path, html_path = result.write(tmp_path)
    written = json.loads(json_path.read_text())
    assert written["lost"] == 0 and written["acked"] == result.acked
    assert "plotly" in html_path.read_text()[:20000].lower()
