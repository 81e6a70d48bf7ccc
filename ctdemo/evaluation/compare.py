"""What the Compare page computes, without Streamlit: several models on the same labelled slices.

`evaluate_models` runs every model on every slice through the one preprocessing path
(`inference.model_input`: each model gets its own size, channels and input scale from its card;
a file is decoded once, however many models there are) and measures each model's speed here.
The rest are pure functions of the resulting `Comparison`:

- `metrics_table`: accuracy, sensitivity, specificity, precision, F1 and ROC AUC with 95%
  intervals, calibration, size, speed and training time, one column per model, and for every
  pair of models a paired test on the same slices (McNemar's exact test for the proportions,
  a paired bootstrap for precision, F1 and AUC). A model is marked better only when p < 0.05.
- `disagreements`: the slices two models classify differently.
- `threshold_tradeoff`: sensitivity and specificity as the decision threshold moves.
- `roc_curves`, `calibration`, `confusion_panels`, `histories`: inputs of the charts.
- `comparison_csv`, `metrics_csv`: the export.

`card_comparison` is the fallback when no labelled images can be read: it tabulates each model's
own validation numbers from its card, which are NOT measured on the same slices.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ctdemo.evaluation.metrics import (
    Interval,
    expected_calibration_error,
    f1_score,
    mcnemar_exact,
    reliability_bins,
    roc_auc,
    roc_curve,
    wilson_interval,
)
from ctdemo.io.folders import ArrayDataset, DatasetError, ImageFolder, scan_image_folder
from ctdemo.io.slices import SliceError, decode_slice, read_slice_file
from ctdemo.models.cards import ModelCard, default_positive_class

if TYPE_CHECKING:  # TensorFlow loads when models are evaluated, not when a page paints
    import keras

ALPHA = 0.05
"""A difference is called significant when its two-sided p-value is below this."""

BOOTSTRAP_REPEATS = 1000
TIMING_REPEATS = 3
TIMING_SLICES = 128
"""Repeat timings run on at most this many slices (two batches): a stable rate, cheaply."""

SAME_SLICES = "measured here on the same {n} labelled slices for every model"
OWN_SPLITS = (
    "from each model's card: its own validation split ({splits}), NOT the same slices, so no "
    "paired test and no 'better' mark; compare with care"
)


@dataclass
class LabelledSlices:
    """Decoded grey slices (float (height, width) in [0, 1], any size) with their true class."""

    pixels: list[np.ndarray]
    labels: list[str]
    files: list[str]
    class_names: list[str] = field(default_factory=list)  # default: sorted distinct labels
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        if not (len(self.pixels) == len(self.labels) == len(self.files)):
            raise ValueError("pixels, labels and files must have one entry per slice.")
        self.class_names = list(self.class_names) or sorted(set(self.labels))
        unknown = sorted(set(self.labels) - set(self.class_names))
        if unknown:
            raise ValueError(f"Labels not among the class names: {', '.join(unknown)}.")

    @property
    def y(self) -> np.ndarray:
        return np.array([self.class_names.index(label) for label in self.labels], dtype=int)


Source = LabelledSlices | ArrayDataset | ImageFolder | Path | str


@dataclass
class ModelResult:
    """One model's answers on the comparison's slices (in the comparison's order)."""

    name: str
    card: ModelCard
    probabilities: np.ndarray  # float64 (n, len(card.class_names))
    y_true: np.ndarray  # int (n,): the true class as an index into card.class_names
    ms_per_slice: float = math.nan  # median of timed batched predictions, per slice
    parameters: int = 0
    file_bytes: int | None = None

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


@dataclass
class Comparison:
    """Every model's probabilities on the same labelled slices. Picklable (no Keras objects),
    so a page can cache it."""

    files: list[str]
    labels: list[str]  # true class name per slice
    class_names: list[str]  # the data's classes
    positive_class: str | None  # binary metrics need one; None for more than two classes
    models: dict[str, ModelResult]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

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
        result = self.models[name]
        return np.array([label == self.positive_class for label in result.predicted])

    def positive_score(self, name: str) -> np.ndarray:
        return self.models[name].score(self.positive_class)


# --------------------------------------------------------------------------------- loading


def load_slices(folder: ImageFolder | Path | str, workers: int | None = None) -> LabelledSlices:
    """Decode every image of an image-folder dataset once, at its own resolution.

    Holds every slice in memory (fine for the 300-slice demo set); `evaluate_models` on a
    folder keeps only each model's input instead."""
    folder = folder if isinstance(folder, ImageFolder) else scan_image_folder(folder)
    decoded = _map(folder.files, _decode, workers)
    return _labelled(folder, decoded)


def _decode(path: Path) -> np.ndarray | str:
    try:
        return decode_slice(read_slice_file(path), path.name).pixels
    except SliceError as error:
        return str(error)
    except OSError as error:
        return f"could not be read ({error.strerror})"


def _map(items: Sequence, function, workers: int | None) -> list:
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))


