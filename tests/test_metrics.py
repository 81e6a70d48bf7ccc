"""ctdemo.evaluation.metrics against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctdemo.evaluation.metrics import (
    Interval,
    binary_report,
    bootstrap_interval,
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    f1_score,
    group_bootstrap_interval,
    mcnemar_exact,
    reliability_bins,
    roc_auc,
    roc_curve,
    softmax,
    wilson_interval,
)

# the small binary case used below, worked by hand:
#   threshold 0.5 -> predictions 1 1 1 0 | 1 0 0 0 -> tp 3, fn 1, fp 1, tn 3
#   AUC: positives beat negatives in 4 + 4 + 3 + 2 = 13 of 16 pairs
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
S = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.4])


def brute_force_auc(y_true, y_score) -> float:
    positives = [s for t, s in zip(y_true, y_score, strict=True) if t]
    negatives = [s for t, s in zip(y_true, y_score, strict=True) if not t]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


# ---------------------------------------------------------------------------- counts


def test_confusion_matrix_rows_true_columns_predicted():
    matrix = confusion_matrix([0, 1, 2, 2, 1, 0, 2], [0, 2, 2, 1, 1, 0, 2], num_classes=3)
    np.testing.assert_array_equal(matrix, [[2, 0, 0], [0, 1, 1], [0, 1, 2]])
    assert matrix.sum() == 7


def test_confusion_matrix_keeps_absent_classes():
    matrix = confusion_matrix([0, 0], [0, 0], num_classes=3)
    assert matrix.shape == (3, 3)
    assert matrix[0, 0] == 2
    assert matrix.sum() == 2


def test_f1_hand_cases():
    # tp 2, fp 1, fn 1 -> 2*2 / (4 + 1 + 1)
    assert f1_score([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(4 / 6)
    assert f1_score(Y, S >= 0.5) == pytest.approx(0.75)
    assert f1_score([1, 0], [1, 0]) == 1.0
    assert f1_score([1, 1], [0, 0]) == 0.0
    assert math.isnan(f1_score([0, 0], [0, 0]))  # no positives anywhere


# ---------------------------------------------------------------------------- intervals


def test_wilson_interval_known_value():
    interval = wilson_interval(8, 10)
    assert interval.value == pytest.approx(0.8)
    assert interval.low == pytest.approx(0.4902, abs=1e-4)
    assert interval.high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_interval_extremes():
    zero = wilson_interval(0, 10)
    assert zero.value == 0.0 and zero.low == 0.0
    assert zero.high == pytest.approx(0.2775, abs=1e-4)
    full = wilson_interval(10, 10)
    assert full.high == pytest.approx(1.0)  # exactly 1 up to rounding
    assert full.low == pytest.approx(0.7225, abs=1e-4)
    empty = wilson_interval(0, 0)
    assert math.isnan(empty.value)
    assert (empty.low, empty.high) == (0.0, 1.0)


def test_wilson_interval_narrows_with_more_trials():
    small, large = wilson_interval(8, 10), wilson_interval(800, 1000)
    assert large.high - large.low < (small.high - small.low) / 5
    assert large.low < 0.8 < large.high


def test_interval_to_dict():
    assert Interval(0.5, 0.1, 0.9).to_dict() == {"value": 0.5, "low": 0.1, "high": 0.9}


def closed_form_wilson(successes: int, trials: int, z: float = 1.959963984540054):
    """The textbook formula (the hand-written code scipy's `proportion_ci` replaced)."""
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.mark.parametrize("trials", [1, 2, 7, 60])
def test_wilson_interval_equals_the_closed_form(trials):
    for successes in range(trials + 1):
        interval = wilson_interval(successes, trials)
        low, high = closed_form_wilson(successes, trials)
        assert interval.low == pytest.approx(low, abs=1e-12)
        assert interval.high == pytest.approx(high, abs=1e-12)
    wider = wilson_interval(3, 7, z=2.5758293035489)  # 99%
    low, high = closed_form_wilson(3, 7, z=2.5758293035489)
    assert (wider.low, wider.high) == (pytest.approx(low), pytest.approx(high))


# ---------------------------------------------------------------------------- ROC


def test_roc_auc_hand_case():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc(Y, S) == pytest.approx(13 / 16)


def test_roc_auc_ties_count_half():
    # positive 0.5 ties negative 0.5 (half a win); the other three pairs are wins
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(3.5 / 4)
    assert roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)


