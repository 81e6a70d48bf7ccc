"""The Compare table: one row per metric, one value per model, and a paired test per pair.

`metrics_table` measures a `Comparison` (every model on the same slices); `card_comparison` is
the fallback when no labelled images can be read: each model's own validation numbers from its
card, which are NOT measured on the same slices, so no test and no model marked better.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

from ctdemo.evaluation.compare import Comparison
from ctdemo.evaluation.metrics import expected_calibration_error, f1_score, roc_auc, wilson_interval
from ctdemo.evaluation.numbers import Interval
from ctdemo.evaluation.paired import (
    ALPHA,
    BOOTSTRAP_REPEATS,
    PairedTest,
    bootstrap,
    mcnemar,
    overall_better,
    paired_bootstrap,
    pairs,
    resamples,
)
from ctdemo.models.cards import ModelCard

SAME_SLICES = "measured here on the same {n} labelled slices for every model"
OWN_SPLITS = (
    "from each model's card: its own validation split ({splits}), NOT the same slices, so no "
    "paired test and no 'better' mark; compare with care"
)
WILSON = "Wilson 95%"


class Metric(StrEnum):
    """A row of the table (its value is the key in the CSV export and in the cards)."""

    ACCURACY = "accuracy"
    SENSITIVITY = "sensitivity"
    SPECIFICITY = "specificity"
    PRECISION = "precision"
    F1 = "f1"
    ROC_AUC = "roc_auc"
    CALIBRATION = "calibration"
    INPUT = "input"
    PARAMETERS = "parameters"
    FILE_BYTES = "file_bytes"
    MS_PER_SLICE = "ms_per_slice"
    TRAINING_SECONDS = "training_seconds"
    VALIDATION_SLICES = "validation_slices"


LABELS = {
    Metric.ACCURACY: "Accuracy",
    Metric.SENSITIVITY: "Sensitivity",
    Metric.SPECIFICITY: "Specificity",
    Metric.PRECISION: "Precision",
    Metric.F1: "F1",
    Metric.ROC_AUC: "ROC AUC",
    Metric.CALIBRATION: "Expected calibration error",
    Metric.INPUT: "Input",
    Metric.PARAMETERS: "Parameters",
    Metric.FILE_BYTES: "File size",
    Metric.MS_PER_SLICE: "Milliseconds per slice (this server)",
    Metric.TRAINING_SECONDS: "Training time",
    Metric.VALIDATION_SLICES: "Validation slices",
}
BINARY = (Metric.SENSITIVITY, Metric.SPECIFICITY, Metric.PRECISION, Metric.F1, Metric.ROC_AUC)

Value = Interval | float | int | str | None


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


FORMATS: dict[Metric, Callable[[float | int | str], str]] = {
    Metric.CALIBRATION: "{:.3f}".format,
    Metric.PARAMETERS: "{:,}".format,
    Metric.FILE_BYTES: lambda size: f"{size / 2**20:.2f} MB",
    Metric.MS_PER_SLICE: "{:.2f} ms".format,
    Metric.TRAINING_SECONDS: _duration,
}
"""How a value that is not an interval is shown (anything else: as it is)."""


def cell_text(key: Metric, value: Value) -> str:
    """A cell for a person: "92.4% (89.3%–94.7%)", "0.912 (0.870–0.950)", "1.20 MB"; "–" where
    the value is unknown or undefined.

    >>> cell_text(Metric.ACCURACY, Interval(0.9, 0.8, 0.95)), cell_text(Metric.PARAMETERS, 12345)
    ('90.0% (80.0%–95.0%)', '12,345')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if not isinstance(value, Interval):
        return FORMATS.get(key, str)(value)
    pattern = "{:.3f}" if key is Metric.ROC_AUC else "{:.1%}"
    if math.isnan(value.value):
        return "–"
    if math.isnan(value.low):
        return pattern.format(value.value)
    return (
        f"{pattern.format(value.value)} ({pattern.format(value.low)}–{pattern.format(value.high)})"
    )


