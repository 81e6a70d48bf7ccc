"""Crop a CT slice to the body: the first step of `ctdemo.io.slices.to_model_input`.

The training slices of the SARS-CoV-2 CT dataset are cut to the body; a clinical export shows
the body in a wide field of air or black padding, often with the scanner table under it and
text in a corner. Cropping to the body's bounding box first makes both look alike to a model.

Classical and fast (OpenCV, about 1 ms on a 512 x 512 slice):
1. bright = above an Otsu threshold of the slice's non-padding pixels (tissue and bone, not
   air, lungs nor padding), opened with a small disc so that thin things (the table's line,
   letters of a text overlay) fall apart;
2. the body = the largest region, with every region at least KEEP_SHARE of its size (a body
   split in two by the opening, an arm);
3. its bounding box, with no margin: the training slices are cut to the body with none, and
   the "is this CT?" screen reads a black margin as foreign (one of 0.5% of the side already
   halves the uncropped slices it accepts: docs/models.md, "Body crop").
A slice already cut to the body fills that box (nearly): when the crop would keep at least
MIN_REMOVED short of each side, the slice is returned as it is, so it is not resampled for
nothing. A slice with no plausible body (black, uniform, a few specks) is returned unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PADDING_LEVEL = 0.02
"""Pixels at or below this are black padding, left out of the threshold."""
KEEP_SHARE = 0.02
"""A bright region at least this share of the largest one belongs to the body."""
MIN_BODY_SHARE = 0.02
"""A largest bright region under this share of the slice is no body: nothing is cropped."""
MIN_REMOVED = 0.05
"""A crop removing less than this share of the slice's height and of its width is skipped."""


@dataclass(frozen=True)
class Box:
    """Rows [top, bottom) and columns [left, right) of a slice."""

    top: int
    bottom: int
    left: int
    right: int

    def kept_share(self, shape: tuple[int, int]) -> float:
        """The share of a slice of `shape` that the box keeps."""
        return (self.bottom - self.top) * (self.right - self.left) / (shape[0] * shape[1])


def body_box(pixels: np.ndarray) -> Box:
    """The body's bounding box; the whole slice when no body is found."""
    height, width = pixels.shape
    whole = Box(0, height, 0, width)
    if min(height, width) < 8:
        return whole
    grey = (np.minimum(np.fmax(pixels, 0.0), 1.0) * 255.0).astype(np.uint8)  # NaN to 0
    bright = _bright(grey)
    if bright is None:
        return whole
    return _body_box(bright, min_area=MIN_BODY_SHARE * grey.size) or whole


def crop_to_body(pixels: np.ndarray) -> np.ndarray:
    """`pixels` (height, width) cut to the body's box, or `pixels` itself when the box keeps
    nearly all of it (a slice already cut to the body) or no body is found."""
    box = body_box(pixels)
    height, width = pixels.shape
    removed_rows = 1 - (box.bottom - box.top) / height
    removed_cols = 1 - (box.right - box.left) / width
    if max(removed_rows, removed_cols) < MIN_REMOVED:
        return pixels
    return pixels[box.top : box.bottom, box.left : box.right]


def _bright(grey: np.ndarray) -> np.ndarray | None:
    """Tissue and bone: above the Otsu threshold of the non-padding pixels, thin parts opened
    away. None for a slice with no contrast to threshold."""
    content = grey[grey > PADDING_LEVEL * 255]
    if content.size == 0 or int(content.max()) - int(content.min()) < 8:
        return None
    threshold, _ = cv2.threshold(
        content.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU
    )
    radius = max(1, min(grey.shape) // 128)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.morphologyEx((grey > threshold).astype(np.uint8), cv2.MORPH_OPEN, disc)


def _body_box(bright: np.ndarray, min_area: float) -> Box | None:
    """The box around the largest bright region and those at least KEEP_SHARE of it; None if
    the largest is small.

    Labels without OpenCV's statistics, areas by counting: three times faster here (its
    statistics pass cost more than the labelling). 16-bit labels when they cannot overflow: an
    opened region holds at least 5 pixels, so a mask under 5 x 65,535 pixels has fewer."""
    label_type = cv2.CV_16U if bright.size < 5 * 65535 else cv2.CV_32S
    count, labels = cv2.connectedComponents(bright, connectivity=8, ltype=label_type)
    if count < 2:
        return None
    areas = np.bincount(labels.ravel(), minlength=count)[1:]
    largest = int(areas.max())
    if largest < min_area:
        return None
    kept = np.zeros(count, dtype=np.uint8)
    kept[1:][areas >= KEEP_SHARE * largest] = 1
    left, top, width, height = cv2.boundingRect(kept[labels])
    return Box(top, top + height, left, left + width)
