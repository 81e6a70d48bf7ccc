"""Saving and loading a model with its card: one `.keras` file and one `.card.json` beside it.

`load_model` reads in Keras safe mode, so no code from the file runs; our own custom layer is
registered by importing `ctdemo.models.features`. The card itself (`ctdemo.models.cards`) is
plain data, readable without TensorFlow.
"""

from __future__ import annotations

import io
import platform
import tempfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy
import tensorflow

import ctdemo.models.features  # noqa: F401  (registers the density features' layer)
from ctdemo.models.cards import MAX_MODEL_BYTES, ModelCard, ModelLoadError, card_path


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "tensorflow": tensorflow.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
    }


def save_model(model: keras.Model, card: ModelCard, path: Path | str) -> Path:
    """Write the model and its card side by side; returns the card's path."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"Save models as .keras files, not {path.suffix or 'no suffix'}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    card.parameters = int(model.count_params())
    card.versions = card.versions or library_versions()
    card.created = card.created or datetime.now(UTC).isoformat(timespec="seconds")
    _without_optimizer(model).save(path)
    target = card_path(path)
    target.write_text(card.to_json() + "\n")
    return target


def _without_optimizer(model: keras.Model) -> keras.Model:
    """An uncompiled copy sharing nothing but the weights: the optimizer's slots (Adam's
    moments and the weight average) would triple the file for no use at inference."""
    copy = keras.Model.from_config(model.get_config())  # clone_model would keep the optimizer
    copy.set_weights(model.get_weights())
    return copy


def load_model(path: Path | str) -> tuple[keras.Model, ModelCard]:
    """Load a model saved by `save_model`, in Keras safe mode (no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"No model file at {path}.")
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise ModelLoadError(
            f"{path.name} is {path.stat().st_size / 2**20:.0f} MB; "
            f"models over {MAX_MODEL_BYTES // 2**20} MB are refused."
        )
    if not card_path(path).is_file():
        raise ModelLoadError(f"{path.name} has no card ({card_path(path).name}) beside it.")
    try:
        card = ModelCard.from_json(card_path(path).read_text())
    except (ValueError, TypeError) as error:
        raise ModelLoadError(f"The card of {path.name} is not valid JSON ({error}).") from None
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        raise ModelLoadError(f"{path.name} could not be loaded as a Keras model: {error}") from None
    return model, card


def model_bundle(model: keras.Model, card: ModelCard) -> bytes:
    """The model and its card as one zip (`NAME.keras` + `NAME.card.json`), for a download."""
    with tempfile.TemporaryDirectory(prefix="ctdemo-bundle-") as folder:
        path = Path(folder) / f"{_file_name(card.name)}.keras"
        card_file = save_model(model, card, path)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
            bundle.write(path, path.name)
            bundle.write(card_file, card_file.name)
    return buffer.getvalue()


def _file_name(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-")
    return safe or "model"
