"""Whole scans: what reading a DICOM series or a NIfTI volume gives (`Volume`), what it refuses
(`VolumeError`, `RefusedSeries`) and the bounds on what one visitor's scan may make us allocate.

A volume's slices are stored as uint8 (the lung-windowed value times 255), at most
MAX_VOLUME_SIDE a side: a 300-slice 512 x 512 scan holds 79 MB, not the 315 MB of float32.
`Volume.slice(i)` gives one slice as float32 in [0, 1], as `decode_slice` does for a file.
The readers are `ctdemo.io.series` (DICOM) and `ctdemo.io.nifti`; `ctdemo.io.scans` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctdemo.io.limits import fit_within, fitted_size


class VolumeError(ValueError):
    """A scan, or one series of it, that cannot be read as a volume; the message is written for
    a person."""


@dataclass(frozen=True)
class VolumeLimits:
    """What one scan may make us allocate (see docs/volumes.md)."""

    max_slices: int = 1000
    """Slices in one volume: a thin-slice chest CT has 300 to 700."""
    max_voxels: int = 512 * 512 * 320
    """Voxels one upload (every series of it, or one NIfTI file) may declare: 320 slices of
    512 x 512, about 84 MB of stored slices."""
    max_data_bytes: int = 160 * 2**20
    """Bytes of a NIfTI file's image data, inflated: int16 at max_voxels. Only this much of a
    .nii.gz is ever inflated, whatever its stream holds."""
    max_files: int = 2000
    """Files in one DICOM upload (a folder or a zip)."""
    max_file_bytes: int = 320 * 2**20
    """A NIfTI file or a zip of DICOM files as read (compressed)."""
    max_unpacked_bytes: int = 1024 * 2**20
    """A zip of DICOM files unpacked (declared; zipfile reads no more than a member declares)."""


VOLUME_LIMITS = VolumeLimits()

MAX_VOLUME_SIDE = 512
"""Longest side of a stored slice. CT slices are 512 px; the models read at most 128 px and a
page shows a slice at most about 500 px wide."""


@dataclass(frozen=True, eq=False)
class Volume:
    """One scan's slices in reading order, feet to head, each seen from the feet as a CT
    viewer shows it (the patient's right on the image's left, anterior at the top)."""

    name: str
    pixels: np.ndarray  # uint8 (slices, height, width): the windowed value x 255
    positions: tuple[float, ...] | None  # mm along the feet-to-head axis; None when unknown
    spacing: tuple[float, float, float] | None  # (between slices, rows, columns) in mm
    orientation: str  # how the slices were ordered and turned, in words
    source: str  # "DICOM series" or "NIfTI"
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def slice(self, index: int) -> np.ndarray:
        """Slice `index` as float32 (height, width) in [0, 1]."""
        return self.pixels[index].astype(np.float32) / np.float32(255)

    def describe(self) -> dict:
        """What a person (or `predict --json`) is told about the volume: no pixels."""
        return {
            "name": self.name,
            "source": self.source,
            "slices": len(self),
            "size": [int(self.pixels.shape[2]), int(self.pixels.shape[1])],
            "spacing": None if self.spacing is None else [round(s, 4) for s in self.spacing],
            "orientation": self.orientation,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class RefusedSeries:
    """A series of an upload that was not read, with why (its siblings may still be read)."""

    name: str
    reason: str


def stored_slice(pixels: np.ndarray) -> np.ndarray:
    """A windowed slice in [0, 1] as it is stored: reduced to MAX_VOLUME_SIDE, then uint8."""
    reduced = fit_within(pixels.astype(np.float32, copy=False), MAX_VOLUME_SIDE)
    return np.rint(np.clip(reduced, 0.0, 1.0) * 255).astype(np.uint8)


def stored_shape(width: int, height: int) -> tuple[int, int]:
    """(height, width) a slice of this size is stored at."""
    stored_width, stored_height = fitted_size(width, height, MAX_VOLUME_SIDE)
    return stored_height, stored_width


def check_volume_size(slices: int, width: int, height: int, limits: VolumeLimits) -> None:
    """Refuse, from what a header declares, a volume with too many slices or voxels."""
    if slices < 1:
        raise VolumeError("The scan holds no slices.")
    if slices > limits.max_slices:
        raise VolumeError(
            f"The scan holds {slices:,} slices; at most {limits.max_slices:,} are read "
            "(a chest CT has 300 to 700). Upload a thicker reconstruction or fewer slices."
        )
    voxels = slices * width * height
    if voxels > limits.max_voxels:
        raise VolumeError(
            f"The scan is {slices:,} slices of {width} x {height} pixels "
            f"({voxels / 1e6:,.0f} million voxels); at most {limits.max_voxels / 1e6:,.0f} "
            "million are read at once. Upload one series, or a thicker reconstruction."
        )