def test_roc_auc_extremes_and_undefined():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.5, 0.9]))
    assert math.isnan(roc_auc([0, 0], [0.1, 0.5]))


def test_roc_auc_matches_brute_force_with_many_ties():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 300)
    y_score = np.round(rng.random(300) * 0.6 + 0.4 * y_true, 1)  # rounding makes ties
    assert roc_auc(y_true, y_score) == pytest.approx(brute_force_auc(y_true, y_score))


def test_roc_curve_points_by_hand():
    fpr, tpr, thresholds = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])


def test_roc_curve_with_ties_and_area():
    y_true, y_score = [0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]
    fpr, tpr, thresholds = roc_curve(y_true, y_score)
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.5, 0.2])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 1.0])
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc(y_true, y_score))


def test_roc_curve_thresholds_mean_score_at_least_threshold():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, 50).astype(bool)
    y_score = np.round(rng.random(50), 2)
    fpr, tpr, thresholds = roc_curve(y_true, y_score)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    for f, t, threshold in zip(fpr[1:], tpr[1:], thresholds[1:], strict=True):
        called = y_score >= threshold
        assert t == pytest.approx(np.mean(called[y_true]))
        assert f == pytest.approx(np.mean(called[~y_true]))


# ---------------------------------------------------------------------------- calibration


def test_expected_calibration_error_one_slice_per_bin():
    probs = np.array([[0.95, 0.05], [0.15, 0.85], [0.28, 0.72], [0.35, 0.65]])
    y_true = np.array([0, 0, 1, 1])  # right, wrong, right, right
    # bins 9, 8, 7, 6 hold one slice each: (0.05 + 0.85 + 0.28 + 0.35) / 4
    assert expected_calibration_error(y_true, probs) == pytest.approx(1.53 / 4)


def test_expected_calibration_error_single_bin_is_accuracy_gap():
    probs = np.array([[0.95, 0.05], [0.15, 0.85], [0.28, 0.72], [0.35, 0.65]])
    y_true = np.array([0, 0, 1, 1])
    # accuracy 0.75, mean confidence 0.7925
    assert expected_calibration_error(y_true, probs, bins=1) == pytest.approx(0.0425)


def test_expected_calibration_error_perfect_and_empty():
    assert expected_calibration_error([0, 1, 1], np.eye(2)[[0, 1, 1]]) == pytest.approx(0.0)
    assert math.isnan(expected_calibration_error([], np.zeros((0, 2))))


def test_reliability_bins_hand_case():
    # four bins, closed on the right: (0, .25] (0 joins it), (.25, .5], (.5, .75], (.75, 1]
    scores = [0.0, 0.1, 0.25, 0.3, 0.8, 0.9, 1.0]
    outcome = [0, 1, 0, 1, 1, 1, 0]
    bins = reliability_bins(outcome, scores, bins=4)
    assert [(b["low"], b["high"]) for b in bins] == [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1)]
    assert [b["count"] for b in bins] == [3, 1, 0, 3]
    assert bins[0]["mean_predicted"] == pytest.approx(0.35 / 3)
    assert bins[0]["observed"] == pytest.approx(1 / 3)
    assert (bins[1]["mean_predicted"], bins[1]["observed"]) == (pytest.approx(0.3), 1.0)
    assert bins[2]["mean_predicted"] is None and bins[2]["observed"] is None
    assert bins[3]["mean_predicted"] == pytest.approx(0.9)
    assert bins[3]["observed"] == pytest.approx(2 / 3)


def test_reliability_bins_of_a_calibrated_score_lie_on_the_diagonal():
    # in each bin, the outcome's frequency equals the score
    scores = np.repeat([0.05, 0.45, 0.85], 20)
    outcome = np.r_[np.arange(20) < 1, np.arange(20) < 9, np.arange(20) < 17]
    filled = [b for b in reliability_bins(outcome, scores) if b["count"]]
    assert [b["count"] for b in filled] == [20, 20, 20]
    for b in filled:
        assert b["observed"] == pytest.approx(b["mean_predicted"])


# ---------------------------------------------------------------------------- McNemar


def test_mcnemar_all_discordant_one_way():
    correct_a = np.zeros(5, bool)
    correct_b = np.ones(5, bool)
    assert mcnemar_exact(correct_a, correct_b) == (0, 5, pytest.approx(0.0625))


