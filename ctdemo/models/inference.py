"""Predict classes for files or decoded slices with a model and its card."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import keras
import numpy as np

from ctdemo.evaluation.metrics import softmax
from ctdemo.io.decoded import SliceError
from ctdemo.io.slices import decode_slice, read_slice_file, to_model_input
from ctdemo.models.cards import ModelCard
from ctdemo.models.training import predict_logits

BATCH_SIZE = 64
NOT_A_NUMBER = (
    "The model's output for this slice is not a number (NaN or infinite): its weights may be "
    "damaged, so it gives no verdict. Train or save the model again."
)


@dataclass
class Prediction:
    file: str
    predicted_class: str | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {
            "file": self.file,
            "predicted_class": self.predicted_class,
            "probabilities": self.probabilities,
        }


def probabilities(model: keras.Model, x: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Class probabilities (n, classes) for model inputs: softmax of the logits. A row whose
    logits are not all finite is all NaN (see `is_number`): a softmax would hide an infinity."""
    logits = predict_logits(model, x, batch_size).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        probs = softmax(logits)
    probs[~np.isfinite(logits).all(axis=-1)] = np.nan
    return probs


def is_number(probs: np.ndarray) -> bool:
    """Whether one slice's probabilities are a verdict, not the NaN of a broken model."""
    return bool(np.isfinite(probs).all())


def slices_per_batch(card: ModelCard) -> int:
    """How many slices the card's model may run at once: an uploaded model's card says, from
    the memory its layers need (`ctdemo.models.uploaded`); every other model takes full batches."""
    return int(card.architecture.get("slices_per_batch", BATCH_SIZE))


def model_input(pixels: np.ndarray, card: ModelCard) -> np.ndarray:
    """A decoded grey slice in [0, 1] to the input `card`'s model expects: resized, with its
    channels, times the card's input scale (255 for a model that rescales raw pixels itself)."""
    x = to_model_input(pixels, card.image_size, card.channels)
    scale = card.input_scale
    return x if scale == 1.0 else x * np.float32(scale)


def read_model_input(path: str, card: ModelCard) -> np.ndarray | str:
    """Model input for one file, or the reason it has none (a folder, a pipe or a device is
    refused before it is read: see `read_slice_file`)."""
    try:
        data = read_slice_file(path)
        return model_input(decode_slice(data, filename=os.path.basename(path)).pixels, card)
    except SliceError as error:
        return str(error)


def predict_files(
    model: keras.Model, card: ModelCard, files: Sequence[str], workers: int = 2
) -> list[Prediction]:
    """One prediction per file, in order; unreadable files get an error and do not stop
    the others. Files are decoded on a small thread pool, one batch ahead of the model: the
    decoders (Pillow, OpenCV, NumPy) and TensorFlow release the GIL, so the next batch is
    decoded while this one is predicted. At most two batches of inputs are held."""
    chunks = [list(files[start : start + BATCH_SIZE]) for start in range(0, len(files), BATCH_SIZE)]
    results: list[Prediction] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def decode(chunk: list[str]) -> list[Future]:
            return [pool.submit(read_model_input, path, card) for path in chunk]

        pending = decode(chunks[0]) if chunks else []
        for index, chunk in enumerate(chunks):
            inputs = [future.result() for future in pending]
            pending = decode(chunks[index + 1]) if index + 1 < len(chunks) else []
            results.extend(_predict_chunk(model, card, chunk, inputs))
    return results


def _predict_chunk(
    model: keras.Model, card: ModelCard, chunk: list[str], inputs: list[np.ndarray | str]
) -> list[Prediction]:
    good = [i for i, item in enumerate(inputs) if not isinstance(item, str)]
    batch = slices_per_batch(card)
    probs = probabilities(model, np.stack([inputs[i] for i in good]), batch) if good else []
    by_index = dict(zip(good, probs, strict=True))
    return [
        Prediction(path, error=item)
        if isinstance(item, str)
        else _prediction(path, by_index[index], card.class_names)
        for index, (path, item) in enumerate(zip(chunk, inputs, strict=True))
    ]


def _prediction(file: str, probs: np.ndarray, class_names: list[str]) -> Prediction:
    if not is_number(probs):
        return Prediction(file, error=NOT_A_NUMBER)
    return Prediction(
        file=file,
        predicted_class=class_names[int(np.argmax(probs))],
        probabilities={
            name: round(float(p), 6) for name, p in zip(class_names, probs, strict=True)
        },
    )
