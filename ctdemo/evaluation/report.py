"""The Compare table for people and for files: rows for `st.dataframe`, and CSV exports."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

from ctdemo.evaluation.compare import Comparison
from ctdemo.evaluation.numbers import Interval
from ctdemo.evaluation.paired import PairedTest
from ctdemo.evaluation.table import TableRow


def _p(p: float) -> str:
    if math.isnan(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def difference(test: PairedTest) -> str:
    """One paired test in words: "A better than B (p = 0.002)", or no significant difference."""
    if test.better:
        other = test.b if test.better == test.a else test.a
        return f"{test.better} better than {other} ({_p(test.p_value)})"
    return f"{test.a} vs {test.b}: no significant difference ({_p(test.p_value)})"


def display_rows(table: Sequence[TableRow], names: Sequence[str]) -> list[dict[str, str]]:
    """The table flattened for `st.dataframe`: "metric", one text column per model, and
    "difference" saying which model is significantly better, with the p-value."""
    return [
        {
            "metric": row.label,
            **{name: row.text(name) for name in names},
            "difference": "; ".join(map(difference, row.comparisons)) or "–",
        }
        for row in table
    ]


def metrics_csv(table: Sequence[TableRow]) -> str:
    """The metrics table as CSV: one line per metric and model (value, 95% interval), then
    one per metric and pair of models (p-value, which is significantly better); "method"
    says how the interval, or the test, was computed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["metric", "model", "value", "low", "high", "p_value", "better", "method", "basis"]
    )
    for row in table:
        for name, value in row.values.items():
            if isinstance(value, Interval):
                numbers = list(value.to_dict().values())  # value, low, high; None where undefined
            else:
                numbers = [value, "", ""]
            writer.writerow([row.key, name, *numbers, "", "", row.interval or "", row.basis])
        for test in row.comparisons:
            pair = f"{test.a} vs {test.b}"
            p, better = test.p_value, test.better or ""
            writer.writerow([row.key, pair, "", "", "", p, better, row.test, row.basis])
    return buffer.getvalue()


def comparison_csv(comparison: Comparison) -> str:
    """One line per slice: file, true class, and per model its predicted class, the
    probability of every class it knows, and whether it was right."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["file", "true class"]
    for name, model in comparison.models.items():
        header += [f"{name} predicted", *(f"{name} P({c})" for c in model.class_names)]
        header += [f"{name} correct"]
    writer.writerow(header)
    models = list(comparison.models.values())
    predicted = [model.predicted for model in models]
    correct = [model.correct for model in models]
    for index, (file, truth) in enumerate(zip(comparison.files, comparison.labels, strict=True)):
        line = [file, truth]
        for model, names, right in zip(models, predicted, correct, strict=True):
            line += [names[index], *(f"{p:.6f}" for p in model.probabilities[index])]
            line.append(bool(right[index]))
        writer.writerow(line)
    return buffer.getvalue()
