"""Percentiles, computed in one place: the bench's phases, its endurance windows, the soak and the live chart.

:func:`percentiles` reads a sample (numpy's linear interpolation); :func:`binned_percentiles` reads a
histogram, for a chart that keeps counts per latency bin over a whole run instead of every value.
Both answer ``{"p50": ..., "p99": ..., "max": ...}`` (``p999`` for 99.9), empty when nothing was measured.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["percentiles", "binned_percentiles", "point_name"]


def point_name(point: float) -> str:
    """50 -> "p50", 99.9 -> "p999"."""
    return "p" + f"{point:g}".replace(".", "")


def percentiles(values: Sequence[float] | np.ndarray, points: Iterable[float] = (50, 90, 99)) -> dict[str, float]:
    """The given percentiles of ``values`` and their maximum; ``{}`` for no values."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return {}
    points = list(points)
    cuts = np.percentile(data, points)
    return {**{point_name(p): float(c) for p, c in zip(points, cuts, strict=True)}, "max": float(data.max())}


def binned_percentiles(counts: np.ndarray, upper_edges: np.ndarray, top: float,
                       points: Iterable[float] = (50, 90, 99)) -> dict[str, float]:
    """Percentiles from a histogram, each read as its bin's upper edge (never above ``top``, the largest value seen).

    ``counts[i]`` values fell at or below ``upper_edges[i]`` (and above the previous edge); ``{}`` for no values.
    """
    total = int(counts.sum())
    if not total:
        return {}
    cumulative = np.cumsum(counts)

    def at(point: float) -> float:
        index = int(np.searchsorted(cumulative, point / 100 * total))
        return float(min(upper_edges[index], top))

    return {**{point_name(p): at(p) for p in points}, "max": top}
