"""Bytes to a validated grey CT slice, and that slice to model input.

Every image that reaches a model goes through `decode_slice` and then `to_model_input`:
training, inference, the CLI and the tests share this one path.

Scaling to [0, 1]:
- 8-bit images (and palette, 1-bit, RGB, RGBA, CMYK) are divided by 255; colour is turned into
  luma (ITU-R 601) and transparent pixels are composited over black.
- 16-bit, 32-bit and float images have no agreed range, so they are min-max stretched.
- DICOM pixel data is turned into Hounsfield units with RescaleSlope/RescaleIntercept, then
  a window (default: lung, width 1500, level -600) maps [level - width/2, level + width/2] to
  [0, 1]; MONOCHROME1 is inverted first.

Aspect: a slice is never stretched. It is padded to a square with the median of its outer edge
(the scan's own background), centred, then resized (area interpolation when shrinking).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 25_000_000
"""Largest slice accepted (width x height). Guards against decompression bombs: a CT slice is
512 x 512, and 25 megapixels already needs 100 MB as float32."""

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest file accepted, before any decoding."""

DICOM_EXTENSIONS = (".dcm", ".dicom")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", *DICOM_EXTENSIONS)

# Pillow raises its own DecompressionBombError above twice this; we check sizes ourselves first.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


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


@dataclass(frozen=True)
class Window:
    """A CT display window in Hounsfield units."""

    width: float
    level: float

    def apply(self, hu: np.ndarray) -> np.ndarray:
        low = self.level - self.width / 2
        return np.clip((hu - low) / self.width, 0.0, 1.0).astype(np.float32)


LUNG_WINDOW = Window(width=1500, level=-600)
MEDIASTINUM_WINDOW = Window(width=350, level=50)

SAFE_DICOM_TAGS = (
    "Modality",
    "Manufacturer",
    "SliceThickness",
    "PixelSpacing",
    "KVP",
    "ConvolutionKernel",
    "Rows",
    "Columns",
)
"""Acquisition tags we may show. Never the patient's name, ID or birth date."""


@dataclass
class DecodedSlice:
    """A grey slice in [0, 1] with what is known of where it came from."""

    pixels: np.ndarray  # float32, (height, width), values in [0, 1]
    source_format: str  # "PNG", "JPEG", "DICOM", ...
    dicom_tags: dict[str, str] = field(default_factory=dict)
    dicom_groups: dict[str, str] = field(default_factory=dict)  # PatientID / StudyInstanceUID


def is_dicom(data: bytes, filename: str | None = None) -> bool:
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    return bool(filename) and filename.lower().endswith(DICOM_EXTENSIONS)


def decode_slice(
    data: bytes, filename: str | None = None, window: Window = LUNG_WINDOW
) -> DecodedSlice:
    """Decode one slice from the bytes of an image or DICOM file.

    Raises a `SliceError` subclass with a message a person understands for anything that is
    not a single readable 2-D image of acceptable size.
    """
    if not data:
        raise EmptyFileError("The file is empty (0 bytes).")
    if len(data) > MAX_FILE_BYTES:
        raise ImageTooLargeError(
            f"The file is {len(data) / 2**20:.0f} MB; slices over "
            f"{MAX_FILE_BYTES // 2**20} MB are refused."
        )
    if is_dicom(data, filename):
        return _decode_dicom(data, window)
    return _decode_picture(data)


def _check_pixel_count(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise NotAnImageError(f"The image has no pixels ({width} x {height}).")
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            f"The image is {width} x {height} pixels; images over "
            f"{MAX_PIXELS / 1e6:.0f} megapixels are refused (a CT slice is about 512 x 512)."
        )


def _decode_picture(data: bytes) -> DecodedSlice:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombWarning) as error:
        if isinstance(error, Image.DecompressionBombWarning):
            raise ImageTooLargeError(
                "The image declares more pixels than is safe to decode."
            ) from None
        raise NotAnImageError(
            "This file is not an image we can read (PNG, JPEG, BMP, TIFF or DICOM)."
        ) from None
    except Image.DecompressionBombError:
        raise ImageTooLargeError("The image declares more pixels than is safe to decode.") from None
    except Exception as error:  # Pillow raises many types on hostile headers
        raise NotAnImageError(f"This file could not be read as an image ({error}).") from None

    with image:
        _check_pixel_count(*image.size)
        if getattr(image, "n_frames", 1) > 1:
            raise MultiFrameError(
                f"The file holds {image.n_frames} frames (an animation or a stack); "
                "upload one slice per file."
            )
        source_format = image.format or "image"
        try:
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
        pixels = _to_grey_unit(image)
    return DecodedSlice(pixels=pixels, source_format=source_format)


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
    return np.asarray(image, dtype=np.float32) * np.float32(1 / 255)