def test_mcnemar_equal_discordance_is_one():
    a = np.array([1, 1, 1, 0, 0, 0, 1, 0], bool)
    b = np.array([0, 0, 0, 1, 1, 1, 1, 0], bool)
    assert mcnemar_exact(a, b) == (3, 3, 1.0)
    assert mcnemar_exact([1, 0], [1, 0]) == (0, 0, 1.0)


def test_mcnemar_hand_case_with_comb():
    a = np.array([1] * 2 + [0] * 8 + [1] * 20 + [0] * 5, bool)
    b = np.array([0] * 2 + [1] * 8 + [1] * 20 + [0] * 5, bool)
    expected = 2 * (math.comb(10, 0) + math.comb(10, 1) + math.comb(10, 2)) / 2**10
    only_a, only_b, p = mcnemar_exact(a, b)
    assert (only_a, only_b) == (2, 8)
    assert p == pytest.approx(expected)
    assert p == pytest.approx(0.109375)
    assert mcnemar_exact(b, a) == (8, 2, pytest.approx(expected))


def test_mcnemar_equals_the_exact_binomial_sum():
    for only_a in range(0, 13):
        for only_b in range(0, 13):
            a = np.r_[np.ones(only_a), np.zeros(only_b), np.ones(4)].astype(bool)
            b = np.r_[np.zeros(only_a), np.ones(only_b), np.ones(4)].astype(bool)
            n = only_a + only_b
            tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
            expected = min(1.0, 2 * tail / 2**n) if n else 1.0
            assert mcnemar_exact(a, b) == (only_a, only_b, pytest.approx(expected, rel=1e-12))


# ---------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_deterministic_by_seed():
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 2, 60)
    y_score = np.clip(0.3 * y_true + rng.random(60) * 0.7, 0, 1)
    first = bootstrap_interval(roc_auc, y_true, y_score, repeats=200, seed=11)
    again = bootstrap_interval(roc_auc, y_true, y_score, repeats=200, seed=11)
    other = bootstrap_interval(roc_auc, y_true, y_score, repeats=200, seed=12)
    assert first == again
    assert (first.low, first.high) != (other.low, other.high)
    assert first.value == pytest.approx(roc_auc(y_true, y_score))
    assert first.low <= first.value <= first.high
    assert 0.0 <= first.low < first.high <= 1.0


def test_bootstrap_of_an_undefined_statistic_is_nan():
    interval = bootstrap_interval(roc_auc, np.ones(5), np.linspace(0, 1, 5), repeats=20)
    assert math.isnan(interval.value)
    assert math.isnan(interval.low) and math.isnan(interval.high)


# ---------------------------------------------------------------------------- reports


def test_binary_report_hand_case():
    report = binary_report(Y, S)
    assert set(report) == {
        "n",
        "threshold",
        "accuracy",
        "sensitivity",
        "specificity",
        "precision",
        "f1",
        "roc_auc",
        "confusion",
        "roc",
    }
    assert report["n"] == 8
    assert report["threshold"] == 0.5
    assert report["confusion"] == {"tp": 3, "tn": 3, "fp": 1, "fn": 1}
    for key in ("accuracy", "sensitivity", "specificity", "precision"):
        assert report[key]["value"] == pytest.approx(0.75)
        assert set(report[key]) == {"value", "low", "high"}
    assert report["accuracy"]["low"] == pytest.approx(wilson_interval(6, 8).low)
    assert report["sensitivity"]["high"] == pytest.approx(wilson_interval(3, 4).high)
    assert report["f1"]["value"] == pytest.approx(0.75)
    assert report["roc_auc"]["value"] == pytest.approx(13 / 16)
    roc = report["roc"]
    assert roc["thresholds"][0] is None  # infinity, JSON-safe
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"]) == 9


def test_binary_report_threshold_changes_counts():
    report = binary_report(Y, S, threshold=0.75)
    assert report["confusion"] == {"tp": 2, "tn": 4, "fp": 0, "fn": 2}
    assert report["specificity"]["value"] == 1.0
    assert report["sensitivity"]["value"] == 0.5


