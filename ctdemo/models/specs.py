"""What a model and its training are, as plain data, and what they cost: no TensorFlow here.

`Architecture` (an MLP or a CNN, its sizes and inputs), the named `PRESETS`, a `TrainConfig`,
and the weights and outputs each layer will have (`layer_costs`, `parameter_count`), counted
from the spec so that a page can price a training before anything is built. The builders in
`ctdemo.models.architectures` turn a spec into a Keras model; its layer-by-layer weights match
`parameter_count` exactly (tests/test_hostile_train.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

DEFAULT_QUANTILES = 128
"""Intensity and edge-strength quantiles the density features read (`IntensityEdgeQuantiles`)."""

LAST_CONV = "last_conv"
"""Name of a CNN's last convolution, where Grad-CAM looks (in an ensemble: all its members'
last feature maps side by side)."""

MEMBER_LOGITS = "member_logits"
"""An ensemble's (batch, members, classes) logits, which training fits member by member."""

INPUT_SCALINGS = {
    "fixed": "fixed scaling 4x - 2, the same for every slice",
    "per-image": "per-image standardisation (LayerNormalization over all pixels)",
}
"""Measured on the grouped split with the 'cnn' preset (validation accuracy / ROC AUC, splits
0, 1, 2): per-image standardisation 88.8/0.956, 82.0/0.880, 90.6/0.972; fixed scaling
93.5/0.974, 84.0/0.911, 91.1/0.980. Standardising erases how dense a slice is. The shipped
'cnn-large' gained nothing from it (92.7% against 92.4% on split 0, pixels only) and keeps
per-image, with the quantiles beside its pooled features instead (CNN_FEATURES)."""


@dataclass(frozen=True)
class Architecture:
    """Hyper-parameters that define a model; recorded in its card."""

    kind: str  # "mlp" or "cnn"
    image_size: int
    dropout: float
    hidden_units: tuple[int, ...] = ()  # mlp: one Dense layer each; cnn: the dense head
    filters: tuple[int, ...] = ()  # cnn: one block per entry
    convs_per_block: int = 1
    batch_norm: bool = True
    features: str = "pixels"  # a key of MLP_FEATURES or CNN_FEATURES
    input_scaling: str = "fixed"  # a key of INPUT_SCALINGS
    members: int = 1  # cnn: independently trained copies whose logits are averaged

    def in_model(self) -> str:
        """What the model does to its input, for its card."""
        if self.kind == "mlp" and self.features == "distribution":
            return "intensity and edge-strength quantiles (ctdemo.models.features), then batch norm"
        if self.kind == "cnn" and self.features == "pixels+distribution":
            return (
                f"{INPUT_SCALINGS[self.input_scaling]} into the convolutions; the head also reads "
                "the slice's intensity and edge-strength quantiles (ctdemo.models.features)"
            )
        return INPUT_SCALINGS[self.input_scaling]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Architecture:
        values = dict(values)
        values.setdefault("input_scaling", "per-image")  # cards written before it was a choice
        for key in ("hidden_units", "filters"):
            values[key] = tuple(values.get(key, ()))
        return cls(**values)


