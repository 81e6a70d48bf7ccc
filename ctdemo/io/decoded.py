"""What decoding a slice gives (`DecodedSlice`) and what it raises (`SliceError` and its kinds),
for the picture and DICOM decoders alike."""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


class SliceError(ValueError):
    """A file that cannot be used as a CT slice; the message is written for a person."""


class EmptyFileError(SliceError):
    pass


class NotAnImageError(SliceError):
    pass


class TruncatedImageError(SliceError):
    pass


class ImageTooLargeError(SliceError):
    pass


class MultiFrameError(SliceError):
    pass


class DicomError(SliceError):
    pass


class AspectRatioError(SliceError):
    pass


class UnreadableFileError(SliceError):
    pass


@dataclass
class DecodedSlice:
    """A grey slice in [0, 1] with what is known of where it came from."""

    pixels: np.ndarray  # float32, (height, width), values in [0, 1]
    source_format: str  # "PNG", "JPEG", "DICOM", ...
    dicom_tags: dict[str, str] = field(default_factory=dict)
    # PatientID / StudyInstanceUID as keyed digests, never the IDs themselves: equal IDs give
    # equal digests in this process (so a patient's slices stay together), and the key is
    # made afresh in each process and never stored, so no digest can be traced back to an ID.
    dicom_groups: dict[str, str] = field(default_factory=dict)
    # Of the file's (opaque) pixels, the fraction clearly coloured before the slice was made
    # grey: CT slices are grey, a photo or a screenshot is not (`ctdemo.io.pictures`).
    colour_fraction: float = 0.0


_QUIET = threading.RLock()
_PYDICOM_LOGGER = logging.getLogger("pydicom")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Drop the warnings and log lines Pillow and pydicom emit on odd files: the SliceError we
    raise explains, a CLI's stderr keeps its one line, and a warning can quote a tag's value.
    `catch_warnings` is process-wide state, so a lock keeps threads from interleaving it."""
    with _QUIET, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        disabled, _PYDICOM_LOGGER.disabled = _PYDICOM_LOGGER.disabled, True
        try:
            yield
        finally:
            _PYDICOM_LOGGER.disabled = disabled
