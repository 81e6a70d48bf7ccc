"""The benchmarks' timers: the median wall time of a call, over repeats, alone or in turns."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(run: Callable[[], object], repeats: int, warm: bool = False) -> float:
    """Median seconds of `repeats` calls of `run`; with `warm`, one untimed call first (traces
    and caches filled, as a second visitor would find them)."""
    return interleaved_median_seconds({"run": run}, repeats, warm)["run"]


def interleaved_median_seconds(
    runs: dict[str, Callable[[], object]], repeats: int, warm: bool = False
) -> dict[str, float]:
    """Median seconds of each of `runs`, timed in turns (one call of each per round, `repeats`
    rounds): a slower spell of a shared machine then slows every one of them alike, so their
    ratios hold better than those of runs timed one after the other. With `warm`, one untimed
    round first."""
    if warm:
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(taken) for name, taken in times.items()}
