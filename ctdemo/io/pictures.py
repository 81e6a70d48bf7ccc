"""PNG, JPEG, BMP, TIFF and GIF bytes to a grey slice in [0, 1], through Pillow.

- 8-bit images (and palette, 1-bit, RGB, RGBA, CMYK) are divided by 255; colour is turned into
  luma (ITU-R 601) and transparent pixels are composited over black.
- 16-bit, 32-bit and float images have no agreed range, so they are min-max stretched.
- A picture over MAX_DECODED_SIDE is reduced in Pillow's integer modes (a JPEG is decoded at a
  fraction of its size) before it becomes float32.

The same decode measures how much of the picture is coloured (`colour_fraction`), for the
"is this CT?" screen: a file is decoded once.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageChops, ImageOps, UnidentifiedImageError

from ctdemo.io.decoded import (
    DecodedSlice,
    ImageTooLargeError,
    MultiFrameError,
    NotAnImageError,
    TruncatedImageError,
    quiet,
)
from ctdemo.io.limits import MAX_PIXELS, check_dimensions, fitted_size

PICTURE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF")
"""The Pillow formats we open, so that no other plugin (Ghostscript's EPS, say) is ever reached."""
PICTURE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
PICTURE_SIGNATURES += (b"II*\x00", b"MM\x00*")

COLOUR_SPREAD = 0.15
"""A pixel is coloured when its red, green and blue differ by more than this (of full scale)."""
COLOUR_SIDE = 256
"""The colour measure looks at every n-th pixel, so that at most this many remain a side."""

_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

# Pillow raises its own DecompressionBombError above twice this; we check sizes ourselves first.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def open_picture(data: bytes) -> Image.Image:
    """Pillow's lazy open (the header only), limited to PICTURE_FORMATS."""
    try:
        with quiet():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=PICTURE_FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageTooLargeError("The image declares more pixels than is safe to decode.") from None
    except UnidentifiedImageError:
        raise NotAnImageError(
            "This file is not an image we can read (PNG, JPEG, BMP, TIFF, GIF or DICOM)."
        ) from None
    except Exception as error:  # Pillow raises many types on hostile headers
        raise NotAnImageError(f"This file could not be read as an image ({error}).") from None


def picture_size(data: bytes) -> tuple[int, int]:
    """(width, height) that a picture's header declares, without decoding its pixels."""
    with open_picture(data) as image:
        return image.size


def decode_picture(data: bytes) -> DecodedSlice:
    with open_picture(data) as image:
        check_dimensions(*image.size)
        if getattr(image, "n_frames", 1) > 1:
            raise MultiFrameError(
                f"The file holds {image.n_frames} frames (an animation or a stack); "
                "upload one slice per file."
            )
        source_format = image.format or "image"
        _load(image, source_format)
        colour = colour_fraction(image)
        pixels = _to_grey_unit(_shrunk(_upright(image)))
    return DecodedSlice(pixels=pixels, source_format=source_format, colour_fraction=colour)


def _load(image: Image.Image, source_format: str) -> None:
    """Decode the pixels; a JPEG at 1/2, 1/4 or 1/8 scale where that still covers
    MAX_DECODED_SIDE (Pillow's draft, which the other formats ignore), in its own colours."""
    target = fitted_size(*image.size)
    try:
        if target != image.size:
            image.draft(image.mode, target)
        image.load()
    except Exception as error:
        if "truncated" in str(error).lower() or isinstance(error, EOFError | SyntaxError):
            raise TruncatedImageError(
                "The image file is truncated or damaged; try exporting it again."
            ) from None
        raise NotAnImageError(
            f"The {source_format} image is damaged: its pixel data could not be decoded. "
            "Try exporting it again."
        ) from None


def colour_fraction(image: Image.Image) -> float:
    """Fraction of a loaded picture's opaque pixels that are clearly coloured (channels spread
    by more than COLOUR_SPREAD), from every n-th pixel so that at most COLOUR_SIDE remain a
    side. 0 for grey modes."""
    if image.mode in _GREY_MODES:
        return 0.0
    step = max(1, -(-max(image.size) // COLOUR_SIDE))
    size = (-(-image.width // step), -(-image.height // step))
    sampled = image.resize(size, Image.Resampling.NEAREST)  # no full-size RGBA copy
    rgba = sampled if sampled.mode in ("RGB", "RGBA") else sampled.convert("RGBA")
    pixels = np.asarray(rgba)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    spread = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    if pixels.shape[-1] == 4:
        spread = spread[pixels[..., 3] > 0]
    if spread.size == 0:
        return 0.0
    return float(np.mean(spread > COLOUR_SPREAD * 255))


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF Orientation tag says (cameras store rotated photos so);
    copied only when the tag asks for a turn."""
    with quiet():
        try:
            if image.getexif().get(ExifTags.Base.Orientation, 1) not in range(2, 9):
                return image
            return ImageOps.exif_transpose(image)
        except Exception:  # damaged EXIF: the pixels as stored
            return image


def _shrunk(image: Image.Image) -> Image.Image:
    """An image over MAX_DECODED_SIDE area-averaged down to it in Pillow, aspect kept, once in
    the smallest mode that keeps what `_to_grey_unit` reads of it; any other image as it is."""
    target = fitted_size(*image.size)
    if target == image.size:
        return image
    return _compact(image).resize(target, Image.Resampling.BOX)


def _compact(image: Image.Image) -> Image.Image:
    """One 8-bit grey band, see-through pixels composited over black (as `_to_grey_unit`
    does); 16-bit, 32-bit and float images as they are."""
    if image.mode in ("L", "I", "F") or image.mode.startswith("I;16"):
        return image
    if image.mode == "PA" or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA") and image.getextrema()[-1][0] < 255:
        return ImageChops.multiply(image.convert("L"), image.getchannel("A"))
    if image.mode == "CMYK":
        return image.convert("RGB").convert("L")
    return image.convert("L")


def _to_grey_unit(image: Image.Image) -> np.ndarray:
    """Any Pillow mode to a float32 grey array in [0, 1].

    Colour goes through Pillow's own luma conversion (ITU-R 601, in C: a third of the cost of
    doing it in NumPy); only images with real transparency take the slower compositing path."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _min_max(np.asarray(image, dtype=np.float32))
    if mode in ("P", "PA", "LA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa") and image.getchannel("A").getextrema() != (255, 255):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        grey = rgba[..., 0] * 0.299 + rgba[..., 1] * 0.587 + rgba[..., 2] * 0.114
        return np.clip(grey * rgba[..., 3], 0.0, 1.0).astype(np.float32)
    if image.mode != "L":
        image = image.convert("RGB").convert("L") if image.mode == "CMYK" else image.convert("L")
    grey = np.asarray(image, dtype=np.float32)  # a new array: scaled in place
    grey *= np.float32(1 / 255)
    return grey


def _min_max(values: np.ndarray) -> np.ndarray:
    # float64: in float32, (value - low) overflows to inf for ranges near float32's limit
    finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(finite.shape, dtype=np.float32)
    return ((finite - low) / (high - low)).astype(np.float32)
