"""Heatmaps drawn over slices: colour maps, blending, the lung outline, PNG bytes for download."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

COLOUR_MAPS = {
    "viridis": cv2.COLORMAP_VIRIDIS,
    "cividis": cv2.COLORMAP_CIVIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
    "turbo": cv2.COLORMAP_TURBO,
    "jet": cv2.COLORMAP_JET,
}
"""Named OpenCV colour maps, the default first. Viridis, cividis and inferno are perceptually
uniform (equal steps of heat look equally different) and read with colour-blindness and in
grey; jet, what most Grad-CAM figures use, invents bands at cyan and yellow."""
DEFAULT_COLOUR_MAP = next(iter(COLOUR_MAPS))
OUTLINE_COLOUR = (255, 64, 255)
"""Magenta, in none of the uniform maps, drawn on a black edge so it reads on grey and colour."""


def grey_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """A grey slice in [0, 1] as an 8-bit RGB image."""
    grey = np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(grey[..., np.newaxis], 3, axis=-1)


def colourise(heatmap: np.ndarray, colour_map: str = DEFAULT_COLOUR_MAP) -> np.ndarray:
    """A heatmap in [0, 1] as an 8-bit RGB image in the named colour map."""
    if colour_map not in COLOUR_MAPS:
        raise ValueError(
            f"Unknown colour map {colour_map!r}; choose from {', '.join(COLOUR_MAPS)}."
        )
    levels = np.round(np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8)
    bgr = cv2.applyColorMap(levels, COLOUR_MAPS[colour_map])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def blend(
    pixels: np.ndarray, heatmap: np.ndarray, alpha: float, colour_map: str = DEFAULT_COLOUR_MAP
) -> np.ndarray:
    """The slice with the coloured heatmap laid over it at opacity `alpha` (0 = slice only).

    `heatmap` must already be at the slice's own shape (see `explain.to_slice_geometry`).
    """
    if heatmap.shape != pixels.shape:
        raise ValueError(f"Heatmap shape {heatmap.shape} differs from the slice's {pixels.shape}.")
    alpha = float(np.clip(alpha, 0.0, 1.0))
    mixed = (1 - alpha) * grey_to_rgb(pixels) + alpha * colourise(heatmap, colour_map)
    return np.round(mixed).astype(np.uint8)


def outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """An RGB image with the outline of `mask` (same height and width) drawn over it: a
    magenta line on a black edge, about 2 px wide on a 512-pixel slice."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"Mask shape {mask.shape} differs from the image's {image.shape[:2]}.")
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    width = max(1, round(min(mask.shape) / 256))
    drawn = np.ascontiguousarray(image, dtype=np.uint8).copy()
    cv2.drawContours(drawn, contours, -1, (0, 0, 0), 2 * width + 1, lineType=cv2.LINE_AA)
    cv2.drawContours(drawn, contours, -1, OUTLINE_COLOUR, width, lineType=cv2.LINE_AA)
    return drawn


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit grey or RGB image encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def image_strip(images: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Grey images of one size side by side, `gap` white columns apart: one tidy row."""
    height = images[0].shape[0]
    spacer = np.ones((height, gap), dtype=np.float32)
    parts = [part for image in images for part in (spacer, image.astype(np.float32))][1:]
    return np.concatenate(parts, axis=1)
