"""Which model looks where the disease is: several models' explanations on the same slices.

    result = compare_explanations(models, read_slices(root, files))
    result.models["cnn"].lung_share.mean, result.tests[0].p_value, result.rows()

On every slice each model explains its own predicted class with its default method (Grad-CAM
for a network with convolutions, SmoothGrad saliency otherwise), measured as
`ctdemo.explain.trust.assess` measures one map: the share of its heat inside the lungs, beside
the lungs' share of the slice (what a map blind to anatomy would score), and its deletion score
against a random order. Per model: means with 95% bootstrap intervals. Between the first two
models: Wilcoxon's signed-rank test on the slices both could score, and a model is called
better only when p < 0.05, as in the metrics table. Every slice is explained by every model,
so callers bound the sample (`spread_sample`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from ctdemo.evaluation.paired import ALPHA
from ctdemo.explain.methods import METHOD_LABELS, ExplanationError
from ctdemo.explain.saliency import available_methods
from ctdemo.explain.trust import Estimate, assess, estimate, paired_p_value
from ctdemo.io.decoded import SliceError
from ctdemo.io.slices import decode_slice, read_slice_file
from ctdemo.models.cards import ModelCard
from ctdemo.models.inference import is_number, model_input, probabilities

PAIRED_MEASURES = ("lung_share", "faithfulness")
"""The per-slice numbers a paired test compares, higher being better for both."""


@dataclass(frozen=True)
class SliceLook:
    """One model's explanation of one slice, as numbers (None where it could not be scored)."""

    lung_share: float | None = None
    lung_area: float | None = None
    faithfulness: float | None = None


@dataclass(frozen=True)
class ModelLooks:
    """One model's explanations over the slices: per slice, and summarised."""

    name: str
    method: str
    slices: tuple[SliceLook, ...]  # in the comparison's slice order
    error: str = ""  # why this model's maps could not be made, for a person

    def values(self, measure: str) -> list[float | None]:
        return [getattr(look, measure) for look in self.slices]

    def summary(self, measure: str) -> Estimate | None:
        """Mean and 95% bootstrap interval of `measure` over the slices it has a value on."""
        return estimate(self.values(measure))

    @property
    def without_lungs(self) -> int:
        """Slices explained but left out of the lung numbers (no plausible lungs found)."""
        return sum(
            look.lung_share is None and look.faithfulness is not None for look in self.slices
        )


@dataclass(frozen=True)
class PairedTest:
    """Wilcoxon's signed-rank test of one measure between two models on the same slices."""

    measure: str
    a: str
    b: str
    pairs: int
    p_value: float | None  # None: too few differing pairs for any p below 0.05
    better: str | None

    def text(self) -> str:
        """The table's "difference" cell, worded as the metrics table words it."""
        p = "p n/a" if self.p_value is None else _p(self.p_value)
        if self.better:
            other = self.b if self.better == self.a else self.a
            return f"{self.better} better than {other} ({p}, n = {self.pairs})"
        return f"{self.a} vs {self.b}: no significant difference ({p}, n = {self.pairs})"


@dataclass(frozen=True)
class QualityRow:
    """One row of the table: a number per model, and the paired test where there is one."""

    metric: str
    text: dict[str, str]
    difference: str = "–"
    better: str | None = None

    def flat(self, names: Sequence[str]) -> dict[str, str]:
        """The row for `st.dataframe`: metric, one column per model, difference."""
        return {
            "metric": self.metric,
            **{n: self.text[n] for n in names},
            "difference": self.difference,
        }


@dataclass(frozen=True)
class ExplanationComparison:
    """Every model's explanations on the same slices. Picklable (no Keras objects)."""

    files: tuple[str, ...]
    models: dict[str, ModelLooks]
    tests: tuple[PairedTest, ...]
    seconds: float  # wall time of the whole comparison

    @property
    def n(self) -> int:
        return len(self.files)

    def rows(self) -> list[QualityRow]:
        """The table: method, heat inside the lungs, the lungs' area, faithfulness, coverage."""
        looks = self.models.values()
        tests = {test.measure: test for test in self.tests}
        rows = [QualityRow("Explanation", {m.name: _method(m) for m in looks})]
        for measure, label, number in (
            ("lung_share", "Heat inside the lungs", "{:.0%}".format),
            ("lung_area", "Lungs' share of the slice (a map blind to anatomy)", "{:.0%}".format),
            ("faithfulness", "Faithfulness (deletion score against random)", _signed),
        ):
            text = {m.name: _estimate_text(m.summary(measure), number) for m in looks}
            test = tests.get(measure)
            if test is None:
                rows.append(QualityRow(label, text))
            else:
                rows.append(QualityRow(label, text, test.text(), test.better))
        coverage = {m.name: _coverage(m, self.n) for m in looks}
        rows.append(QualityRow("Slices scored", coverage))
        return rows

    def note(self) -> str:
        """What the numbers mean and where they stop, in two sentences."""
        methods = {look.method for look in self.models.values()}
        saliency = (
            "; SmoothGrad saliency (a model without convolutions) spreads its heat over the "
            "slice by design, so its share says less about the model"
            if "saliency" in methods and len(methods) > 1
            else ""
        )
        return (
            f"On {self.n} slices, each model explaining its own prediction: a map blind to "
            "anatomy would put the lungs' own share of its heat inside them, and faithfulness "
            "is how much sooner deleting the hottest pixels lowers the probability than "
            "deleting at random (0: no better than chance; below 0: the map points away from "
            "what the model uses). The lungs come from a classical segmentation that can leave "
            f"out dense disease at a lung's edge{saliency}; a model is called better only when "
            "Wilcoxon's paired test on the same slices gives p < 0.05."
        )


