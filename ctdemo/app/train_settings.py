"""The Train page's settings: defaults per preset, the URL that shares them, and what they cost.

Settings live in the URL (`st.query_params`) so a teacher can hand out a link that opens the
page with the same model, hyper-parameters and seed. Anything in a URL is untrusted: unknown
keys are ignored and every value is parsed, then clamped to the range its widget offers;
a value that is not a finite number is ignored.

What settings cost is estimated from the architecture alone (`estimate`), and settings past
a machine's limits are refused (`check_cost`) before a model is built or data is read.
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
    DEFAULT_QUANTILES,
    PRESETS,
    VALIDATION_BATCH,
    Architecture,
    TrainConfig,
    duration,
    layer_costs,
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


def seconds_per_epoch(config: TrainConfig, train_slices: int) -> float:
    """A rough time per epoch on this kind of server: three passes' worth of FLOPs (forward,
    backward) at the measured throughput, plus a fixed cost per step."""
    steps = math.ceil(train_slices / config.batch_size)
    compute = 3 * forward_flops(config.architecture) * train_slices / EFFECTIVE_FLOPS
    return compute + steps * SECONDS_PER_STEP


# ---------------------------------------------------------------- what a training may cost

RUNTIME_BYTES = 64 * 2**20
"""What any training adds before its first number: traced graphs, input-pipeline buffers,
thread pools (70 MB measured for a 26,000-parameter CNN)."""
WEIGHT_COPIES = 9
"""Copies of the weights a run holds: the weights, their gradients, Adam's two moments, the
averaged weights, the best epoch's copy and the initialisers' and swaps' temporaries
(9 measured on an 11.5-million-parameter MLP)."""
TRAINING_BYTES_PER_OUTPUT = 4 * 2.2
"""Bytes a training step holds per layer output number per slice of the batch: the outputs
kept for the backward pass and their gradients (1.5-2.1 float32s measured on CNNs)."""
INFERENCE_BYTES_PER_OUTPUT = 4 * 0.8
"""The same for a forward pass alone (validation and the measurements after training, in
batches of VALIDATION_BATCH; 0.75 measured)."""
DATA_COPIES = 2
"""The split's copy of the decoded slices and the input pipeline's (the decoded slices
themselves belong to the data set, loaded before a training and kept after it)."""


class TooCostly(ValueError):
    """Training settings past what this machine allows one training; the message says what
    it would cost and what to lower."""


@dataclass(frozen=True)
class CostLimits:
    """What one training may use: estimated peak memory, and time (estimated before it starts;
    a running training also stops itself at `seconds`)."""

    memory_bytes: float
    seconds: float


SHARED_SERVER = CostLimits(memory_bytes=400 * 2**20, seconds=30 * 60)
"""The hosted app shares about 1 GB among every visitor: one training may take 400 MB of it
and 30 minutes of its two cores."""


@dataclass(frozen=True)
class TrainingCost:
    """A training's estimated parameters, peak memory and time, before anything is built."""

    parameters: int
    weight_bytes: float
    activation_bytes: float
    data_bytes: float
    seconds_per_epoch: float
    epochs: int
    train_slices: int

    @property
    def memory_bytes(self) -> float:
        return RUNTIME_BYTES + self.weight_bytes + self.activation_bytes + self.data_bytes

    @property
    def seconds(self) -> float:
        return self.seconds_per_epoch * self.epochs


def estimate(
    config: TrainConfig, slices: int, classes: int, val_fraction: float, shortcut: bool = False
) -> TrainingCost:
    """What training `config` on `slices` slices of `classes` classes would cost, counted from
    its architecture (`ctdemo.models.specs.layer_costs`), not measured by building it.

    A planted `shortcut` adds the marked copies of the split (training and two validations)
    and, every epoch, two more validation passes (clean and marked)."""
    architecture = config.architecture
    costs = layer_costs(architecture, classes)
    outputs = sum(cost.outputs for cost in costs)
    step = config.batch_size * outputs * TRAINING_BYTES_PER_OUTPUT
    forward = max(config.batch_size, VALIDATION_BATCH) * outputs * INFERENCE_BYTES_PER_OUTPUT
    train_slices = max(1, round(slices * (1 - val_fraction)))
    parameters = sum(cost.parameters for cost in costs)
    copies = DATA_COPIES + (1 + val_fraction if shortcut else 0)
    # a forward pass is about a third of a training step's FLOPs; two of them per validation slice
    probes = 1 + (2 * val_fraction / (3 * (1 - val_fraction)) if shortcut else 0)
    return TrainingCost(
        parameters=parameters,
        weight_bytes=4.0 * parameters * WEIGHT_COPIES,
        activation_bytes=max(step, forward),
        data_bytes=4.0 * slices * architecture.image_size**2 * copies,
        seconds_per_epoch=seconds_per_epoch(config, train_slices) * probes,
        epochs=config.epochs,
        train_slices=train_slices,
    )


def check_cost(cost: TrainingCost, limits: CostLimits, where: str = "on this server") -> None:
    """Raise `TooCostly` when `cost` is past `limits`, saying what to lower."""
    if cost.memory_bytes > limits.memory_bytes:
        raise TooCostly(
            f"These settings would need about {memory_text(cost.memory_bytes)} of memory to train "
            f"({cost.parameters:,} parameters); one training {where} may use at most "
            f"{memory_text(limits.memory_bytes)}. {_what_to_lower(cost)}"
        )
    if cost.seconds > limits.seconds:
        raise TooCostly(
            f"These settings would take about {duration(cost.seconds)} to train "
            f"({cost.seconds_per_epoch:.0f} s per epoch × {cost.epochs} epochs); one training "
            f"{where} may take at most {duration(limits.seconds)}. Lower the epochs, the "
            "image size, the layers' widths or the ensemble members."
        )


def _what_to_lower(cost: TrainingCost) -> str:
    largest = max(cost.weight_bytes, cost.activation_bytes, cost.data_bytes)
    if largest == cost.weight_bytes:
        return "Use fewer or narrower layers, or fewer ensemble members."
    if largest == cost.data_bytes:
        return "Use a smaller image size, or fewer slices."
    return "Lower the batch size, the image size, the filters or the ensemble members."


def memory_text(bytes_: float) -> str:
    """Bytes as a person reads them: "172.2 GB", "102 MB"."""
    return f"{bytes_ / 2**30:.1f} GB" if bytes_ >= 2**30 else f"{bytes_ / 2**20:.0f} MB"
