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
from labkit.bench.config import BASELINE, FULL, PATHS, WARM_UP_JVM_S
from labkit.bench.goals import check_goals
from labkit.bench.load import LoadPlan, split_id
from labkit.bench.plot import write_plot
from labkit.bench.profile import summarize_collapsed
from labkit.bench.report import print_report, write_json
from labkit.bench.runner import (
    BASELINE_TOPIC,
    PRIME_ROUNDS,
    BenchRunner,
    StepSearch,
    build_result,
    idle_of_the_goal,
    run_idle,
)
from labkit.bench.stats import HOPS, Latency, PhaseResult
from labkit.kafka import read_everything

pytestmark = pytest.mark.timeout(120)


def test_an_open_loop_plan_schedules_every_event_and_stamps_its_scheduled_time():
    plan = LoadPlan("t-1", rate=50.0, duration_s=1.0, start_ms=1_000.0)
    assert plan.total == 50
    due_by = plan.schedule.due_by
    assert due_by(999.9) == 0 and due_by(1_000.0) == 1 and due_by(1_019.9) == 1
    assert due_by(1_020.0) == 2 and due_by(10_000.0) == 50
    event = plan.event(7)
    assert event.sent_at == pytest.approx(1_140.0) and event.id == "t-1.7"
    assert split_id(event.id) == ("t-1", 7) and split_id("not-the-bench") == ("not-the-bench", -1)


def test_percentiles_and_collapsed_stacks_are_summed_up():
    latency = Latency.of(list(range(1, 1001)))
    assert latency.count == 1000 and latency.max == 1000 and 499 <= latency.p50 <= 501
    assert Latency.of([]).p99 is None
    summary = summarize_collapsed(
        "thread (0x1);main (labkit/services/producer.py:9);handle (labkit/services/producer.py:4);send "
        "(websockets/x.py:2) 3\n"
        "thread (0x1);main (labkit/services/producer.py:9) 1\n"
    )
    assert summary["samples"] == 4
    assert summary["self_pct"][0] == ["send (websockets/x.py)", 75.0]
    # labkit's own work, not entry points
    assert summary["total_pct"] == [["handle (labkit/services/producer.py)", 75.0]]


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
    assert {check.name for check in result.goals} and all(c.met is None for c in result.goals)


def test_the_result_is_written_as_json_tables_and_a_plot(bench_run):
    _, result, out_dir = bench_run
    path = write_json(result, out_dir, 0.0)
    data = json.loads(path.read_text())
    assert set(data) >= {"machine", "stack", "config", "phases", "ramps", "ratios", "goals", "notes"}
    phase = data["phases"][0]
    assert set(phase["latency"]) == {"count", "p50", "p90", "p99", "p999", "max", "mean"}
    assert {"producer", "consumer", "broker", "gateway"} <= set(phase["cores"]) <= set(phase["cpu_us_per_delivery"])
    console = Console(record=True, width=200)
    print_report(result, console)
    text = console.export_text()
    for title in ("Latency, from each event", "Hops", "ratios against the Kafka-only baseline", "Fan-out", "CPU: cores",
                  "Goals"):
        assert title in text
    html = write_plot(result, Path(out_dir) / "bench.html")
    assert "plotly" in html.read_text()[:5_000_000].lower()


def _search(search: StepSearch, limit: float, seed: list[tuple[float, bool]]) -> list[tuple[float, bool]]:
    """Run the search against a system that carries everything up to ``limit``."""
    tried = list(seed)
    while (rate := search.next_rate(tried)) is not None:
        tried.append((rate, rate <= limit))
    return tried


def test_the_step_search_climbs_by_steps_then_bisects_once_and_reports_the_highest_rate_carried():
    search = StepSearch(start=5_000, step=5_000, ceiling=50_000, refine=1)
    tried = _search(search, 22_000, [(1_000, True), (5_000, True)])
    assert [rate for rate, _ in tried[2:]] == [10_000, 15_000, 20_000, 25_000, 22_500]
    assert search.best_rate(tried) == 20_000 and search.stopped_because(tried) == "not carried at 22,500 ev/s"
    # Nothing fails: up to the ceiling and no further; from nothing, the first step is `start`.
    tried = _search(search, 1e9, [])
    assert tried[0] == (5_000, True) and tried[-1] == (50_000, True) and len(tried) == 10
    assert search.best_rate(tried) == 50_000 and "ceiling" in search.stopped_because(tried)
    # A fixed rate not carried: bisect below it, and a rate carried above a failure never counts.
    tried = _search(StepSearch(5_000, 5_000, 50_000, refine=2), 3_200, [(1_000, True), (5_000, False)])
    assert tried[2:] == [(3_000, True), (4_000, False)] and StepSearch(5_000, 5_000, 50_000).best_rate(tried) == 3_000
    assert StepSearch(5_000, 5_000, 50_000).best_rate([(10_000, True), (5_000, False)]) == 0.0
    with pytest.raises(ValueError, match="above 0"):
        StepSearch(5_000, 0, 50_000)


def _phase(path: str, phase: str, rate: float, watchers: int = 1, p50: float = 1.0, p99: float = 5.0,
           lost: int = 0) -> PhaseResult:
    return PhaseResult(path, phase, rate, 1.0, watchers, sent=10, acked=10, lost=lost,
                       latency=Latency(count=10, p50=p50, p99=p99))


