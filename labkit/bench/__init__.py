"""The benchmark: the whole path against a Kafka-only baseline, measured in one run.

Three paths, side by side, at fixed offered rates and up a ramp to the highest rate carried with zero loss:
``baseline`` (a confluent-kafka producer and consumer on the same broker), ``direct`` (WebSocket to the
producer's port, watcher on the consumer's port) and ``full`` (through the gateway); then fan-out (1 to
1,000 watchers through the gateway), and the largest fan-out on 1, 2, ... consumer processes. The same
runner (:mod:`.runner`) measures the long phases: an endurance run (one event per frame, latency per window
with the broker's memory and CPU) and a soak (memory over minutes, losses per watcher), and the idle stack's
CPU. ``BenchConfig.goals()`` (``labkit bench --goals``, ``make bench``) measures exactly the goals table of
:mod:`.goals`. Load is open-loop (:mod:`.load`): each event carries its scheduled send time, and latency
counts from it. Figures come from :mod:`.stats`; the terminal tables and JSON from :mod:`.report`, the
plotly plot (HTML, and PNG where Chromium is installed) from :mod:`.plot`; the commands are in :mod:`.cli`.

    from labkit.bench import BenchConfig, run_bench
    result = run_bench(BenchConfig.quick(Path("bench-results")))
"""

from labkit.bench.config import PATHS, BenchConfig
from labkit.bench.runner import (
    BenchResult,
    fresh_stacks,
    run_bench,
    run_endurance,
    run_idle,
    run_soak,
    the_running_stack,
)

__all__ = ["BenchConfig", "BenchResult", "PATHS", "run_bench", "run_endurance", "run_soak", "run_idle",
           "fresh_stacks", "the_running_stack"]
