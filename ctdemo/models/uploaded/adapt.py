"""An uploaded model made one of ours: one logit per class, every layer at the top level (so
Grad-CAM finds the last convolution), and a `ModelCard` that says what was done to it.

A model that ends in a softmax or sigmoid gives its exact logits by dropping that activation;
one whose pre-activation is out of reach gives the log of its probabilities. A single output
unit becomes two logits through a fixed Dense layer. A model that expects 0-255 pixels keeps
its own rescaling; the card's `input["scale"]` says to multiply our [0, 1] input by 255 first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import PurePath

import keras
import numpy as np

from ctdemo.models import saving
from ctdemo.models.architectures import last_conv_layer
from ctdemo.models.cards import ModelCard, default_positive_class, preprocessing_spec
from ctdemo.models.inference import BATCH_SIZE
from ctdemo.models.uploaded.describe import UploadedModelInfo
from ctdemo.models.uploaded.graph import (
    FlatGraph,
    HeadMode,
    flat_graph,
    free_name,
    head_layer,
    is_separate_activation,
)

OUTPUT_KINDS = ("probabilities", "logits")
PROBABILITY_FLOOR = 1e-7
"""Probabilities are clipped to [floor, 1] before their log when logits cannot be recovered."""


def adapt_uploaded_model(
    model: keras.Model,
    info: UploadedModelInfo,
    class_names: list[str],
    outputs: str | None = None,
    positive_class: str | None = None,
    input_range_0_255: bool | None = None,
    name: str | None = None,
) -> tuple[keras.Model, ModelCard]:
    """A functional model giving one logit per class, softmax of which is the uploaded
    model's class probabilities, with every layer at the top level, and its card.

    `outputs` is what the uploaded model outputs: "probabilities" (softmax or sigmoid) or
    "logits" (default: guessed from its last layer). A single output unit separates two
    classes: `positive_class` is the one its high values mean. `input_range_0_255` (default:
    `info.expects_0_255`) records in the card that inputs are multiplied by 255 before the
    model sees them. Raises `ValueError` when the classes do not fit the model's outputs."""
    class_names = _checked_class_names(class_names)
    outputs = outputs or info.suggested_outputs
    _check_head(info, class_names, outputs)
    positive = _positive_class(class_names, positive_class, info.output_units)
    exact = outputs == "probabilities" and info.output_activation != "linear"
    adapted = _logits_model(model, info, outputs, exact, class_names, positive)
    if input_range_0_255 is None:
        input_range_0_255 = info.expects_0_255
    card = ModelCard(
        name=name or PurePath(info.filename).stem or "uploaded",
        class_names=class_names,
        positive_class=positive,
        input={
            **preprocessing_spec(info.image_size, info.channels),
            "in_model": "whatever the uploaded model does (unknown to us)",
            "scale": 255.0 if input_range_0_255 else 1.0,
        },
        architecture=_card_architecture(info, adapted, outputs),
        output=_output_description(info, outputs, exact, class_names, positive),
        parameters=info.parameters,
        versions=saving.library_versions(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return adapted, card


def _card_architecture(info: UploadedModelInfo, adapted: keras.Model, outputs: str) -> dict:
    """The card's record of where the model came from and how to run it."""
    return {
        "kind": "uploaded",
        "source_file": info.filename,
        "format": info.file_format,
        "last_conv": last_conv_layer(adapted),
        "outputs": outputs,
        "output_activation": info.output_activation,
        "output_units": info.output_units,
        "slices_per_batch": info.cost.slices_per_batch if info.cost else BATCH_SIZE,
    }


def _logits_model(
    model: keras.Model,
    info: UploadedModelInfo,
    outputs: str,
    exact: bool,
    class_names: list[str],
    positive: str | None,
) -> keras.Model:
    """The flat model with logits out: the head's activation dropped when `exact`, else the
    log of the probabilities; one unit spread to two logits, `positive`'s and 0."""
    head_mode: HeadMode = "keep"
    if exact:
        head_mode = "strip" if is_separate_activation(head_layer(model)) else "linear"
    graph = flat_graph(model, head_mode)
    scores = graph.outputs
    if outputs == "probabilities" and not exact:
        scores = _log_probabilities(scores, info.output_units)
    two_class = _two_class_layer(graph) if info.output_units == 1 else None
    if two_class is not None:
        scores = two_class(scores)
    adapted = keras.Model(graph.inputs, scores, name=f"uploaded_{model.name}")
    graph.copy_weights()
    if two_class is not None:
        kernel = np.zeros((1, 2), dtype=np.float32)
        kernel[0, class_names.index(positive)] = 1.0
        two_class.set_weights([kernel])
    return adapted


def _two_class_layer(graph: FlatGraph) -> keras.layers.Dense:
    return keras.layers.Dense(
        2, use_bias=False, trainable=False, name=free_name("logits", graph.layer_names)
    )


def _checked_class_names(class_names: list[str]) -> list[str]:
    names = [str(name).strip() for name in class_names]
    if len(names) < 2:
        raise ValueError(f"Name at least two classes (got {len(names)}).")
    if any(not name for name in names):
        raise ValueError("Class names cannot be empty.")
    if len(set(names)) != len(names):
        raise ValueError(f"Class names must differ from each other (got {names}).")
    return names


def _check_head(info: UploadedModelInfo, class_names: list[str], outputs: str) -> None:
    units, activation, count = info.output_units, info.output_activation, len(class_names)
    if outputs not in OUTPUT_KINDS:
        raise ValueError(f"outputs must be 'probabilities' or 'logits', not {outputs!r}.")
    if outputs == "logits" and activation != "linear":
        raise ValueError(
            f"The model's last layer applies {activation}, so it outputs probabilities, not "
            "logits; choose 'probabilities'."
        )
    if units == 1:
        if count != 2:
            raise ValueError(
                f"The model has one output unit, which separates two classes; name exactly two "
                f"classes, not {count}."
            )
        if activation == "softmax":
            raise ValueError(
                "The model ends in a softmax over one unit, which is always 1 whatever the "
                "image; it cannot be used as a classifier."
            )
        return
    if units != count:
        raise ValueError(
            f"The model has {units} output units but {count} class names were given; name one "
            "class per output unit, in the model's order."
        )
    if activation == "sigmoid":
        raise ValueError(
            f"The model ends in {units} independent sigmoid units (multi-label yes/no scores), "
            "not one probability per class; upload a model with a softmax or a single sigmoid "
            "output."
        )


def _positive_class(class_names: list[str], positive_class: str | None, units: int) -> str | None:
    if positive_class is not None and positive_class not in class_names:
        raise ValueError(
            f"The positive class {positive_class!r} is not one of the classes {class_names}."
        )
    if units == 1 and positive_class is None:
        raise ValueError(
            "The model has one output unit: name the class its high values mean "
            f"(positive_class, one of {class_names})."
        )
    return positive_class if positive_class is not None else default_positive_class(class_names)


def _log_probabilities(probabilities: keras.KerasTensor, units: int) -> keras.KerasTensor:
    """Logits from probabilities when the pre-activation is out of reach: log p (softmax of
    which is p again), or for one unit the log-odds log p - log(1 - p)."""
    ops = keras.ops
    p = ops.clip(probabilities, PROBABILITY_FLOOR, 1.0)
    if units > 1:
        return ops.log(p)
    return ops.log(p) - ops.log(ops.clip(1.0 - probabilities, PROBABILITY_FLOOR, 1.0))


def _output_description(
    info: UploadedModelInfo, outputs: str, exact: bool, class_names: list[str], positive: str
) -> str:
    text = "logits: one per class, softmax gives probabilities"
    if exact:
        source = f"the uploaded model's output before its {info.output_activation}"
    elif outputs == "probabilities":
        source = "the log of the uploaded model's probabilities"
    else:
        source = "the uploaded model's logits"
    if info.output_units == 1:
        other = next(name for name in class_names if name != positive)
        return f"{text} ({source} for {positive}, 0 for {other})"
    return f"{text} ({source})"