def test_each_goal_is_read_from_its_phase_and_set_beside_its_baseline():
    phases = [
        _phase(BASELINE, "fixed", 100, p99=2.0), _phase(BASELINE, "fixed", 1_000, p50=0.5, p99=2.5),
        _phase(BASELINE, "fixed", 5_000, p99=4.0),
        _phase(FULL, "fixed", 1_000, p50=1.5, p99=5.0), _phase(FULL, "fixed", 5_000, p99=30.0),
        _phase(FULL, "fanout", 100, watchers=100, p99=15.0), _phase(FULL, "fanout", 100, watchers=1_000, p99=90,
                                                                    lost=3),
    ]
    ramps = {FULL: {"max_rate_carried": 25_000.0, "stopped_because": ""},
             BASELINE: {"max_rate_carried": 50_000.0, "stopped_because": ""}}
    goals = {check.name: check for check in check_goals(phases, ramps)}
    assert [goals[name].met for name in goals] == [True, False, True, True, False]
    assert goals["full path at 1,000 ev/s"].baseline == "p50 0.50 ms (x3), p99 2.50 ms (x2)"
    assert goals["highest rate carried with zero loss"].baseline == "50,000 ev/s (x0.5)"
    assert "3 lost" in goals["1,000 watchers x 100 ev/s"].measured
    assert all(check.met is None for check in check_goals([], {}))


def test_the_goals_profile_runs_every_scenario_end_to_end_at_tiny_scale(stack: Stack, tmp_path: Path):
    """Every kind of phase of `labkit bench --goals`, tiny: fixed rates, step search, fan-out, 2 consumers against 1."""
    config = BenchConfig.goals(
        tmp_path, rates=(40.0,), duration_s=1.0, ramp_step=40.0, ramp_max_rate=80.0, ramp_duration_s=1.0,
        fanout=(2,), fanout_rate=40.0, fanout_duration_s=1.0, drain_quiet_s=2.0, png=False,
    )
    assert config.paths == (BASELINE, FULL) and config.consumers == (1, 2)
    runner = BenchRunner(config, the_running_stack(stack))
    asyncio.run(runner.run())
    kinds = sorted((p.path, p.phase, p.offered_rate, p.watchers, p.consumers) for p in runner.phases)
    assert kinds == [
        (BASELINE, "fixed", 40.0, 1, 1), (BASELINE, "ramp", 80.0, 1, 1), (FULL, "consumers", 40.0, 2, 1),
        (FULL, "consumers", 40.0, 2, 2), (FULL, "fanout", 40.0, 2, 1), (FULL, "fixed", 40.0, 1, 1),
        (FULL, "ramp", 80.0, 1, 1),
    ]
    for phase in runner.phases:
        assert phase.sent == phase.acked and phase.lost == 0 and not phase.closed, (phase.path, phase.phase)
        assert phase.delivered == phase.sent * phase.watchers
    assert {path: ramp.max_rate_carried for path, ramp in runner.ramps.items()} == {BASELINE: 80.0, FULL: 80.0}
    two = next(p for p in runner.phases if p.consumers == 2)
    assert two.resources["consumer"]["cpu_s"] > 0  # both consumer replicas are measured as the consumer
    assert "consumer-1" not in two.resources and "consumer-2" not in two.resources
    result = build_result(runner, config, stack.settings, False, 0.0, [])
    console = Console(record=True, width=220)
    print_report(result, console)
    assert "Goals" in console.export_text() and len(result.goals) == 5


def test_idle_cpu_is_measured_per_component_and_the_goal_counts_broker_producer_and_consumer(stack: Stack):
    cores = run_idle(stack, 1.0)
    assert {"broker", "producer", "consumer", "gateway"} <= set(cores) and all(used >= 0 for used in cores.values())
    assert idle_of_the_goal(cores) == pytest.approx(cores["broker"] + cores["producer"] + cores["consumer"])
    assert idle_of_the_goal({"broker": 0.01, "gateway": 0.5}) == 0.01  # the gateway is not the goal's


def test_a_warm_up_sends_the_phase_traffic_first_and_only_the_phase_is_measured(stack: Stack, tmp_path: Path):
    """The warm-up's events reach the broker before the phase (more than priming alone could send), and the
    phase still counts exactly its own plan."""
    assert BenchConfig().warm_up_on("kafka") == WARM_UP_JVM_S > 0
    assert BenchConfig().warm_up_on("noida") == 0 and BenchConfig(warm_up_s=2.0).warm_up_on("noida") == 2.0
    config = BenchConfig.quick(tmp_path, paths=(BASELINE,), fanout=(), warm_up_s=4.0)
    reader_config = stack.settings.kafka_reader_config()
    before = len(read_everything(reader_config, BASELINE_TOPIC))
    runner = BenchRunner(config, the_running_stack(stack))
    asyncio.run(runner.run())
    stored = len(read_everything(reader_config, BASELINE_TOPIC)) - before
    [phase] = runner.phases
    assert phase.sent == phase.acked == phase.delivered == 50 and phase.lost == 0
    priming_at_most = PRIME_ROUNDS * config.keys
    assert stored >= 50 + 200 > 50 + priming_at_most, f"{stored} records stored: the warm-up's 200 were not sent"
