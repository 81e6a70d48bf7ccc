"""Does an explanation depend on what the model learned? Cascading model randomisation.

    steps = cascading_randomisation(model, image, "gradcam", class_index)

The sanity check of Adebayo et al. (2018, "Sanity checks for saliency maps"): re-initialise the
model's weights layer by layer from the output down, explain the same slice with each
increasingly random copy, and compare each map with the trained model's by rank correlation.
A map that stays the same when the weights that made the decision are gone shows the image
(edges, bright tissue), not the model. Each layer gets its own initialisers, seeded, so a run
is reproducible; the trained model itself is never touched (the check runs on a clone).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from scipy.stats import spearmanr

from ctdemo.explain.saliency import explain

UNCHANGED_ABOVE = 0.5
"""A map whose rank correlation with the trained model's stays above this once the whole
network is random did not depend on what the network learned."""


@dataclass(frozen=True)
class RandomisationStep:
    """The explanation once `layer` and every layer above it are re-initialised."""

    layer: str
    correlation: float  # Spearman's rank correlation with the trained model's map
    heatmap: np.ndarray


def cascading_randomisation(
    model: keras.Model,
    image: np.ndarray,
    method: str,
    class_index: int,
    seed: int = 0,
    layer: str | None = None,
) -> list[RandomisationStep]:
    """One step per layer with weights, from the output down to the input; `layer` is the
    convolution a class-activation map explains (default: the last)."""
    trained = explain(model, image, method, class_index, layer=layer)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    steps = []
    weighted = [leaf for leaf in _leaf_layers(copy) if leaf.weights]
    for offset, randomised in enumerate(reversed(weighted)):
        _reinitialise(randomised, seed + offset)
        heatmap = explain(copy, image, method, class_index, layer=layer)
        correlation = rank_correlation(trained, heatmap)
        steps.append(RandomisationStep(randomised.name, correlation, heatmap))
    return steps


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps (ties given their mean rank); 0 when either map
    is flat, since a flat map carries no order to agree with."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def verdict(steps: list[RandomisationStep]) -> str:
    """One sentence on what the check shows."""
    if not steps:
        return "This model has no weights to randomise."
    final = steps[-1].correlation
    if final > UNCHANGED_ABOVE:
        return (
            f"With every weight random, the map still correlates {final:.2f} with the trained "
            "model's: this explanation barely depends on what the model learned, so it shows "
            "the image more than the model."
        )
    return (
        f"With every weight random, the map's rank correlation with the trained model's falls "
        f"to {final:.2f}: this explanation depends on what the model learned."
    )


def _leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers in graph order, nested models opened (an ensemble's members, for instance)."""
    leaves = []
    for layer in model.layers:
        leaves += _leaf_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return leaves


def _reinitialise(layer: keras.layers.Layer, seed: int) -> None:
    """Each weight drawn again from the layer's own initialiser for it (`kernel` from
    `kernel_initializer`, `gamma` from `gamma_initializer`, …); a weight with no initialiser
    is shuffled, which keeps its values and destroys what they learned."""
    rng = np.random.default_rng(seed)
    for index, variable in enumerate(layer.weights):
        name = variable.path.rsplit("/", 1)[-1]
        initializer = getattr(layer, f"{name}_initializer", None)
        if initializer is not None:
            config = initializer.get_config()
            if "seed" in config:
                initializer = initializer.__class__.from_config({**config, "seed": seed + index})
            value = keras.ops.convert_to_numpy(initializer(variable.shape, dtype=variable.dtype))
        else:
            value = rng.permutation(keras.ops.convert_to_numpy(variable).ravel())
            value = value.reshape(variable.shape)
        variable.assign(value)
