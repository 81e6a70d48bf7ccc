"""Evaluation as pure functions of labels and scores, in the manner of scikit-learn.

Binary metrics take `y_true` as 0/1 (1 = the positive class, COVID on the shipped models) and
`y_score` as the probability of the positive class. Intervals are 95%: Wilson's score interval
for proportions, a seeded percentile bootstrap for F1 and ROC AUC.

The functions compute with NaN for an undefined number (precision when nothing is called
positive); the reports turn it into None, so every report is valid JSON and says "n/a".
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ctdemo.evaluation.numbers import Interval, defined
from ctdemo.evaluation.numbers import shown as shown  # re-exported for older callers

Z_95 = 1.959963984540054


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits on the last axis (shifted first: large logits stay finite)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> Interval:
    """Wilson score interval for a proportion (scipy's `binomtest(...).proportion_ci`); the
    confidence is the one of a two-sided normal `z`. (nan, 0, 1) when there are no trials.

    >>> round(wilson_interval(8, 10).low, 4)
    0.4902
    """
    if not 0 <= successes <= trials:
        raise ValueError(f"Need 0 <= successes <= trials, got {successes} of {trials}.")
    if trials == 0:
        return Interval(math.nan, 0.0, 1.0)
    confidence = 2 * float(stats.norm.cdf(z)) - 1
    ci = stats.binomtest(successes, trials).proportion_ci(confidence, method="wilson")
    return Interval(successes / trials, float(ci.low), float(ci.high))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes; classes absent from both still get
    their row and column, so every model's matrix has the same shape.

    >>> confusion_matrix([0, 1, 1], [0, 1, 0], 2).tolist()
    [[1, 0], [1, 1]]
    """
    y_true, y_pred = _paired(y_true, y_pred, "y_pred")
    y_true, y_pred = y_true.astype(int), y_pred.astype(int)
    for name, labels in (("y_true", y_true), ("y_pred", y_pred)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}.")
    counts = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _paired(y_true: np.ndarray, other: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Both as 1-D arrays of one length, or a ValueError that gives the shapes."""
    y_true, other = np.asarray(y_true), np.asarray(other)
    if y_true.ndim != 1 or y_true.shape != other.shape:
        raise ValueError(
            f"y_true and {name} must be 1-D and of one length, got {y_true.shape} and "
            f"{other.shape}."
        )
    return y_true, other


def _binary(y_true: np.ndarray, other: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """`y_true` as booleans (it must hold only 0 and 1) beside `other` as floats."""
    y_true, other = _paired(y_true, other, name)
    if y_true.dtype != bool and not np.all((y_true == 0) | (y_true == 1)):
        raise ValueError(f"y_true must hold 0 and 1 only, got {np.unique(y_true)[:5]}.")
    other = other.astype(float)
    if not np.isfinite(other).all():
        raise ValueError(f"{name} holds values that are not finite numbers.")
    return y_true.astype(bool), other


def _binary_counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, tn, fp, fn) of 0/1 predictions."""
    y_true, y_pred = _binary(y_true, y_pred, "y_pred")
    tn, fp, fn, tp = np.bincount(2 * y_true + (y_pred != 0), minlength=4).tolist()
    return tp, tn, fp, fn


def f1_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 of the positive class; NaN when there are no positives, true or predicted."""
    tp, _, fp, fn = _binary_counts(y_true, y_pred)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random
    negative, ties counting half (Mann-Whitney U from scipy's mid-ranks). NaN when a class is
    missing, so a bootstrap can drop that resample.

    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y_true, y_score = _binary(y_true, y_score, "y_score")
    positives = int(y_true.sum())
    negatives = len(y_true) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = stats.rankdata(y_score)
    return float((ranks[y_true].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and the thresholds where they change
    (a slice is called positive when its score is >= the threshold), as scikit-learn's
    `roc_curve(..., drop_intermediate=False)`; a missing class's rate stays 0.

    >>> roc_curve([0, 1], [0.2, 0.9])[1].tolist()
    [0.0, 1.0, 1.0]
    """
    y_true, y_score = _binary(y_true, y_score, "y_score")
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
    discordant pairs split as a fair coin, so p is scipy's `binomtest(b, b + c, 0.5)`.

    >>> mcnemar_exact([1, 1, 0], [0, 0, 0])
    (2, 0, 0.5)
    """
    correct_a, correct_b = _paired(correct_a, correct_b, "correct_b")
    correct_a, correct_b = correct_a.astype(bool), correct_b.astype(bool)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    if only_a + only_b == 0:
        return only_a, only_b, 1.0
    return only_a, only_b, float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


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
