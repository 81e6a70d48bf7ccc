"""ctdemo.evaluation.compare, .table and .report: models on the same slices, paired tests, the
charts and the exports."""

from __future__ import annotations

import csv
import io
import itertools
import pickle

import numpy as np
import pytest

from ctdemo.app import charts
from ctdemo.app.catalog import shipped_cards
from ctdemo.evaluation import compare
from ctdemo.evaluation.compare import (
    comparison_from_probabilities,
    disagreements,
    threshold_tradeoff,
)
from ctdemo.evaluation.metrics import bootstrap_interval, f1_score, mcnemar_exact, roc_auc
from ctdemo.evaluation.numbers import Interval
from ctdemo.evaluation.report import comparison_csv, display_rows, metrics_csv
from ctdemo.evaluation.table import Metric, card_comparison, metrics_table
from ctdemo.io.folders import scan_image_folder
from ctdemo.models.cards import ModelCard, preprocessing_spec

from conftest import make_image_folder

CLASSES = ["COVID", "non-COVID"]
METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc")


def card(name: str, size: int = 24, classes=CLASSES, positive="COVID", **fields) -> ModelCard:
    return ModelCard(name, list(classes), positive, preprocessing_spec(size), {}, **fields)


def binary_probs(p_covid) -> np.ndarray:
    p = np.asarray(p_covid, float)
    return np.c_[p, 1 - p]