def spread_sample(labels: Sequence[str], limit: int) -> list[int]:
    """At most `limit` slice indices, as even over the classes as their sizes allow, spread
    through each class's slices (many patients, not the first few), in their order.

    >>> spread_sample(["a", "a", "a", "a", "b"], 3)
    [0, 2, 4]
    """
    by_class: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    chosen, left = [], max(0, limit)
    for rank, indices in enumerate(sorted(by_class.values(), key=len)):
        quota = min(len(indices), left // (len(by_class) - rank))
        picks = np.linspace(0, len(indices), quota, endpoint=False).astype(int)
        chosen += [indices[pick] for pick in picks]
        left -= quota
    return sorted(chosen)


def read_slices(root: Path | str, files: Iterable[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(file, decoded slice) for each readable file under `root`, one at a time (a sample of
    large slices is never all in memory); a file that cannot be read is left out."""
    for file in files:
        try:
            data = read_slice_file(Path(root) / file)
            yield file, decode_slice(data, os.path.basename(file)).pixels
        except (OSError, SliceError):
            continue


def compare_explanations(
    models: Mapping[str, tuple[keras.Model, ModelCard]],
    slices: Iterable[tuple[str, np.ndarray]],
    on_slice: Callable[[int], None] | None = None,
) -> ExplanationComparison:
    """Every model's default explanation of its own prediction on every slice, measured and
    summarised, with a paired test between the first two models. `on_slice` is told how many
    slices are done after each (a progress bar)."""
    if not models:
        raise ValueError("compare_explanations needs at least one model")
    started = time.perf_counter()
    methods = {name: available_methods(model)[0] for name, (model, _) in models.items()}
    looks: dict[str, list[SliceLook]] = {name: [] for name in models}
    errors = dict.fromkeys(models, "")
    files = []
    for file, pixels in slices:
        files.append(file)
        for name, (model, card) in models.items():
            if errors[name]:
                looks[name].append(SliceLook())
                continue
            try:
                looks[name].append(_look(model, card, pixels, methods[name]))
            except ExplanationError as error:  # the model's maps cannot be made on any slice
                errors[name] = str(error)
                looks[name].append(SliceLook())
        if on_slice is not None:
            on_slice(len(files))
    results = {
        name: ModelLooks(name, methods[name], tuple(looks[name]), errors[name]) for name in models
    }
    return ExplanationComparison(
        files=tuple(files),
        models=results,
        tests=_tests(list(results.values())),
        seconds=time.perf_counter() - started,
    )


def _look(model: keras.Model, card: ModelCard, pixels: np.ndarray, method: str) -> SliceLook:
    """The numbers of one model's explanation of its predicted class on one slice."""
    probs = probabilities(model, model_input(pixels, card)[np.newaxis])[0]
    if not is_number(probs):
        return SliceLook()
    try:
        report = assess(model, card, pixels, method, int(np.argmax(probs)))
    except ExplanationError:
        raise
    except ValueError:  # a non-finite output on the deleted copies
        return SliceLook()
    return SliceLook(report.lung_share, report.lung_area, float(report.faithfulness.score))


def _tests(looks: list[ModelLooks]) -> tuple[PairedTest, ...]:
    """Each measure's paired test between the first two models."""
    if len(looks) < 2:
        return ()
    first, second = looks[:2]
    tests = []
    for measure in PAIRED_MEASURES:
        a, b = first.values(measure), second.values(measure)
        pairs = sum(x is not None and y is not None for x, y in zip(a, b, strict=True))
        p = paired_p_value(a, b)
        better = None
        if p is not None and p < ALPHA:
            differences = [
                x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None
            ]
            better = first.name if np.mean(differences) > 0 else second.name
        tests.append(PairedTest(measure, first.name, second.name, pairs, p, better))
    return tuple(tests)


def _method(looks: ModelLooks) -> str:
    label = METHOD_LABELS[looks.method]
    return f"{label}: cannot run ({looks.error})" if looks.error else label


def _estimate_text(value: Estimate | None, number: Callable[[float], str]) -> str:
    if value is None:
        return "–"
    return f"{number(value.mean)} ({number(value.low)} to {number(value.high)})"


def _signed(value: float) -> str:
    """+0.123 or -0.123; a value that rounds to zero is +0.000, never -0.000."""
    return f"{round(value, 3) + 0.0:+.3f}"


def _coverage(looks: ModelLooks, n: int) -> str:
    explained = sum(look.faithfulness is not None for look in looks.slices)
    text = f"{explained} of {n}"
    return (
        f"{text} ({looks.without_lungs} without plausible lungs)" if looks.without_lungs else text
    )


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
