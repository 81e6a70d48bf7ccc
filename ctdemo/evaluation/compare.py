"""Several models' probabilities on the same labelled slices, and what the page reads from them.

A `Comparison` holds every model's class probabilities on the same slices (computed by
`ctdemo.models.evaluate.evaluate_models`, or given to `comparison_from_probabilities`). Pure
functions of it give the per-slice views (`disagreements`, `threshold_tradeoff`) and the
charts' inputs (`roc_curves`, `calibration`, `confusion_panels`; `histories` and
`card_roc_curves` from the cards); `unseen_by_all` picks the slices no model trained on. The
table and its paired tests are in `evaluation.table`, the exports in `evaluation.report`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from ctdemo.evaluation.metrics import reliability_bins, roc_auc, roc_curve
from ctdemo.io.folders import ImageFolder
from ctdemo.models.cards import ModelCard, default_positive_class


@dataclass(frozen=True)
class Footprint:
    """What a model costs here, beside its answers (unknown: NaN, 0, None)."""

    ms_per_slice: float = math.nan  # median of timed batched predictions, per slice
    parameters: int = 0
    file_bytes: int | None = None


@dataclass(frozen=True)
class ModelResult:
    """One model's answers on the comparison's slices (in the comparison's order)."""

    name: str
    card: ModelCard
    probabilities: np.ndarray  # float64 (n, len(card.class_names))
    y_true: np.ndarray  # int (n,): the true class as an index into card.class_names
    footprint: Footprint = Footprint()

    @property
    def class_names(self) -> list[str]:
        return self.card.class_names

    @property
    def predicted_index(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def predicted(self) -> list[str]:
        return [self.class_names[i] for i in self.predicted_index]

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the predicted class."""
        return self.probabilities.max(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return self.predicted_index == self.y_true

    def score(self, class_name: str) -> np.ndarray:
        """Probability this model gives `class_name` on every slice."""
        return self.probabilities[:, self.class_names.index(class_name)]


@dataclass(frozen=True)
class Comparison:
    """Every model's probabilities on the same labelled slices. Picklable (no Keras objects),
    so a page can cache it."""

    files: tuple[str, ...]
    labels: tuple[str, ...]  # true class name per slice
    class_names: tuple[str, ...]  # the data's classes
    positive_class: str | None  # binary metrics need one; None for more than two classes
    models: dict[str, ModelResult]
    skipped: tuple[tuple[str, str], ...] = ()  # (file, why it could not be read)

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def names(self) -> list[str]:
        return list(self.models)

    @property
    def binary(self) -> bool:
        return self.positive_class is not None

    @property
    def is_positive(self) -> np.ndarray:
        return np.array([label == self.positive_class for label in self.labels])

    def predicted_positive(self, name: str) -> np.ndarray:
        return np.array([label == self.positive_class for label in self.models[name].predicted])

    def positive_score(self, name: str) -> np.ndarray:
        return self.models[name].score(self.positive_class)


def check_classes(cards: Mapping[str, ModelCard], class_names: Sequence[str]) -> None:
    """Refuse, naming the model, one whose classes do not include every class of the data."""
    for name, card in cards.items():
        missing = [c for c in class_names if c not in card.class_names]
        if missing:
            raise ValueError(
                f"{name} cannot be compared on this data: it does not know the class(es) "
                f"{', '.join(missing)} (it knows {', '.join(card.class_names)}). Compare models "
                "trained on the same classes, or choose data with only the classes they know."
            )


def comparison_from_probabilities(
    cards: Mapping[str, ModelCard],
    probabilities: Mapping[str, np.ndarray],
    labels: Sequence[str],
    *,
    files: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    positive_class: str | None = None,
    footprints: Mapping[str, Footprint] | None = None,
    skipped: Sequence[tuple[str, str]] = (),
) -> Comparison:
    """A `Comparison` from each model's probabilities (rows in `labels`' order, columns in its
    card's class order). `class_names`: the data's classes (default: the sorted labels). The
    positive class is `positive_class`, else the first card's if the data has it, else
    `cards.default_positive_class`; none when the data has more than two classes.

    Raises ValueError, naming the model, when a model does not know a class of the data or
    its probabilities are not one row per slice and one column per class of its card.

    >>> card = ModelCard("m", ["a", "b"], "a", {}, {})
    >>> comparison_from_probabilities({"m": card}, {"m": [[0.9, 0.1]]}, ["b"]).models["m"].correct
    array([False])
    """
    class_names = list(class_names or sorted(set(labels)))
    check_classes(cards, class_names)
    y = np.array([class_names.index(label) for label in labels], dtype=int)
    results = {}
    for name, card in cards.items():
        probs = np.asarray(probabilities[name], float)
        if probs.shape != (len(labels), len(card.class_names)):
            raise ValueError(
                f"{name} gave {probs.shape[-1] if probs.ndim == 2 else '?'} scores on "
                f"{len(probs)} slices, but its card names {len(card.class_names)} classes "
                f"({', '.join(card.class_names)}) and there are {len(labels)} slices."
            )
        mapping = np.array([card.class_names.index(c) for c in class_names])
        footprint = (footprints or {}).get(name, Footprint())
        results[name] = ModelResult(name, card, probs, mapping[y], footprint)
    return Comparison(
        files=tuple(files or [str(i) for i in range(len(labels))]),
        labels=tuple(labels),
        class_names=tuple(class_names),
        positive_class=_positive(class_names, list(cards.values()), positive_class),
        models=results,
        skipped=tuple(skipped),
    )


def _positive(class_names: list[str], cards: list[ModelCard], requested: str | None):
    if len(class_names) != 2:
        return None
    if requested is not None:
        if requested not in class_names:
            raise ValueError(f"The positive class {requested} is not one of the data's classes.")
        return requested
    if cards and cards[0].positive_class in class_names:
        return cards[0].positive_class
    return default_positive_class(class_names)


# ----------------------------------------------------------------------- per-slice views


@dataclass(frozen=True)
class Answer:
    """One model's prediction on one slice, with the probability it gives that class."""

    model: str
    predicted: str
    probability: float


@dataclass(frozen=True)
class Disagreement:
    """A slice two models classify differently."""

    index: int
    file: str
    truth: str
    first: Answer
    second: Answer

    @property
    def answers(self) -> tuple[Answer, Answer]:
        return self.first, self.second

    @property
    def right(self) -> str | None:
        """The model that got this slice right, if either did."""
        return next((a.model for a in self.answers if a.predicted == self.truth), None)

    @property
    def confidence(self) -> float:
        """How sure the surer model is."""
        return max(self.first.probability, self.second.probability)

    @property
    def both_sure(self) -> float:
        """How sure the less sure model is."""
        return min(self.first.probability, self.second.probability)


class SortBy(StrEnum):
    CONFIDENCE = "confidence"  # where one model is surest first
    BOTH = "both"  # where both are sure and still disagree first
    FILE = "file"  # the data's order


def disagreements(
    comparison: Comparison, a: str, b: str, sort_by: SortBy | str = SortBy.CONFIDENCE
) -> list[Disagreement]:
    """The slices where models `a` and `b` predict different classes, sorted by `sort_by`."""
    if sort_by not in set(SortBy):
        raise ValueError(f"sort_by must be one of {', '.join(SortBy)}, not {sort_by!r}.")
    answers = zip(_answers(comparison.models[a]), _answers(comparison.models[b]), strict=True)
    rows = [
        Disagreement(i, comparison.files[i], comparison.labels[i], one, two)
        for i, (one, two) in enumerate(answers)
        if one.predicted != two.predicted
    ]
    keys = {
        SortBy.CONFIDENCE: lambda row: -row.confidence,
        SortBy.BOTH: lambda row: -row.both_sure,
        SortBy.FILE: lambda row: row.index,
    }
    return sorted(rows, key=keys[SortBy(sort_by)])


def _answers(result: ModelResult) -> list[Answer]:
    pairs = zip(result.predicted, result.confidence, strict=True)
    return [Answer(result.name, predicted, float(p)) for predicted, p in pairs]


@dataclass(frozen=True)
class OperatingPoint:
    """A model's confusion counts when slices at or above `threshold` are called positive."""

    threshold: float
    tp: int
    fn: int
    tn: int
    fp: int

    @property
    def sensitivity(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def specificity(self) -> float:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else math.nan


def threshold_tradeoff(
    comparison: Comparison, model: str, thresholds: Iterable[float]
) -> list[OperatingPoint]:
    """`model`'s operating point at each threshold on its positive-class probability. A
    threshold <= 0 calls every slice positive, one >= 1 none (so the slider's ends are always
    sensitivity 1 and specificity 1, whatever rounding made of saturated probabilities)."""
    if not comparison.binary:
        raise ValueError("A threshold needs two classes and a positive class.")
    positive = comparison.is_positive
    scores = comparison.positive_score(model)
    points = []
    for threshold in map(float, thresholds):
        called = (
            scores >= threshold if 0 < threshold < 1 else np.full(positive.shape, threshold <= 0)
        )
        points.append(
            OperatingPoint(
                threshold,
                tp=int(np.sum(called & positive)),
                fn=int(np.sum(~called & positive)),
                tn=int(np.sum(~called & ~positive)),
                fp=int(np.sum(called & ~positive)),
            )
        )
    return points


# ------------------------------------------------------------------------- chart inputs


def roc_curves(comparison: Comparison) -> dict[str, tuple[list, list, float]]:
    """For `charts.roc_overlay`: model -> (false-positive rates, true-positive rates, AUC)."""
    if not comparison.binary:
        return {}
    positive = comparison.is_positive
    curves = {}
    for name in comparison.names:
        scores = comparison.positive_score(name)
        fpr, tpr, _ = roc_curve(positive, scores)
        curves[name] = (fpr.tolist(), tpr.tolist(), roc_auc(positive, scores))
    return curves


def calibration(comparison: Comparison, bins: int = 10) -> dict[str, list[dict]]:
    """For `charts.reliability_diagram`: model -> `metrics.reliability_bins`. Binary data:
    the positive-class probability against how often the slice is positive; more classes:
    the predicted class's probability against how often it is right."""
    result = {}
    for name, model in comparison.models.items():
        if comparison.binary:
            result[name] = reliability_bins(
                comparison.is_positive, comparison.positive_score(name), bins
            )
        else:
            result[name] = reliability_bins(model.correct, model.confidence, bins)
    return result


def confusion_panels(comparison: Comparison) -> dict[str, tuple[list, list[str], list[str]]]:
    """For `charts.confusion_matrices`: model -> (counts, true classes (the data's, rows),
    predicted classes (the model's, columns))."""
    panels = {}
    for name, model in comparison.models.items():
        columns = model.class_names
        matrix = np.zeros((len(comparison.class_names), len(columns)), dtype=int)
        for truth, predicted in zip(comparison.labels, model.predicted, strict=True):
            matrix[comparison.class_names.index(truth), columns.index(predicted)] += 1
        panels[name] = (matrix.tolist(), list(comparison.class_names), list(columns))
    return panels


def histories(cards: Mapping[str, ModelCard]) -> list[tuple[str, dict]]:
    """For `charts.run_overlay`: the training histories the cards hold (uploaded models have
    none and are left out)."""
    return [(name, card.history) for name, card in cards.items() if card.history.get("loss")]


def card_roc_curves(cards: Mapping[str, ModelCard]) -> dict[str, tuple[list, list, float]]:
    """For `charts.roc_overlay` from the cards' own validation splits (not the same slices)."""
    curves = {}
    for name, card in cards.items():
        roc = card.validation.get("roc") or {}
        if roc.get("fpr") and roc.get("tpr"):
            auc = (card.validation.get("roc_auc") or {}).get("value", math.nan)
            curves[name] = (list(roc["fpr"]), list(roc["tpr"]), auc)
    return curves


# ------------------------------------------------------------------------ fair evaluation


def unseen_by_all(folder: ImageFolder, cards: Mapping[str, ModelCard]) -> tuple[ImageFolder, str]:
    """The slices of `folder` that no model trained on, and a sentence saying how that was
    decided: a model with a validation file list (every model this app trains) is scored
    only on those files; a model without one (an uploaded model) is taken at its word."""
    relative = [folder.relative(path) for path in folder.files]
    keep = np.ones(len(relative), dtype=bool)
    limited = []
    for name, card in cards.items():
        validation = set(card.validation.get("files") or [])
        if validation:
            keep &= np.array([file in validation for file in relative])
            limited.append(name)
    unknown = [name for name, card in cards.items() if not card.validation.get("files")]
    note = f"{int(keep.sum())} of {len(keep)} slices"
    if limited:
        note += f" are in the validation split of {', '.join(limited)} (never trained on)"
    if unknown:
        note += f"; what {', '.join(unknown)} trained on is unknown"
    indices = np.flatnonzero(keep)
    subset = ImageFolder(
        root=folder.root,
        class_names=folder.class_names,
        files=[folder.files[i] for i in indices],
        labels=folder.labels[indices],
        skipped=folder.skipped,
    )
    return subset, note + "."