@dataclass(frozen=True)
class TableRow:
    """One metric (or property) of every model, and how it was measured and compared."""

    key: Metric
    label: str
    values: dict[str, Value]  # per model: an interval for scores, a number or text otherwise
    interval: str | None = None  # how the intervals were computed; None: no interval
    test: str | None = None  # how pairs were compared; None: they were not
    comparisons: tuple[PairedTest, ...] = ()  # one per pair of models
    better: str | None = None  # significantly better than every other model
    basis: str = ""  # which slices

    def text(self, name: str) -> str:
        return cell_text(self.key, self.values.get(name))


# ----------------------------------------------------------------- measured, same slices


def metrics_table(
    comparison: Comparison, repeats: int = BOOTSTRAP_REPEATS, seed: int = 0, alpha: float = ALPHA
) -> list[TableRow]:
    """One row per metric, one value per model, on the comparison's slices.

    Intervals are 95%: Wilson's for the proportions (accuracy, sensitivity, specificity,
    precision), a seeded percentile bootstrap of the slices for F1 and ROC AUC (the same as
    `metrics.bootstrap_interval` with this seed). Tests pair the models on the same slices:
    McNemar's exact test on paired correctness for accuracy (all slices), sensitivity (the
    positive slices) and specificity (the negative ones); a paired bootstrap for precision,
    F1 and ROC AUC, whose denominators differ between models. Calibration (expected
    calibration error) and the models' properties carry no test.
    """
    correct = {name: result.correct for name, result in comparison.models.items()}
    rows = [
        _scored(
            Metric.ACCURACY,
            {
                name: wilson_interval(int(right.sum()), comparison.n)
                for name, right in correct.items()
            },
            WILSON,
            "McNemar's exact test on paired correctness, all slices",
            [mcnemar(a, b, correct[a], correct[b], alpha) for a, b in pairs(comparison.names)],
        )
    ]
    if comparison.binary:
        rows += _binary_rows(comparison, repeats, seed, alpha)
    ece = {
        n: expected_calibration_error(r.y_true, r.probabilities)
        for n, r in comparison.models.items()
    }
    rows += [_calibration_row(ece), *_property_rows(comparison)]
    basis = SAME_SLICES.format(n=comparison.n)
    return [
        replace(row, basis=basis, better=overall_better(row.comparisons, comparison.names))
        for row in rows
    ]


def _scored(
    key: Metric,
    values: dict[str, Interval],
    interval: str,
    test: str,
    comparisons: list[PairedTest],
    label: str | None = None,
) -> TableRow:
    return TableRow(key, label or LABELS[key], values, interval, test, tuple(comparisons))


def _binary_rows(comparison: Comparison, repeats: int, seed: int, alpha: float) -> list[TableRow]:
    """Sensitivity and specificity (Wilson, McNemar on the positive / negative slices), then
    precision, F1 and ROC AUC (tested by a paired bootstrap)."""
    names, positive = comparison.names, comparison.is_positive
    called = {name: comparison.predicted_positive(name) for name in names}
    rows = []
    for key, among, side in (
        (Metric.SENSITIVITY, positive, "positive"),
        (Metric.SPECIFICITY, ~positive, "negative"),
    ):
        right = {n: (c if key is Metric.SENSITIVITY else ~c)[among] for n, c in called.items()}
        rows.append(
            _scored(
                key,
                {n: wilson_interval(int(r.sum()), int(among.sum())) for n, r in right.items()},
                WILSON,
                f"McNemar's exact test on paired correctness, {side} slices only",
                [mcnemar(a, b, right[a], right[b], alpha) for a, b in pairs(names)],
                f"{LABELS[key]} ({comparison.positive_class})" if side == "positive" else None,
            )
        )
    return rows + _bootstrapped_rows(comparison, called, repeats, seed, alpha)


