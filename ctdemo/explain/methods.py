"""The explanation methods by name, and a heatmap's way back onto its slice: no TensorFlow.

Pages and tables name methods and map heatmaps onto slices before any model is loaded; the
methods themselves run in `ctdemo.explain.saliency`.
"""

from __future__ import annotations

import cv2
import numpy as np

CAM_METHODS = ("gradcam", "gradcam++", "scorecam", "layercam")
METHODS = (*CAM_METHODS, "saliency")
METHOD_LABELS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "scorecam": "Score-CAM",
    "layercam": "Layer-CAM",
    "saliency": "SmoothGrad saliency",
}
GRADIENT_METHODS = ("gradcam", "gradcam++", "layercam", "saliency")


class ExplanationError(ValueError):
    """A method that cannot explain this model, said for a person (shown, never a traceback)."""


def to_slice_geometry(heatmap: np.ndarray, slice_shape: tuple[int, int]) -> np.ndarray:
    """A heatmap over the padded square model input, mapped onto the original slice: scaled
    to the square's side, then the padding that `pad_to_square` added is cropped away."""
    height, width = slice_shape
    side = max(height, width)
    square = cv2.resize(heatmap, (side, side), interpolation=cv2.INTER_LINEAR)
    top, left = (side - height) // 2, (side - width) // 2
    return np.clip(square[top : top + height, left : left + width], 0.0, 1.0)


def grid_label(side: int) -> str:
    """How coarse a class-activation map is: one value per cell of its layer's grid."""
    return f"{side}×{side} cells"