def _labelled(folder: ImageFolder, results: list) -> LabelledSlices:
    """Results per file (anything, or a string saying why the file is unusable) as slices."""
    pixels, labels, files = [], [], []
    skipped = list(folder.skipped)
    for path, label, result in zip(folder.files, folder.labels, results, strict=True):
        if isinstance(result, str):
            skipped.append((folder.relative(path), result))
            continue
        pixels.append(result)
        labels.append(folder.class_names[label])
        files.append(folder.relative(path))
    if not pixels:
        raise DatasetError(f"No readable images in {folder.root}.")
    return LabelledSlices(pixels, labels, files, folder.class_names, skipped, str(folder.root))


# ------------------------------------------------------------------------------ evaluating


def _spec(card: ModelCard) -> tuple[int, int, float]:
    """What `model_input` depends on: models sharing it share their inputs."""
    return card.image_size, card.channels, card.input_scale


def _model_inputs(
    data: Source, cards: Iterable[ModelCard], workers: int | None
) -> tuple[LabelledSlices, dict[tuple, np.ndarray]]:
    """Model inputs for every distinct preprocessing among `cards`, each slice decoded once.
    The returned LabelledSlices has no pixels when the data came from a folder."""
    from ctdemo.models.inference import model_input

    specs = {_spec(card): card for card in cards}

    def inputs_of(pixels: np.ndarray) -> dict[tuple, np.ndarray]:
        return {key: model_input(pixels, card) for key, card in specs.items()}

    if isinstance(data, ImageFolder):

        def decode_and_prepare(path: Path) -> dict | str:
            pixels = _decode(path)
            return pixels if isinstance(pixels, str) else inputs_of(pixels)

        slices = _labelled(data, _map(data.files, decode_and_prepare, workers))
        per_slice, slices.pixels = slices.pixels, []
    else:
        if isinstance(data, ArrayDataset):  # already resized once: its slices are the pixels
            data = LabelledSlices(
                [image[..., 0] for image in data.x],
                [data.class_names[i] for i in data.y],
                list(data.files),
                data.class_names,
                list(data.skipped),
                f"dataset {data.fingerprint[:8]}",
            )
        if not data.pixels:
            raise DatasetError("No labelled slices to compare on.")
        slices, per_slice = data, [inputs_of(pixels) for pixels in data.pixels]
    stacked = {key: np.stack([inputs[key] for inputs in per_slice]) for key in specs}
    return slices, stacked


