"""Model cards: everything needed to use, judge and rebuild a model, in JSON beside it.

`weights/cnn.keras` has its card at `weights/cnn.card.json`. Loading a model gives both
(`ctdemo.models.saving`), so nothing downstream guesses the input size, the classes or which
output means what. This module is plain data: reading a card needs no TensorFlow.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ctdemo.config import WEIGHTS_DIR
from ctdemo.evaluation.numbers import Interval
from ctdemo.io.dicom import LUNG_WINDOW

CARD_SUFFIX = ".card.json"
MAX_MODEL_BYTES = 50 * 1024 * 1024
"""Largest model file we load: our shipped models are well under 5 MB."""


class ModelLoadError(ValueError):
    """A model file we cannot or will not load; the message is written for a person."""


BODY_CROP = (
    "cut to the body's bounding box first (ctdemo.io.body.crop_to_body: Otsu threshold, "
    "opened, largest bright regions, no margin); a slice already cut to the body is kept as is"
)


def preprocessing_spec(image_size: int, channels: int = 1, in_model: str = "") -> dict:
    """What `ctdemo.models.inference.model_input` does, for a card's `input`. A card without
    "body_crop" (the shipped ones) was trained before the crop; the crop leaves 1,968 of the
    1,971 training slices as they are and none of their validation answers changes
    (docs/models.md, "Body crop"), so they are used with it."""
    return {
        "function": "ctdemo.models.inference.model_input",
        "image_size": image_size,
        "channels": channels,
        "range": "[0, 1] (8-bit / 255; 16-bit and float min-max; DICOM windowed HU)",
        "body_crop": BODY_CROP,
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
    shortcut: dict = field(
        default_factory=dict
    )  # a marker planted in training (the Train page's lab)
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
    def kind(self) -> str:
        """ "MLP" or "CNN" (or "model" for a card that does not say), as a person reads it."""
        return str(self.architecture.get("kind", "model")).upper()

    @property
    def features(self) -> str:
        """What the model reads: "pixels", "distribution" or "pixels+distribution"."""
        return str(self.architecture.get("features", "pixels"))

    @property
    def split_method(self) -> str:
        """ "grouped", "random", or "unknown" for a card without its split."""
        return str(self.split.get("method", "unknown"))

    @property
    def group_source(self) -> str:
        return str(self.split.get("group_source", "unknown"))

    @property
    def validation_accuracy(self) -> Interval | None:
        """Accuracy on the validation split with its 95% interval; None if not measured."""
        accuracy = self.validation.get("accuracy")
        return Interval.from_dict(accuracy) if accuracy else None

    @property
    def validation_slices(self) -> int | None:
        count = self.validation.get("n")
        return None if count is None else int(count)

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


def card_path(model_path: Path | str) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + CARD_SUFFIX)


def shipped_cards(weights_dir: Path = WEIGHTS_DIR) -> dict[str, ModelCard]:
    """Cards of the .keras files in `weights_dir`, by model name."""
    cards = {}
    for model_path in sorted(weights_dir.glob("*.keras")):
        card_file = model_path.with_name(model_path.stem + CARD_SUFFIX)
        if card_file.is_file():
            cards[model_path.stem] = ModelCard.from_json(card_file.read_text())
    return cards
