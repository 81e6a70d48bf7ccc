"""Classify every slice of a volume through the one preprocessing path (`model_input`), and
summarise the scan with `ctdemo.evaluation.volume_summary`'s rules."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from ctdemo.evaluation.volume_summary import VolumeSummary, summarise
from ctdemo.io.volumes import Volume
from ctdemo.models.cards import ModelCard
from ctdemo.models.inference import (
    BATCH_SIZE,
    NOT_A_NUMBER,
    is_number,
    model_input,
    probabilities,
    slices_per_batch,
)


@dataclass(frozen=True, eq=False)
class VolumePrediction:
    """Each slice's class probabilities (a NaN row: no verdict) and the scan's summary, on the
    card's positive class (None, and no summary, for a card without one)."""

    volume: Volume
    probabilities: np.ndarray  # (slices, classes)
    class_names: tuple[str, ...]
    positive_class: str | None
    summary: VolumeSummary | None

    def slice_records(self) -> list[dict]:
        """One record per slice, in the volume's order."""
        positions = self.volume.positions
        records = []
        for index, probs in enumerate(self.probabilities):
            record: dict = {
                "index": index,
                "position": None if positions is None else round(positions[index], 3),
            }
            if is_number(probs):
                record["predicted_class"] = self.class_names[int(np.argmax(probs))]
                record["probabilities"] = {
                    name: round(float(p), 6)
                    for name, p in zip(self.class_names, probs, strict=True)
                }
            else:
                record["error"] = NOT_A_NUMBER
            records.append(record)
        return records

    @property
    def failed_slices(self) -> int:
        return int((~np.isfinite(self.probabilities).all(axis=1)).sum())


def classify_volume(
    model: keras.Model, card: ModelCard, volume: Volume, flagged: np.ndarray | None = None
) -> VolumePrediction:
    """Probabilities for every slice, in batches of model inputs (never the whole volume's
    inputs at once), and the summary without the slices `flagged` as not CT."""
    batch = slices_per_batch(card)
    chunks = []
    for start in range(0, len(volume), BATCH_SIZE):
        indices = range(start, min(start + BATCH_SIZE, len(volume)))
        inputs = np.stack([model_input(volume.slice(i), card) for i in indices])
        chunks.append(probabilities(model, inputs, batch))
    probs = np.concatenate(chunks)
    positive = card.positive_index
    summary = None if positive is None else summarise(probs[:, positive], flagged)
    return VolumePrediction(
        volume=volume,
        probabilities=probs,
        class_names=tuple(card.class_names),
        positive_class=card.positive_class if positive is not None else None,
        summary=summary,
    )
