"""The step search for the highest rate carried with zero loss: a pure function of what was tried.

Steps go up by a fixed amount (``start``, then the multiples of ``step`` above the
highest rate carried so far, up to ``ceiling``) until one is not carried; then ``refine`` bisections between the last
step carried and the first that was not. :func:`next_rate` says what to try next from
the outcomes so far, and :func:`best_rate` what the search found, so the runner
only measures and the search is tested without a stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["StepSearch", "Tried"]

Tried = tuple[float, bool]  # offered rate, carried


@dataclass(frozen=True)
class StepSearch:
    start: float
    step: float
    ceiling: float
    refine: int = 0
    resolution: float = 500.0  # bisection stops when the interval is this narrow; rates round to it

    def __post_init__(self) -> None:
        if self.start <= 0 or self.step <= 0:
            raise ValueError("the step search needs a start and a step above 0 events per second")

    def bounds(self, tried: Sequence[Tried]) -> tuple[float, float | None]:
        """The highest rate carried below the lowest rate not carried, and that lowest rate (None: none failed)."""
        failed = min((rate for rate, carried in tried if not carried), default=None)
        good = max((rate for rate, carried in tried if carried and (failed is None or rate < failed)), default=0.0)
        return good, failed

    def next_rate(self, tried: Sequence[Tried]) -> float | None:
        """The next offered rate to measure, or None when the search is over."""
        first_failure = next((i for i, (_, carried) in enumerate(tried) if not carried), None)
        if first_failure is None:
            if not tried:
                return min(self.start, self.ceiling)
            highest = max(rate for rate, _ in tried)
            if highest >= self.ceiling:
                return None
            # The next multiple of the step above what was carried (5k, 10k, ...), the ceiling at the most.
            return min((highest // self.step + 1) * self.step, self.ceiling)
        if len(tried) - first_failure - 1 >= self.refine:  # the bisections done
            return None
        good, failed = self.bounds(tried)
        assert failed is not None
        middle = round((good + failed) / 2 / self.resolution) * self.resolution
        return middle if good < middle < failed else None

    def best_rate(self, tried: Sequence[Tried]) -> float:
        return self.bounds(tried)[0]

    def stopped_because(self, tried: Sequence[Tried]) -> str:
        _, failed = self.bounds(tried)
        if failed is not None:
            return f"not carried at {failed:,.0f} ev/s"
        return f"carried up to the search's ceiling ({self.ceiling:,.0f} ev/s)" if tried else "nothing tried"
