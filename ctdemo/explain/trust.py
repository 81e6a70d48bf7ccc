"""How far to trust a heatmap: the share of its heat inside the lungs, and its faithfulness.

    report = assess(model, card, pixels, "gradcam", class_index)
    report.lung_share, report.lung_area, report.faithfulness.score

Per slice: the explanation (`ctdemo.explain.saliency`), the lungs (`ctdemo.explain.lungs`,
on the slice at its own size), the share of the heat that falls inside them against the share
of the slice they cover (a map that ignored anatomy would score its area), and the deletion
curve (`ctdemo.explain.faithfulness`) through the model itself. Per model, over many slices:
means with 95% bootstrap intervals, and a paired test when two models explain the same
slices, the way accuracy is compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
from scipy import stats

from ctdemo.explain.faithfulness import DeletionCurve, deletion_curve
from ctdemo.explain.lungs import LungMask, heat_share, segment_lungs
from ctdemo.explain.methods import to_slice_geometry
from ctdemo.explain.saliency import explain
from ctdemo.models.cards import ModelCard
from ctdemo.models.inference import model_input, probabilities

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class HeatmapReport:
    """One slice's explanation and the numbers that say how far to trust it."""

    heatmap: np.ndarray  # at the model's input size, in [0, 1]
    on_slice: np.ndarray  # the same, mapped onto the slice's own shape
    lungs: LungMask
    faithfulness: DeletionCurve

    @property
    def lung_share(self) -> float | None:
        """The share of the heat inside the lungs; None where no plausible lungs were found."""
        return heat_share(self.on_slice, self.lungs.mask) if self.lungs.ok else None

    @property
    def lung_area(self) -> float | None:
        return self.lungs.area_share if self.lungs.ok else None

    def lung_sentence(self) -> str:
        if self.lung_share is None:
            return f"The lungs could not be found on this slice ({self.lungs.reason})."
        ratio = self.lung_share / self.lung_area if self.lung_area else 0.0
        return (
            f"Heat inside the lungs: {self.lung_share:.0%} (the lungs are {self.lung_area:.0%} "
            f"of the slice: {ratio:.1f} times what a map blind to anatomy would put there)."
        )


def assess(
    model: keras.Model, card: ModelCard, pixels: np.ndarray, method: str, class_index: int
) -> HeatmapReport:
    """Explain one decoded slice and measure the explanation."""
    x = model_input(pixels, card)
    heatmap = explain(model, x, method, class_index)
    curve = deletion_curve(lambda batch: probabilities(model, batch)[:, class_index], x, heatmap)
    return HeatmapReport(
        heatmap=heatmap,
        on_slice=to_slice_geometry(heatmap, pixels.shape),
        lungs=segment_lungs(pixels),
        faithfulness=curve,
    )


@dataclass(frozen=True)
class Estimate:
    """A mean over slices with its 95% bootstrap interval."""

    mean: float
    low: float
    high: float
    n: int


def estimate(values: Sequence[float | None], seed: int = 0) -> Estimate | None:
    """Mean and 95% percentile-bootstrap interval of the values that are not None."""
    kept = np.array([value for value in values if value is not None], dtype=np.float64)
    if len(kept) == 0:
        return None
    if len(kept) == 1 or np.ptp(kept) == 0:
        return Estimate(float(kept.mean()), float(kept.mean()), float(kept.mean()), len(kept))
    interval = stats.bootstrap(
        (kept,),
        np.mean,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return Estimate(float(kept.mean()), float(interval.low), float(interval.high), len(kept))


def paired_p_value(a: Sequence[float | None], b: Sequence[float | None]) -> float | None:
    """Wilcoxon's signed-rank test on the slices both models have a value for; None when
    fewer than 6 pairs differ (no p-value below 0.05 is then possible)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, not {len(a)} and {len(b)}")
    pairs = np.array(
        [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None],
        dtype=np.float64,
    ).reshape(-1, 2)
    if np.count_nonzero(pairs[:, 0] - pairs[:, 1]) < 6:
        return None
    return float(stats.wilcoxon(pairs[:, 0], pairs[:, 1]).pvalue)
