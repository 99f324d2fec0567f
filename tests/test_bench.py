"""The benchmark's machinery, on the shared test stack: a short low-rate run is complete and well formed.

Nothing here asserts a speed: latencies on a shared CI machine say nothing. What is
checked is that every path and every watcher is measured, nothing acknowledged is
lost, and the JSON, the tables and the plot come out.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from rich.console import Console

from labkit import Stack
from labkit.bench import BenchConfig, the_running_stack
from labkit.bench.config import PATHS
from labkit.bench.load import LoadPlan, split_id
from labkit.bench.plot import write_plot
from labkit.bench.profile import summarize_collapsed
from labkit.bench.report import print_report
from labkit.bench.results import build_result, write_json
from labkit.bench.runner import BenchRunner
from labkit.bench.stats import HOPS, Latency

pytestmark = pytest.mark.timeout(120)


def test_an_open_loop_plan_schedules_every_event_and_stamps_its_scheduled_time():
    plan = LoadPlan("t-1", rate=50.0, duration_s=1.0, start_ms=1_000.0)
    assert plan.total == 50
    assert plan.due_by(999.9) == 0 and plan.due_by(1_000.0) == 1 and plan.due_by(1_019.9) == 1
    assert plan.due_by(1_020.0) == 2 and plan.due_by(10_000.0) == 50
    event = plan.event(7)
    assert event.sent_at == pytest.approx(1_140.0) and event.id == "t-1.7"
    assert split_id(event.id) == ("t-1", 7) and split_id("not-the-bench") == ("not-the-bench", -1)


def test_percentiles_and_collapsed_stacks_are_summed_up():
    latency = Latency.of(list(range(1, 1001)))
    assert latency.count == 1000 and latency.max == 1000 and 499 <= latency.p50 <= 501
    assert Latency.of([]).p99 is None
    summary = summarize_collapsed(
        "thread (0x1);main (labkit/services/producer.py:9);handle (labkit/services/producer.py:4);send (websockets/x.py:2) 3\n"
        "thread (0x1);main (labkit/services/producer.py:9) 1\n"
    )
    assert summary["samples"] == 4
    assert summary["self_pct"][0] == ["send (websockets/x.py)", 75.0]
    assert summary["total_pct"] == [["handle (labkit/services/producer.py)", 75.0]]  # labkit's own work, not entry points


@pytest.fixture(scope="module")
def bench_run(stack: Stack, tmp_path_factory: pytest.TempPathFactory):
    out_dir = tmp_path_factory.mktemp("bench-results")
    config = BenchConfig.quick(out_dir)
    runner = BenchRunner(config, the_running_stack(stack))
    asyncio.run(runner.run())
    result = build_result(runner, config, stack.settings, False, 0.0, ["test run"])
    return config, result, out_dir


def test_a_short_run_measures_every_path_and_every_watcher_with_nothing_lost(bench_run):
    config, result, _ = bench_run
    fixed = [p for p in result.phases if p.phase == "fixed"]
    assert sorted(p.path for p in fixed) == sorted(PATHS)
    fanout = [p for p in result.phases if p.phase == "fanout"]
    assert [p.watchers for p in fanout] == [2]
    for phase in fixed + fanout:
        expected = round(phase.offered_rate * phase.duration_s)
        assert phase.sent == phase.acked == expected, phase.path
        assert phase.lost == 0 and phase.duplicates == 0 and phase.unexpected == 0 and not phase.refused
        assert not phase.closed
        assert phase.delivered == expected * phase.watchers
        assert phase.latency.count == expected * phase.watchers
        assert phase.ack_latency.count == expected
        assert phase.throughput > 0
        # The stack's processes and the bench's own are all measured.
        for component in ("broker", "producer", "consumer", "gateway", "bench sender", "bench watchers"):
            assert component in phase.resources, component
            assert phase.resources[component]["peak_rss_mb"] > 0
    for phase in fixed:
        wanted_hops = HOPS[:3] if phase.path == "baseline" else HOPS
        assert sorted(phase.hops) == sorted(wanted_hops)
        assert all(phase.hops[hop].count == phase.sent for hop in wanted_hops)
    assert [row["rate"] for row in result.ratios] == list(config.rates)
    assert {"full/baseline p99", "direct/baseline p50"} <= set(result.ratios[0])
    assert {check.name for check in result.targets} and all(c.met is None for c in result.targets)


def test_the_result_is_written_as_json_tables_and_a_plot(bench_run):
    _, result, out_dir = bench_run
    path = write_json(result, out_dir, 0.0)
    data = json.loads(path.read_text())
    assert set(data) >= {"machine", "stack", "config", "phases", "ramps", "ratios", "targets", "notes"}
    phase = data["phases"][0]
    assert set(phase["latency"]) == {"count", "p50", "p90", "p99", "p999", "max", "mean"}
    assert {"producer", "consumer", "broker", "gateway"} <= set(phase["cores"]) <= set(phase["cpu_us_per_delivery"])
    console = Console(record=True, width=200)
    print_report(result, console)
    text = console.export_text()
    for title in ("Latency, from each event", "Hops", "ratios against the Kafka-only baseline", "Fan-out", "CPU: cores",
                  "Targets"):
        assert title in text
    html = write_plot(result, Path(out_dir) / "bench.html")
    assert "plotly" in html.read_text()[:5_000_000].lower()
