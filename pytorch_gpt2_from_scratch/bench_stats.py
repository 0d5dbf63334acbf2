"""Deciding from noisy timings: is one configuration really faster than another?

A step time measured on a shared machine is a sample, not a number. Lesson 11 times every rung of its speed ladder
for several steps and keeps the median; whether a rung *helps* is then decided against the spread of those steps:

    spread(t)   = q75(t) - q25(t)              # the interquartile range (max - min for fewer than 4 steps)
    faster by   d = median(t_best) - median(t_new)
    keep        if d > max(spread(t_new), spread(t_best))
    "within noise" if |d| <= that spread, "slower" if d < -spread

A difference inside the spread is reported as such instead of flipping "kept" / "not kept" between two runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def spread(times: Sequence[float]) -> float:
    """Interquartile range of ``times`` (max - min for fewer than 4 samples, 0 for one)."""
    t = sorted(times)
    if len(t) < 2:
        return 0.0
    if len(t) < 4:
        return t[-1] - t[0]
    q = statistics.quantiles(t, n=4, method="inclusive")  # [q25, q50, q75]
    return q[2] - q[0]


def rung_verdict(new: Sequence[float], best: Sequence[float] | None) -> str:
    """``"kept"``, ``"within noise"`` or ``"slower"`` for a rung's step times ``new`` against the best so far."""
    if not new:
        raise ValueError("rung_verdict needs at least one timing")
    if not best:
        return "kept"
    d = statistics.median(best) - statistics.median(new)
    noise = max(spread(new), spread(best))
    if d > noise:
        return "kept"
    return "within noise" if d >= -noise else "slower"
