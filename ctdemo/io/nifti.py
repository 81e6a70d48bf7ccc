"""NIfTI-1 and NIfTI-2 files (.nii, .nii.gz) to a `Volume`, through nibabel's header classes.

Orientation: the voxel axes are brought to the closest of L, P, S (DICOM's patient axes) with
`nibabel.orientations`, as `as_closest_canonical` does for RAS, but by flips and transposes of
the stored integers (views), never a float copy of the volume. Slice k is then the k-th axial
plane from the feet, seen from the feet: the patient's right on the image's left, anterior at
the top, as `ctdemo.io.series` shows a DICOM series. Values are scaled by scl_slope/scl_inter
(Hounsfield units when the file stores them), then the lung window, as for DICOM.

Bounds: the header is read first and every size it declares is checked; then exactly the image
data it declares is inflated into one array allocated once, so a .nii.gz that inflates to
gigabytes costs what its header declared (at most `VolumeLimits.max_data_bytes`), no more.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from typing import BinaryIO

import nibabel
import numpy as np
from nibabel.orientations import (
    aff2axcodes,
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from ctdemo.io.decoded import SliceError, quiet
from ctdemo.io.dicom import HU_LIMIT, LUNG_WINDOW, MAX_RESCALE_SLOPE
from ctdemo.io.limits import check_dimensions
from ctdemo.io.volumes import (
    VOLUME_LIMITS,
    Volume,
    VolumeError,
    VolumeLimits,
    check_volume_size,
    stored_shape,
    stored_slice,
)

NIFTI_EXTENSIONS = (".nii", ".nii.gz")
GZIP_MAGIC = b"\x1f\x8b"
VIEW_AXES = ("L", "P", "S")
MAX_HEADER_BYTES = 2**20
"""Header and extensions before the image data (vox_offset): a header is 348 or 540 bytes."""
_HEADERS = {348: nibabel.Nifti1Header, 540: nibabel.Nifti2Header}


def is_nifti(data_start: bytes, name: str) -> bool:
    """A NIfTI file by its name (.nii, .nii.gz); `data_start` (its first bytes) must then be a
    gzip stream or a NIfTI header."""
    if not name.lower().endswith(NIFTI_EXTENSIONS):
        return False
    return data_start.startswith(GZIP_MAGIC) or _header_size(data_start[:4]) in _HEADERS


def read_nifti(stream: BinaryIO, name: str, limits: VolumeLimits = VOLUME_LIMITS) -> Volume:
    """The volume in a NIfTI file (plain or gzipped), read from `stream`."""
    try:
        with quiet():
            return _read(stream, name, limits)
    except (VolumeError, MemoryError):
        raise
    except (OSError, EOFError, zlib.error) as error:
        raise VolumeError(f"This NIfTI file is damaged ({error}).") from None
    except Exception as error:  # nibabel raises several types on a bad header
        raise VolumeError(
            f"This NIfTI header could not be read ({type(error).__name__}: {error})."
        ) from None


def _read(stream: BinaryIO, name: str, limits: VolumeLimits) -> Volume:
    magic = stream.read(2)
    stream.seek(-len(magic), 1)
    source = gzip.GzipFile(fileobj=stream, mode="rb") if magic == GZIP_MAGIC else stream
    header, consumed = _read_header(source)
    shape, dtype = _declared(header)
    transform, affine, notes = _orientation(header, shape)
    width, height, slices = (
        np.broadcast_to(np.uint8(0), shape).transpose(_axes(transform)).shape
    )  # the shape once turned, from a view of nothing
    _check_sizes(slices, width, height, dtype, limits)
    _skip(source, int(header["vox_offset"]) - consumed)
    stored = _read_exactly(source, int(np.prod(shape)) * dtype.itemsize)
    volume = apply_orientation(stored.view(dtype).reshape(shape, order="F"), transform)
    pixels, lowest = _window(volume, *_slope_inter(header))
    del stored, volume
    if lowest >= 0:
        notes += (
            "No value is below 0: the file may not store Hounsfield units (air is -1000 HU), "
            "and the lung window may then show it wrongly.",
        )
    if affine is None:
        positions, spacing = None, None
        orientation = "slices along the file's third axis, as stored"
    else:
        turned = affine @ inv_ornt_aff(transform, shape)
        positions, spacing = _geometry(turned, (height, width), pixels.shape)
        source_axes = "".join(str(code) for code in aff2axcodes(affine))
        orientation = f"axial slices turned from {source_axes} to LPS, feet to head"
    return Volume(name, pixels, positions, spacing, orientation, "NIfTI", notes)


def _header_size(first: bytes) -> int:
    if len(first) < 4:
        return 0
    little, big = struct.unpack("<i", first)[0], struct.unpack(">i", first)[0]
    return little if little in _HEADERS else big


def _read_header(source: BinaryIO):
    """(the NIfTI header, bytes read): refuses what is not a single-file NIfTI."""
    first = _read_exactly(source, 4).tobytes()
    size = _header_size(first)
    if size not in _HEADERS:
        raise VolumeError(
            "This file is not a NIfTI volume (its header size is neither 348 nor 540)."
        )
    block = first + _read_exactly(source, size - 4).tobytes()
    header = _HEADERS[size](binaryblock=block, check=False)
    if bytes(header["magic"]).rstrip(b"\0") not in (b"n+1", b"n+2"):
        raise VolumeError(
            "This NIfTI header does not hold its image (a .hdr/.img pair, or not NIfTI): "
            "convert it to a single .nii or .nii.gz file."
        )
    return header, size


def _declared(header) -> tuple[tuple[int, int, int], np.dtype]:
    """The three spatial dimensions and the voxel type the header declares, checked."""
    shape = tuple(int(n) for n in header.get_data_shape())
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        raise VolumeError(
            f"This NIfTI file holds {int(np.prod(shape[3:]))} volumes ({shape}); "
            "upload one CT volume."
        )
    shape = (*shape, 1, 1)[:3] if len(shape) < 3 else shape[:3]
    if min(shape) < 1:
        raise VolumeError(f"This NIfTI header declares no voxels ({shape}).")
    dtype = header.get_data_dtype()
    if dtype.kind not in "iuf" or dtype.itemsize > 8 or dtype.fields:
        raise VolumeError(
            f"This NIfTI file stores {dtype} voxels; a CT volume stores grey numbers "
            "(integers or floats)."
        )
    return shape, dtype


def _orientation(header, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None, tuple]:
    """(the transform to LPS, the file's affine or None when unusable, notes)."""
    affine = header.get_best_affine()
    usable = np.isfinite(affine).all() and abs(np.linalg.det(affine[:3, :3])) > 1e-9
    if not usable:
        note = "The file's orientation is unusable (NaN or zero spacing): slices are as stored."
        return np.array([[0, 1], [1, 1], [2, 1]]), None, (note,)
    return ornt_transform(io_orientation(affine), axcodes2ornt(VIEW_AXES)), affine, ()


def _axes(transform: np.ndarray) -> list[int]:
    """The transpose `apply_orientation` makes for `transform`."""
    return list(np.argsort(transform[:, 0]))


def _check_sizes(slices: int, width: int, height: int, dtype: np.dtype, limits: VolumeLimits):
    try:
        check_dimensions(width, height)
    except SliceError as error:
        raise VolumeError(f"Its axial slices are unusable: {error}") from None
    check_volume_size(slices, width, height, limits)
    size = slices * width * height * dtype.itemsize
    if size > limits.max_data_bytes:
        raise VolumeError(
            f"Its image data is {size / 2**20:,.0f} MB ({dtype} voxels); at most "
            f"{limits.max_data_bytes // 2**20} MB are read. Save it as int16 Hounsfield units."
        )


def _skip(source: BinaryIO, count: int) -> None:
    """Skip the header extensions up to the image data (vox_offset)."""
    if count < 0 or count > MAX_HEADER_BYTES:
        raise VolumeError(f"This NIfTI header puts its image data at an odd place ({count} bytes).")
    _read_exactly(source, count)


def _read_exactly(source: BinaryIO, count: int) -> np.ndarray:
    """Exactly `count` bytes into one array allocated once (a gzip stream is inflated only
    that far), or a VolumeError when the file ends first."""
    buffer = np.empty(count, dtype=np.uint8)
    view, filled = memoryview(buffer), 0
    while filled < count:
        got = source.readinto(view[filled : filled + 2**24])
        if not got:
            raise VolumeError(
                f"This NIfTI file ends after {filled:,} of the {count:,} bytes its header "
                "declares (a broken download?)."
            )
        filled += got
    return buffer


def _slope_inter(header) -> tuple[float, float]:
    slope, inter = header.get_slope_inter()
    slope = 1.0 if slope is None else float(slope)
    inter = 0.0 if inter is None else float(inter)
    if not (np.isfinite(slope) and np.isfinite(inter)) or abs(slope) > MAX_RESCALE_SLOPE:
        raise VolumeError(f"Its scaling (scl_slope {slope:g}, scl_inter {inter:g}) is unusable.")
    if abs(inter) > HU_LIMIT:
        raise VolumeError(f"Its scl_inter ({inter:g}) is far outside any CT range.")
    return slope, inter


def _window(volume: np.ndarray, slope: float, inter: float) -> tuple[np.ndarray, float]:
    """Every axial plane as a stored slice (HU, lung window), and the lowest HU seen."""
    width, height, slices = volume.shape
    pixels = np.empty((slices, *stored_shape(width, height)), dtype=np.uint8)
    lowest = np.inf
    for index in range(slices):
        hu = volume[:, :, index].T.astype(np.float32) * np.float32(slope) + np.float32(inter)
        if not np.isfinite(hu).all() or float(np.abs(hu).max()) > HU_LIMIT:
            raise VolumeError(
                f"Slice {index} holds values that are not numbers or far outside any CT range."
            )
        lowest = min(lowest, float(hu.min()))
        pixels[index] = stored_slice(LUNG_WINDOW.apply(hu))
    return pixels, lowest


def _geometry(
    turned: np.ndarray, plane: tuple[int, int], stored: tuple[int, ...]
) -> tuple[tuple[float, ...], tuple[float, float, float]]:
    """(slice positions in mm, feet to head; (between slices, rows, columns) in mm of the
    stored slices) from the affine of the turned voxel axes."""
    positions = tuple(float((turned @ [0, 0, k, 1])[2]) for k in range(stored[0]))
    columns_mm, rows_mm, gap = np.linalg.norm(turned[:3, :3], axis=0)
    scale_rows, scale_columns = plane[0] / stored[1], plane[1] / stored[2]
    return positions, (float(gap), float(rows_mm * scale_rows), float(columns_mm * scale_columns))