def hand_comparison(seed: int = 0, n: int = 60):
    """Three models on n slices (half COVID), with chosen correctness: A right on 90%, B on
    70%, C on 65% (errors placed at random), probabilities that agree with it."""
    rng = np.random.default_rng(seed)
    labels = ["COVID"] * (n // 2) + ["non-COVID"] * (n - n // 2)
    positive = np.array([label == "COVID" for label in labels])
    probabilities, correct = {}, {}
    for name, rate in (("A", 0.9), ("B", 0.7), ("C", 0.65)):
        right = rng.random(n) < rate
        says_covid = np.where(right, positive, ~positive)
        confidence = rng.uniform(0.55, 0.99, n)
        probabilities[name] = binary_probs(np.where(says_covid, confidence, 1 - confidence))
        correct[name] = right
    cards = {name: card(name) for name in probabilities}
    files = [f"slice-{i}.png" for i in range(n)]
    return comparison_from_probabilities(cards, probabilities, labels, files=files), correct


# ------------------------------------------------------------------------------ the table


def test_table_has_every_metric_with_an_interval_containing_its_value():
    comparison, _ = hand_comparison()
    table = metrics_table(comparison, repeats=200)
    rows = {row.key: row for row in table}
    assert set(METRICS) <= set(rows)
    for key in METRICS:
        assert rows[key].interval and rows[key].test
        assert set(rows[key].values) == {"A", "B", "C"}
        for name, value in rows[key].values.items():
            assert value.low <= value.value <= value.high, (key, name, value)
            assert rows[key].text(name) != "–"
        assert len(rows[key].comparisons) == 3  # one per pair
    for key in ("calibration", "parameters", "file_bytes", "ms_per_slice", "training_seconds"):
        assert key in rows and rows[key].comparisons == () and rows[key].better is None
    assert all("same 60 labelled slices" in row.basis for row in table)


def test_accuracy_and_proportions_match_hand_counts():
    comparison, correct = hand_comparison()
    rows = {row.key: row for row in metrics_table(comparison, repeats=50)}
    positive = comparison.is_positive
    for name, right in correct.items():
        assert rows["accuracy"].values[name].value == pytest.approx(right.mean())
        assert rows["sensitivity"].values[name].value == pytest.approx(right[positive].mean())
        assert rows["specificity"].values[name].value == pytest.approx(right[~positive].mean())


def test_mcnemar_p_matches_metrics_mcnemar_exact_on_paired_predictions():
    comparison, correct = hand_comparison()
    rows = {row.key: row for row in metrics_table(comparison, repeats=50)}
    positive = comparison.is_positive
    tests = {(t.a, t.b): t for t in rows["accuracy"].comparisons}
    assert set(tests) == set(itertools.combinations("ABC", 2))
    for (a, b), test in tests.items():
        only_a, only_b, p = mcnemar_exact(correct[a], correct[b])
        assert (test.only_a, test.only_b, test.p_value) == (only_a, only_b, p)
    # sensitivity and specificity: the same test on the positive / negative slices only
    for key, among in (("sensitivity", positive), ("specificity", ~positive)):
        for test in rows[key].comparisons:
            a, b = test.a, test.b
            assert test.p_value == mcnemar_exact(correct[a][among], correct[b][among])[2]


def test_better_only_when_significant():
    n = 40
    labels = ["COVID"] * 20 + ["non-COVID"] * 20
    truth = binary_probs([0.9] * 20 + [0.1] * 20)
    wrong_ten = truth.copy()
    wrong_ten[:10] = truth[:10, ::-1]  # 10 positives missed: 10 discordant pairs, p = 2/1024
    wrong_two = truth.copy()
    wrong_two[:2] = truth[:2, ::-1]  # 2 discordant pairs: p = 0.5
    cards = {name: card(name) for name in ("right", "ten", "two")}
    comparison = comparison_from_probabilities(
        cards, {"right": truth, "ten": wrong_ten, "two": wrong_two}, labels
    )
    accuracy = metrics_table(comparison, repeats=50)[0]
    assert accuracy.key is Metric.ACCURACY and comparison.n == n
    by_pair = {(t.a, t.b): t for t in accuracy.comparisons}
    assert by_pair[("right", "ten")].p_value == pytest.approx(2 / 1024)
    assert by_pair[("right", "ten")].better == "right"
    assert by_pair[("ten", "two")].better == "two"  # 8 discordant, all one way: p = 2/256
    assert by_pair[("right", "two")].p_value == pytest.approx(0.5)
    assert by_pair[("right", "two")].better is None
    # "right" is not significantly better than every other model, so no overall mark
    assert accuracy.better is None
    flat = display_rows([accuracy], comparison.names)[0]
    assert flat["right"].startswith("100.0%")
    assert "right better than ten (p = 0.002)" in flat["difference"]
    assert "right vs two: no significant difference (p = 0.500)" in flat["difference"]


def test_overall_better_when_one_model_beats_each_other():
    labels = ["COVID"] * 20 + ["non-COVID"] * 20
    truth = binary_probs([0.9] * 20 + [0.1] * 20)
    worse = truth.copy()
    worse[:12] = truth[:12, ::-1]
    comparison = comparison_from_probabilities(
        {"good": card("good"), "bad": card("bad")}, {"good": truth, "bad": worse}, labels
    )
    rows = {row.key: row for row in metrics_table(comparison, repeats=200)}
    assert rows["accuracy"].better == "good"
    assert rows["sensitivity"].better == "good"
    assert rows["specificity"].better is None  # both right on every negative: p = 1
    assert rows["specificity"].comparisons[0].p_value == 1.0


def test_bootstrap_rows_are_metrics_bootstrap_interval_with_the_seed():
    comparison, _ = hand_comparison(seed=3)
    rows = {row.key: row for row in metrics_table(comparison, repeats=300, seed=7)}
    positive = comparison.is_positive
    for name in comparison.names:
        called = comparison.predicted_positive(name)
        f1 = bootstrap_interval(lambda t, c: f1_score(t, c), positive, called, 300, 7)
        auc = bootstrap_interval(roc_auc, positive, comparison.positive_score(name), 300, 7)
        assert rows["f1"].values[name].to_dict() == pytest.approx(f1.to_dict())
        assert rows["roc_auc"].values[name].to_dict() == pytest.approx(auc.to_dict())


def test_paired_bootstrap_p_is_small_for_a_clear_gap_and_symmetric():
    comparison, _ = hand_comparison(seed=1, n=200)
    rows = {row.key: row for row in metrics_table(comparison, repeats=300)}
    for key in ("precision", "f1", "roc_auc"):
        tests = {(t.a, t.b): t for t in rows[key].comparisons}
        assert tests[("A", "C")].p_value < 0.05 and tests[("A", "C")].better == "A"
        assert 0 < tests[("A", "C")].p_value <= 1


def test_three_classes_have_accuracy_but_no_binary_rows():
    labels = ["a", "b", "c"] * 4
    probs = np.tile(np.eye(3), (4, 1)) * 0.7 + 0.1
    cards = {"m": card("m", classes=["a", "b", "c"], positive=None)}
    comparison = comparison_from_probabilities(cards, {"m": probs}, labels)
    assert comparison.positive_class is None
    keys = [row.key for row in metrics_table(comparison)]
    assert "accuracy" in keys and not set(keys) & {"sensitivity", "f1", "roc_auc"}
    with pytest.raises(ValueError, match="positive class"):
        threshold_tradeoff(comparison, "m", [0.5])
    assert compare.roc_curves(comparison) == {}
    assert len(compare.calibration(comparison)["m"]) == 10


def test_class_mismatch_is_refused_with_the_model_named():
    with pytest.raises(ValueError, match=r"pets cannot be compared.*COVID, non-COVID"):
        comparison_from_probabilities(
            {"pets": card("pets", classes=["cat", "dog"], positive="dog")},
            {"pets": binary_probs([0.5, 0.5])},
            ["COVID", "non-COVID"],
        )


def test_probabilities_of_the_wrong_shape_are_refused_with_the_model_named():
    with pytest.raises(ValueError, match=r"m gave 3 scores on 2 slices.*names 2 classes"):
        comparison_from_probabilities({"m": card("m")}, {"m": np.full((2, 3), 1 / 3)}, CLASSES)
    with pytest.raises(ValueError, match=r"m gave 2 scores on 1 slices.*there are 2 slices"):
        comparison_from_probabilities({"m": card("m")}, {"m": binary_probs([0.5])}, CLASSES)


def test_each_model_is_scored_in_its_own_class_order():
    labels = ["COVID", "non-COVID", "COVID"]
    flipped = card("flipped", classes=["non-COVID", "COVID"])
    probs = np.array([[0.2, 0.8], [0.7, 0.3], [0.9, 0.1]])  # says COVID, non-COVID, non-COVID
    comparison = comparison_from_probabilities({"flipped": flipped}, {"flipped": probs}, labels)
    result = comparison.models["flipped"]
    assert result.predicted == ["COVID", "non-COVID", "non-COVID"]
    assert result.correct.tolist() == [True, True, False]
    assert comparison.positive_score("flipped").tolist() == [0.8, 0.3, 0.1]


# ----------------------------------------------------------------------- per-slice views


def test_disagreements_are_exactly_the_differing_predictions():
    comparison, _ = hand_comparison()
    a, b = comparison.models["A"], comparison.models["B"]
    expected = {i for i in range(comparison.n) if a.predicted[i] != b.predicted[i]}
    rows = disagreements(comparison, "A", "B")
    assert {row.index for row in rows} == expected and len(rows) == len(expected)
    for row in rows:
        i = row.index
        assert row.file == comparison.files[i] and row.truth == comparison.labels[i]
        assert (row.first.model, row.second.model) == ("A", "B")
        assert (row.first.predicted, row.second.predicted) == (a.predicted[i], b.predicted[i])
        assert row.first.probability == pytest.approx(a.probabilities[i].max())
        assert row.second.probability == pytest.approx(b.probabilities[i].max())
        assert row.right == ("A" if a.correct[i] else "B" if b.correct[i] else None)
    confidences = [row.confidence for row in rows]
    assert confidences == sorted(confidences, reverse=True)
    assert all(row.confidence == max(p.probability for p in row.answers) for row in rows)
    both = [row.both_sure for row in disagreements(comparison, "A", "B", sort_by="both")]
    assert both == sorted(both, reverse=True)
    in_order = [row.index for row in disagreements(comparison, "A", "B", sort_by="file")]
    assert in_order == sorted(expected)
    assert disagreements(comparison, "A", "A") == []
    with pytest.raises(ValueError, match="sort_by"):
        disagreements(comparison, "A", "B", sort_by="loudest")


def test_threshold_tradeoff_ends_and_a_hand_case():
    labels = ["COVID"] * 4 + ["non-COVID"] * 4
    # saturated probabilities: a positive at exactly 0, a negative at exactly 1
    probs = binary_probs([0.0, 0.4, 0.6, 0.9, 1.0, 0.5, 0.2, 0.1])
    comparison = comparison_from_probabilities({"m": card("m")}, {"m": probs}, labels)
    low, middle, high = threshold_tradeoff(comparison, "m", [0.0, 0.5, 1.0])
    assert low.sensitivity == 1.0 and low.specificity == 0.0
    assert high.specificity == 1.0 and high.sensitivity == 0.0
    # at 0.5: called positive 0.6, 0.9 | 1.0, 0.5 -> tp 2, fn 2, fp 2, tn 2
    assert (middle.tp, middle.fn, middle.tn, middle.fp) == (2, 2, 2, 2)
    assert middle.sensitivity == middle.specificity == 0.5
    sweep = threshold_tradeoff(comparison, "m", np.linspace(0, 1, 11))
    assert all(x.sensitivity >= y.sensitivity for x, y in itertools.pairwise(sweep))
    assert all(x.specificity <= y.specificity for x, y in itertools.pairwise(sweep))


def test_chart_inputs_and_figures():
    comparison, _ = hand_comparison()
    curves = compare.roc_curves(comparison)
    for name, (fpr, tpr, auc) in curves.items():
        assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
        assert auc == pytest.approx(
            roc_auc(comparison.is_positive, comparison.positive_score(name))
        )
    assert len(charts.roc_overlay(curves).data) == 1 + 3
    bins = compare.calibration(comparison, bins=5)
    assert all(sum(b["count"] for b in rows) == comparison.n for rows in bins.values())
    assert len(charts.reliability_diagram(bins).data) == 1 + 3
    panels = compare.confusion_panels(comparison)
    for name, (matrix, rows, columns) in panels.items():
        assert rows == columns == CLASSES and np.sum(matrix) == comparison.n
        right = comparison.models[name].correct
        assert np.trace(matrix) == right.sum()
    assert len(charts.confusion_matrices(panels).data) == 3
    cards = {"x": card("x", history={"loss": [1, 0.5], "val_loss": [1.1, 0.7]}), "y": card("y")}
    assert compare.histories(cards) == [("x", cards["x"].history)]
    assert len(charts.run_overlay(compare.histories(cards), "loss").data) == 2


def test_exports():
    comparison, _ = hand_comparison()
    lines = list(csv.reader(io.StringIO(comparison_csv(comparison))))
    assert lines[0][:3] == ["file", "true class", "A predicted"]
    assert len(lines) == 1 + comparison.n and {len(line) for line in lines} == {2 + 3 * 4}
    first = dict(zip(lines[0], lines[1], strict=True))
    a = comparison.models["A"]
    assert first["A predicted"] == a.predicted[0]
    assert float(first["A P(COVID)"]) == pytest.approx(a.probabilities[0, 0], abs=1e-6)
    assert first["A correct"] == str(bool(a.correct[0]))
    table = metrics_table(comparison, repeats=50)
    rows = list(csv.DictReader(io.StringIO(metrics_csv(table))))
    accuracy = [row for row in rows if row["metric"] == "accuracy"]
    assert [row["model"] for row in accuracy] == ["A", "B", "C", "A vs B", "A vs C", "B vs C"]
    assert float(accuracy[0]["low"]) <= float(accuracy[0]["value"]) <= float(accuracy[0]["high"])
    assert float(accuracy[3]["p_value"]) == table[0].comparisons[0].p_value
    assert accuracy[0]["method"] == "Wilson 95%" and accuracy[3]["method"].startswith("McNemar")
    # the page caches a comparison: it must survive pickling (no Keras objects inside)
    restored = pickle.loads(pickle.dumps(comparison))
    np.testing.assert_array_equal(restored.models["A"].probabilities, a.probabilities)


def test_unseen_by_all_keeps_only_the_files_in_every_validation_split(tmp_path):
    folder = scan_image_folder(make_image_folder(tmp_path / "data", per_class=3, size=24))
    files = [folder.relative(path) for path in folder.files]
    cards = {
        "a": card("a", validation={"files": files[:4]}),
        "b": card("b", validation={"files": files[2:]}),
        "up": card("up"),
    }
    subset, note = compare.unseen_by_all(folder, cards)
    assert [subset.relative(path) for path in subset.files] == files[2:4]
    assert subset.labels.tolist() == folder.labels[2:4].tolist()
    assert note == (
        "2 of 6 slices are in the validation split of a, b (never trained on); "
        "what up trained on is unknown."
    )


# ------------------------------------------------------------------ without any images


def test_card_comparison_says_these_are_not_the_same_slices():
    cards = shipped_cards()
    rows = card_comparison(cards)
    by_key = {row.key: row for row in rows}
    assert set(METRICS) <= set(by_key)
    for row in rows:
        assert "NOT the same slices" in row.basis and "own validation split" in row.basis
        assert row.comparisons == () and row.better is None
    for name, model_card in cards.items():
        accuracy = by_key["accuracy"].values[name]
        assert accuracy == Interval.from_dict(model_card.validation["accuracy"])
        assert by_key["parameters"].values[name] == model_card.parameters
    curves = compare.card_roc_curves(cards)
    assert (
        set(curves) == set(cards)
        and curves["cnn"][2] == cards["cnn"].validation["roc_auc"]["value"]
    )
    assert len(charts.roc_overlay(curves).data) == 1 + len(cards)


def test_card_comparison_of_a_card_without_validation():
    rows = card_comparison({"uploaded": card("uploaded"), "cnn": shipped_cards()["cnn"]})
    accuracy = next(row for row in rows if row.key == "accuracy")
    assert accuracy.values["uploaded"] is None and accuracy.text("uploaded") == "–"
    assert accuracy.text("cnn").endswith("%)")
