"""What one file offered as a slice may make us allocate: bounded by what we allocate, not by
what the file declares.

A slice must be at most MAX_PIXELS and at most MAX_ASPECT:1; a larger one is reduced (aspect
kept, area averaging) to at most MAX_DECODED_SIDE a side before it becomes float32. Small
slices (every training slice) are decoded exactly, bit for bit.
"""

from __future__ import annotations

import cv2
import numpy as np

from ctdemo.io.decoded import AspectRatioError, ImageTooLargeError, NotAnImageError

MAX_PIXELS = 25_000_000
"""Largest slice accepted (width x height). Guards against decompression bombs: a CT slice is
512 x 512, and 25 megapixels already needs 100 MB as float32."""

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest file accepted, before any decoding."""

MAX_ASPECT = 8.0
"""Longest side over shortest side accepted. A CT slice is about square (the 1,971 training
slices are at most 2.1:1); a strip of 30000 x 833 is not a slice, and padding it to a square
of its long side is what once cost 3.5 GB."""

MAX_DECODED_SIDE = 1024
"""Longest side of a decoded slice (`DecodedSlice.pixels`). The models read at most 128 px and
the pages show a slice at most about 1000 px wide, so a larger image is reduced to this,
aspect kept, before it becomes float32: a 25-megapixel upload never holds a 25-MP float32
array (100 MB), only its decoded integer pixels and at most 4 MB of float32."""


def check_file_size(size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise ImageTooLargeError(
            f"The file is {size / 2**20:.0f} MB; slices over "
            f"{MAX_FILE_BYTES // 2**20} MB are refused."
        )


def check_dimensions(width: int, height: int) -> None:
    """Refuse, from the size a header declares, what has no pixels, is too large or a strip."""
    if width <= 0 or height <= 0:
        raise NotAnImageError(f"The image has no pixels ({width} x {height}).")
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            f"The image is {width} x {height} pixels; images over "
            f"{MAX_PIXELS / 1e6:.0f} megapixels are refused (a CT slice is about 512 x 512)."
        )
    longest, shortest = max(width, height), min(width, height)
    if longest > MAX_ASPECT * shortest:
        raise AspectRatioError(
            f"The image is {width} x {height} pixels, {longest / shortest:,.0f} times longer one "
            f"way than the other: a CT slice is about square, and images longer than "
            f"{MAX_ASPECT:g}:1 are refused. Crop it to the slice and try again."
        )


def fitted_size(width: int, height: int, side: int = MAX_DECODED_SIDE) -> tuple[int, int]:
    """(width, height) shrunk, aspect kept, so that neither exceeds `side`."""
    longest = max(width, height)
    if longest <= side:
        return width, height
    return max(1, round(width * side / longest)), max(1, round(height * side / longest))


def fit_within(pixels: np.ndarray, side: int = MAX_DECODED_SIDE) -> np.ndarray:
    """A 2-D array area-averaged, aspect kept, to at most `side` a side; itself if it fits."""
    height, width = pixels.shape
    target = fitted_size(width, height, side)
    if target == (width, height):
        return pixels
    return cv2.resize(pixels, target, interpolation=cv2.INTER_AREA)