@dataclass(frozen=True)
class Preset:
    """A named architecture with the training settings that suit it."""

    name: str
    description: str
    architecture: Architecture
    epochs: int
    learning_rate: float
    batch_size: int = 32
    patience: int = 8
    augment: bool = False
    weight_decay: float = 1e-4
    weight_averaging: bool = True


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "mlp",
            "Our MLP: 4 hidden ReLU layers over what is in a 64x64 slice, not where (its "
            "intensity and edge-strength quantiles), dropout 0.5, strong weight decay.",
            Architecture(
                "mlp",
                64,  # finer edges than 32x32: +2.5 points over three grouped splits; 96+ no more
                0.5,
                hidden_units=(256, 128, 64, 32),
                features="distribution",
            ),
            epochs=50,
            learning_rate=1e-3,
            patience=10,
            weight_decay=0.05,
        ),
        Preset(
            "cnn",
            "Our small CNN for live training: 3 blocks of one 3x3 convolution + batch norm "
            "on 48x48 slices, no weight averaging (the command line trains it in batches of "
            "64, about 2.5 s per epoch here).",
            Architecture("cnn", 48, 0.1, hidden_units=(32,), filters=(16, 32, 64)),
            epochs=20,
            learning_rate=1e-3,
            batch_size=64,
            weight_averaging=False,
        ),
        Preset(
            "cnn-large",
            "The shipped CNN: 4 blocks of two 3x3 convolutions + batch norm on 96x96 slices; "
            "its head also reads the slice's intensity and edge quantiles.",
            Architecture(
                "cnn",
                96,
                0.2,
                hidden_units=(64,),
                filters=(16, 32, 64, 128),
                convs_per_block=2,
                input_scaling="per-image",  # fixed: 92.7% against 92.4% on split 0, no gain
                features="pixels+distribution",  # see CNN_FEATURES
            ),
            epochs=30,
            learning_rate=1e-3,
            patience=10,
        ),
        Preset(
            "seed-1-mlp",
            "The first seed project: 4 hidden ReLU layers on the flattened pixels of 64x64 "
            "slices, dropout 0.5, early stopping. Every pixel has its own weights, so it learns "
            "where things were: compare it with our MLP on the grouped split.",
            Architecture("mlp", 64, 0.5, hidden_units=(256, 128, 64, 32)),
            epochs=50,
            learning_rate=1e-3,
            patience=5,
            weight_decay=0.0,
        ),
        Preset(
            "seed-2-cnn",
            "The second seed project, scaled down: 4 blocks of two 3x3 convolutions with "
            "max-pool and dropout, a dense head of 8 units (no batch norm).",
            Architecture(
                "cnn",
                96,
                0.25,
                hidden_units=(8,),
                filters=(32, 16, 16, 8),
                convs_per_block=2,
                batch_norm=False,
            ),
            epochs=30,
            learning_rate=1e-3,
            patience=5,
            weight_decay=0.0,
        ),
    )
}
"""Augmentation is off in every preset: on the grouped split, flips, shifts and zooms made
the small CNN worse and jumpier (validation accuracy 0.70-0.82 against 0.85-0.88 without),
and an intensity gamma erased the density cue that separates the classes. It stays available
(`--augment`, the Train page) as something to try."""


MLP_FEATURES = {
    "pixels": "the scaled slice, flattened (what the first seed did)",
    "distribution": "its intensity and edge-strength quantiles (IntensityEdgeQuantiles)",
}
CNN_FEATURES = {
    "pixels": "the convolutions' pooled features only",
    "pixels+distribution": "those and the slice's intensity and edge-strength quantiles",
}
"""What the dense layers read. A CNN's per-image scaling erases how dense a slice is, and its
pooled features are local texture; the quantiles give the head the density back. The shipped
'cnn-large' on grouped splits 0, 1, 2 (validation accuracy / ROC AUC): pixels 92.4/0.978,
88.0/0.942, 90.9/0.966; pixels+distribution 93.5/0.976, 89.5/0.943, 91.7/0.981 (mean 90.4% to
91.6%). Averaging the pixels-only CNN with a separately trained MLP did about as well on
splits 1 and 2 (90.3-91.3%, 91.7-91.9%): the two read different cues."""


@dataclass(frozen=True)
class TrainConfig:
    architecture: Architecture
    epochs: int = 30
    learning_rate: float = 1e-3
    batch_size: int = 32
    patience: int = 8  # 0 turns early stopping off
    augment: bool = False
    weight_decay: float = 1e-4
    weight_averaging: bool = True  # validate, keep and save an EMA of the weights
    seed: int = 0
    time_limit_seconds: float | None = None  # the run stops itself after this long

    def to_dict(self) -> dict:
        values = asdict(self)
        values["architecture"] = self.architecture.to_dict()
        return values