def _min_max(values: np.ndarray) -> np.ndarray:
    # float64: in float32, (value - low) overflows to inf for ranges near float32's limit
    finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(finite.shape, dtype=np.float32)
    return ((finite - low) / (high - low)).astype(np.float32)


def _decode_dicom(data: bytes, window: Window) -> DecodedSlice:
    try:
        return _read_dicom(data, window)
    except SliceError:
        raise
    except Exception as error:  # pydicom raises many types on damaged elements, lazily
        raise DicomError(
            f"This DICOM file is damaged and could not be read ({type(error).__name__}: {error})."
        ) from None


def _read_dicom(data: bytes, window: Window) -> DecodedSlice:
    import pydicom  # imported here: most uploads are pictures
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError) as error:
        raise DicomError(f"This DICOM file could not be read ({error}).") from None
    if "PixelData" not in dataset:
        raise DicomError(
            "This DICOM file has no image in it (no PixelData): it may be a report or a "
            "directory file. Upload a CT image slice."
        )
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise MultiFrameError(
            f"This DICOM file is a volume of {frames} frames; upload one slice per file."
        )
    _check_pixel_count(int(getattr(dataset, "Columns", 0)), int(getattr(dataset, "Rows", 0)))
    try:
        stored = dataset.pixel_array
    except Exception:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or "an unknown transfer syntax"
        raise DicomError(
            f"The pixel data ({name}) could not be decoded: this server has no decoder for it, "
            "or the data is damaged. Export the slice uncompressed and try again."
        ) from None
    if stored.ndim != 2:
        raise DicomError(
            f"Expected one grey slice, found pixel data of shape {stored.shape} "
            "(colour or several frames)."
        )
    hu = _to_hounsfield(dataset, stored)
    if str(getattr(dataset, "PhotometricInterpretation", "")) == "MONOCHROME1":
        hu = hu.max() + hu.min() - hu
    if not np.all(np.isfinite(hu)):  # absurd rescale tags overflow float32
        raise DicomError("The rescale tags give pixel values far outside any CT range.")
    return DecodedSlice(
        pixels=window.apply(hu),
        source_format="DICOM",
        dicom_tags=_safe_tags(dataset),
        dicom_groups={
            key: str(dataset.get(key))
            for key in ("PatientID", "StudyInstanceUID")
            if dataset.get(key) not in (None, "")
        },
    )


def _to_hounsfield(dataset, stored: np.ndarray) -> np.ndarray:
    try:
        # An absent or empty tag takes its default; a present 0 must stay 0 (and be refused).
        slope = _number_or(dataset.get("RescaleSlope"), 1.0)
        intercept = _number_or(dataset.get("RescaleIntercept"), 0.0)
    except (TypeError, ValueError):
        raise DicomError("The RescaleSlope or RescaleIntercept tag is not a number.") from None
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
        raise DicomError(f"The rescale tags are unusable (slope {slope}, intercept {intercept}).")
    return stored.astype(np.float32) * slope + intercept


def _number_or(value, default: float) -> float:
    if value is None or str(value).strip() == "":
        return default
    return float(value)


def _safe_tags(dataset) -> dict[str, str]:
    tags = {}
    for key in SAFE_DICOM_TAGS:
        value = dataset.get(key)
        if value not in (None, ""):
            tags[key] = str(value)
    return tags


def pad_to_square(pixels: np.ndarray) -> np.ndarray:
    """Centre a slice on a square canvas filled with the median of its outer edge."""
    height, width = pixels.shape
    side = max(height, width)
    if height == width:
        return pixels
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    canvas = np.full((side, side), np.median(edge), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = pixels
    return canvas


def to_model_input(pixels: np.ndarray, size: int, channels: int = 1) -> np.ndarray:
    """A grey slice in [0, 1] to a float32 (size, size, channels) model input."""
    square = pad_to_square(pixels.astype(np.float32, copy=False))
    interpolation = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR
    resized = cv2.resize(square, (size, size), interpolation=interpolation)
    resized = np.clip(resized, 0.0, 1.0)[..., np.newaxis]
    if channels != 1:
        resized = np.repeat(resized, channels, axis=-1)
    return resized.astype(np.float32, copy=False)


def preprocess(
    data: bytes,
    size: int,
    channels: int = 1,
    filename: str | None = None,
    window: Window = LUNG_WINDOW,
) -> np.ndarray:
    """File bytes to model input: the one path shared by training and inference."""
    return to_model_input(decode_slice(data, filename, window).pixels, size, channels)
