"""Bytes to a validated grey CT slice, and that slice to model input.

Every image that reaches a model goes through `decode_slice` and then `to_model_input`:
training, inference, the CLI and the tests share this one path. The formats are decoded in
`ctdemo.io.pictures` and `ctdemo.io.dicom`, within the bounds of `ctdemo.io.limits`.

Body: a slice is first cut to the body's bounding box (`ctdemo.io.body`), so a body in a wide
black field looks like the training slices, which are cut to the body; on those the cut changes
nothing (docs/models.md, "Body crop").

Aspect: a slice is never stretched. It is padded to a square with the median of its outer edge
(the scan's own background), centred, then resized (area interpolation when shrinking).
"""

from __future__ import annotations

import os
import stat

import cv2
import numpy as np

from ctdemo.io.body import crop_to_body
from ctdemo.io.decoded import DecodedSlice, EmptyFileError, UnreadableFileError
from ctdemo.io.dicom import DICOM_EXTENSIONS, LUNG_WINDOW, Window, decode_dicom, dicom_size
from ctdemo.io.limits import MAX_FILE_BYTES, check_dimensions, check_file_size, fit_within
from ctdemo.io.pictures import PICTURE_SIGNATURES, decode_picture, picture_size

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", *DICOM_EXTENSIONS)


def is_dicom(data: bytes, filename: str | None = None) -> bool:
    """Content decides: the DICM magic means DICOM and a picture's signature means a picture,
    whatever the name; only a file with neither is taken for DICOM by its extension (a DICOM
    dataset written without its preamble)."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if data.startswith(PICTURE_SIGNATURES):
        return False
    return bool(filename) and filename.lower().endswith(DICOM_EXTENSIONS)


def read_slice_file(path: str | os.PathLike) -> bytes:
    """The bytes of a file offered as a slice. Only a regular file is read (a FIFO would wait
    forever, /dev/zero never ends), and only as many bytes as it holds when opened, plus one:
    never more than MAX_FILE_BYTES + 1, and never a read buffer of that size for a small file."""
    try:
        _check_regular(os.stat(path).st_mode)
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise UnreadableFileError("No such file.") from None
    except OSError as error:
        raise UnreadableFileError(f"Could not be read ({error.strerror}).") from None
    with os.fdopen(descriptor, "rb") as stream:
        status = os.fstat(stream.fileno())
        _check_regular(status.st_mode)  # it may have been swapped since the stat above
        check_file_size(status.st_size)
        data = stream.read(status.st_size + 1)  # a buffer of its size: +1 sees it grow
    check_file_size(len(data))
    return data


def _check_regular(mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise UnreadableFileError("This is a folder, not a file.")
    if not stat.S_ISREG(mode):
        raise UnreadableFileError(
            "This is not a regular file (it is a pipe, a device or a socket); "
            "give the path of an image or DICOM file."
        )


def declared_pixels(data: bytes, filename: str | None = None) -> int:
    """Width x height that a file's header declares, read without decoding its pixels: what
    decoding it will cost. 0 when `decode_slice` refuses the file from its header alone
    (unreadable, empty, too large, a strip), so that it costs no budget."""
    if not data or len(data) > MAX_FILE_BYTES:
        return 0
    try:
        width, height = dicom_size(data) if is_dicom(data, filename) else picture_size(data)
        check_dimensions(width, height)
    except Exception:  # decoding will say what is wrong with it
        return 0
    return width * height


def decode_slice(
    data: bytes, filename: str | None = None, window: Window = LUNG_WINDOW
) -> DecodedSlice:
    """Decode one slice from the bytes of an image or DICOM file.

    Raises a `SliceError` subclass with a message a person understands for anything that is
    not a single readable 2-D image of acceptable size.
    """
    if not data:
        raise EmptyFileError("The file is empty (0 bytes).")
    check_file_size(len(data))
    if is_dicom(data, filename):
        return decode_dicom(data, window)
    return decode_picture(data)


def pad_to_square(pixels: np.ndarray) -> np.ndarray:
    """Centre a slice on a square canvas filled with the median of its outer edge."""
    height, width = pixels.shape
    side = max(height, width)
    if height == width:
        return pixels
    pixels = np.asarray(pixels, dtype=np.float32)
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    top, left = (side - height) // 2, (side - width) // 2
    bottom, right = side - height - top, side - width - left
    fill = float(np.median(edge))  # the float32 median, exactly
    return cv2.copyMakeBorder(pixels, top, bottom, left, right, cv2.BORDER_CONSTANT, value=fill)


def to_model_input(
    pixels: np.ndarray, size: int, channels: int = 1, body_crop: bool = True
) -> np.ndarray:
    """A grey slice in [0, 1] to a float32 (size, size, channels) model input: cut to the body
    (`body_crop=False` only to measure what the cut changes), padded to a square, resized.

    A slice over MAX_DECODED_SIDE (only an array that did not come from `decode_slice`) is
    reduced to it first, so that the square it is padded to is never larger than that."""
    bounded = fit_within(pixels.astype(np.float32, copy=False))
    square = pad_to_square(crop_to_body(bounded) if body_crop else bounded)
    interpolation = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR
    resized = cv2.resize(square, (size, size), interpolation=interpolation)
    resized = np.clip(resized, 0.0, 1.0)[..., np.newaxis]
    if channels != 1:
        resized = np.repeat(resized, channels, axis=-1)
    return resized.astype(np.float32, copy=False)
