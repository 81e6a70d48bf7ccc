"""DICOM bytes to a grey slice: Hounsfield units and a display window, bounded against hostile
headers, with the acquisition tags we may show and the patient as a keyed digest.

Pixel data is turned into Hounsfield units with RescaleSlope/RescaleIntercept, then a window
(default: lung, width 1500, level -600) maps [level - width/2, level + width/2] to [0, 1].
Rescaled values are HU whatever the photometric interpretation (which concerns display only),
so a MONOCHROME1 slice with rescale tags is not inverted: air stays black, as in the training
slices. Without rescale tags, MONOCHROME1 is inverted around the stored bit range (BitsStored),
never around the slice's own extremes. A slice over MAX_DECODED_SIDE is reduced on its stored
values, before any float32 copy of them.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ctdemo.io.decoded import (
    DecodedSlice,
    DicomError,
    ImageTooLargeError,
    MultiFrameError,
    SliceError,
    quiet,
)
from ctdemo.io.limits import (
    MAX_DECODED_SIDE,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    check_dimensions,
    fit_within,
)

DICOM_EXTENSIONS = (".dcm", ".dicom")
DEFLATED_DICOM = "1.2.840.10008.1.2.1.99"

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

_PSEUDONYM_KEY = secrets.token_bytes(32)


def dicom_size(data: bytes) -> tuple[int, int]:
    """(width, height) that a DICOM header declares, read without its pixel data."""
    with quiet():
        dataset = _dcmread(data, stop_before_pixels=True)
        return int(dataset.get("Columns", 0)), int(dataset.get("Rows", 0))


def dicom_header(data: bytes):
    """A DICOM file's dataset without its pixel data, read within `decode_dicom`'s bounds (a
    deflated file is measured before it is inflated). Raises DicomError."""
    with quiet():
        return _dcmread(data, stop_before_pixels=True)


def decode_dicom(data: bytes, window: Window) -> DecodedSlice:
    try:
        return _read_dicom(data, window)
    except SliceError:
        raise
    except Exception as error:  # pydicom raises many types on damaged elements, lazily
        raise DicomError(
            f"This DICOM file is damaged and could not be read ({type(error).__name__}: {error})."
        ) from None


def _read_dicom(data: bytes, window: Window) -> DecodedSlice:
    with quiet():
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
    check_dimensions(columns, rows)
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
