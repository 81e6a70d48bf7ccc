"""The "is this CT?" detector (`ctdemo.explain.ood`) with a Keras model: the layer it reads,
the features, fitting it for a model and finding the one fitted beside a model file.

The layer: a CNN's "features" layer (global average pooling of the last convolution, 128
channel means in the shipped CNN), not the input of the logits layer. The dense head in between
keeps only what separates COVID from non-COVID; on the shipped CNN its 64 features put a colour
gradient (28.5) and a synthetic chest X-ray (29.8) inside the validation slices' spread (max
28.8), while the 128 channel means put them at 38.6 and 51.0 against a validation maximum of
22.5. A model without that layer (an MLP) uses the input of its last Dense layer; measured on
the shipped MLP that representation cannot tell CT from non-CT (a blank page lands closer to
the mean than most slices), so for an MLP the colour and blank cues do most of the work, and a page
may prefer the CNN's detector to guard any model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
import numpy as np

from ctdemo.explain.ood import (
    THRESHOLD_MARGIN,
    VALIDATION_QUANTILE,
    OODDetector,
    OODLoadError,
    ood_path,
)

FEATURES_LAYER = "features"
"""A CNN's global-average-pooling layer (`ctdemo.models.architectures.build_model`): the
detector's layer."""


def penultimate_layer_input(model: keras.Model):
    """The tensor entering the model's last Dense layer ("logits" in ours)."""
    if "logits" in [layer.name for layer in model.layers]:
        return model.get_layer("logits").input
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ValueError(f"Model {model.name!r} has no Dense layer to take features before.")
    return dense[-1].input


def detector_layer(model: keras.Model) -> str | None:
    """The layer the detector reads: FEATURES_LAYER when the model has it (our CNNs), else
    None, meaning the input of the last Dense layer (see the module's text for why)."""
    return FEATURES_LAYER if FEATURES_LAYER in [layer.name for layer in model.layers] else None


def feature_extractor(model: keras.Model, layer: str | None = None) -> keras.Model:
    """The sub-model from the model's input to a representation sharing its weights.

    By default the penultimate representation: the input of the final "logits" Dense layer
    (for other models, of the last Dense layer). With `layer`, that layer's output."""
    output = penultimate_layer_input(model) if layer is None else model.get_layer(layer).output
    return keras.Model(model.inputs, output, name=f"{model.name}_features")


def extract_features(extractor: keras.Model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Features (n, d) as float64 for model inputs (n, size, size, channels), in batches."""
    outputs = [
        np.asarray(extractor.predict_on_batch(x[start : start + batch_size]))
        for start in range(0, len(x), batch_size)
    ]
    if not outputs:
        return np.zeros((0, int(np.prod(extractor.output_shape[1:]))), dtype=np.float64)
    features = np.concatenate(outputs).astype(np.float64)
    return features.reshape(len(features), -1)


def model_digest(model: keras.Model) -> str:
    """A digest of the model's weights: ties a detector to the model it was fitted for."""
    digest = hashlib.blake2b(digest_size=16)
    for weights in model.get_weights():
        array = np.ascontiguousarray(weights)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def fit_detector(
    model: keras.Model,
    train_x: np.ndarray,
    val_x: np.ndarray,
    layer: str | None = "auto",
    quantile: float = VALIDATION_QUANTILE,
    margin: float = THRESHOLD_MARGIN,
) -> OODDetector:
    """Fit a detector for `model` on its training and validation inputs (n, size, size, c).

    `layer="auto"` takes `detector_layer(model)`; None the input of the last Dense layer."""
    layer = detector_layer(model) if layer == "auto" else layer
    extractor = feature_extractor(model, layer)
    return OODDetector.fit(
        extract_features(extractor, train_x),
        extract_features(extractor, val_x),
        quantile,
        margin,
        layer=layer,
        model_digest=model_digest(model),
    )


def load_detector(model_path: Path | str, model: keras.Model | None = None) -> OODDetector | None:
    """The detector beside a model file, or None when there is none. With `model`, refuses
    (`OODLoadError`) a detector fitted for other weights."""
    path = ood_path(model_path)
    if not path.is_file():
        return None
    detector = OODDetector.load(path)
    if model is not None and detector.model_digest and detector.model_digest != model_digest(model):
        raise OODLoadError(
            f"{path.name} was fitted for other weights than {Path(model_path).name}; "
            "fit it again (training writes it)."
        )
    return detector
