"""What is in a slice, not where: the fixed input layer of the distribution MLP.

A plain MLP gives every pixel its own weights, so it learns *where* things were in the training
patients' slices; on new patients (other positions, other crops) it is close to guessing (67%
on our grouped validation split). This layer hands the MLP the slice's intensity distribution
and edge-strength distribution instead, each as evenly spaced quantiles: a permutation of the
pixels leaves them unchanged, so the MLP cannot memorise positions. It has no weights.

The quantiles are read from a fine histogram, not a sort: TensorFlow's CPU sort of a 96 x 96
slice cost about five times the histogram (`benchmarks/bench.py`, docs/benchmarks.md). Each
quantile is within one bin of the sorted value: 1/HISTOGRAM_BINS of the slice's intensity
range, and for edge strengths 1/HISTOGRAM_BINS of their range in log space (a relative error
under 0.4%, where edges are faint). Gradients are the sort's, exactly: the backward pass sorts
(explanations need it; training never does, as no weight lies below this layer).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from ctdemo.models.specs import DEFAULT_QUANTILES

MAX_QUANTILES = 4096  # a bound for configs read from uploaded files
EDGE_EPSILON = 1e-6
"""Keeps the edge strength's square root differentiable where the slice is flat (saliency)."""
HISTOGRAM_BINS = 2048
"""Bins between a row's smallest and largest value; a quantile is within one bin."""


def evenly_spaced_ranks(count: int, quantiles: int) -> np.ndarray:
    """The ranks (0 = smallest) of `quantiles` evenly spaced order statistics of `count` values."""
    return np.linspace(0, count - 1, quantiles).round().astype("int32")


def histogram_quantiles(values: tf.Tensor, ranks: np.ndarray, log: bool = False) -> tf.Tensor:
    """The `ranks`-th smallest of each row of `values` (batch, n), read from a histogram of
    HISTOGRAM_BINS bins over the row's range (in log space with `log`, for positive values),
    interpolated within the bin. The gradient is the sort's: each quantile's on the value of
    that rank."""

    @tf.custom_gradient
    def quantiles(values: tf.Tensor):
        def sorted_gradient(upstream: tf.Tensor) -> tf.Tensor:
            at_rank = tf.gather(tf.argsort(values, axis=-1, stable=True), ranks, axis=1)
            return _scatter_rows(upstream, at_rank, tf.shape(values))

        spread = tf.math.log(values) if log else values
        estimate = _from_histogram(tf.stop_gradient(spread), ranks)
        return (tf.exp(estimate) if log else estimate), sorted_gradient

    return quantiles(values)


def _from_histogram(values: tf.Tensor, ranks: np.ndarray) -> tf.Tensor:
    low = tf.reduce_min(values, axis=1, keepdims=True)
    width = (tf.reduce_max(values, axis=1, keepdims=True) - low) / HISTOGRAM_BINS
    width = tf.maximum(width, 1e-12)
    bins = tf.clip_by_value(
        tf.cast(tf.floor((values - low) / width), tf.int32), 0, HISTOGRAM_BINS - 1
    )
    counts = tf.math.bincount(
        bins, minlength=HISTOGRAM_BINS, maxlength=HISTOGRAM_BINS, axis=-1, dtype=tf.int32
    )
    below_or_in = tf.cumsum(counts, axis=-1)
    wanted = tf.broadcast_to(tf.constant(ranks), (tf.shape(values)[0], len(ranks)))
    bin_of_rank = tf.searchsorted(below_or_in, wanted, side="right")
    below = tf.gather(below_or_in, bin_of_rank, batch_dims=1) - tf.gather(
        counts, bin_of_rank, batch_dims=1
    )
    inside = tf.cast(tf.gather(counts, bin_of_rank, batch_dims=1), values.dtype)
    within = (tf.cast(wanted - below, values.dtype) + 0.5) / inside
    return low + (tf.cast(bin_of_rank, values.dtype) + within) * width


def _scatter_rows(upstream: tf.Tensor, columns: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """A (batch, n) tensor of zeros with upstream[b, k] added at [b, columns[b, k]]."""
    rows, count = shape[0], shape[1]
    flat = columns + tf.range(rows)[:, tf.newaxis] * count
    summed = tf.math.unsorted_segment_sum(
        tf.reshape(upstream, [-1]), tf.reshape(flat, [-1]), rows * count
    )
    return tf.reshape(summed, shape)


@keras.saving.register_keras_serializable(package="ctdemo")
class IntensityEdgeQuantiles(layers.Layer):
    """(batch, size, size, 1) slices in [0, 1] to (batch, 2 × quantiles) features: the pixel
    values and the gradient magnitudes (forward differences), each at `quantiles` evenly
    spaced ranks (`histogram_quantiles`)."""

    def __init__(self, quantiles: int = DEFAULT_QUANTILES, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(quantiles, int) or not 1 <= quantiles <= MAX_QUANTILES:
            raise ValueError(f"quantiles must be a whole number from 1 to {MAX_QUANTILES}.")
        self.quantiles = quantiles

    def call(self, slices):
        grey = slices[..., 0]
        height, width = grey.shape[1], grey.shape[2]
        intensities = tf.reshape(grey, (-1, height * width))
        dx = grey[:, :-1, 1:] - grey[:, :-1, :-1]
        dy = grey[:, 1:, :-1] - grey[:, :-1, :-1]
        edges = tf.reshape(
            tf.sqrt(dx * dx + dy * dy + EDGE_EPSILON), (-1, (height - 1) * (width - 1))
        )
        return tf.concat(
            [
                histogram_quantiles(
                    intensities, evenly_spaced_ranks(height * width, self.quantiles)
                ),
                histogram_quantiles(
                    edges,
                    evenly_spaced_ranks((height - 1) * (width - 1), self.quantiles),
                    log=True,
                ),
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
