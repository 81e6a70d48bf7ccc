"""Model cards: everything needed to use, judge and rebuild a model, in JSON beside it.

`weights/cnn.keras` has its card at `weights/cnn.card.json`. Loading a model gives both, so
nothing downstream guesses the input size, the classes or which output means what.
"""

from __future__ import annotations

import io
import json
import math
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ctdemo.imaging import LUNG_WINDOW

if TYPE_CHECKING:  # TensorFlow is imported only when a model is saved or loaded
    import keras

CARD_SUFFIX = ".card.json"
MAX_MODEL_BYTES = 50 * 1024 * 1024
"""Largest model file we load: our shipped models are well under 5 MB."""


class ModelLoadError(ValueError):
    """A model file we cannot or will not load; the message is written for a person."""


def preprocessing_spec(image_size: int, channels: int = 1, in_model: str = "") -> dict:
    return {
        "function": "ctdemo.imaging.preprocess",
        "image_size": image_size,
        "channels": channels,
        "range": "[0, 1] (8-bit / 255; 16-bit and float min-max; DICOM windowed HU)",
        "aspect": "padded to a square with the median of the slice's edge, then resized",
        "dicom_window": {"width": LUNG_WINDOW.width, "level": LUNG_WINDOW.level},
        "in_model": in_model,
    }


@dataclass
class ModelCard:
    name: str
    class_names: list[str]
    positive_class: str | None
    input: dict
    architecture: dict
    output: str = "logits: one per class, softmax gives probabilities"
    training: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    seed: int = 0
    command: str = ""
    history: dict = field(default_factory=dict)
    best_epoch: int = 0
    stop_reason: str = ""
    training_seconds: float = 0.0
    validation: dict = field(default_factory=dict)
    parameters: int = 0
    versions: dict = field(default_factory=dict)
    created: str = ""

    @property
    def image_size(self) -> int:
        return int(self.input["image_size"])

    @property
    def channels(self) -> int:
        return int(self.input.get("channels", 1))

    @property
    def input_scale(self) -> float:
        """What our [0, 1] input is multiplied by before the model sees it: 1 for our models,
        255 for an uploaded model that rescales raw 0-255 pixels itself."""
        return float(self.input.get("scale", 1.0))

    @property
    def positive_index(self) -> int | None:
        if self.positive_class in self.class_names:
            return self.class_names.index(self.positive_class)
        return None

    def to_json(self) -> str:
        """Strict JSON: an undefined number (a NaN loss in the history) is written as null."""
        return json.dumps(json_safe(asdict(self)), indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        values = json.loads(text)
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in values.items() if key in known})


def json_safe(value: object) -> object:
    """`value` with every NaN or infinite float, however deep, replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def default_positive_class(class_names: list[str]) -> str | None:
    """COVID on this dataset; for other binary datasets, the second class; none for more."""
    if len(class_names) != 2:
        return None
    for name in class_names:
        lowered = name.lower()
        if "covid" in lowered and not lowered.startswith("non"):
            return name
    return class_names[1]


def library_versions() -> dict[str, str]:
    import keras
    import numpy
    import tensorflow

    return {
        "python": platform.python_version(),
        "tensorflow": tensorflow.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
    }


def card_path(model_path: Path | str) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + CARD_SUFFIX)


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
    import keras

    copy = keras.Model.from_config(model.get_config())  # clone_model would keep the optimizer
    copy.set_weights(model.get_weights())
    return copy


def load_model(path: Path | str) -> tuple[keras.Model, ModelCard]:
    """Load a model saved by `save_model`, in Keras safe mode (no code from the file runs)."""
    import keras

    import ctdemo.features  # noqa: F401  (registers the distribution MLP's input layer)

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
    import tempfile
    import zipfile

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