VALIDATION_BATCH = 64
"""Validation batches, as big as the measurements after training (`inference.BATCH_SIZE`).
A forward pass of the 96-pixel 'seed-2-cnn' held 0.16 GB at 64 slices (measured): at 256,
about 0.6 GB, five times one of its training steps in batches of 16."""


def duration(seconds: float) -> str:
    """Seconds as a person says them: "45 seconds", "30 minutes", "3 hours"."""
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 60:.0f} minutes" if seconds >= 120 else f"{seconds:.3g} seconds"


@dataclass(frozen=True)
class LayerCost:
    """What one layer of a model holds: its weights (trainable or not) and its output's
    numbers for one slice (what a training step keeps for the backward pass)."""

    parameters: int
    outputs: int


def layer_costs(architecture: Architecture, num_classes: int) -> list[LayerCost]:
    """The layers `build_model` would make, counted without making them: building a model at
    a shared link's widest settings allocated 1.8 GB only to show its parameter count."""
    size = architecture.image_size
    costs = [LayerCost(0, size * size), LayerCost(0, size * size)]  # the slice and its scaling
    if architecture.kind == "mlp":
        width = size * size  # flattened pixels
        if architecture.features == "distribution":
            costs += _distribution_costs(size)
            width = 2 * DEFAULT_QUANTILES
        return costs + _head_costs(width, architecture.hidden_units, num_classes, 1)
    if architecture.kind != "cnn":
        raise ValueError(f"Unknown architecture kind {architecture.kind!r} (mlp or cnn).")
    members, last = architecture.members, architecture.filters[-1]
    for _ in range(members):
        costs += _convolution_costs(architecture)
    side = _last_side(architecture)
    if architecture.batch_norm:
        costs.append(LayerCost(4 * members * last, members * last * side * side))
    width = last
    if architecture.features == "pixels+distribution":
        costs += _distribution_costs(size)
        width += 2 * DEFAULT_QUANTILES
    return costs + _head_costs(width, architecture.hidden_units, num_classes, members)


def parameter_count(architecture: Architecture, num_classes: int) -> int:
    """`build_model(architecture, num_classes).count_params()`, without building it."""
    return sum(cost.parameters for cost in layer_costs(architecture, num_classes))


def _convolution_costs(architecture: Architecture) -> list[LayerCost]:
    """One member's convolution blocks (as `_convolutions` builds them); the last convolution's
    batch norm is counted with the ensemble's."""
    side, channels, costs = architecture.image_size, 1, []
    blocks = len(architecture.filters)
    for block, width in enumerate(architecture.filters, start=1):
        for conv in range(1, architecture.convs_per_block + 1):
            costs.append(LayerCost(9 * channels * width + width, side * side * width))
            channels = width
            if architecture.batch_norm and (block, conv) != (blocks, architecture.convs_per_block):
                costs.append(LayerCost(4 * width, side * side * width))
        if block < blocks:
            side //= 2
            costs.append(LayerCost(0, side * side * width))  # max-pooling
            if architecture.dropout:
                costs.append(LayerCost(0, side * side * width))
    return costs


def _last_side(architecture: Architecture) -> int:
    side = architecture.image_size
    for _ in architecture.filters[1:]:
        side //= 2
    return side


def _distribution_costs(size: int) -> list[LayerCost]:
    """The quantile layer (which sorts every pixel and every edge) and its batch norm."""
    features = 2 * DEFAULT_QUANTILES
    return [LayerCost(0, 4 * size * size), LayerCost(4 * features, features)]


def _head_costs(
    width: int, hidden_units: tuple[int, ...], num_classes: int, members: int
) -> list[LayerCost]:
    """Dense layers (each member's own in an ensemble), their dropout, and the logits."""
    costs = []
    for units in (*hidden_units, num_classes):
        costs.append(LayerCost(members * (width * units + units), 2 * members * units))
        width = units
    return costs
