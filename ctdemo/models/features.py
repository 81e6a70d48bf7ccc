"""What is in a slice, not where: the fixed input layer of the distribution MLP.

A plain MLP gives every pixel its own weights, so it learns *where* things were in the training
patients' slices; on new patients (other positions, other crops) it is close to guessing (67%
on our grouped validation split). This layer hands the MLP the slice's intensity distribution
and edge-strength distribution instead, each as evenly spaced quantiles: a permutation of the
pixels leaves them unchanged, so the MLP cannot memorise positions. It has no weights.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from ctdemo.models.specs import DEFAULT_QUANTILES

MAX_QUANTILES = 4096  # a bound for configs read from uploaded files
EDGE_EPSILON = 1e-6
"""Keeps the edge strength's square root differentiable where the slice is flat (saliency)."""


@keras.saving.register_keras_serializable(package="ctdemo")
class IntensityEdgeQuantiles(layers.Layer):
    """(batch, size, size, 1) slices in [0, 1] to (batch, 2 × quantiles) features: the sorted
    pixel values and the sorted gradient magnitudes (forward differences), each sampled at
    `quantiles` evenly spaced ranks."""

    def __init__(self, quantiles: int = DEFAULT_QUANTILES, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(quantiles, int) or not 1 <= quantiles <= MAX_QUANTILES:
            raise ValueError(f"quantiles must be a whole number from 1 to {MAX_QUANTILES}.")
        self.quantiles = quantiles

    def _ranks(self, count: int) -> np.ndarray:
        return np.linspace(0, count - 1, self.quantiles).round().astype("int32")

    def call(self, slices):
        grey = slices[..., 0]
        height, width = grey.shape[1], grey.shape[2]
        intensities = ops.reshape(grey, (-1, height * width))
        dx = grey[:, :-1, 1:] - grey[:, :-1, :-1]
        dy = grey[:, 1:, :-1] - grey[:, :-1, :-1]
        edges = ops.reshape(
            ops.sqrt(dx * dx + dy * dy + EDGE_EPSILON), (-1, (height - 1) * (width - 1))
        )
        return ops.concatenate(
            [
                ops.take(ops.sort(intensities, axis=-1), self._ranks(height * width), axis=1),
                ops.take(ops.sort(edges, axis=-1), self._ranks((height - 1) * (width - 1)), axis=1),
            ],
            axis=-1,
        )

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * self.quantiles)

    def get_config(self) -> dict:
        return {**super().get_config(), "quantiles": self.quantiles}


OWN_LAYERS = {
    "ctdemo>IntensityEdgeQuantiles": {
        ("ctdemo.models.features", "IntensityEdgeQuantiles"),
        ("ctdemo.features", "IntensityEdgeQuantiles"),  # where models saved before 2026-12 say
    }
}
"""Registered name → the (module, class) pairs of the custom layers our own models use. The
uploaded-model check allows exactly these: their code is ours, and their config holds only
numbers."""
