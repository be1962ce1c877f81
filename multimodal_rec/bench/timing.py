"""Latency summaries shared by the serving benchmarks (bench.serve, bench.inprocess, bench.backends)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def latency_ms(x: Sequence[float]) -> dict[str, float]:
    """p50 and p99 of ``x`` (seconds) in milliseconds, to the microsecond."""
    a = np.asarray(x) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}
