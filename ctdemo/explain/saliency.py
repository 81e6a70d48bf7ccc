"""Where a model looks: Grad-CAM, Grad-CAM++, Score-CAM, Layer-CAM and SmoothGrad saliency.

One call shape for every method, through tf-keras-vis: `explain(model, image, method)`
returns a heatmap in [0, 1] at the model's input size. Class-activation maps read the last
convolution unless `layer` names an earlier, finer one (`cam_layers` lists the choices). Our
models output logits, so the score is the pre-activation output of the chosen class and no
model modifier (no clone) is needed.
`to_slice_geometry` maps a heatmap back onto the original slice (undoing the square padding),
so an overlay is never squashed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import numpy as np
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.layercam import Layercam
from tf_keras_vis.saliency import Saliency
from tf_keras_vis.scorecam import Scorecam
from tf_keras_vis.utils.scores import CategoricalScore

from ctdemo.explain.methods import (
    METHOD_LABELS,
    METHODS,
    ExplanationError,
)
from ctdemo.models.architectures import last_conv_layer

SCORECAM_MAX_N = 16  # the 16 strongest channels: 0.55 s for the shipped CNN on 2 cores
SMOOTHGRAD_SAMPLES = 20
SMOOTHGRAD_NOISE = 0.2  # noise standard deviation, as a fraction of the input's value range


def cam_layers(model: keras.Model) -> dict[str, int]:
    """Layers a class-activation map can read, name → grid side: the last convolution first,
    then the last convolution of each finer grid. An ensemble offers its last layer only: an
    earlier layer belongs to one member, so its map would not be the ensemble's."""
    last = last_conv_layer(model)
    if last is None:
        return {}
    layers = {last: _grid_side(model.get_layer(last))}
    if not isinstance(model.get_layer(last), keras.layers.Conv2D):
        return layers
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.Conv2D) and _grid_side(layer) not in layers.values():
            layers[layer.name] = _grid_side(layer)
    return layers


def _grid_side(layer: keras.layers.Layer) -> int:
    return int(layer.output.shape[1])


def available_methods(model: keras.Model) -> tuple[str, ...]:
    """Class-activation maps need a convolution; every model has a saliency map."""
    return METHODS if last_conv_layer(model) else ("saliency",)


def explain(
    model: keras.Model,
    image: np.ndarray,
    method: str,
    class_index: int,
    batch_size: int = SMOOTHGRAD_SAMPLES,
    layer: str | None = None,
) -> np.ndarray:
    """Heatmap in [0, 1], shape (size, size), of why `model` scores `class_index` on `image`
    (one model input, (size, size, channels)). `batch_size` bounds the copies of the image
    (SmoothGrad's noisy ones, Score-CAM's masked ones) run at once; `layer` is the one a
    class-activation map reads (one of `cam_layers`, the last convolution by default).
    `ExplanationError` when the model's gradients do not reach where a gradient method looks."""
    if method not in available_methods(model):
        raise ValueError(
            f"{METHOD_LABELS.get(method, method)} needs a convolutional layer; "
            f"this model offers {', '.join(METHOD_LABELS[m] for m in available_methods(model))}."
        )
    score = CategoricalScore([class_index])
    batch = image[np.newaxis].astype(np.float32)
    if method == "saliency":
        saliency = Saliency(model, clone=False)
        return _unit_range(_smoothgrad(saliency, batch, class_index, batch_size)[0])
    # The named layer as it is: tf-keras-vis would otherwise seek back to a Conv2D, and an
    # ensemble's `last_conv` (all members' maps side by side) would shrink to one member's.
    name = layer or last_conv_layer(model)
    if name not in cam_layers(model):
        raise ValueError(
            f"A class-activation map here reads one of {', '.join(cam_layers(model))}."
        )
    target = {"penultimate_layer": name, "seek_penultimate_conv_layer": False}
    if method == "scorecam":
        channels = int(model.get_layer(name).output.shape[-1])
        with _quiet_predict():  # Score-CAM calls model.predict, which draws progress bars
            heatmap = Scorecam(model, clone=False)(
                score, batch, max_N=min(SCORECAM_MAX_N, channels), batch_size=batch_size, **target
            )
    elif method == "layercam":  # Layer-CAM keeps only positive gradients, pixel by pixel
        checks = _checked_gradients(method, f"layer {name!r}", then=keras.ops.relu)
        heatmap = Layercam(model, clone=False)(score, batch, **target, **checks)
    else:
        checks = _checked_gradients(method, f"layer {name!r}")
        try:
            visualiser = Gradcam if method == "gradcam" else GradcamPlusPlus
            heatmap = visualiser(model, clone=False)(score, batch, **target, **checks)
        except AttributeError:  # Grad-CAM++ reads missing gradients before any modifier
            Gradcam(model, clone=False)(score, batch, **target, **checks)  # says why, if it can
            raise
    return _unit_range(np.asarray(heatmap[0], dtype=np.float32))


