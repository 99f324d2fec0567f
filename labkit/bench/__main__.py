"""``python -m labkit.bench``: the benchmark without the labkit CLI (what ``make bench`` runs)."""

from labkit.bench.cli import bench_app

bench_app(prog_name="labkit bench")
