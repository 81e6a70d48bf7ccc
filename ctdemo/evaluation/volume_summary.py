"""One number per scan from its slices' COVID probabilities: three named rules, each with what
it assumes. The clinical unit is the patient, but the models read slices; no rule here has been
validated on patients, and they disagree on purpose.

Slices the "is this CT?" screen flagged, and slices without a verdict (NaN), are left out.

>>> summary = summarise([0.9, 0.2, 0.1, 0.8, 0.3])
>>> summary.scores["top_k_mean"], summary.scores["fraction_above"], summary.scores["maximum"]
(0.6666666666666666, 0.4, 0.9)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

TOP_FRACTION = 0.1
TOP_MINIMUM = 3
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class SummaryRule:
    """A way to turn slice probabilities into one score for the scan."""

    name: str
    label: str
    assumes: str
    score: Callable[[np.ndarray, float], float]


def top_k(count: int) -> int:
    """How many slices `top_k_mean` averages: a tenth of them, at least 3 (all if fewer)."""
    return min(count, max(TOP_MINIMUM, math.ceil(TOP_FRACTION * count)))


def _top_k_mean(probabilities: np.ndarray, threshold: float) -> float:
    return float(np.sort(probabilities)[::-1][: top_k(probabilities.size)].mean())


def _fraction_above(probabilities: np.ndarray, threshold: float) -> float:
    return float(np.mean(probabilities >= threshold))


def _maximum(probabilities: np.ndarray, threshold: float) -> float:
    return float(probabilities.max())


RULES = (
    SummaryRule(
        "top_k_mean",
        "mean of the top 10% of slices (at least 3)",
        "Assumes disease shows on a minority of slices but on more than one: averaging the "
        "most suspicious tenth keeps a single odd slice from deciding alone.",
        _top_k_mean,
    ),
    SummaryRule(
        "fraction_above",
        "share of slices at or above the threshold",
        "Assumes each slice's verdict is calibrated at the threshold: it measures how much of "
        "the scan looks affected, not how sure the model is, so a small lesion scores low.",
        _fraction_above,
    ),
    SummaryRule(
        "maximum",
        "highest slice probability",
        "Assumes one suspicious slice is enough, like a reader who stops at the first lesion: "
        "the most sensitive rule, and the one most easily set off by one artefact.",
        _maximum,
    ),
)


@dataclass(frozen=True)
class VolumeSummary:
    """Each rule's score (None when no slice is left to score) and which slices counted."""

    scores: dict[str, float | None]
    slices_used: int
    slices_flagged: int
    slices_without_verdict: int
    threshold: float

    def to_dict(self) -> dict:
        return {
            **{name: None if v is None else round(v, 6) for name, v in self.scores.items()},
            "threshold": self.threshold,
            "top_k": top_k(self.slices_used),
            "slices_used": self.slices_used,
            "slices_flagged": self.slices_flagged,
            "slices_without_verdict": self.slices_without_verdict,
        }


def summarise(
    probabilities: Sequence[float] | np.ndarray,
    flagged: Sequence[bool] | np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> VolumeSummary:
    """Every rule's score from per-slice COVID probabilities in [0, 1] (NaN: no verdict), the
    slices `flagged` as not CT left out."""
    values = np.asarray(probabilities, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"Expected one probability per slice, got shape {values.shape}.")
    known = np.isfinite(values)
    if ((values[known] < 0) | (values[known] > 1)).any():
        raise ValueError("Probabilities must lie in [0, 1].")
    marked = np.zeros(values.size, bool) if flagged is None else np.asarray(flagged, bool)
    if marked.shape != values.shape:
        raise ValueError(f"{marked.size} flags for {values.size} slices: give one per slice.")
    if not 0 < threshold < 1:
        raise ValueError(f"The threshold must lie strictly between 0 and 1, not {threshold}.")
    used = values[known & ~marked]
    scores = {rule.name: rule.score(used, threshold) if used.size else None for rule in RULES}
    return VolumeSummary(
        scores=scores,
        slices_used=int(used.size),
        slices_flagged=int(marked.sum()),
        slices_without_verdict=int((~known & ~marked).sum()),
        threshold=threshold,
    )
