"""What an uploaded model may cost on this shared server, and the refusal when it costs more.

Each bound says what it admits among well-known architectures; `cost.check_cost` works out a
model's `ModelCost` from its architecture and stops at the first bound it crosses.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctdemo.models import cards
from ctdemo.models.cards import ModelLoadError
from ctdemo.models.inference import BATCH_SIZE

MAX_UNPACKED_FACTOR = 4
"""A `.keras` zip may unpack to at most this many times `cards.MAX_MODEL_BYTES`."""
MAX_UNPACKED_BYTES = MAX_UNPACKED_FACTOR * cards.MAX_MODEL_BYTES
"""What an accepted file may unpack to, or its weights declare."""
MAX_INPUT_SIDE = 1024
"""Largest input side accepted: a CT slice is 512 x 512, and everything runs on a CPU."""
MAX_LAYERS = 2_000
"""Layers (keras.ops steps and nested models' layers included): EfficientNetB7, the deepest
keras.applications model, has 813; Keras took 141 s to load a graph of 60,000."""
MAX_PARAMETERS = MAX_UNPACKED_BYTES // 4
"""Weights Keras allocates while it builds the layers, before it reads the file's weights:
at most as many float32 numbers as an accepted file can unpack to."""
MAX_ACTIVATION_BYTES = 256 * 2**20
"""The float32 outputs of every layer for one slice, summed: what a gradient tape keeps for
Grad-CAM and saliency. ResNet50 at 224 pixels needs 141 MB, Xception at 299 needs 239 MB,
ResNet50 at 512 needs over 700 MB (refused)."""
BATCH_ACTIVATION_BYTES = 512 * 2**20
"""What a batch of slices may hold in layer outputs at once (the server has about 1 GB for
everyone): an uploaded model predicts and explains in batches sized to stay below it."""
MAX_GIGAFLOPS = 32
"""Floating-point operations for one slice: ResNet50 at 224 pixels needs 7.8 billion, VGG16
31, ResNet50 at 512 pixels 41 (refused). SmoothGrad runs the model 20 times and Score-CAM 17."""
MAX_NESTING = 8
"""Models inside models: keras.applications models nest once, inside a classifier."""


@dataclass(frozen=True)
class ModelCost:
    """What a model costs to build and to run on one slice, worked out from its architecture."""

    layers: int
    parameters: int
    activation_bytes: int
    flops: int

    @property
    def slices_per_batch(self) -> int:
        """Slices to run at once so that every layer output of the batch fits the budget."""
        fitting = BATCH_ACTIVATION_BYTES // max(self.activation_bytes, 1)
        return max(1, min(BATCH_SIZE, fitting))


def check_layer_count(layers: int, filename: str) -> None:
    if layers > MAX_LAYERS:
        raise ModelLoadError(
            f"{filename} has {layers:,} layers; models of more than {MAX_LAYERS:,} are refused, "
            "because loading them alone takes minutes (the deepest Keras application has 813)."
        )


def check_nesting(depth: int, filename: str) -> None:
    if depth > MAX_NESTING:
        raise ModelLoadError(
            f"{filename} nests models more than {MAX_NESTING} deep; rebuild it flat."
        )


def check_within_limits(cost: ModelCost, filename: str) -> None:
    """Refuse a model whose cost so far is past a bound (weights, activations, operations)."""
    if cost.parameters > MAX_PARAMETERS:
        raise ModelLoadError(
            f"{filename} declares over {MAX_PARAMETERS / 1e6:.0f} million weights, more than an "
            "accepted file can hold; upload a smaller model."
        )
    if cost.activation_bytes > MAX_ACTIVATION_BYTES:
        raise ModelLoadError(
            f"{filename} would need over {MAX_ACTIVATION_BYTES // 2**20} MB of memory for the "
            "outputs of its layers on one slice, more than this shared server gives one "
            "visitor; upload a smaller model or one with a smaller input."
        )
    if cost.flops > MAX_GIGAFLOPS * 10**9:
        raise ModelLoadError(
            f"{filename} would take over {MAX_GIGAFLOPS} billion operations per slice (ResNet50 "
            "takes 8), too slow for this shared server; upload a smaller model or one with a "
            "smaller input."
        )


def check_image_shape(shape: tuple, filename: str) -> tuple[int, int]:
    """(side, channels) of a model input of per-slice `shape`, or `ModelLoadError` when it is
    not a fixed square grey or RGB image we can afford."""
    if len(shape) != 3:
        raise ModelLoadError(
            f"{filename} takes inputs of shape {shape}, not images (height, width, channels); "
            "upload an image classifier."
        )
    height, width, channels = shape
    if height is None or width is None:
        raise ModelLoadError(
            f"{filename} accepts images of any size {shape}; save it with a fixed square input, "
            "such as keras.Input(shape=(224, 224, 3))."
        )
    if height != width:
        raise ModelLoadError(
            f"{filename} takes {height} x {width} images; only square inputs are supported, "
            "because slices are padded to a square."
        )
    if channels not in (1, 3):
        raise ModelLoadError(
            f"{filename} takes images with {channels} channels; only grey (1) or RGB (3) "
            "inputs are supported."
        )
    if height > MAX_INPUT_SIDE:
        raise ModelLoadError(
            f"{filename} takes {height} x {width} images; inputs over {MAX_INPUT_SIDE} pixels "
            "a side are too slow here, so upload a smaller model."
        )
    return int(height), int(channels)
