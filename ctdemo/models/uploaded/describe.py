"""What a loaded upload is, as far as the model tells: its input, its head and its size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras

from ctdemo.models.architectures import last_conv_layer
from ctdemo.models.cards import ModelLoadError
from ctdemo.models.uploaded.graph import flatten, output_activation
from ctdemo.models.uploaded.limits import ModelCost, check_image_shape


@dataclass(frozen=True)
class UploadedModelInfo:
    """What an uploaded model is, as far as its file tells: shown to the visitor before use."""

    filename: str
    file_format: str  # "keras" or "h5"
    image_size: int
    channels: int  # 1 or 3
    expects_0_255: bool  # rescales by 1/255 (or 1/127.5) itself near its input
    last_conv: str | None  # where Grad-CAM looks; None without a Conv2D
    output_units: int
    output_activation: str  # "softmax", "sigmoid" or "linear"
    parameters: int
    is_sequential: bool
    cost: ModelCost | None = None  # from the architecture, before loading

    @property
    def suggested_outputs(self) -> str:
        """What the model most likely outputs: logits after a linear last layer, otherwise
        probabilities."""
        return "logits" if self.output_activation == "linear" else "probabilities"


def describe_model(
    model: keras.Model, filename: str, file_format: str, cost: ModelCost | None = None
) -> UploadedModelInfo:
    """Input geometry, head and size of a loaded model; `ModelLoadError` for one we cannot use."""
    size, channels = _image_input(model, filename)
    units = _output_units(model, filename)
    try:
        flat = flatten(model)
    except Exception as error:  # a layer whose config does not rebuild it, a subclassed model
        raise ModelLoadError(
            f"{filename} loaded, but its layers could not be laid out for explanations: "
            f"{short_reason(error)}"
        ) from None
    return UploadedModelInfo(
        filename=filename,
        file_format=file_format,
        image_size=size,
        channels=channels,
        expects_0_255=_rescales_0_255(flat),
        last_conv=last_conv_layer(flat),
        output_units=units,
        output_activation=output_activation(model),
        parameters=int(model.count_params()),
        is_sequential=isinstance(model, keras.Sequential),
        cost=cost,
    )


def short_reason(error: Exception) -> str:
    """An exception as one line of at most 300 characters, for a refusal a visitor reads."""
    return " ".join(str(error).split())[:300] or type(error).__name__


def _image_input(model: keras.Model, filename: str) -> tuple[int, int]:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ModelLoadError(
            f"{filename} does not declare its input shape; build it with keras.Input(shape=...) "
            "and save it again."
        )
    if len(inputs) != 1:
        raise ModelLoadError(
            f"{filename} takes {len(inputs)} inputs; upload a model that takes one image."
        )
    return check_image_shape(tuple(inputs[0].shape)[1:], filename)


def _output_units(model: keras.Model, filename: str) -> int:
    if len(model.outputs) != 1:
        raise ModelLoadError(
            f"{filename} has {len(model.outputs)} outputs; upload a classifier with one output."
        )
    shape = tuple(model.outputs[0].shape)[1:]
    if len(shape) != 1 or shape[0] is None or shape[0] < 1:
        raise ModelLoadError(
            f"{filename} outputs shape {shape}, not one score per class; upload a classifier "
            "whose last layer is a Dense layer."
        )
    return int(shape[0])


def _rescales_0_255(flat: keras.Model, within: int = 3) -> bool:
    """True when one of the first layers is a Rescaling by 1/255 (to [0, 1]) or 1/127.5
    (to [-1, 1]): the model was trained on raw 0-255 pixels."""
    layers = [layer for layer in flat.layers if not isinstance(layer, keras.layers.InputLayer)]
    for layer in layers[:within]:
        if isinstance(layer, keras.layers.Rescaling):
            scales = layer.scale if isinstance(layer.scale, list | tuple) else [layer.scale]
            try:
                values = [float(scale) * 255.0 for scale in scales]
            except (TypeError, ValueError):
                return False
            return all(math.isclose(v, 1.0, rel_tol=1e-3) for v in values) or all(
                math.isclose(v, 2.0, rel_tol=1e-3) for v in values
            )
    return False
