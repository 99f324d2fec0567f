"""The long phases of the bench's runner, short: a soak loses nothing and reports memory for every component;
an endurance run reports latency, broker memory and CPU per window."""

from __future__ import annotations

import json

from labkit import Stack
from labkit.bench import run_endurance, run_soak
from labkit.bench.report import write_long_run


async def test_short_soak_loses_nothing_and_samples_memory(stack: Stack, tmp_path):
    result = await run_soak(stack, minutes=0.1, rate=100, watchers=2, sample_every_s=2)
    assert result.sent == result.acked > 400 and not result.refused
    assert result.lost_per_watcher == [0, 0] and result.duplicates_per_watcher == [0, 0]
    assert len(result.memory) >= 3
    assert set(result.memory[-1][1]) == {"broker", "producer", "consumer", "gateway"}
    assert all(mb > 1 for mb in result.memory[-1][1].values())
    p50, p99, top = result.latency.p50, result.latency.p99, result.latency.max
    assert p50 is not None and p99 is not None and top is not None, result.latency  # None: nothing delivered
    assert 0 < p50 <= p99 <= top and result.passed
    json_path, html_path = write_long_run(result, tmp_path, stack.settings.broker)
    written = json.loads(json_path.read_text())
    assert written["lost"] == 0 and written["acked"] == result.acked
    assert "plotly" in html_path.read_text()[:20000].lower()


async def test_short_endurance_run_reports_each_window_and_loses_nothing(stack: Stack, tmp_path):
    result = await run_endurance(stack, events=300, rate=300, window=100)
    assert result.sent == result.acked == 300 and not result.refused
    assert result.lost == 0 and result.duplicates == 0 and result.delivered == 300
    assert [(w.first, w.last) for w in result.windows][0][0] == 0 and result.windows[-1].last == 299
    assert len(result.windows) == 3 and all(0 < w.p50_ms <= w.p99_ms <= w.max_ms for w in result.windows)
    assert all(w.broker_rss_mb > 1 for w in result.windows) and result.p99_ratio is not None
    json_path, _ = write_long_run(result, tmp_path, stack.settings.broker)
    written = json.loads(json_path.read_text())
    assert written["passed"] == result.passed and len(written["windows"]) == 3
