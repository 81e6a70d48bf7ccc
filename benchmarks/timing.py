"""The benchmarks' one timer: the median wall time of a call, over repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(run: Callable[[], object], repeats: int, warm: bool = False) -> float:
    """Median seconds of `repeats` calls of `run`; with `warm`, one untimed call first (traces
    and caches filled, as a second visitor would find them)."""
    if warm:
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
