"""The Train page's shortcut lab: the lesson's settings, the marker's preview, the two curves and
what the finished run says about the marker. Streamlit-free: numbers and figures in and out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from ctdemo.evaluation.shortcut import (
    MarkerKind,
    Shortcut,
    marked,
    marker_mask,
    what_happened,
)
from ctdemo.io.folders import ArrayDataset
from ctdemo.models.cards import ModelCard

LESSON_SHORTCUT = Shortcut(kind=MarkerKind.SQUARE, carrier="COVID", fraction=1.0, size=0.3)
"""The one-click lesson: a square on every COVID training slice, validation clean. At 48 px a
square under about a fifth of the side was barely learned in 20 epochs of the page's CNN on
the demo set; at 0.3 it took over: 100% on marked validation, 67% on clean (measured here,
seed 0, `tests/test_shortcut.py`)."""
LESSON_QUESTION = "What if every COVID slice carried a marker?"
KEPT_EPOCH_NOTE = (
    "The kept model is the epoch with the lowest validation loss: with clean validation, "
    "early stopping sees the marker fail and keeps an early epoch; with validation marked the "
    "same way, as one hospital's own data would be, it keeps the model that reads the marker."
)
CURVE_NAMES = {"clean_accuracy": "clean validation", "marked_accuracy": "marked validation"}
CURVE_COLOURS = {"clean_accuracy": "#1f77b4", "marked_accuracy": "#d62728"}


def lesson_values() -> dict[str, object]:
    """The lesson's shortcut as the Train page's `marker*` settings."""
    lesson = LESSON_SHORTCUT
    return {
        "marker": lesson.kind.value,
        "marker_class": lesson.carrier,
        "marker_share": lesson.fraction,
        "marker_corner": lesson.corner.value,
        "marker_size": lesson.size,
        "marker_validation": lesson.validation.value,
    }


def first_slice_of(dataset: ArrayDataset, class_name: str) -> int:
    """The index of the first slice of `class_name` in `dataset` (0 if it has none)."""
    if class_name not in dataset.class_names:
        return 0
    return int(np.argmax(dataset.y == dataset.class_names.index(class_name)))


def preview(pixels: np.ndarray, shortcut: Shortcut) -> np.ndarray:
    """A model-input slice (side, side) in [0, 1] with the marker drawn, as the model sees it."""
    mask = marker_mask(shortcut, pixels.shape[0])
    return marked(pixels[np.newaxis, ..., np.newaxis], mask)[0, ..., 0]


def shortcut_curves(history: Mapping[str, Sequence[float]], best_epoch: int = 0) -> go.Figure:
    """Validation accuracy on clean and on marked slices, epoch by epoch, on one chart."""
    figure = go.Figure()
    for key, name in CURVE_NAMES.items():
        values = list(history.get(key, []))
        figure.add_trace(
            go.Scatter(
                x=list(range(1, len(values) + 1)),
                y=values,
                mode="lines+markers",
                name=name,
                line={"color": CURVE_COLOURS[key]},
                hovertemplate=f"{name}, epoch %{{x}}: %{{y:.0%}}<extra></extra>",
            )
        )
    if best_epoch:
        figure.add_vline(x=best_epoch, line_dash="dot", annotation_text="kept epoch")
    figure.update_layout(
        title="Validation accuracy: clean against marked slices",
        xaxis={
            "title": "epoch",
            "dtick": 1 if len(history.get("clean_accuracy", [])) <= 20 else None,
        },
        yaxis={"title": "accuracy", "range": [0, 1.02], "tickformat": ".0%"},
        height=320,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


@dataclass(frozen=True)
class ShortcutFindings:
    """What a finished run with a planted shortcut says, in numbers and one sentence."""

    sentence: str
    clean_accuracy: float
    marked_accuracy: float
    marker_heat: float | None  # mean share of Grad-CAM on the marker over the marked slices
    marker_heat_interval: tuple[float, float] | None
    marker_area: float  # the share a uniform map would put there

    def heat_text(self) -> str:
        if self.marker_heat is None:
            return "Heat on the marker: not measured (it needs a CNN's Grad-CAM)."
        low, high = self.marker_heat_interval or (self.marker_heat, self.marker_heat)
        return (
            f"Heat on the marker: {self.marker_heat:.0%} (95% interval {low:.0%}–{high:.0%}) of "
            f"the Grad-CAM on marked validation slices; the marker is {self.marker_area:.0%} of "
            "the slice, so a map that ignored it would put about that much there."
        )


def findings(card: ModelCard, history: Mapping[str, Sequence[float]]) -> ShortcutFindings | None:
    """The shortcut's findings from a finished run's card and history; None without one."""
    record = card.shortcut
    if not record or "clean_accuracy" not in record:
        return None
    heat = record.get("marker_heat")
    return ShortcutFindings(
        sentence=what_happened(
            list(history.get("clean_accuracy", [])),
            list(history.get("marked_accuracy", [])),
            card.best_epoch,
        ),
        clean_accuracy=float(record["clean_accuracy"]["value"]),
        marked_accuracy=float(record["marked_accuracy"]["value"]),
        marker_heat=None if heat is None else float(heat["mean"]),
        marker_heat_interval=None if heat is None else (float(heat["low"]), float(heat["high"])),
        marker_area=float(record["marker_area"]),
    )
