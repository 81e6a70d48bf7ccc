"""The Train page's settings: defaults per preset, the URL that shares them, and what they cost.

Settings live in the URL (`st.query_params`) so a teacher can hand out a link that opens the
page with the same model, hyper-parameters and seed. Anything in a URL is untrusted: unknown
keys are ignored and every value is parsed, then clamped to the range its widget offers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from ctdemo.features import DEFAULT_QUANTILES
from ctdemo.models import PRESETS, Architecture
from ctdemo.splits import SPLIT_METHODS, SplitSpec
from ctdemo.training import TrainConfig

ARCHITECTURES = ("mlp", "cnn", "seed-1-mlp", "seed-2-cnn")
"""Presets offered on the page; `cnn-large` (the shipped CNN) takes minutes an epoch here."""
IMAGE_SIZES = (24, 32, 48, 64, 96)
BATCH_SIZES = (16, 32, 64, 128)
LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
MAX_EPOCHS = 60
MAX_LAYERS = 5
MAX_UNITS = 1024
MAX_MEMBERS = 5
"""An ensemble of N small CNNs trains about N times slower: 5 keeps the page's default CNN
near 10 s an epoch on 2 cores, and its weights stay under a megabyte."""

PAGE_BATCH_SIZE = 16
"""The page starts every preset at batches of 16. On the 300-slice demo set (240 to train on,
grouped split) the 'cnn' preset's 64 gives 4 steps an epoch, and its batch-norm statistics
lag: validation stayed at 34% (one class for all) for 10 epochs; 32 moved at epoch 6, 16 at
epoch 3 and reached 91% (measured here, 20 epochs, seed 0)."""

EFFECTIVE_FLOPS = 20e9
"""Training throughput of a small CNN on 2 cores, measured with the 'cnn' preset (about 54
GFLOP per epoch in 2.5 s): the rough time-per-epoch estimate divides by it."""
SECONDS_PER_STEP = 0.012
"""Fixed cost of one training step (optimizer, callbacks): it dominates for the MLP."""


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

    def to_query(self) -> dict[str, str]:
        """The settings as URL query parameters (strings only)."""
        query = {}
        for name, value in asdict(self).items():
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
    if name in ("early", "augment", "density"):
        return text.strip().lower() in ("1", "true", "yes", "on")
    if name in ("layers", "dense"):
        return parse_units(text, allow_empty=name == "dense")
    if name == "dropout":
        return round(_clamp(float(text), 0.0, 0.8), 2)
    if name == "val":
        return round(_clamp(float(text), 0.1, 0.4), 2)
    if name == "lr":
        return min(LEARNING_RATES, key=lambda rate: abs(math.log10(rate) - math.log10(float(text))))
    if name == "epochs":
        return int(_clamp(int(text), 1, MAX_EPOCHS))
    if name == "patience":
        return int(_clamp(int(text), 1, 20))
    if name == "seed":
        return int(_clamp(int(text), 0, 2**31 - 1))
    if name == "members":
        return int(_clamp(int(text), 1, MAX_MEMBERS))
    if name == "batch":
        return _nearest(int(text), BATCH_SIZES)
    if name == "size":
        return _nearest(int(text), IMAGE_SIZES)
    if name == "split":
        if text not in SPLIT_METHODS:
            raise ValueError(text)
        return text
    raise ValueError(name)


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


def _clamp(value, low, high):
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("NaN")
    return max(low, min(high, value))


def _nearest(value: int, choices: tuple[int, ...]) -> int:
    return min(choices, key=lambda choice: abs(choice - value))


def forward_flops(architecture: Architecture) -> float:
    """Multiply-adds × 2 of one slice through the network (convolutions and dense layers)."""
    size, flops = architecture.image_size, 0.0
    if architecture.kind == "mlp":
        width = size * size if architecture.features == "pixels" else 2 * DEFAULT_QUANTILES
        for units in (*architecture.hidden_units, 2):
            flops += 2 * width * units
            width = units
        return flops
    channels = 1
    for block, width in enumerate(architecture.filters):
        for _ in range(architecture.convs_per_block):
            flops += 2 * size * size * 9 * channels * width
            channels = width
        if block < len(architecture.filters) - 1:
            size = max(1, size // 2)
    if architecture.features == "pixels+distribution":
        channels += 2 * DEFAULT_QUANTILES
    for units in (*architecture.hidden_units, 2):
        flops += 2 * channels * units
        channels = units
    return flops * architecture.members


def seconds_per_epoch(settings: TrainSettings, train_slices: int) -> float:
    """A rough time per epoch on this kind of server: three passes' worth of FLOPs (forward,
    backward) at the measured throughput, plus a fixed cost per step."""
    steps = math.ceil(train_slices / settings.batch)
    compute = 3 * forward_flops(settings.architecture()) * train_slices / EFFECTIVE_FLOPS
    return compute + steps * SECONDS_PER_STEP
