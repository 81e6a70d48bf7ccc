"""Bytes to a validated grey CT slice, and that slice to model input.

Every image that reaches a model goes through `decode_slice` and then `to_model_input`:
training, inference, the CLI and the tests share this one path.

Scaling to [0, 1]:
- 8-bit images (and palette, 1-bit, RGB, RGBA, CMYK) are divided by 255; colour is turned into
  luma (ITU-R 601) and transparent pixels are composited over black.
- 16-bit, 32-bit and float images have no agreed range, so they are min-max stretched.
- DICOM pixel data is turned into Hounsfield units with RescaleSlope/RescaleIntercept, then
  a window (default: lung, width 1500, level -600) maps [level - width/2, level + width/2] to
  [0, 1]. Rescaled values are HU whatever the photometric interpretation (which concerns
  display only), so a MONOCHROME1 slice with rescale tags is not inverted: air stays black, as
  in the training slices. Without rescale tags, MONOCHROME1 is inverted around the stored bit
  range (BitsStored), never around the slice's own extremes.

Size: what one file makes us allocate is bounded by what we allocate, not by what it declares.
A slice must be at most MAX_PIXELS and at most MAX_ASPECT:1; a larger one is reduced (aspect
kept, area averaging, in Pillow's integer modes or on the stored DICOM values) to at most
MAX_DECODED_SIDE a side before it becomes float32. Small slices (every training slice) are
decoded exactly as before, bit for bit.

Aspect: a slice is never stretched. It is padded to a square with the median of its outer edge
(the scan's own background), centred, then resized (area interpolation when shrinking).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import secrets
import stat
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageChops, ImageOps, UnidentifiedImageError

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

MAX_INFLATED_BYTES = MAX_FILE_BYTES
"""Largest size a Deflated Explicit VR Little Endian DICOM dataset may inflate to: what an
uncompressed file may hold. pydicom inflates the whole dataset at once, so it is checked first."""

MAX_PIXEL_DATA_BYTES = 2 * MAX_PIXELS
"""Largest decoded pixel data accepted from a DICOM header (rows x columns x samples x bytes per
sample): a 25-megapixel slice at 16 bits. Decoders allocate this before reading a byte."""

MAX_RESCALE_SLOPE = 100.0
"""Largest RescaleSlope accepted. CT slopes are 1 (sometimes 0.5 or 2)."""

HU_LIMIT = 100_000.0
"""Largest magnitude, in HU, of a RescaleIntercept and of any rescaled pixel. CT values lie
between -1024 and about 3071 HU (about 30,000 on an extended scale for metal); past this a
value is a wrong tag, not tissue."""

DICOM_EXTENSIONS = (".dcm", ".dicom")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", *DICOM_EXTENSIONS)
PICTURE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF")
"""The Pillow formats we open, so that no other plugin (Ghostscript's EPS, say) is ever reached."""
PICTURE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
PICTURE_SIGNATURES += (b"II*\x00", b"MM\x00*")
DEFLATED_DICOM = "1.2.840.10008.1.2.1.99"

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


class AspectRatioError(SliceError):
    pass


class UnreadableFileError(SliceError):
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
    # PatientID / StudyInstanceUID as keyed digests, never the IDs themselves: equal IDs give
    # equal digests in this process (so a patient's slices stay together), and the key is
    # made afresh in each process and never stored, so no digest can be traced back to an ID.
    dicom_groups: dict[str, str] = field(default_factory=dict)


_PSEUDONYM_KEY = secrets.token_bytes(32)
_QUIET = threading.RLock()
_PYDICOM_LOGGER = logging.getLogger("pydicom")


def is_dicom(data: bytes, filename: str | None = None) -> bool:
    """Content decides: the DICM magic means DICOM and a picture's signature means a picture,
    whatever the name; only a file with neither is taken for DICOM by its extension (a DICOM
    dataset written without its preamble)."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if data.startswith(PICTURE_SIGNATURES):
        return False
    return bool(filename) and filename.lower().endswith(DICOM_EXTENSIONS)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
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


def read_slice_file(path: str | os.PathLike) -> bytes:
    """The bytes of a file offered as a slice. Only a regular file is read (a FIFO would wait
    forever, /dev/zero never ends), and never more than MAX_FILE_BYTES + 1 bytes of it."""
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
        _check_file_size(status.st_size)
        data = stream.read(MAX_FILE_BYTES + 1)
    _check_file_size(len(data))
    return data


def _check_regular(mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise UnreadableFileError("This is a folder, not a file.")
    if not stat.S_ISREG(mode):
        raise UnreadableFileError(
            "This is not a regular file (it is a pipe, a device or a socket); "
            "give the path of an image or DICOM file."
        )


def _check_file_size(size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise ImageTooLargeError(
            f"The file is {size / 2**20:.0f} MB; slices over "
            f"{MAX_FILE_BYTES // 2**20} MB are refused."
        )


def declared_pixels(data: bytes, filename: str | None = None) -> int:
    """Width x height that a file's header declares, read without decoding its pixels: what
    decoding it will cost. 0 when `decode_slice` refuses the file from its header alone
    (unreadable, empty, too large, a strip), so that it costs no budget."""
    if not data or len(data) > MAX_FILE_BYTES:
        return 0
    try:
        if is_dicom(data, filename):
            with _quiet():
                dataset = _dcmread(data, stop_before_pixels=True)
                width, height = int(dataset.get("Columns", 0)), int(dataset.get("Rows", 0))
        else:
            with _open_picture(data) as image:
                width, height = image.size
        _check_dimensions(width, height)
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
    _check_file_size(len(data))
    if is_dicom(data, filename):
        return _decode_dicom(data, window)
    return _decode_picture(data)


def _check_dimensions(width: int, height: int) -> None:
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


def _fitted_size(width: int, height: int, side: int = MAX_DECODED_SIDE) -> tuple[int, int]:
    """(width, height) shrunk, aspect kept, so that neither exceeds `side`."""
    longest = max(width, height)
    if longest <= side:
        return width, height
    return max(1, round(width * side / longest)), max(1, round(height * side / longest))


def fit_within(pixels: np.ndarray, side: int = MAX_DECODED_SIDE) -> np.ndarray:
    """A 2-D array area-averaged, aspect kept, to at most `side` a side; itself if it fits."""
    height, width = pixels.shape
    target = _fitted_size(width, height, side)
    if target == (width, height):
        return pixels
    return cv2.resize(pixels, target, interpolation=cv2.INTER_AREA)


def _open_picture(data: bytes) -> Image.Image:
    """Pillow's lazy open (the header only), limited to PICTURE_FORMATS."""
    try:
        with _quiet():
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


def _decode_picture(data: bytes) -> DecodedSlice:
    with _open_picture(data) as image:
        _check_dimensions(*image.size)
        if getattr(image, "n_frames", 1) > 1:
            raise MultiFrameError(
                f"The file holds {image.n_frames} frames (an animation or a stack); "
                "upload one slice per file."
            )
        source_format = image.format or "image"
        _load(image, source_format)
        pixels = _to_grey_unit(_shrunk(_upright(image)))
    return DecodedSlice(pixels=pixels, source_format=source_format)


def _load(image: Image.Image, source_format: str) -> None:
    """Decode the pixels; a JPEG at 1/2, 1/4 or 1/8 scale where that still covers
    MAX_DECODED_SIDE (Pillow's draft, which the other formats ignore)."""
    target = _fitted_size(*image.size)
    try:
        if target != image.size:
            image.draft("L" if image.mode == "RGB" else image.mode, target)
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


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF Orientation tag says (cameras store rotated photos so);
    copied only when the tag asks for a turn."""
    with _quiet():
        try:
            if image.getexif().get(ExifTags.Base.Orientation, 1) not in range(2, 9):
                return image
            return ImageOps.exif_transpose(image)
        except Exception:  # damaged EXIF: the pixels as stored
            return image


def _shrunk(image: Image.Image) -> Image.Image:
    """An image over MAX_DECODED_SIDE area-averaged down to it in Pillow, aspect kept, once in
    the smallest mode that keeps what `_to_grey_unit` reads of it; any other image as it is."""
    target = _fitted_size(*image.size)
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
    with _quiet():
        dataset = _dcmread(data)
        _check_dicom_image(dataset)
        slope, intercept, rescaled = _rescale(dataset)
        stored = _stored_pixels(dataset)
        monochrome1 = str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1"
        bounds = _stored_bounds(dataset) if monochrome1 and not rescaled else None
        tags, groups = _safe_tags(dataset), _pseudonyms(dataset)
    values = _shrunk_values(stored)
    del stored, dataset
    if bounds is not None:  # MONOCHROME1 without rescale tags: high stored values are dark
        values = np.float32(sum(bounds)) - values.astype(np.float32)
    hu = values.astype(np.float32) * slope + intercept
    if not np.all(np.isfinite(hu)) or (hu.size and float(np.abs(hu).max()) > HU_LIMIT):
        raise _outside_ct_range(slope, intercept)
    return DecodedSlice(
        pixels=window.apply(hu), source_format="DICOM", dicom_tags=tags, dicom_groups=groups
    )


def _dcmread(data: bytes, stop_before_pixels: bool = False):
    import pydicom  # imported here: most uploads are pictures
    from pydicom.errors import InvalidDicomError

    try:
        _check_inflated_size(data)
        return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)
    except SliceError:
        raise
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError) as error:
        raise DicomError(f"This DICOM file could not be read ({error}).") from None
    except zlib.error:
        raise DicomError("This DICOM file is deflated, and its deflated data is damaged.") from None


def _check_inflated_size(data: bytes) -> None:
    """Refuse a deflated DICOM whose dataset inflates past MAX_INFLATED_BYTES before pydicom
    inflates it whole: a 1 MB file could otherwise ask for gigabytes."""
    # private, but pydicom has no public way to read the file meta of a buffer
    from pydicom.filereader import _read_file_meta_info, read_preamble

    stream = io.BytesIO(data)
    read_preamble(stream, force=True)
    if _read_file_meta_info(stream).get("TransferSyntaxUID") != DEFLATED_DICOM:
        return
    if _inflated_size(memoryview(data)[stream.tell() :], MAX_INFLATED_BYTES) > MAX_INFLATED_BYTES:
        raise DicomError(
            f"This deflated DICOM file inflates to more than {MAX_INFLATED_BYTES // 2**20} MB, "
            "more than any slice needs, so it is refused. Export the slice uncompressed."
        )


def _inflated_size(stream: bytes | memoryview, limit: int, step: int = 16 * 2**20) -> int:
    """Bytes a raw deflate stream inflates to, counted up to just past `limit` in steps that
    never hold more than `step` bytes of output."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = len(inflater.decompress(stream, step))
    while total <= limit and inflater.unconsumed_tail:
        total += len(inflater.decompress(inflater.unconsumed_tail, step))
    return total


def _check_dicom_image(dataset) -> None:
    """Refuse, from the header alone, what is not one slice of acceptable size."""
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
    rows, columns = int(getattr(dataset, "Rows", 0)), int(getattr(dataset, "Columns", 0))
    _check_dimensions(columns, rows)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    bits = int(dataset.get("BitsAllocated", 16) or 16)
    if rows * columns * samples * -(-bits // 8) > MAX_PIXEL_DATA_BYTES:
        raise ImageTooLargeError(
            f"This DICOM slice's pixel data ({columns} x {rows}, {samples} sample(s) of "
            f"{bits} bits) would take over {MAX_PIXEL_DATA_BYTES // 10**6} MB to decode; "
            "a CT slice is grey, 16 bits and about 512 x 512."
        )


def _rescale(dataset) -> tuple[float, float, bool]:
    """(slope, intercept, whether the file has rescale tags): plausible for CT, or refused."""
    try:
        raw_slope, raw_intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
        # An absent or empty tag takes its default; a present 0 must stay 0 (and be refused).
        slope = _number_or(raw_slope, 1.0)
        intercept = _number_or(raw_intercept, 0.0)
    except (TypeError, ValueError):
        raise DicomError("The RescaleSlope or RescaleIntercept tag is not a number.") from None
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
        raise DicomError(f"The rescale tags are unusable (slope {slope}, intercept {intercept}).")
    if abs(slope) > MAX_RESCALE_SLOPE or abs(intercept) > HU_LIMIT:
        raise _outside_ct_range(slope, intercept)
    return slope, intercept, not (_is_blank(raw_slope) and _is_blank(raw_intercept))


def _outside_ct_range(slope: float, intercept: float) -> DicomError:
    return DicomError(
        f"The rescale tags (slope {slope:g}, intercept {intercept:g}) give pixel values far "
        f"outside any CT range (within {HU_LIMIT:,.0f} HU of 0): the file's RescaleSlope or "
        "RescaleIntercept is wrong."
    )


def _is_blank(value) -> bool:
    return value is None or str(value).strip() == ""


def _number_or(value, default: float) -> float:
    return default if _is_blank(value) else float(value)


def _stored_pixels(dataset) -> np.ndarray:
    _check_frame_size(dataset)
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
    return stored


def _check_frame_size(dataset) -> None:
    """A compressed frame must declare the size the DICOM header does: Pillow decodes a JPEG or
    JPEG 2000 frame at the size in its own header, whatever Rows and Columns say."""
    from pydicom.encaps import get_frame

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not getattr(syntax, "is_compressed", False):
        return
    try:
        frame = get_frame(dataset.PixelData, 0, number_of_frames=1)
        with Image.open(io.BytesIO(frame), formats=("JPEG", "JPEG2000")) as codestream:
            declared = codestream.size
    except Exception:  # not a JPEG frame (RLE), or damaged: the decoder will say
        return
    expected = (int(dataset.Columns), int(dataset.Rows))
    if declared != expected:
        raise DicomError(
            f"The compressed image in this DICOM file is {declared[0]} x {declared[1]} pixels, "
            f"but its header says {expected[0]} x {expected[1]}: the file is inconsistent. "
            "Export the slice again."
        )


def _stored_bounds(dataset) -> tuple[int, int]:
    """The smallest and largest value BitsStored and PixelRepresentation allow."""
    bits = min(max(int(dataset.get("BitsStored") or dataset.get("BitsAllocated") or 16), 1), 32)
    if int(dataset.get("PixelRepresentation") or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


_CV_AREA_TYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16))
_CV_AREA_TYPES += (np.dtype(np.float32), np.dtype(np.float64))


def _shrunk_values(stored: np.ndarray) -> np.ndarray:
    """Stored values reduced to MAX_DECODED_SIDE before any float32 copy of them is made
    (OpenCV averages 8- and 16-bit integers as they are; other types go through float32)."""
    if max(stored.shape) > MAX_DECODED_SIDE and stored.dtype not in _CV_AREA_TYPES:
        stored = stored.astype(np.float32)
    return fit_within(stored)


def _safe_tags(dataset) -> dict[str, str]:
    tags = {}
    for key in SAFE_DICOM_TAGS:
        value = dataset.get(key)
        if value not in (None, ""):
            tags[key] = str(value)
    return tags


def _pseudonyms(dataset) -> dict[str, str]:
    """PatientID and StudyInstanceUID as keyed digests (see `DecodedSlice.dicom_groups`)."""
    groups = {}
    for key in ("PatientID", "StudyInstanceUID"):
        value = dataset.get(key)
        if value not in (None, ""):
            text = f"{key}={value}".encode(errors="backslashreplace")
            groups[key] = hashlib.blake2b(text, key=_PSEUDONYM_KEY, digest_size=16).hexdigest()
    return groups


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
    """A grey slice in [0, 1] to a float32 (size, size, channels) model input.

    A slice over MAX_DECODED_SIDE (only an array that did not come from `decode_slice`) is
    reduced to it first, so that the square it is padded to is never larger than that."""
    square = pad_to_square(fit_within(pixels.astype(np.float32, copy=False)))
    interpolation = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR
    resized = cv2.resize(square, (size, size), interpolation=interpolation)
    resized = np.clip(resized, 0.0, 1.0)[..., np.newaxis]
    if channels != 1:
        resized = np.repeat(resized, channels, axis=-1)
    return resized.astype(np.float32, copy=False)
