"""What the Classify page computes, without Streamlit: decode uploads, predict, screen, tabulate.

Each file becomes a `SliceResult`; one bad file carries its error and never stops the others.
TensorFlow is imported only when a prediction is made, so the page paints before it loads.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ctdemo.io.decoded import SliceError
from ctdemo.io.dicom import LUNG_WINDOW, Window
from ctdemo.io.slices import declared_pixels, decode_slice, is_dicom, to_model_input
from ctdemo.models.cards import ModelCard

if TYPE_CHECKING:
    import keras

    from ctdemo.explain.ood import OODDetector, OODResult

MAX_FILES = 40
"""Slices classified at once: a batch of 40 explains itself in seconds on a shared server."""

MAX_BATCH_PIXELS = 100_000_000
"""Pixels one batch may decode, counted from the files' headers before any is decoded: 40
slices of 1,580 x 1,580, or 8 photos of 12 MP. Forty 25-MP uploads once decoded to 3.9 GB."""

MAX_GALLERY = 12
"""Heatmaps drawn for a batch: enough to compare, few enough to compute in a few seconds."""

CAUTION = (
    "For teaching and research only: not a medical device and not for diagnosis. "
    "A probability here is a model's score on one slice, not a finding."
)


@dataclass
class SliceResult:
    name: str
    digest: str
    source_format: str = ""
    pixels: np.ndarray | None = None  # the decoded slice, (height, width) in [0, 1]
    tags: dict[str, str] = field(default_factory=dict)
    probabilities: dict[str, float] | None = None
    colour_fraction: float = 0.0  # `DecodedSlice.colour_fraction`: CT slices are grey
    screening: OODResult | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.probabilities is not None

    @property
    def predicted_class(self) -> str | None:
        if not self.probabilities:
            return None
        return max(self.probabilities, key=self.probabilities.__getitem__)

    @property
    def out_of_distribution(self) -> bool:
        return self.screening is not None and self.screening.flagged

    @property
    def status(self) -> str:
        if self.error:
            return f"error: {self.error}"
        if self.out_of_distribution:
            return "not like a chest CT slice: no verdict"
        return "ok"


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def has_dicom(files: Sequence[tuple[str, bytes]]) -> bool:
    """Whether any (name, bytes) is a DICOM file: the page then offers its window."""
    return any(is_dicom(data, name) for name, data in files)


def decode_files(
    files: Sequence[tuple[str, bytes]], window: Window = LUNG_WINDOW
) -> list[SliceResult]:
    """Decode each (name, bytes); a file that is not a usable slice gets its error, and so
    does one whose declared pixels would take the batch past MAX_BATCH_PIXELS."""
    results = []
    budget = MAX_BATCH_PIXELS
    for name, data in files:
        result = SliceResult(name=name, digest=digest(data))
        cost = declared_pixels(data, name)
        try:
            if cost > budget:
                raise SliceError(_over_budget(cost))
            budget -= cost
            decoded = decode_slice(data, name, window)
        except SliceError as error:
            result.error = str(error)
        else:
            result.colour_fraction = decoded.colour_fraction
            result.source_format = decoded.source_format
            result.pixels = decoded.pixels
            result.tags = decoded.dicom_tags
        results.append(result)
    return results


def _over_budget(cost: int) -> str:
    return (
        f"This batch is over {MAX_BATCH_PIXELS / 1e6:.0f} megapixels with this file "
        f"({cost / 1e6:.1f} MP), so it was not decoded; upload fewer or smaller slices "
        "(a 512 x 512 CT slice is 0.26 MP)."
    )


def predict(results: list[SliceResult], model: keras.Model, card: ModelCard) -> None:
    """Fill in each decoded slice's class probabilities, in batches the model can afford; a
    slice the model gives no number for (NaN or infinite output) gets an error instead."""
    from ctdemo.models.inference import (
        NOT_A_NUMBER,
        is_number,
        model_input,
        probabilities,
        slices_per_batch,
    )

    decoded = [result for result in results if result.pixels is not None]
    if not decoded:
        return
    batch = np.stack([model_input(result.pixels, card) for result in decoded])
    rows = probabilities(model, batch, slices_per_batch(card))
    for result, row in zip(decoded, rows, strict=True):
        if not is_number(row):
            result.error = NOT_A_NUMBER
            continue
        result.probabilities = {
            name: float(p) for name, p in zip(card.class_names, row, strict=True)
        }


def screen(
    results: list[SliceResult], extractor: keras.Model, detector: OODDetector, image_size: int
) -> None:
    """Ask of each decoded slice "is this a chest CT slice?" (`ctdemo.explain.ood`): its
    distance from the training slices in the features of `extractor`, plus the colour and
    blank cues."""
    from ctdemo.explain.ood_model import extract_features

    decoded = [result for result in results if result.pixels is not None]
    if not decoded:
        return
    x = np.stack([to_model_input(result.pixels, image_size) for result in decoded])
    assessed = detector.assess(
        extract_features(extractor, x),
        pixel_std=x.reshape(len(x), -1).std(axis=1),
        colour=np.array([result.colour_fraction for result in decoded]),
    )
    for result, screening in zip(decoded, assessed, strict=True):
        result.screening = screening


def result_rows(results: Sequence[SliceResult], class_names: Sequence[str]) -> list[dict]:
    """One table row per file: name, verdict, a probability per class, status."""
    rows = []
    for result in results:
        row: dict[str, object] = {"file": result.name}
        shown = result.ok and not result.out_of_distribution
        row["class"] = result.predicted_class if shown else ""
        for name in class_names:
            value = (result.probabilities or {}).get(name)
            row[f"P({name})"] = round(value, 4) if value is not None else None
        row["status"] = result.status
        rows.append(row)
    return rows


def rows_to_csv(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def format_probability(probability: float) -> str:
    """A percentage that never rounds a model's score to certainty: 99.97% reads ">99.9%"."""
    if probability > 0.999:
        return ">99.9%"
    if probability < 0.001:
        return "<0.1%"
    return f"{probability:.1%}"


def accuracy_statement(card: ModelCard) -> str:
    """How well the model did on slices it never trained on, and how that was measured."""
    accuracy = card.validation_accuracy
    if accuracy is None or card.validation_slices is None:
        return "This model's accuracy is unknown: it has no validation results in its card."
    how = (
        f"whole patients held out by a grouped split ({card.group_source})"
        if card.split_method == "grouped"
        else "a random split of slices, which flatters accuracy on this dataset"
    )
    return (
        f"Validation accuracy {accuracy.value:.1%} (95% CI {accuracy.low:.1%}–"
        f"{accuracy.high:.1%}) on {card.validation_slices} slices from {how}."
    )


def explanation_note(card: ModelCard) -> str | None:
    """What a model's heatmap can and cannot show, where that is not a place on the slice."""
    if card.features == "distribution":
        return (
            "This MLP reads how bright the slice is and how sharp its edges are, not where "
            "things are: its saliency is spread over every pixel whose brightness or edge rank "
            "sways the answer, not gathered on a region. Compare the CNN's Grad-CAM."
        )
    if card.features == "pixels+distribution":
        return (
            "Besides what its convolutions see, this CNN's last layers read how bright the "
            "whole slice is and how sharp its edges are (the MLP's cue). A heatmap shows only "
            "the convolutions' part: that overall density has no place on the slice to light up."
        )
    return None