def _checked_gradients(method: str, target: str, then=None) -> dict:
    """A tf-keras-vis gradient modifier that refuses gradients that are missing (a
    stop-gradient, or a branch that bypasses the layer) or not finite: no map made of them
    would be true. All-zero gradients pass: a score that does not depend on the slice (the
    fixed 0 logit of a one-output model's other class) truly has a blank map. `then` modifies
    gradients that pass (SmoothGrad takes their magnitude)."""

    def check(gradients):
        missing = gradients is None or any(item is None for item in _as_list(gradients))
        if missing or not np.isfinite(np.asarray(gradients)).all():
            problem = "missing" if missing else "not finite"
            other = "Score-CAM" if method == "saliency" else "Score-CAM, which uses no gradients,"
            raise ExplanationError(
                f"This model's gradients do not reach {target} (they are {problem}), so "
                f"{METHOD_LABELS[method]} cannot show where it looks; try {other} instead."
            )
        return then(gradients) if then else gradients

    return {"gradient_modifier": check}


def _as_list(gradients: object) -> list:
    return list(gradients) if isinstance(gradients, list | tuple) else [gradients]


def _smoothgrad(saliency, batch: np.ndarray, class_index: int, batch_size: int) -> np.ndarray:
    """SmoothGrad as tf-keras-vis computes it (mean over noisy copies of |gradient|, max over
    channels), with the noisy copies in batches of `batch_size` instead of one call each (1.8 s
    → 0.35 s for the shipped CNN; maps agree with the loop's as well as two runs of the loop
    agree, Spearman 0.83) and seeded noise, so one slice always gets the same map."""
    rng = np.random.default_rng(0)
    sigma = SMOOTHGRAD_NOISE * float(batch.max() - batch.min())
    noisy = (batch + rng.normal(0.0, sigma, (SMOOTHGRAD_SAMPLES, *batch.shape[1:]))).astype(
        np.float32
    )
    options = _checked_gradients("saliency", "the model's input", then=np.abs)
    total = np.zeros(batch.shape[1:], dtype=np.float32)
    for start in range(0, SMOOTHGRAD_SAMPLES, max(1, batch_size)):
        chunk = noisy[start : start + max(1, batch_size)]
        gradients = saliency(
            CategoricalScore([class_index] * len(chunk)),
            chunk,
            keepdims=True,
            normalize_map=False,
            **options,
        )
        total += np.sum(gradients, axis=0)
    return np.max(total / SMOOTHGRAD_SAMPLES, axis=-1)[np.newaxis]


@contextlib.contextmanager
def _quiet_predict() -> Iterator[None]:
    was_interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        yield
    finally:
        if was_interactive:
            keras.config.enable_interactive_logging()


def _unit_range(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.nan_to_num(heatmap, nan=0.0)
    low, high = float(heatmap.min()), float(heatmap.max())
    if high <= low:
        return np.zeros_like(heatmap)
    return (heatmap - low) / (high - low)


def gradcam_batch(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Grad-CAM maps in [0, 1] of many model inputs, each for its own class, in one pass: the
    maps `explain(model, image, "gradcam", label)` draws one by one (equal to 1e-3), at about
    a fifteenth of their time for 60 slices of the 'cnn' preset."""
    maps = Gradcam(model, clone=False)(
        CategoricalScore([int(label) for label in labels]),
        images.astype(np.float32),
        penultimate_layer=last_conv_layer(model),
        seek_penultimate_conv_layer=False,
    )
    return np.asarray(maps, dtype=np.float32).reshape(images.shape[:3])
