"""Model builders over the Keras functional API: a spec (`ctdemo.models.specs`) to a model.

Every model takes a (size, size, 1) slice in [0, 1] and outputs one logit per class: softmax
is applied only when probabilities are reported. Inside, a slice is scaled the same way for
every slice (`INPUT_SCALINGS`), so its density (the cue that separates the classes) survives.
"""

from __future__ import annotations

import keras
from keras import layers

from ctdemo.models.features import IntensityEdgeQuantiles
from ctdemo.models.specs import (
    CNN_FEATURES,
    INPUT_SCALINGS,
    LAST_CONV,
    MEMBER_LOGITS,
    MLP_FEATURES,
    Architecture,
)

BN_MOMENTUM = 0.9
"""Batch-norm statistics follow the weights within ~10 steps (Keras's 0.99 lags ~100 steps:
on 50-step epochs, validation then sees stale statistics and jumps from epoch to epoch)."""


def build_model(architecture: Architecture, num_classes: int) -> keras.Model:
    """A fresh model of `architecture` with one logit per class."""
    builders = {"mlp": _build_mlp, "cnn": _build_cnn}
    if architecture.kind not in builders:
        raise ValueError(f"Unknown architecture kind {architecture.kind!r} (mlp or cnn).")
    return builders[architecture.kind](architecture, num_classes)


def last_conv_layer(model: keras.Model) -> str | None:
    """The layer Grad-CAM reads: ours is named `last_conv`; otherwise the last Conv2D."""
    names = [layer.name for layer in model.layers]
    if LAST_CONV in names:
        return LAST_CONV
    convolutions = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    return convolutions[-1] if convolutions else None


def _scaled_input(image_size: int, scaling: str) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    slices = keras.Input((image_size, image_size, 1), name="slice")
    if scaling == "fixed":
        return slices, layers.Rescaling(4.0, offset=-2.0, name="fixed_scale")(slices)
    if scaling == "per-image":
        return slices, layers.LayerNormalization(
            axis=(1, 2, 3), center=False, scale=False, name="per_image_standardise"
        )(slices)
    raise ValueError(f"Unknown input scaling {scaling!r} (one of {', '.join(INPUT_SCALINGS)}).")


def _build_mlp(architecture: Architecture, num_classes: int) -> keras.Model:
    """Input features through ReLU layers, each followed by dropout, to class logits.

    `features`: "pixels", the scaled slice flattened (what the first seed did), or
    "distribution", its intensity and edge-strength quantiles (`IntensityEdgeQuantiles`)."""
    image_size, features = architecture.image_size, architecture.features
    if features == "pixels":
        slices, x = _scaled_input(image_size, architecture.input_scaling)
        x = layers.Flatten(name="pixels")(x)
    elif features == "distribution":
        slices = keras.Input((image_size, image_size, 1), name="slice")
        x = IntensityEdgeQuantiles(name="distribution")(slices)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="distribution_norm")(x)
    else:
        raise ValueError(f"Unknown MLP features {features!r} (one of {', '.join(MLP_FEATURES)}).")
    for index, units in enumerate(architecture.hidden_units, start=1):
        x = layers.Dense(units, activation="relu", name=f"hidden_{index}")(x)
        x = layers.Dropout(architecture.dropout, name=f"dropout_{index}")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(slices, logits, name="mlp")


def _build_cnn(architecture: Architecture, num_classes: int) -> keras.Model:
    """Blocks of 3x3 convolutions and max-pooling, global average pooling, a dense head;
    with `features` "pixels+distribution" the head also reads the slice's quantiles.

    With `members` > 1, an ensemble in one flat graph: that many such CNNs side by side, each
    with its own weights, whose logits are averaged. Their last feature maps are concatenated
    into one layer (`LAST_CONV`) that every head reads its own channels from, so Grad-CAM of
    the averaged logit over that layer is the ensemble's, exactly. Training fits each member
    on its own loss (`MEMBER_LOGITS`), so members do not co-adapt."""
    features, members, filters = architecture.features, architecture.members, architecture.filters
    batch_norm, dropout = architecture.batch_norm, architecture.dropout
    if features not in CNN_FEATURES:
        raise ValueError(f"Unknown CNN features {features!r} (one of {', '.join(CNN_FEATURES)}).")
    slices, x = _scaled_input(architecture.image_size, architecture.input_scaling)
    if members == 1:
        x = _convolutions(x, architecture, "", LAST_CONV)
    else:
        maps = [
            _convolutions(x, architecture, f"m{m}_", f"m{m}_{LAST_CONV}")
            for m in range(1, members + 1)
        ]
        x = layers.Concatenate(name=LAST_CONV)(maps)
    if batch_norm:  # channel by channel: in an ensemble, each member's own
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{LAST_CONV}_norm")(x)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    if members > 1:
        x = layers.Reshape((members, filters[-1]), name="per_member")(x)
    if features == "pixels+distribution":
        x = _with_distribution(slices, x, members)
    for index, units in enumerate(architecture.hidden_units, start=1):
        x = layers.Dropout(dropout, name=f"head_dropout_{index}")(x)
        x = _dense(members, units, f"dense_{index}", "relu")(x)
    x = layers.Dropout(dropout, name="logits_dropout")(x)
    if members == 1:
        return keras.Model(slices, layers.Dense(num_classes, name="logits")(x), name="cnn")
    member_logits = _dense(members, num_classes, MEMBER_LOGITS)(x)
    logits = layers.GlobalAveragePooling1D(name="logits")(member_logits)
    return keras.Model(slices, logits, name="cnn_ensemble")


def _with_distribution(
    slices: keras.KerasTensor, pooled: keras.KerasTensor, members: int
) -> keras.KerasTensor:
    """The pooled features with the slice's normalised quantiles beside them (each member of an
    ensemble gets its own copy)."""
    quantiles = IntensityEdgeQuantiles(name="distribution")(slices)
    quantiles = layers.BatchNormalization(momentum=BN_MOMENTUM, name="distribution_norm")(quantiles)
    if members > 1:
        quantiles = layers.RepeatVector(members, name="distribution_per_member")(quantiles)
    return layers.Concatenate(name="features_and_distribution")([pooled, quantiles])


def _convolutions(
    x: keras.KerasTensor, architecture: Architecture, prefix: str, last_name: str
) -> keras.KerasTensor:
    """The convolution blocks up to the last convolution's output (before its batch norm:
    Grad-CAM reads it there)."""
    filters, convs_per_block = architecture.filters, architecture.convs_per_block
    batch_norm, dropout = architecture.batch_norm, architecture.dropout
    for block, width in enumerate(filters, start=1):
        for conv in range(1, convs_per_block + 1):
            is_last = block == len(filters) and conv == convs_per_block
            name = last_name if is_last else f"{prefix}conv_{block}_{conv}"
            x = layers.Conv2D(width, 3, padding="same", activation="relu", name=name)(x)
            if batch_norm and not is_last:
                x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_norm")(x)
        if block < len(filters):
            x = layers.MaxPooling2D(name=f"{prefix}pool_{block}")(x)
            if dropout:
                x = layers.SpatialDropout2D(dropout / 2, name=f"{prefix}block_dropout_{block}")(x)
    return x


def _dense(members: int, units: int, name: str, activation: str | None = None) -> layers.Layer:
    """A Dense layer, or in an ensemble one for each member at once (member m's features
    through member m's weights)."""
    if members == 1:
        return layers.Dense(units, activation=activation, name=name)
    return layers.EinsumDense(
        "bmi,miu->bmu", (members, units), bias_axes="mu", activation=activation, name=name
    )
