"""Evaluation as pure functions of labels and scores, in the manner of scikit-learn.

Binary metrics take `y_true` as 0/1 (1 = the positive class, COVID on the shipped models) and
`y_score` as the probability of the positive class. Intervals are 95%: Wilson's score interval
for proportions, a seeded percentile bootstrap for F1 and ROC AUC.

The functions compute with NaN for an undefined number (precision when nothing is called
positive); the reports turn it into None, so every report is valid JSON and says "n/a".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | None]:
        """For a report or a card: None where undefined (JSON has no NaN)."""
        return {key: defined(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, float | None]) -> Interval:
        """The inverse of `to_dict`: None becomes NaN again."""
        return cls(**{key: math.nan if value is None else value for key, value in values.items()})


def defined(value: float) -> float | None:
    """`value`, or None where it is undefined (NaN or infinite)."""
    return float(value) if math.isfinite(value) else None


def shown(value: float | None, pattern: str = "{:.1%}") -> str:
    """A reported number for a person: "n/a" where it is undefined."""
    return "n/a" if value is None or not math.isfinite(value) else pattern.format(value)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> Interval:
    """Wilson score interval for a proportion; (nan, 0, 1) when there are no trials."""
    if trials == 0:
        return Interval(math.nan, 0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def _binary_counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[int, int, int, int]:
    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    tp = int(np.sum(y_true & y_pred))
    tn = int(np.sum(~y_true & ~y_pred))
    fp = int(np.sum(~y_true & y_pred))
    fn = int(np.sum(y_true & ~y_pred))
    return tp, tn, fp, fn


def f1_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    tp, _, fp, fn = _binary_counts(y_true, y_pred)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random
    negative, ties counting half (Mann-Whitney U with mid-ranks)."""
    y_true = np.asarray(y_true, bool)
    positives, negatives = int(y_true.sum()), int((~y_true).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = _mid_ranks(np.asarray(y_score, float))
    return float((ranks[y_true].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _mid_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (vectorised: the bootstrap
    calls this a thousand times per interval)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1]
    ends = np.r_[starts[1:], len(values)] - 1
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = np.repeat((starts + ends) / 2 + 1, ends - starts + 1)
    return ranks


def roc_curve(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and the thresholds where they change
    (a slice is called positive when its score is >= the threshold)."""
    y_true = np.asarray(y_true, bool)
    y_score = np.asarray(y_score, float)
    order = np.argsort(-y_score, kind="mergesort")
    scores, truth = y_score[order], y_true[order]
    distinct = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(truth)[distinct]
    fps = (distinct + 1) - tps
    positives, negatives = max(1, int(y_true.sum())), max(1, int((~y_true).sum()))
    tpr = np.r_[0.0, tps / positives]
    fpr = np.r_[0.0, fps / negatives]
    thresholds = np.r_[np.inf, scores[distinct]]
    return fpr, tpr, thresholds


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, bins: int = 10) -> float:
    """Mean gap between confidence and accuracy over equal-width confidence bins, weighted
    by bin size. `y_prob` is (n, classes) probabilities; `y_true` class indices."""
    y_prob = np.asarray(y_prob, float)
    if len(y_prob) == 0:
        return math.nan
    confidence = y_prob.max(axis=1)
    correct = y_prob.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def reliability_bins(y_true: np.ndarray, y_score: np.ndarray, bins: int = 10) -> list[dict]:
    """Calibration in equal-width score bins: for each bin, how many slices fell in it, their
    mean predicted probability and the observed frequency of the outcome (`y_true` 0/1).

    A calibrated model's points lie on the diagonal. Bins are closed on the right, as in
    `expected_calibration_error`: (0.1, 0.2] is the second of ten, and 0 joins the first.
    Empty bins are kept, with None for both means, so every model has the same bins."""
    y_true = np.asarray(y_true, float)
    y_score = np.asarray(y_score, float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(y_score, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "mean_predicted": float(y_score[members].mean()) if count else None,
                "observed": float(y_true[members].mean()) if count else None,
            }
        )
    return rows


def bootstrap_interval(
    statistic,
    y_true: np.ndarray,
    y_score: np.ndarray,
    repeats: int = 1000,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap (resampling slices) of `statistic(y_true, y_score)`."""
    y_true = np.asarray(y_true)
    blocks = [np.array([index]) for index in range(len(y_true))]
    return _block_bootstrap(statistic, y_true, np.asarray(y_score), blocks, repeats, seed)


def group_bootstrap_interval(
    statistic,
    y_true: np.ndarray,
    y_score: np.ndarray,
    groups: list[str],
    repeats: int = 1000,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap that resamples whole groups (patients), not slices.

    Slices of one patient are alike, so resampling slices pretends to more evidence than
    there is; resampling patients gives the honest, wider interval."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    blocks = [np.array(indices) for indices in members.values()]
    return _block_bootstrap(statistic, y_true, y_score, blocks, repeats, seed)


def _block_bootstrap(
    statistic,
    y_true: np.ndarray,
    y_score: np.ndarray,
    blocks: list[np.ndarray],
    repeats: int,
    seed: int,
) -> Interval:
    """Percentile interval of `statistic` over resamples of whole blocks of indices;
    resamples where the statistic is undefined (NaN, say one class missing) are dropped."""
    value = statistic(y_true, y_score)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(repeats):
        picks = np.concatenate([blocks[i] for i in rng.integers(0, len(blocks), len(blocks))])
        result = statistic(y_true[picks], y_score[picks])
        if not math.isnan(result):
            samples.append(result)
    if not samples:
        return Interval(value, math.nan, math.nan)
    low, high = np.percentile(samples, [2.5, 97.5])
    return Interval(float(value), float(low), float(high))


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test on paired predictions of two models on the same images.

    Returns (only A right, only B right, two-sided p-value): under the null hypothesis the
    discordant pairs split as a fair coin, so p = P(Binomial(b + c, 1/2) as extreme)."""
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    discordant = only_a + only_b
    if discordant == 0:
        return only_a, only_b, 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1))
    return only_a, only_b, min(1.0, 2 * tail / 2**discordant)


def binary_report(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> dict:
    """Every binary metric with its 95% interval, plus the confusion counts and ROC points."""
    y_true = np.asarray(y_true, int)
    y_score = np.asarray(y_score, float)
    y_pred = (y_score >= threshold).astype(int)
    tp, tn, fp, fn = _binary_counts(y_true, y_pred)
    fpr, tpr, thresholds = roc_curve(y_true, y_score)
    return {
        "n": len(y_true),
        "threshold": threshold,
        "accuracy": wilson_interval(tp + tn, len(y_true)).to_dict(),
        "sensitivity": wilson_interval(tp, tp + fn).to_dict(),
        "specificity": wilson_interval(tn, tn + fp).to_dict(),
        "precision": wilson_interval(tp, tp + fp).to_dict(),
        "f1": bootstrap_interval(
            lambda t, s: f1_score(t, s >= threshold), y_true, y_score
        ).to_dict(),
        "roc_auc": bootstrap_interval(roc_auc, y_true, y_score).to_dict(),
        "confusion": {"tp": tp, "tn": tn, "fp": fp, "fn": fn},
        "roc": {
            "fpr": [round(float(v), 5) for v in fpr],
            "tpr": [round(float(v), 5) for v in tpr],
            "thresholds": [None if math.isinf(v) else round(float(v), 5) for v in thresholds],
        },
    }


def classification_report(
    y_true: np.ndarray, y_prob: np.ndarray, class_names: list[str], positive_index: int | None
) -> dict:
    """Metrics for any number of classes; binary metrics when there is a positive class."""
    y_true = np.asarray(y_true, int)
    y_pred = np.asarray(y_prob).argmax(axis=1)
    report = {
        "n": len(y_true),
        "class_names": class_names,
        "accuracy": wilson_interval(int(np.sum(y_pred == y_true)), len(y_true)).to_dict(),
        "confusion_matrix": confusion_matrix(y_true, y_pred, len(class_names)).tolist(),
        "expected_calibration_error": defined(expected_calibration_error(y_true, y_prob)),
    }
    if positive_index is not None and len(class_names) == 2:
        report["positive_class"] = class_names[positive_index]
        binary = binary_report(y_true == positive_index, np.asarray(y_prob)[:, positive_index])
        binary.pop("n")
        binary.pop("accuracy")
        report.update(binary)
    return report
