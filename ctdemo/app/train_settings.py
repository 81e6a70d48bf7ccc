"""The Train page's settings: defaults per preset, the URL that shares them, and what they cost.

Settings live in the URL (`st.query_params`) so a teacher can hand out a link that opens the
page with the same model, hyper-parameters and seed. Anything in a URL is untrusted: unknown
keys are ignored and every value is parsed, then clamped to the range its widget offers;
a value that is not a finite number is ignored.

What settings cost is estimated from the architecture alone, and settings past a machine's
limits are refused before a model is built or data is read (`ctdemo.models.training_cost`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from ctdemo.evaluation.shortcut import (
    MAX_SIZE,
    MIN_SIZE,
    Corner,
    MarkerKind,
    Shortcut,
    ValidationMarking,
)
from ctdemo.evaluation.splits import SPLIT_METHODS, SplitSpec
from ctdemo.models.specs import (
    PRESETS,
    Architecture,
    TrainConfig,
)

ARCHITECTURES = ("mlp", "cnn", "seed-1-mlp", "seed-2-cnn")
"""Presets offered on the page; `cnn-large` (the shipped CNN) takes minutes an epoch here."""
IMAGE_SIZES = (24, 32, 48, 64, 96)
BATCH_SIZES = (16, 32, 64, 128)
LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
MAX_EPOCHS = 60
MAX_LAYERS = 5
MAX_CLASS_NAME = 100  # a shortcut's class name in a URL; class folders' names are shorter
MAX_UNITS = 1024
MAX_MEMBERS = 5
"""An ensemble of N small CNNs trains about N times slower: 5 keeps the page's default CNN
near 10 s an epoch on 2 cores, and its weights stay under a megabyte."""

PAGE_BATCH_SIZE = 16
"""The page starts every preset at batches of 16. On the 300-slice demo set (240 to train on,
grouped split) the 'cnn' preset's 64 gives 4 steps an epoch, and its batch-norm statistics
lag: validation stayed at 34% (one class for all) for 10 epochs; 32 moved at epoch 6, 16 at
epoch 3 and reached 91% (measured here, 20 epochs, seed 0)."""


@dataclass(frozen=True)
class TrainSettings:
    arch: str = "cnn"
    dropout: float = 0.1
    epochs: int = 20
    lr: float = 1e-3
    batch: int = PAGE_BATCH_SIZE
    size: int = 48
    layers: tuple[int, ...] = (16, 32, 64)  # MLP: hidden units per layer; CNN: filters per block
    dense: tuple[int, ...] = (32,)  # CNN: the dense head
    early: bool = True
    patience: int = 8
    augment: bool = False
    val: float = 0.2
    split: str = "grouped"
    seed: int = 0
    members: int = 1  # CNN: copies trained side by side, logits averaged
    density: bool = False  # CNN: the head also reads the slice's intensity and edge quantiles
    marker: str = ""  # a planted shortcut's marker kind, "" for none (`ctdemo.evaluation.shortcut`)
    marker_class: str = "COVID"  # the class whose training slices carry it
    marker_share: float = 1.0  # share of that class's training slices marked
    marker_corner: str = Corner.TOP_LEFT.value
    marker_size: float = 0.25  # of the slice's side
    marker_validation: str = ValidationMarking.CLEAN.value

    @property
    def is_cnn(self) -> bool:
        return PRESETS[self.arch].architecture.kind == "cnn"

    def architecture(self) -> Architecture:
        base = PRESETS[self.arch].architecture
        if base.kind == "mlp":
            return replace(
                base, image_size=self.size, dropout=self.dropout, hidden_units=self.layers
            )
        return replace(
            base,
            image_size=self.size,
            dropout=self.dropout,
            filters=self.layers,
            hidden_units=self.dense,
            members=self.members,
            features="pixels+distribution" if self.density else "pixels",
        )

    def config(self) -> TrainConfig:
        preset = PRESETS[self.arch]
        return TrainConfig(
            architecture=self.architecture(),
            epochs=self.epochs,
            learning_rate=self.lr,
            batch_size=self.batch,
            patience=self.patience if self.early else 0,
            augment=self.augment,
            weight_decay=preset.weight_decay,
            weight_averaging=preset.weight_averaging,
            seed=self.seed,
        )

    def split_spec(self) -> SplitSpec:
        return SplitSpec(method=self.split, val_fraction=self.val, seed=self.seed)

    def shortcut(self) -> Shortcut | None:
        """The planted shortcut, or None when no marker is chosen."""
        if not self.marker:
            return None
        return Shortcut(
            kind=self.marker,
            carrier=self.marker_class,
            fraction=self.marker_share,
            corner=self.marker_corner,
            size=self.marker_size,
            validation=self.marker_validation,
        )

    def to_query(self) -> dict[str, str]:
        """The settings as URL query parameters (strings only)."""
        query = {}
        for name, value in asdict(self).items():
            if name.startswith("marker") and not self.marker:
                continue  # no shortcut: its settings stay out of the link
            if isinstance(value, bool):
                query[name] = "1" if value else "0"
            elif isinstance(value, tuple | list):
                query[name] = ",".join(str(v) for v in value)
            else:
                query[name] = str(value)
        return query


def defaults(arch: str = "cnn") -> TrainSettings:
    """The page's starting point for a preset: its own architecture and training settings,
    with batches of PAGE_BATCH_SIZE."""
    preset = PRESETS[arch]
    architecture = preset.architecture
    cnn = architecture.kind == "cnn"
    return TrainSettings(
        arch=arch,
        dropout=architecture.dropout,
        epochs=min(preset.epochs, MAX_EPOCHS),
        lr=preset.learning_rate,
        batch=PAGE_BATCH_SIZE,
        size=architecture.image_size,
        layers=architecture.filters if cnn else architecture.hidden_units,
        dense=architecture.hidden_units if cnn else (),
        early=preset.patience > 0,
        patience=max(1, preset.patience),
        augment=preset.augment,
        members=architecture.members,
        density=architecture.features == "pixels+distribution",
    )


def from_query(query: dict[str, str]) -> TrainSettings:
    """Settings from URL parameters: the preset's defaults, overridden by every parameter
    that parses, each clamped to what the page offers. Bad values are ignored, not fatal."""
    arch = query.get("arch", "cnn")
    settings = defaults(arch if arch in ARCHITECTURES else "cnn")
    parsed = {}
    for item in fields(TrainSettings):
        if item.name == "arch" or item.name not in query:
            continue
        try:
            parsed[item.name] = _parse(item.name, str(query[item.name]))
        except (ValueError, OverflowError):
            continue
    return replace(settings, **parsed)


def _parse(name: str, text: str):
    """One URL value as its widget's value; ValueError (the preset's value is kept) for text
    that is not a finite number of the right kind."""
    if name in ("early", "augment", "density"):
        return text.strip().lower() in ("1", "true", "yes", "on")
    if name in ("layers", "dense"):
        return parse_units(text, allow_empty=name == "dense")
    if name == "dropout":
        return round(_clamp(_finite(text), 0.0, 0.8), 2)
    if name == "val":
        return round(_clamp(_finite(text), 0.1, 0.4), 2)
    if name == "lr":
        return _nearest_rate(_finite(text))
    if name == "epochs":
        return _clamp(int(text), 1, MAX_EPOCHS)
    if name == "patience":
        return _clamp(int(text), 1, 20)
    if name == "seed":
        return _clamp(int(text), 0, 2**31 - 1)
    if name == "members":
        return _clamp(int(text), 1, MAX_MEMBERS)
    if name == "batch":
        return _nearest(int(text), BATCH_SIZES)
    if name == "size":
        return _nearest(int(text), IMAGE_SIZES)
    if name == "split":
        return _one_of(text, SPLIT_METHODS)
    return _parse_marker(name, text)


def _parse_marker(name: str, text: str):
    """A planted shortcut's setting from the URL (its class name is checked against the data
    when the run is submitted)."""
    if name == "marker":
        return "" if not text else _one_of(text, [kind.value for kind in MarkerKind])
    if name == "marker_class":
        if not 0 < len(text) <= MAX_CLASS_NAME:
            raise ValueError(name)
        return text
    if name == "marker_share":
        return round(_clamp(_finite(text), 0.0, 1.0), 2)
    if name == "marker_size":
        return round(_clamp(_finite(text), MIN_SIZE, MAX_SIZE), 2)
    if name == "marker_corner":
        return _one_of(text, [corner.value for corner in Corner])
    if name == "marker_validation":
        return _one_of(text, [marking.value for marking in ValidationMarking])
    raise ValueError(name)


def _one_of(text: str, choices) -> str:
    if text not in choices:
        raise ValueError(text)
    return text


def _finite(text: str) -> float:
    """A finite float: "nan", "inf" and "1e400" (which overflows to inf) are not numbers a
    widget can hold, so they raise ValueError instead of becoming a slider's end."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _nearest_rate(rate: float) -> float:
    """The offered learning rate nearest on a log scale; ValueError for zero or less."""
    if rate <= 0:
        raise ValueError(f"a learning rate must be positive, not {rate}")
    return min(LEARNING_RATES, key=lambda choice: abs(math.log10(choice) - math.log10(rate)))


def parse_units(text: str, allow_empty: bool = False) -> tuple[int, ...]:
    """ "256, 128, 64" → (256, 128, 64); raises ValueError with a message for a person."""
    parts = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    if not parts and allow_empty:
        return ()
    try:
        units = tuple(int(part) for part in parts)
    except ValueError:
        raise ValueError(f"Write whole numbers separated by commas, not {text!r}.") from None
    if not 1 <= len(units) <= MAX_LAYERS or not all(1 <= unit <= MAX_UNITS for unit in units):
        raise ValueError(
            f"Give 1 to {MAX_LAYERS} layers of 1 to {MAX_UNITS} units each, not {text!r}."
        )
    return units


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _nearest(value: int, choices: tuple[int, ...]) -> int:
    return min(choices, key=lambda choice: abs(choice - value))
