"""Two models on the same slices: is one better? Paired tests and a paired bootstrap.

McNemar's exact test (`metrics.mcnemar_exact`, scipy's binomial test) compares proportions on
paired correctness; a paired bootstrap compares statistics whose denominators differ between
models (precision, F1, ROC AUC): both models are scored on the same resampled slices. A model
is called better only when the two-sided p-value is below `ALPHA`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ctdemo.evaluation.metrics import mcnemar_exact
from ctdemo.evaluation.numbers import Interval

ALPHA = 0.05
"""A difference is called significant when its two-sided p-value is below this."""

BOOTSTRAP_REPEATS = 1000


@dataclass(frozen=True)
class PairedTest:
    """One test between models `a` and `b`; `better` is set only when p < alpha.
    `only_a` / `only_b`: McNemar's discordant pairs (None for a bootstrap)."""

    a: str
    b: str
    p_value: float
    better: str | None
    only_a: int | None = None
    only_b: int | None = None

    def involves(self, name: str) -> bool:
        return name in (self.a, self.b)


def pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of models, in the names' order: (A, B), (A, C), (B, C)."""
    return list(itertools.combinations(names, 2))


def mcnemar(a: str, b: str, success_a: np.ndarray, success_b: np.ndarray, alpha: float = ALPHA):
    """McNemar's exact test on the slices each model got right, paired by slice."""
    only_a, only_b, p = mcnemar_exact(success_a, success_b)
    better = (a if only_a > only_b else b) if p < alpha else None
    return PairedTest(a, b, p, better, only_a, only_b)


@dataclass(frozen=True)
class Bootstrap:
    """A statistic on the slices and on every resample of them (NaN kept, so two models'
    samples stay paired), with its 95% percentile interval."""

    interval: Interval
    samples: np.ndarray


def resamples(n: int, repeats: int = BOOTSTRAP_REPEATS, seed: int = 0) -> list[np.ndarray]:
    """The slices of each bootstrap resample, drawn as `metrics.bootstrap_interval` draws (so
    an interval here equals that function's with the same seed)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, n) for _ in range(repeats)]


def bootstrap(statistic: Callable[[np.ndarray], float], picks: list[np.ndarray]) -> Bootstrap:
    """`statistic(indices)` on all slices and on each resample in `picks`; resamples where it
    is undefined (NaN) are left out of the interval."""
    n = len(picks[0]) if picks else 0
    value = statistic(np.arange(n))
    samples = np.array([statistic(p) for p in picks], dtype=float)
    finite = samples[~np.isnan(samples)]
    if finite.size == 0:
        return Bootstrap(Interval(value, math.nan, math.nan), samples)
    low, high = np.percentile(finite, [2.5, 97.5])
    return Bootstrap(Interval(float(value), float(low), float(high)), samples)


def paired_bootstrap(a: str, b: str, first: Bootstrap, second: Bootstrap, alpha: float = ALPHA):
    """The paired bootstrap test of a difference: p = twice the smaller share of resamples
    where a - b is <= 0 or >= 0, counting the observed difference as one resample.

    >>> one, two = (Bootstrap(Interval(0, 0, 0), np.array(s, float)) for s in ([3, 2], [1, 1]))
    >>> paired_bootstrap("a", "b", one, two).p_value
    0.6666666666666666
    """
    difference = first.samples - second.samples
    difference = difference[~np.isnan(difference)]
    if difference.size == 0:
        return PairedTest(a, b, math.nan, None)
    m = difference.size
    at_most, at_least = int(np.sum(difference <= 0)), int(np.sum(difference >= 0))
    p = min(1.0, 2 * (min(at_most, at_least) + 1) / (m + 1))
    better = (a if np.median(difference) > 0 else b) if p < alpha else None
    return PairedTest(a, b, p, better)


def overall_better(tests: Sequence[PairedTest], names: Sequence[str]) -> str | None:
    """The model significantly better than each of the others, if one is."""
    for name in names:
        against = [test for test in tests if test.involves(name)]
        if len(against) == len(names) - 1 and against and all(t.better == name for t in against):
            return name
    return None
