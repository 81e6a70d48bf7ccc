"""Run several models on the same labelled slices: their probabilities and their speed here.

    comparison = evaluate_models({"cnn": (model, card), ...}, "data/val")

Every model sees every slice through the one preprocessing path (`inference.model_input`: each
model its own size, channels and input scale from its card), and a file is decoded once,
however many models there are. The result is a plain-numbers `evaluation.compare.Comparison`.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from ctdemo.evaluation.compare import (
    Comparison,
    Footprint,
    check_classes,
    comparison_from_probabilities,
)
from ctdemo.io.decoded import SliceError
from ctdemo.io.folders import ArrayDataset, DatasetError, ImageFolder, scan_image_folder
from ctdemo.io.slices import decode_slice, read_slice_file
from ctdemo.models.cards import ModelCard
from ctdemo.models.inference import NOT_A_NUMBER, model_input, probabilities, slices_per_batch

TIMING_REPEATS = 3
TIMING_SLICES = 128
"""Repeat timings run on at most this many slices (two batches): a stable rate, cheaply."""


@dataclass
class LabelledSlices:
    """Decoded grey slices (float (height, width) in [0, 1], any size) with their true class."""

    pixels: list[np.ndarray]
    labels: list[str]
    files: list[str]
    class_names: list[str] = field(default_factory=list)  # default: sorted distinct labels
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (len(self.pixels) == len(self.labels) == len(self.files)):
            raise ValueError("pixels, labels and files must have one entry per slice.")
        self.class_names = list(self.class_names) or sorted(set(self.labels))
        unknown = sorted(set(self.labels) - set(self.class_names))
        if unknown:
            raise ValueError(f"Labels not among the class names: {', '.join(unknown)}.")


Source = LabelledSlices | ArrayDataset | ImageFolder | Path | str
InputKey = tuple[int, int, float]
"""What `model_input` depends on (size, channels, scale): models sharing it share inputs."""


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
    for the table; `positive_class` as in `comparison_from_probabilities`.

    Raises ValueError, naming the model, when a model's classes do not include every class
    of the data (before anything is decoded), or its outputs are not numbers or do not match
    its card's classes; `DatasetError` when no image can be read. `ms_per_slice`: see
    `_predict_and_time`; NaN (and no warm-up) when `timing_repeats` is 0.
    """
    if not models:
        raise ValueError("Choose at least one model to compare.")
    if isinstance(data, Path | str):
        data = scan_image_folder(data)
    cards = {name: card for name, (_, card) in models.items()}
    check_classes(cards, data.class_names)
    slices, inputs = _model_inputs(data, cards.values(), workers)
    probs, footprints = {}, {}
    for name, (model, card) in models.items():
        x = inputs[_input_key(card)]
        probs[name], ms = _predict_and_time(model, x, timing_repeats, slices_per_batch(card))
        if not np.isfinite(probs[name]).all():
            raise ValueError(f"{name}: {NOT_A_NUMBER}")
        size = _file_bytes((model_files or {}).get(name))
        footprints[name] = Footprint(ms, int(model.count_params()), size)
    return comparison_from_probabilities(
        cards,
        probs,
        slices.labels,
        files=slices.files,
        class_names=slices.class_names,
        positive_class=positive_class,
        footprints=footprints,
        skipped=slices.skipped,
    )


def _input_key(card: ModelCard) -> InputKey:
    return card.image_size, card.channels, card.input_scale


def _model_inputs(
    data: LabelledSlices | ArrayDataset | ImageFolder,
    cards: Iterable[ModelCard],
    workers: int | None,
) -> tuple[LabelledSlices, dict[InputKey, np.ndarray]]:
    """Model inputs for every distinct preprocessing among `cards`, each slice decoded once.
    The returned LabelledSlices has no pixels when the data came from a folder (only each
    model's input is kept)."""
    specs = {_input_key(card): card for card in cards}

    def inputs_of(pixels: np.ndarray) -> dict[InputKey, np.ndarray]:
        return {key: model_input(pixels, card) for key, card in specs.items()}

    if isinstance(data, ImageFolder):

        def decode_and_prepare(path: Path) -> dict | str:
            pixels = _decode(path)
            return pixels if isinstance(pixels, str) else inputs_of(pixels)

        slices = _labelled(data, _map(data.files, decode_and_prepare, workers))
        per_slice, slices.pixels = slices.pixels, []
    else:
        slices = _from_arrays(data) if isinstance(data, ArrayDataset) else data
        if not slices.pixels:
            raise DatasetError("No labelled slices to compare on.")
        per_slice = [inputs_of(pixels) for pixels in slices.pixels]
    return slices, {key: np.stack([inputs[key] for inputs in per_slice]) for key in specs}


def _from_arrays(data: ArrayDataset) -> LabelledSlices:
    """An array dataset's slices, already resized once, taken as the pixels."""
    return LabelledSlices(
        [image[..., 0] for image in data.x],
        [data.class_names[i] for i in data.y],
        list(data.files),
        data.class_names,
        list(data.skipped),
    )


def _decode(path: Path) -> np.ndarray | str:
    """A file's grey slice, or why it has none."""
    try:
        return decode_slice(read_slice_file(path), path.name).pixels
    except SliceError as error:
        return str(error)
    except OSError as error:
        return f"could not be read ({error.strerror})"


def _map(items: Sequence, function: Callable, workers: int | None) -> list:
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
    return LabelledSlices(pixels, labels, files, folder.class_names, skipped)


def _predict_and_time(
    model: keras.Model, x: np.ndarray, repeats: int, batch: int
) -> tuple[np.ndarray, float]:
    """Probabilities for every input, and the median milliseconds per slice of `repeats`
    timed batched predictions (the model only; decoding and resizing excluded): the full pass
    itself, then passes over up to `TIMING_SLICES`. A first prediction on one batch and one
    more slice traces the model for a full batch and for any other size (Keras relaxes the
    shape on the second trace), so no timed pass pays for tracing."""
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
    if value is None or isinstance(value, int):
        return value
    try:
        return Path(value).stat().st_size
    except OSError:
        return None
