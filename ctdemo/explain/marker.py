"""Heat on a planted marker: the share of each slice's Grad-CAM inside the marker's region,
the number that says whether a model learned the shortcut (`ctdemo.evaluation.shortcut`)."""

from __future__ import annotations

import keras
import numpy as np

from ctdemo.explain.lungs import heat_share
from ctdemo.explain.saliency import gradcam_batch
from ctdemo.models.specs import VALIDATION_BATCH


def marker_heat(
    model: keras.Model,
    x: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    batch_size: int = VALIDATION_BATCH,
) -> list[float]:
    """Per slice of `x` (model inputs), the share of its Grad-CAM for its class in `labels`
    that falls inside `mask` (at the input's size); a uniform map scores the mask's area."""
    shares: list[float] = []
    for start in range(0, len(x), batch_size):
        maps = gradcam_batch(
            model, x[start : start + batch_size], labels[start : start + batch_size]
        )
        shares += [heat_share(heat, mask) for heat in maps]
    return shares
