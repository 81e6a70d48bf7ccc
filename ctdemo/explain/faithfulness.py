"""Is a heatmap faithful to the model? The deletion curve, against a random order.

    curve = deletion_curve(predict, image, heatmap)   # predict: batch -> class probability
    curve.score                                       # > 0: the heat finds what the model uses

Delete the most-heated pixels step by step and watch the class probability: if the heatmap
points at what the model relies on, the probability falls fast. The same deletion in a random
order is the yardstick, so the score is the area between the two curves (the random curve's
area minus the heatmap's), over the share of pixels deleted from 0 to 1: 0 means the heatmap
orders pixels no better than chance, 1 the largest possible lead. A deleted pixel is replaced
by a heavily blurred copy of the image, not by black: black is a strong signal of its own on a
CT slice (air), and a blur removes the detail while keeping the slice's overall density. All
steps of both orders go to the model in one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

STEPS = 20
"""Deletion steps: 5% of the pixels each."""
BLUR_FRACTION = 1 / 8
"""The blur's standard deviation, as a share of the image side: detail gone, density kept."""

Predict = Callable[[np.ndarray], np.ndarray]
"""A batch of model inputs (n, size, size, channels) to the explained class's probability (n,)."""


@dataclass(frozen=True)
class DeletionCurve:
    """The class probability as pixels are deleted, in the heatmap's order and a random one."""

    fractions: np.ndarray  # (STEPS + 1,) share of pixels deleted, 0 to 1
    heat_order: np.ndarray  # probability, most-heated pixels deleted first
    random_order: np.ndarray  # probability, pixels deleted in a seeded random order

    @property
    def heat_area(self) -> float:
        return float(np.trapezoid(self.heat_order, self.fractions))

    @property
    def random_area(self) -> float:
        return float(np.trapezoid(self.random_order, self.fractions))

    @property
    def score(self) -> float:
        """Area between the random curve and the heatmap's: positive when deleting by heat
        lowers the probability sooner than deleting at random."""
        return self.random_area - self.heat_area

    def sentence(self) -> str:
        """What the score means, in one plain sentence."""
        if self.score > 0.05:
            return (
                f"Deleting the most-heated pixels first lowers the probability sooner than "
                f"deleting pixels at random (area between the curves {self.score:+.2f}): the "
                "heatmap points at pixels this model relies on."
            )
        if self.score < -0.05:
            return (
                f"Deleting the most-heated pixels first lowers the probability later than "
                f"deleting at random ({self.score:+.2f}): this heatmap points away from what "
                "the model relies on; do not read it as where the model looks."
            )
        return (
            f"Deleting by heat and deleting at random lower the probability alike "
            f"({self.score:+.2f}): the heatmap's order says little about what this model uses."
        )


def deletion_curve(
    predict: Predict,
    image: np.ndarray,
    heatmap: np.ndarray,
    steps: int = STEPS,
    seed: int = 0,
) -> DeletionCurve:
    """The deletion curve of `heatmap` (size, size) for one model input `image`
    (size, size, channels), beside a random order's, in one call of `predict`."""
    if image.ndim != 3 or heatmap.shape != image.shape[:2]:
        raise ValueError(f"heatmap {heatmap.shape} does not cover the image {image.shape}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    rng = np.random.default_rng(seed)
    pixels = heatmap.size
    tie_break = rng.random(pixels)  # equal heat (a flat region) is deleted in random order
    by_heat = np.lexsort((tie_break, -np.nan_to_num(heatmap.ravel(), nan=0.0)))
    at_random = rng.permutation(pixels)
    blurred = _blurred(image)
    counts = np.round(np.linspace(0, pixels, steps + 1)).astype(int)
    batch = np.concatenate(
        [_deleted(image, blurred, order, counts) for order in (by_heat, at_random)]
    )
    probabilities = np.asarray(predict(batch), dtype=np.float64).reshape(-1)
    if probabilities.shape != (2 * (steps + 1),) or not np.all(np.isfinite(probabilities)):
        raise ValueError("the model's output on the deleted images is not one finite probability")
    return DeletionCurve(
        fractions=counts / pixels,
        heat_order=probabilities[: steps + 1],
        random_order=probabilities[steps + 1 :],
    )


def _blurred(image: np.ndarray) -> np.ndarray:
    sigma = max(1.0, BLUR_FRACTION * image.shape[0])
    blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigma)
    return blurred.reshape(image.shape)


def _deleted(
    image: np.ndarray, blurred: np.ndarray, order: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """One copy of `image` per count, its first `count` pixels in `order` taken from `blurred`."""
    height, width, channels = image.shape
    flat, flat_blurred = image.reshape(-1, channels), blurred.reshape(-1, channels)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    copies = np.where(
        (rank[np.newaxis, :] < counts[:, np.newaxis])[..., np.newaxis],
        flat_blurred[np.newaxis],
        flat[np.newaxis],
    )
    return copies.reshape(len(counts), height, width, channels).astype(np.float32)