def _bootstrapped_rows(
    comparison: Comparison, called: dict[str, np.ndarray], repeats: int, seed: int, alpha: float
) -> list[TableRow]:
    """Precision (Wilson interval), F1 and ROC AUC (bootstrap intervals), each tested by a
    paired bootstrap on the same resamples of the slices."""
    positive, picks = comparison.is_positive, resamples(comparison.n, repeats, seed)
    scores = {name: comparison.positive_score(name) for name in comparison.names}
    statistics = {
        Metric.PRECISION: {
            n: lambda i, c=c: _precision(positive[i], c[i]) for n, c in called.items()
        },
        Metric.F1: {n: lambda i, c=c: f1_score(positive[i], c[i]) for n, c in called.items()},
        Metric.ROC_AUC: {n: lambda i, s=s: roc_auc(positive[i], s[i]) for n, s in scores.items()},
    }
    precision = {
        n: wilson_interval(int(positive[c].sum()), int(c.sum())) for n, c in called.items()
    }
    boot_interval = f"percentile bootstrap 95% ({repeats} resamples of the slices, seed {seed})"
    rows = []
    for key, statistic in statistics.items():
        boots = {name: bootstrap(function, picks) for name, function in statistic.items()}
        rows.append(
            _scored(
                key,
                precision if key is Metric.PRECISION else {n: b.interval for n, b in boots.items()},
                WILSON if key is Metric.PRECISION else boot_interval,
                f"paired bootstrap of the difference ({repeats} resamples, seed {seed})",
                [
                    paired_bootstrap(a, b, boots[a], boots[b], alpha)
                    for a, b in pairs(comparison.names)
                ],
            )
        )
    return rows


def _precision(y_true: np.ndarray, called: np.ndarray) -> float:
    return float(y_true[called].mean()) if called.any() else math.nan


def _calibration_row(values: dict[str, float | None]) -> TableRow:
    """Expected calibration error: lower is better; no interval, no test."""
    return TableRow(Metric.CALIBRATION, LABELS[Metric.CALIBRATION], values)


def _fact(key: Metric, values: dict[str, Value]) -> TableRow:
    """A row that describes the models (size, training time) rather than scoring them."""
    return TableRow(key, LABELS[key], values)


def _input(card: ModelCard) -> str:
    return f"{card.image_size}×{card.image_size}×{card.channels}"


def _property_rows(comparison: Comparison) -> list[TableRow]:
    models = comparison.models.values()
    ms = {r.name: r.footprint.ms_per_slice for r in models}
    return [
        _fact(Metric.INPUT, {r.name: _input(r.card) for r in models}),
        _fact(Metric.PARAMETERS, {r.name: r.footprint.parameters or None for r in models}),
        _fact(Metric.FILE_BYTES, {r.name: r.footprint.file_bytes for r in models}),
        _fact(Metric.MS_PER_SLICE, {n: None if math.isnan(v) else v for n, v in ms.items()}),
        _fact(Metric.TRAINING_SECONDS, {r.name: r.card.training_seconds or None for r in models}),
    ]


# ------------------------------------------------------------------ without any images


def card_comparison(cards: Mapping[str, ModelCard]) -> list[TableRow]:
    """When no labelled images can be read: the models side by side from their cards alone.

    Every row's `basis` says that these are each model's own validation split, not the same
    slices; there are no paired tests and no model is marked better. A card without
    validation numbers shows "–"."""
    splits = ", ".join(
        f"{name}: {card.validation_slices or 'no'} validation slices"
        for name, card in cards.items()
    )
    positives = sorted({card.positive_class for card in cards.values()} - {None})
    recorded = "as recorded in the card (Wilson 95%; bootstrap for F1 and ROC AUC)"
    rows = []
    for key in (Metric.ACCURACY, *BINARY):
        label = LABELS[key]
        if key is Metric.SENSITIVITY and positives:
            label = f"{label} ({', '.join(positives)})"
        values = {name: _recorded(card, key) for name, card in cards.items()}
        rows.append(TableRow(key, label, values, recorded))
    ece = {name: card.validation.get("expected_calibration_error") for name, card in cards.items()}
    rows += [
        _calibration_row(ece),
        _fact(Metric.INPUT, {n: _input(c) for n, c in cards.items()}),
        _fact(Metric.PARAMETERS, {n: c.parameters or None for n, c in cards.items()}),
        _fact(Metric.TRAINING_SECONDS, {n: c.training_seconds or None for n, c in cards.items()}),
        _fact(Metric.VALIDATION_SLICES, {n: c.validation.get("n") for n, c in cards.items()}),
    ]
    basis = OWN_SPLITS.format(splits=splits)
    return [replace(row, basis=basis) for row in rows]


def _recorded(card: ModelCard, key: Metric) -> Interval | None:
    """The card's validation interval for `key` (as `Interval.to_dict` wrote it), if any."""
    value = card.validation.get(key)
    return Interval.from_dict(value) if value else None
