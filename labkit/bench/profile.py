"""Where the services spend their CPU under the benchmark: py-spy, summed up.

With ``--profile`` the runner records the producer and the consumer with
``py-spy record --format raw`` (collapsed stacks; idle threads are not sampled, so
samples are CPU) while a path runs, and summarizes each recording as the
functions with the most samples on top of the stack (self), and the labkit
functions with the most samples anywhere under them (total). py-spy is not a
labkit dependency: ``pip install py-spy``.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["ServiceProfiler", "summarize_collapsed"]

PROFILED = ("producer", "consumer")
SAMPLE_RATE = 100
TOP = 12
_LINE_NUMBER = re.compile(r":\d+\)$")
_ENTRY_POINTS = ("(labkit/cli.py)", "(labkit/__main__.py)", "main (labkit/")


def summarize_collapsed(text: str, top: int = TOP) -> dict[str, Any]:
    """Top functions by self share, and labkit functions by total share, of a collapsed-stack file's samples."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE_NUMBER.sub(")", f.strip()) for f in stack.split(";")
                  if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):  # a labkit function below the entry points: where in labkit the time is spent
            if "(labkit/" in name and not any(entry in name for entry in _ENTRY_POINTS):
                anywhere[name] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100.0 * n / samples, 1)] for name, n in counter.most_common(top)] if samples else []

    return {"samples": samples, "self_pct": share(own), "total_pct": share(anywhere)}


class ServiceProfiler:
    """``start()`` py-spy on the producer and consumer; ``stop()`` returns a summary per service."""

    def __init__(self, status_rows: list[dict[str, Any]], out_dir: Path, label: str) -> None:
        self.targets = {row["component"]: row["pid"] for row in status_rows
                        if row["component"] in PROFILED and row.get("pid")}
        self.out_dir, self.label = out_dir, label
        self.recorders: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self.problem: str | None = None

    def start(self) -> None:
        beside_python = Path(sys.executable).parent / "py-spy"
        binary = str(beside_python) if beside_python.exists() else shutil.which("py-spy")
        if binary is None:
            self.problem = "py-spy is not installed (pip install py-spy): no profile"
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.targets.items():
            output = self.out_dir / f"{self.label}-{name}.collapsed.txt"
            command = [binary, "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE), "--nonblocking",
                       "--format", "raw", "--output", str(output)]
            with (self.out_dir / f"{self.label}-{name}.py-spy.log").open("wb") as log:
                self.recorders[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), output)

    def stop(self) -> dict[str, Any]:
        if self.problem:
            return {"problem": self.problem}
        summaries: dict[str, Any] = {}
        for name, (recorder, output) in self.recorders.items():
            recorder.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            try:
                recorder.wait(30)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()
            try:
                summaries[name] = {"file": str(output), **summarize_collapsed(output.read_text())}
            except OSError as exc:
                summaries[name] = {"problem": f"py-spy wrote no profile ({exc}); see its .py-spy.log beside it"}
        return summaries