def test_classification_report_binary_with_positive_class():
    # class 0 is the positive class here; probabilities of [class 0, class 1]
    y_true = np.array([0, 0, 0, 1, 1, 1])
    p0 = np.array([0.9, 0.7, 0.4, 0.6, 0.2, 0.1])
    y_prob = np.column_stack([p0, 1 - p0])
    report = classification_report(y_true, y_prob, ["COVID", "non-COVID"], positive_index=0)
    assert report["n"] == 6
    assert report["class_names"] == ["COVID", "non-COVID"]
    assert report["positive_class"] == "COVID"
    assert report["accuracy"]["value"] == pytest.approx(4 / 6)
    assert report["confusion_matrix"] == [[2, 1], [1, 2]]
    assert report["confusion"] == {"tp": 2, "tn": 2, "fp": 1, "fn": 1}
    assert report["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert report["roc_auc"]["value"] == pytest.approx(8 / 9)
    assert 0.0 <= report["expected_calibration_error"] <= 1.0
    assert "n" in report and "roc" in report and "f1" in report


def test_classification_report_three_classes_has_no_binary_metrics():
    y_true = np.array([0, 1, 2, 2])
    y_prob = np.array([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.0, 0.1, 0.9]])
    report = classification_report(y_true, y_prob, ["a", "b", "c"], positive_index=None)
    assert set(report) == {
        "n",
        "class_names",
        "accuracy",
        "confusion_matrix",
        "expected_calibration_error",
    }
    assert report["accuracy"]["value"] == pytest.approx(0.75)
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


# ---------------------------------------------------------------------------- softmax


def test_softmax_rows_sum_to_one_and_are_stable():
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    probs = softmax(logits)
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs[2], [1 / 3] * 3)
    np.testing.assert_allclose(probs[1], [1.0, 0.0, 0.0], atol=1e-12)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(probs[0], e / e.sum())
    np.testing.assert_allclose(softmax(logits[:1] + 50.0), probs[:1])  # shift-invariant


def test_group_bootstrap_is_wider_than_slice_bootstrap_for_clustered_errors():
    # 10 patients of 20 slices; each patient is either all right or all wrong.
    y_true = np.ones(200, int)
    y_score = np.repeat([1.0, 1, 1, 1, 1, 1, 1, 0, 0, 0], 20)
    groups = [f"p{i // 20}" for i in range(200)]

    def accuracy(t, s):
        return float(np.mean((s >= 0.5) == t))

    slices = bootstrap_interval(accuracy, y_true, y_score, repeats=400)
    patients = group_bootstrap_interval(accuracy, y_true, y_score, groups, repeats=400)
    assert slices.value == patients.value == pytest.approx(0.7)
    assert (patients.high - patients.low) > 2 * (slices.high - slices.low)
    again = group_bootstrap_interval(accuracy, y_true, y_score, groups, repeats=400)
    assert again == patients


def test_group_bootstrap_of_one_patient_per_slice_matches_slice_bootstrap():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, 80)
    y_score = rng.random(80)
    groups = [str(i) for i in range(80)]
    a = bootstrap_interval(roc_auc, y_true, y_score, repeats=300, seed=4)
    b = group_bootstrap_interval(roc_auc, y_true, y_score, groups, repeats=300, seed=4)
    assert a.value == b.value
    assert abs((a.high - a.low) - (b.high - b.low)) < 0.05


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: roc_auc([0, 1, 1], [0.1, 0.2]), r"one length, got \(3,\) and \(2,\)"),
        (lambda: roc_curve([[0, 1]], [[0.1, 0.2]]), "must be 1-D"),
        (lambda: f1_score([0, 1], [1]), "one length"),
        (lambda: mcnemar_exact([1, 0, 1], [1, 0]), "one length"),
        (lambda: confusion_matrix([0, 1], [0], 2), "one length"),
        (lambda: roc_auc([0, 2, 1], [0.1, 0.2, 0.3]), "0 and 1 only"),
        (lambda: f1_score([0, 1, 3], [0, 1, 1]), "0 and 1 only"),
        (lambda: roc_curve([0, 1], [0.1, np.nan]), "not finite"),
        (lambda: confusion_matrix([0, 3], [0, 1], 3), "y_true holds labels outside 0..2"),
        (lambda: confusion_matrix([0, 1], [0, -1], 2), "y_pred holds labels outside"),
        (lambda: wilson_interval(11, 10), "0 <= successes <= trials"),
        (lambda: wilson_interval(-1, 10), "0 <= successes <= trials"),
    ],
)
def test_inputs_are_checked_on_entry_with_the_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_labels_may_be_bool_or_int():
    assert roc_auc(Y.astype(bool), S) == roc_auc(Y, S) == pytest.approx(13 / 16)
    assert f1_score(Y.astype(bool), S >= 0.5) == pytest.approx(0.75)
    assert confusion_matrix(Y.astype(bool), S >= 0.5, 2).tolist() == [[3, 1], [1, 3]]
