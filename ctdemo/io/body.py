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
MAX_REGION_PASSES = 8
"""Up to this many kept regions are boxed one pass each; more (a noise image's thousands) by
one lookup through the labels, so a hostile file costs two passes, not one per region."""
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
    grey = _grey_bytes(pixels)
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


def _grey_bytes(pixels: np.ndarray) -> np.ndarray:
    """A slice in [0, 1] as 8-bit grey (truncated; NaN and below 0 as 0), through one float
    temporary: each large temporary is an allocation that decoding threads pay for."""
    scaled = np.fmax(pixels, 0.0)
    np.minimum(scaled, 1.0, out=scaled)
    scaled *= 255.0
    return scaled.astype(np.uint8)


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
    _, bright = cv2.threshold(grey, threshold, 1, cv2.THRESH_BINARY)
    return cv2.morphologyEx(bright, cv2.MORPH_OPEN, disc)


def _body_box(bright: np.ndarray, min_area: float) -> Box | None:
    """The box around the largest bright region and those at least KEEP_SHARE of it; None if
    the largest is small.

    OpenCV's own statistics pass costs more than the labelling, so areas are a histogram of
    the labels and the box is the union of each kept region's: all in OpenCV, which releases
    the GIL (slices are cut on decoding threads). 16-bit labels when they cannot overflow: an
    opened region holds at least 5 pixels, so a mask under 5 x 65,535 pixels has fewer."""
    label_type = cv2.CV_16U if bright.size < 5 * 65535 else cv2.CV_32S
    count, labels = cv2.connectedComponents(bright, connectivity=8, ltype=label_type)
    if count < 2:
        return None
    areas = _label_areas(labels, count)[1:]
    largest = int(areas.max())
    if largest < min_area:
        return None
    kept = np.flatnonzero(areas >= KEEP_SHARE * largest) + 1
    if len(kept) > MAX_REGION_PASSES:  # many alike regions (noise): one lookup, not a pass each
        is_kept = np.zeros(count, dtype=np.uint8)
        is_kept[kept] = 1
        masks = [is_kept[labels]]
    else:
        masks = [cv2.compare(labels, int(label), cv2.CMP_EQ) for label in kept]
    boxes = [cv2.boundingRect(mask) for mask in masks]
    top = min(y for _, y, _, _ in boxes)
    bottom = max(y + h for _, y, _, h in boxes)
    left = min(x for x, _, _, _ in boxes)
    right = max(x + w for x, _, w, _ in boxes)
    return Box(top, bottom, left, right)


def _label_areas(labels: np.ndarray, count: int) -> np.ndarray:
    """Pixels per label 0..count-1: OpenCV's histogram where its float32 counts are exact
    (16-bit labels: fewer than 2**24 pixels), NumPy's count otherwise."""
    if labels.dtype == np.uint16 and labels.size < 2**24:
        histogram = cv2.calcHist([labels], [0], None, [count], [0, count])
        return histogram.ravel().astype(np.int64)
    return np.bincount(labels.ravel(), minlength=count)