def evaluate_models(
    models: Mapping[str, tuple[keras.Model, ModelCard]],
    data: Source,
    *,
    model_files: Mapping[str, Path | str | int] | None = None,
    positive_class: str | None = None,
    timing_repeats: int = TIMING_REPEATS,
    workers: int | None = None,
) -> Comparison:
    """Every model's probabilities on every labelled slice of `data`, and its speed here.

    `data`: an image-folder root (one sub-folder per class) or its `ImageFolder`, decoded
    once; `LabelledSlices` already in memory; or an `ArrayDataset` (whose resized slices are
    taken as the pixels). `model_files` gives a model's .keras file (or its size in bytes)
    for the table. The positive class is `positive_class`, else the first model's if the data
    has it, else `cards.default_positive_class`; none when the data has more than two classes.

    Raises ValueError, naming the model, when a model's classes do not include every class
    of the data, or its outputs do not match its card's classes; `DatasetError` when no image
    can be read. `ms_per_slice` is the median, over `timing_repeats` timed batched
    predictions after a warm-up (the full pass, then passes over up to `TIMING_SLICES`
    slices), of the time divided by the slices: the model only, decoding and resizing
    excluded; NaN (and no warm-up) when `timing_repeats` is 0.
    """
    from ctdemo.models.inference import NOT_A_NUMBER, slices_per_batch

    if not models:
        raise ValueError("Choose at least one model to compare.")
    if isinstance(data, Path | str):
        data = scan_image_folder(data)
    for name, (_, card) in models.items():  # before anything is decoded
        missing = [c for c in data.class_names if c not in card.class_names]
        if missing:
            raise ValueError(_class_message(name, card, missing))
    slices, inputs = _model_inputs(data, (card for _, card in models.values()), workers)
    y = slices.y
    results = {}
    for name, (model, card) in models.items():
        x = inputs[_spec(card)]
        probs, ms_per_slice = _predict_and_time(model, x, timing_repeats, slices_per_batch(card))
        if not np.isfinite(probs).all():
            raise ValueError(f"{name}: {NOT_A_NUMBER}")
        if probs.shape[1] != len(card.class_names):
            raise ValueError(
                f"{name} outputs {probs.shape[1]} scores but its card names "
                f"{len(card.class_names)} classes ({', '.join(card.class_names)})."
            )
        mapping = np.array([card.class_names.index(c) for c in slices.class_names])
        results[name] = ModelResult(
            name=name,
            card=card,
            probabilities=probs,
            y_true=mapping[y],
            ms_per_slice=ms_per_slice,
            parameters=int(model.count_params()),
            file_bytes=_file_bytes((model_files or {}).get(name)),
        )
    return Comparison(
        files=list(slices.files),
        labels=list(slices.labels),
        class_names=list(slices.class_names),
        positive_class=_positive(slices.class_names, models, positive_class),
        models=results,
        skipped=list(slices.skipped),
        source=slices.source,
    )


def _class_message(name: str, card: ModelCard, missing: list[str]) -> str:
    return (
        f"{name} cannot be compared on this data: it does not know the class(es) "
        f"{', '.join(missing)} (it knows {', '.join(card.class_names)}). Compare models "
        "trained on the same classes, or choose data with only the classes they know."
    )


def _positive(class_names: list[str], models: Mapping, requested: str | None) -> str | None:
    if len(class_names) != 2:
        return None
    if requested is not None:
        if requested not in class_names:
            raise ValueError(f"The positive class {requested} is not one of the data's classes.")
        return requested
    first_card = next(iter(models.values()))[1]
    if first_card.positive_class in class_names:
        return first_card.positive_class
    return default_positive_class(class_names)


def _predict_and_time(model, x: np.ndarray, repeats: int, batch: int) -> tuple[np.ndarray, float]:
    """Probabilities for every input, and the median milliseconds per slice of `repeats`
    timed batched predictions: the full pass itself, then passes over up to `TIMING_SLICES`.
    A first prediction on one batch and one more slice traces the model for a full batch and
    for any other size (Keras relaxes the shape on the second trace), so no timed pass pays
    for tracing."""
    from ctdemo.models.inference import probabilities

    if repeats <= 0:
        return probabilities(model, x, batch), math.nan
    probabilities(model, x[: batch + 1], batch)
    started = time.perf_counter()
    result = probabilities(model, x, batch)
    per_slice = [(time.perf_counter() - started) / len(x)]
    sample = x[:TIMING_SLICES]
    for _ in range(repeats - 1):
        started = time.perf_counter()
        probabilities(model, sample, batch)
        per_slice.append((time.perf_counter() - started) / len(sample))
    return result, 1000 * statistics.median(per_slice)


