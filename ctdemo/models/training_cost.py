"""What a training would cost, counted from its settings before anything is built: parameters,
peak memory and time, and the limits past which a training is refused (`check_cost`).

Plain numbers from the architecture (`ctdemo.models.specs.layer_costs`); no TensorFlow. The
Train page, the training queue and the command line all check the same estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ctdemo.models.specs import (
    DEFAULT_QUANTILES,
    VALIDATION_BATCH,
    Architecture,
    TrainConfig,
    duration,
    layer_costs,
)

EFFECTIVE_FLOPS = 20e9
"""Training throughput of a small CNN on 2 cores, measured with the 'cnn' preset (about 54
GFLOP per epoch in 2.5 s): the rough time-per-epoch estimate divides by it."""
SECONDS_PER_STEP = 0.012
"""Fixed cost of one training step (optimizer, callbacks): it dominates for the MLP."""


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