def _file_bytes(value: Path | str | int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return Path(value).stat().st_size
    except OSError:
        return None


def comparison_from_probabilities(
    cards: Mapping[str, ModelCard],
    probabilities: Mapping[str, np.ndarray],
    labels: Sequence[str],
    files: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    positive_class: str | None = None,
) -> Comparison:
    """A `Comparison` from probabilities already computed (per model, rows in `labels`'
    order): for tests, and for results computed elsewhere. No speed or size is known."""
    class_names = list(class_names or sorted(set(labels)))
    y = np.array([class_names.index(label) for label in labels], dtype=int)
    results = {}
    for name, card in cards.items():
        missing = [c for c in class_names if c not in card.class_names]
        if missing:
            raise ValueError(_class_message(name, card, missing))
        mapping = np.array([card.class_names.index(c) for c in class_names])
        results[name] = ModelResult(
            name, card, np.asarray(probabilities[name], float), mapping[y], math.nan, 0, None
        )
    models = {name: (None, card) for name, card in cards.items()}
    return Comparison(
        files=list(files or [str(i) for i in range(len(labels))]),
        labels=list(labels),
        class_names=class_names,
        positive_class=_positive(class_names, models, positive_class),
        models=results,
    )


# ------------------------------------------------------------------------------ the table

_BINARY_ROWS = (
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("precision", "Precision"),
    ("f1", "F1"),
    ("roc_auc", "ROC AUC"),
)


def metrics_table(
    comparison: Comparison,
    repeats: int = BOOTSTRAP_REPEATS,
    seed: int = 0,
    alpha: float = ALPHA,
) -> list[dict]:
    """One row per metric, one column per model, on the comparison's slices.

    Each row: `key`, `metric` (its label), `values` ({model: {"value", "low", "high"}} for
    metrics, a number or None for properties), `text` ({model: "92.4% (89.3–94.7%)"}),
    `interval` and `test` (how each was computed; None for properties), `comparisons`
    (one per pair of models: `a`, `b`, `p_value`, `better` = the model significantly better
    on this row, or None), `better` (the model significantly better than every other, or
    None), `higher_is_better`, and `basis` (which slices).

    Intervals are 95%: Wilson's for the proportions (accuracy, sensitivity, specificity,
    precision), a seeded percentile bootstrap of the slices for F1 and ROC AUC (the same as
    `metrics.bootstrap_interval` with this seed). Tests pair the models on the same slices:
    McNemar's exact test on paired correctness for accuracy (all slices), sensitivity (the
    positive slices) and specificity (the negative ones); for precision, F1 and ROC AUC,
    whose denominators differ between models, a paired bootstrap (both models on the same
    resampled slices): p = twice the smaller share of resamples where the difference is
    <= 0 or >= 0, counting the observed difference as one resample. Calibration (expected
    calibration error) and the model properties carry no test.
    """
    names = comparison.names
    basis = SAME_SLICES.format(n=comparison.n)
    rows = [_accuracy_row(comparison, alpha)]
    if comparison.binary:
        rows += _binary_rows(comparison, repeats, seed, alpha)
    rows.append(_calibration_row(comparison))
    rows += _property_rows(comparison)
    for row in rows:
        row["basis"] = basis
        row.setdefault("comparisons", [])
        row["better"] = _overall_better(row["comparisons"], names)
    return rows


def _row(key: str, metric: str, **fields) -> dict:
    return {"key": key, "metric": metric, "higher_is_better": True, **fields}


def _fact_row(key: str, label: str, values: dict, text: dict[str, str]) -> dict:
    """A row that describes the models (size, training time) rather than scoring them."""
    return _row(
        key, label, values=values, text=text, interval=None, test=None, higher_is_better=None
    )


def _pairs(names: list[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(names, 2))


def _accuracy_row(comparison: Comparison, alpha: float) -> dict:
    values = {
        name: wilson_interval(int(result.correct.sum()), comparison.n)
        for name, result in comparison.models.items()
    }
    tests = [
        _mcnemar(a, b, comparison.models[a].correct, comparison.models[b].correct, alpha)
        for a, b in _pairs(comparison.names)
    ]
    return _row(
        "accuracy",
        "Accuracy",
        values={name: interval.to_dict() for name, interval in values.items()},
        text={name: _percent(interval) for name, interval in values.items()},
        interval="Wilson 95%",
        test="McNemar's exact test on paired correctness, all slices",
        comparisons=tests,
    )


def _mcnemar(a: str, b: str, success_a: np.ndarray, success_b: np.ndarray, alpha: float) -> dict:
    only_a, only_b, p = mcnemar_exact(success_a, success_b)
    better = (a if only_a > only_b else b) if p < alpha else None
    return {"a": a, "b": b, "p_value": p, "better": better, "only_a": only_a, "only_b": only_b}


def _binary_rows(comparison: Comparison, repeats: int, seed: int, alpha: float) -> list[dict]:
    positive = comparison.is_positive
    called = {name: comparison.predicted_positive(name) for name in comparison.names}
    scores = {name: comparison.positive_score(name) for name in comparison.names}
    proportions = {
        "sensitivity": {name: (c[positive], positive) for name, c in called.items()},
        "specificity": {name: (~c[~positive], ~positive) for name, c in called.items()},
        "precision": {name: (positive[c], c) for name, c in called.items()},
    }
    picks = _resamples(comparison.n, repeats, seed)
    boot = {
        "f1": {
            name: _bootstrap(lambda i, c=c: f1_score(positive[i], c[i]), picks)
            for name, c in called.items()
        },
        "roc_auc": {
            name: _bootstrap(lambda i, s=s: roc_auc(positive[i], s[i]), picks)
            for name, s in scores.items()
        },
    }
    boot["precision"] = {
        name: _bootstrap(lambda i, c=c: _precision(positive[i], c[i]), picks)
        for name, c in called.items()
    }
    rows = []
    for key, label in _BINARY_ROWS:
        metric = f"{label} ({comparison.positive_class})" if key == "sensitivity" else label
        if key in proportions:
            values = {
                name: wilson_interval(int(hits.sum()), int(among.sum()))
                for name, (hits, among) in proportions[key].items()
            }
            interval = "Wilson 95%"
        else:
            values = {name: samples[0] for name, samples in boot[key].items()}
            interval = f"percentile bootstrap 95% ({repeats} resamples of the slices, seed {seed})"
        if key in ("sensitivity", "specificity"):
            among = positive if key == "sensitivity" else ~positive
            success = {
                name: called[name][among] if key == "sensitivity" else ~called[name][among]
                for name in comparison.names
            }
            tests = [
                _mcnemar(a, b, success[a], success[b], alpha) for a, b in _pairs(comparison.names)
            ]
            test = (
                "McNemar's exact test on paired correctness, "
                f"{'positive' if key == 'sensitivity' else 'negative'} slices only"
            )
        else:
            tests = [
                _paired_bootstrap(a, b, boot[key][a][1], boot[key][b][1], alpha)
                for a, b in _pairs(comparison.names)
            ]
            test = f"paired bootstrap of the difference ({repeats} resamples, seed {seed})"
        rows.append(
            _row(
                key,
                metric,
                values={name: interval.to_dict() for name, interval in values.items()},
                text={
                    name: _number(iv) if key == "roc_auc" else _percent(iv)
                    for name, iv in values.items()
                },
                interval=interval,
                test=test,
                comparisons=tests,
            )
        )
    return rows


def _precision(y_true: np.ndarray, called: np.ndarray) -> float:
    return float(y_true[called].mean()) if called.any() else math.nan


def _resamples(n: int, repeats: int, seed: int) -> list[np.ndarray]:
    """The slices of each bootstrap resample, drawn as `metrics.bootstrap_interval` draws."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, n) for _ in range(repeats)]


def _bootstrap(statistic, picks: list[np.ndarray]) -> tuple[Interval, np.ndarray]:
    """The interval of `statistic(indices)` and its value on every resample (NaN kept, so
    two models' samples stay paired)."""
    n = len(picks[0]) if picks else 0
    value = statistic(np.arange(n))
    samples = np.array([statistic(p) for p in picks], dtype=float)
    finite = samples[~np.isnan(samples)]
    if finite.size == 0:
        return Interval(value, math.nan, math.nan), samples
    low, high = np.percentile(finite, [2.5, 97.5])
    return Interval(float(value), float(low), float(high)), samples


def _paired_bootstrap(a: str, b: str, samples_a, samples_b, alpha: float) -> dict:
    difference = samples_a - samples_b
    difference = difference[~np.isnan(difference)]
    if difference.size == 0:
        return {"a": a, "b": b, "p_value": math.nan, "better": None}
    m = difference.size
    at_most, at_least = int(np.sum(difference <= 0)), int(np.sum(difference >= 0))
    p = min(1.0, 2 * (min(at_most, at_least) + 1) / (m + 1))
    better = None
    if p < alpha:
        better = a if np.median(difference) > 0 else b
    return {"a": a, "b": b, "p_value": p, "better": better}


def _overall_better(comparisons: list[dict], names: list[str]) -> str | None:
    """The model that is significantly better than each of the others on this row."""
    for name in names:
        against = [c for c in comparisons if name in (c["a"], c["b"])]
        if against and len(against) == len(names) - 1 and all(c["better"] == name for c in against):
            return name
    return None


def _calibration_row(comparison: Comparison) -> dict:
    values = {
        name: expected_calibration_error(result.y_true, result.probabilities)
        for name, result in comparison.models.items()
    }
    return _row(
        "calibration",
        "Expected calibration error",
        values=values,
        text={name: _plain(value, "{:.3f}") for name, value in values.items()},
        higher_is_better=False,
        interval=None,
        test=None,
    )


def _property_rows(comparison: Comparison) -> list[dict]:
    models = comparison.models
    properties = (
        (
            "input",
            "Input",
            {
                n: f"{r.card.image_size}×{r.card.image_size}×{r.card.channels}"
                for n, r in models.items()
            },
            None,
        ),
        ("parameters", "Parameters", {n: r.parameters or None for n, r in models.items()}, "{:,}"),
        ("file_bytes", "File size", {n: r.file_bytes for n, r in models.items()}, None),
        (
            "ms_per_slice",
            "Milliseconds per slice (this server)",
            {n: None if math.isnan(r.ms_per_slice) else r.ms_per_slice for n, r in models.items()},
            "{:.2f} ms",
        ),
        (
            "training_seconds",
            "Training time",
            {n: r.card.training_seconds or None for n, r in models.items()},
            None,
        ),
    )
    rows = []
    for key, label, values, pattern in properties:
        if key == "file_bytes":
            text = {n: _megabytes(v) for n, v in values.items()}
        elif key == "training_seconds":
            text = {n: _duration(v) for n, v in values.items()}
        elif pattern is None:
            text = {n: str(v) for n, v in values.items()}
        else:
            text = {n: _plain(v, pattern) for n, v in values.items()}
        rows.append(_fact_row(key, label, values, text))
    return rows


def _percent(interval: Interval) -> str:
    if math.isnan(interval.value):
        return "–"
    if math.isnan(interval.low):
        return f"{interval.value:.1%}"
    return f"{interval.value:.1%} ({interval.low:.1%}–{interval.high:.1%})"


def _number(interval: Interval) -> str:
    if math.isnan(interval.value):
        return "–"
    if math.isnan(interval.low):
        return f"{interval.value:.3f}"
    return f"{interval.value:.3f} ({interval.low:.3f}–{interval.high:.3f})"


def _plain(value, pattern: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return pattern.format(value)


def _megabytes(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:.2f} MB"


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "–"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def display_rows(table: list[dict], names: Sequence[str]) -> list[dict]:
    """The table flattened for `st.dataframe`: "metric", one text column per model, and
    "difference" saying which model is significantly better, with the p-value."""
    rows = []
    for row in table:
        flat = {"metric": row["metric"]}
        flat.update({name: row["text"].get(name, "–") for name in names})
        notes = []
        for test in row["comparisons"]:
            p = test["p_value"]
            p_text = "p n/a" if math.isnan(p) else _p(p)
            if test["better"]:
                other = test["b"] if test["better"] == test["a"] else test["a"]
                notes.append(f"{test['better']} better than {other} ({p_text})")
            else:
                notes.append(f"{test['a']} vs {test['b']}: no significant difference ({p_text})")
        flat["difference"] = "; ".join(notes) if notes else "–"
        rows.append(flat)
    return rows


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


# ----------------------------------------------------------------------- per-slice views


def disagreements(comparison: Comparison, a: str, b: str, sort_by: str = "confidence") -> list:
    """The slices where models `a` and `b` predict different classes, each with the truth,
    both predictions and the probability each model gives its own prediction.

    `sort_by`: "confidence" (the larger of the two probabilities, highest first: where one
    model is surest), "both" (the smaller of the two, highest first: where both are sure and
    still disagree) or "file" (the data's order)."""
    first, second = comparison.models[a], comparison.models[b]
    predicted_a, predicted_b = first.predicted, second.predicted
    confidence_a, confidence_b = first.confidence, second.confidence
    rows = []
    for index, (class_a, class_b) in enumerate(zip(predicted_a, predicted_b, strict=True)):
        if class_a == class_b:
            continue
        truth = comparison.labels[index]
        pa, pb = float(confidence_a[index]), float(confidence_b[index])
        right = [name for name, c in ((a, class_a), (b, class_b)) if c == truth]
        rows.append(
            {
                "index": index,
                "file": comparison.files[index],
                "truth": truth,
                "a": a,
                "a_predicted": class_a,
                "a_probability": pa,
                "b": b,
                "b_predicted": class_b,
                "b_probability": pb,
                "confidence": max(pa, pb),
                "both_sure": min(pa, pb),
                "right": right[0] if right else None,
            }
        )
    keys = {
        "confidence": lambda row: -row["confidence"],
        "both": lambda row: -row["both_sure"],
        "file": lambda row: row["index"],
    }
    if sort_by not in keys:
        raise ValueError(f"sort_by must be one of {', '.join(keys)}, not {sort_by!r}.")
    return sorted(rows, key=keys[sort_by])


def threshold_tradeoff(comparison: Comparison, model: str, thresholds: Iterable[float]) -> list:
    """Sensitivity and specificity of `model` when a slice is called positive if its
    positive-class probability is >= the threshold. A threshold <= 0 calls every slice
    positive, one >= 1 none (so the slider's ends are always sensitivity 1 and specificity
    1, whatever rounding made of saturated probabilities). One dict per threshold:
    threshold, sensitivity, specificity, tp, fn, tn, fp."""
    if not comparison.binary:
        raise ValueError("A threshold needs two classes and a positive class.")
    positive = comparison.is_positive
    scores = comparison.positive_score(model)
    rows = []
    for threshold in thresholds:
        threshold = float(threshold)
        if threshold <= 0:
            called = np.ones_like(positive)
        elif threshold >= 1:
            called = np.zeros_like(positive)
        else:
            called = scores >= threshold
        tp, fn = int(np.sum(called & positive)), int(np.sum(~called & positive))
        tn, fp = int(np.sum(~called & ~positive)), int(np.sum(called & ~positive))
        rows.append(
            {
                "threshold": threshold,
                "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
                "specificity": tn / (tn + fp) if tn + fp else math.nan,
                "tp": tp,
                "fn": fn,
                "tn": tn,
                "fp": fp,
            }
        )
    return rows


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


# ----------------------------------------------------------------------------- exports


def comparison_csv(comparison: Comparison) -> str:
    """One line per slice: file, true class, and per model its predicted class, the
    probability of every class it knows, and whether it was right."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["file", "true class"]
    for name, model in comparison.models.items():
        header += [f"{name} predicted"]
        header += [f"{name} P({c})" for c in model.class_names]
        header += [f"{name} correct"]
    writer.writerow(header)
    for index, (file, truth) in enumerate(zip(comparison.files, comparison.labels, strict=True)):
        line = [file, truth]
        for model in comparison.models.values():
            line.append(model.class_names[model.predicted_index[index]])
            line += [f"{p:.6f}" for p in model.probabilities[index]]
            line.append(bool(model.correct[index]))
        writer.writerow(line)
    return buffer.getvalue()


def metrics_csv(table: list[dict]) -> str:
    """The metrics table as CSV: one line per metric and model (value, 95% interval), then
    one per metric and pair of models (p-value, which is significantly better)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "model", "value", "low", "high", "p_value", "better", "basis"])
    for row in table:
        for name, value in row["values"].items():
            if isinstance(value, dict):
                line = [value["value"], value["low"], value["high"]]
            else:
                line = [value, "", ""]
            writer.writerow([row["key"], name, *line, "", "", row["basis"]])
        for test in row["comparisons"]:
            writer.writerow(
                [
                    row["key"],
                    f"{test['a']} vs {test['b']}",
                    "",
                    "",
                    "",
                    test["p_value"],
                    test["better"] or "",
                    row["basis"],
                ]
            )
    return buffer.getvalue()


# ------------------------------------------------------------------ without any images


def card_comparison(cards: Mapping[str, ModelCard]) -> list[dict]:
    """When no labelled images can be read: the models side by side from their cards alone.

    Same row shape as `metrics_table`, but every row's `basis` says that these are each
    model's own validation split, not the same slices; there are no paired tests and no
    model is marked better. A card without validation numbers shows "–"."""
    splits = ", ".join(
        f"{name}: {card.validation.get('n', '?')} slices" for name, card in cards.items()
    )
    basis = OWN_SPLITS.format(splits=splits)
    rows = []
    for key, label in (("accuracy", "Accuracy"), *_BINARY_ROWS):
        values = {name: card.validation.get(key) or None for name, card in cards.items()}
        if key == "sensitivity":
            positives = {card.positive_class for card in cards.values()} - {None}
            label = f"{label} ({', '.join(sorted(positives))})" if positives else label
        rows.append(
            _row(
                key,
                label,
                values=values,
                text={
                    name: "–"
                    if value is None
                    else (_number if key == "roc_auc" else _percent)(Interval.from_dict(value))
                    for name, value in values.items()
                },
                interval="as recorded in the card (Wilson 95%; bootstrap for F1 and ROC AUC)",
                test=None,
            )
        )
    ece = {name: card.validation.get("expected_calibration_error") for name, card in cards.items()}
    rows.append(
        _row(
            "calibration",
            "Expected calibration error",
            values=ece,
            text={name: _plain(value, "{:.3f}") for name, value in ece.items()},
            higher_is_better=False,
            interval=None,
            test=None,
        )
    )
    properties = {
        "input": (
            "Input",
            {n: f"{c.image_size}×{c.image_size}×{c.channels}" for n, c in cards.items()},
        ),
        "parameters": ("Parameters", {n: c.parameters or None for n, c in cards.items()}),
        "training_seconds": (
            "Training time",
            {n: c.training_seconds or None for n, c in cards.items()},
        ),
        "validation_slices": (
            "Validation slices",
            {n: c.validation.get("n") for n, c in cards.items()},
        ),
    }
    for key, (label, values) in properties.items():
        if key == "training_seconds":
            text = {n: _duration(v) for n, v in values.items()}
        elif key == "parameters":
            text = {n: _plain(v, "{:,}") for n, v in values.items()}
        else:
            text = {n: "–" if v is None else str(v) for n, v in values.items()}
        rows.append(_fact_row(key, label, values, text))
    for row in rows:
        row.update(basis=basis, comparisons=[], better=None)
    return rows


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
    keep = np.ones(len(folder.files), dtype=bool)
    limited = []
    relative = [folder.relative(path) for path in folder.files]
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
