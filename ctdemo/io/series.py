"""DICOM files to volumes: grouped by SeriesInstanceUID, ordered along the slice normal, each
slice decoded as a single DICOM file is (`ctdemo.io.dicom`: HU, then the lung window).

Files are given as name -> a function returning the bytes, so that a folder or a zip is read
one file at a time, twice (headers, then pixels), and never held whole. Order: the
ImagePositionPatient of each slice projected on the normal of its ImageOrientationPatient, feet
to head; without usable positions, InstanceNumber (and a note says so); without either, the
file names. An axial series is turned so that every slice is seen from the feet, as a NIfTI
volume is (`ctdemo.io.nifti`). A series is named by SeriesNumber and SeriesDescription, never by
any patient tag.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ctdemo.io.decoded import SliceError, quiet
from ctdemo.io.dicom import LUNG_WINDOW, decode_dicom, dicom_header
from ctdemo.io.limits import check_dimensions
from ctdemo.io.slices import is_dicom
from ctdemo.io.volumes import (
    VOLUME_LIMITS,
    RefusedSeries,
    Volume,
    VolumeError,
    VolumeLimits,
    check_volume_size,
    stored_shape,
    stored_slice,
)

FileSource = Callable[[], bytes]
SAME_POSITION_MM = 1e-3
"""Slices closer than this along the normal are at the same position."""
MAX_LABEL_CHARACTERS = 64
PLANES = (("sagittal", "right to left"), ("coronal", "front to back"), ("axial", "feet to head"))
"""By the patient axis (DICOM's x, y, z) the slice normal is closest to: the plane, and the way
the slices are ordered along it."""


@dataclass(frozen=True)
class SliceHeader:
    """What ordering and checking a slice needs, read from its header: no patient tag."""

    file: str
    series_uid: str
    series_number: int | None
    series_description: str
    instance_uid: str
    instance_number: int | None
    position: np.ndarray | None  # ImagePositionPatient (3,), finite
    orientation: np.ndarray | None  # ImageOrientationPatient (6,), finite
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) mm, > 0


def read_series(
    files: Mapping[str, FileSource], limits: VolumeLimits = VOLUME_LIMITS
) -> list[Volume | RefusedSeries]:
    """Every series among `files`, in SeriesNumber order: a Volume, or why it was not read.
    Raises VolumeError when no file is a DICOM image."""
    if len(files) > limits.max_files:
        raise VolumeError(
            f"The upload holds {len(files):,} files; at most {limits.max_files:,} are read."
        )
    headers, skipped = _read_headers(files)
    if not headers:
        reason = f" ({skipped[0]})" if skipped else ""
        raise VolumeError(f"None of the {len(files)} files is a DICOM image{reason}.")
    groups = _group(headers)
    shared = (_skipped_note(skipped),) if skipped else ()
    results: list[Volume | RefusedSeries] = []
    budget = limits.max_voxels
    for name, group in zip(_series_names(groups), groups, strict=True):
        try:
            volume = _read_one(name, group, files, limits, budget, shared)
        except VolumeError as error:
            results.append(RefusedSeries(name, str(error)))
            continue
        budget -= len(group) * group[0].rows * group[0].columns
        results.append(volume)
    return results


def _read_headers(files: Mapping[str, FileSource]) -> tuple[list[SliceHeader], list[str]]:
    """The headers of the DICOM images among `files`, and a reason for each file skipped."""
    headers, skipped = [], []
    for name, load in files.items():
        try:
            data = load()
            if not is_dicom(data, name):
                raise SliceError("not a DICOM file")
            headers.append(_header(name, data))
        except (SliceError, VolumeError) as error:
            skipped.append(f"{name}: {_first_sentence(error)}")
    return headers, skipped


def _header(name: str, data: bytes) -> SliceHeader:
    try:
        return _parsed_header(name, dicom_header(data))
    except (SliceError, VolumeError):
        raise
    except Exception as error:  # pydicom parses elements lazily, and raises many types
        raise VolumeError(f"a damaged DICOM header ({type(error).__name__})") from None


def _parsed_header(name: str, dataset) -> SliceHeader:
    with quiet():
        if int(_number(dataset.get("NumberOfFrames"), 1) or 1) > 1:
            raise VolumeError("a multi-frame file (a volume in one file), not read yet")
        if "Rows" not in dataset:
            raise VolumeError("holds no image (a DICOMDIR, a report or a truncated file?)")
        return SliceHeader(
            file=name,
            series_uid=str(dataset.get("SeriesInstanceUID", "") or ""),
            series_number=_integer(dataset.get("SeriesNumber")),
            series_description=_label(dataset.get("SeriesDescription")),
            instance_uid=str(dataset.get("SOPInstanceUID", "") or ""),
            instance_number=_integer(dataset.get("InstanceNumber")),
            position=_finite_vector(dataset.get("ImagePositionPatient"), 3),
            orientation=_finite_vector(dataset.get("ImageOrientationPatient"), 6),
            rows=int(_number(dataset.get("Rows"), 0)),
            columns=int(_number(dataset.get("Columns"), 0)),
            pixel_spacing=_spacing(dataset.get("PixelSpacing")),
        )


def _number(value, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def _integer(value) -> int | None:
    number = _number(value, math.nan)
    return None if math.isnan(number) else int(number)


def _label(value) -> str:
    text = "".join(c for c in str(value or "") if c.isprintable()).strip()
    return text[:MAX_LABEL_CHARACTERS]


def _finite_vector(value, length: int) -> np.ndarray | None:
    try:
        vector = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return vector if vector.shape == (length,) and np.isfinite(vector).all() else None


def _spacing(value) -> tuple[float, float] | None:
    vector = _finite_vector(value, 2)
    if vector is None or (vector <= 0).any():
        return None
    return float(vector[0]), float(vector[1])


def _first_sentence(error: Exception) -> str:
    return str(error).split(". ")[0].rstrip(".")


def _skipped_note(skipped: list[str]) -> str:
    shown = "; ".join(skipped[:3]) + ("; …" if len(skipped) > 3 else "")
    return f"{len(skipped)} file(s) skipped: {shown}."


def _group(headers: list[SliceHeader]) -> list[list[SliceHeader]]:
    """Headers by SeriesInstanceUID, series by SeriesNumber (then first file name)."""
    groups: dict[str, list[SliceHeader]] = {}
    for header in headers:
        groups.setdefault(header.series_uid, []).append(header)

    def key(group: list[SliceHeader]) -> tuple:
        number = group[0].series_number
        return (number is None, number or 0, min(h.file for h in group))

    return sorted(groups.values(), key=key)


def _series_names(groups: list[list[SliceHeader]]) -> list[str]:
    """'series 3: CHEST 1.25' from SeriesNumber and SeriesDescription, else 'series 2' by order;
    a repeated name gets '(2)'."""
    names: list[str] = []
    for index, group in enumerate(groups, start=1):
        first = group[0]
        name = f"series {index if first.series_number is None else first.series_number}"
        if first.series_description:
            name += f": {first.series_description}"
        repeats = sum(existing.split(" (")[0] == name for existing in names)
        names.append(name if not repeats else f"{name} ({repeats + 1})")
    return names


def _read_one(
    name: str,
    group: list[SliceHeader],
    files: Mapping[str, FileSource],
    limits: VolumeLimits,
    budget: int,
    shared: tuple[str, ...],
) -> Volume:
    group, notes = _unique_instances(group)
    rows, columns = _common_size(group)
    check_volume_size(len(group), columns, rows, limits)
    if len(group) * rows * columns > budget:
        raise VolumeError(
            "Not read: with the series before it, the upload holds more than "
            f"{limits.max_voxels / 1e6:,.0f} million voxels. Upload this series on its own."
        )
    ordered, positions, orientation, order_notes = _order(group)
    turn = _axial_turn(ordered[0].orientation) if positions is not None else None
    pixels = _decode_all(ordered, files, rows, columns, turn)
    spacing = _spacing_of(ordered, positions, rows, columns, turn)
    notes += order_notes + _gap_notes(positions) + shared
    if turn is None:
        orientation += "; slices shown as stored"
    return Volume(name, pixels, positions, spacing, orientation, "DICOM series", notes)


def _unique_instances(group: list[SliceHeader]) -> tuple[list[SliceHeader], tuple[str, ...]]:
    """One header per SOPInstanceUID: the same slice under two names is read once."""
    seen: dict[str, SliceHeader] = {}
    unique = []
    for header in group:
        if header.instance_uid and header.instance_uid in seen:
            continue
        seen[header.instance_uid] = header
        unique.append(header)
    copies = len(group) - len(unique)
    if not copies:
        return unique, ()
    return unique, (f"{copies} file(s) were copies of another slice and were read once.",)


def _common_size(group: list[SliceHeader]) -> tuple[int, int]:
    """(rows, columns) of every slice, or a VolumeError that names the sizes found."""
    sizes: dict[tuple[int, int], int] = {}
    for header in group:
        sizes[(header.rows, header.columns)] = sizes.get((header.rows, header.columns), 0) + 1
    if len(sizes) > 1:
        shown = ", ".join(f"{c} x {r} ({n} slices)" for (r, c), n in sorted(sizes.items()))
        raise VolumeError(
            f"The series mixes slices of different sizes: {shown}. A series is one scan, "
            "whose slices share one size; remove the others (localisers, reformats)."
        )
    (rows, columns), _ = sizes.popitem()
    try:
        check_dimensions(columns, rows)
    except SliceError as error:
        raise VolumeError(f"Its header is unusable: {error}") from None
    return rows, columns


def _order(group: list[SliceHeader]) -> tuple[list[SliceHeader], tuple | None, str, tuple]:
    """(headers in order, positions in mm or None, how they were ordered, notes)."""
    problem = _position_problem(group)
    if problem is None:
        normal = _normal(group[0].orientation)
        along = np.array([float(h.position @ normal) for h in group])
        direction = 1.0 if normal[np.argmax(np.abs(normal))] > 0 else -1.0  # feet to head
        order = np.argsort(direction * along, kind="stable")
        positions = tuple(float(direction * along[i]) for i in order)
        _refuse_same(
            [group[i].file for i in order], positions, "lie at the same position", "{:.3f} mm"
        )
        axis = int(np.argmax(np.abs(normal)))
        plane, way = PLANES[axis]
        notes = (f"The series is {plane}, not axial: the model was trained on axial slices.",)
        return (
            [group[i] for i in order],
            positions,
            f"{plane} slices ordered by ImagePositionPatient along the slice normal, {way}",
            notes if axis != 2 else (),
        )
    return _order_by_number(group, problem)


def _position_problem(group: list[SliceHeader]) -> str | None:
    """Why positions cannot order the series, or None when they can."""
    if any(h.position is None for h in group):
        missing = sum(h.position is None for h in group)
        return f"{missing} of {len(group)} slices have no usable ImagePositionPatient"
    if any(h.orientation is None or _normal(h.orientation) is None for h in group):
        return "ImageOrientationPatient is missing or not a pair of directions"
    first = group[0].orientation
    if any(np.abs(h.orientation - first).max() > 1e-3 for h in group):
        return "its slices differ in ImageOrientationPatient"
    return None


def _normal(orientation: np.ndarray | None) -> np.ndarray | None:
    """The unit normal of ImageOrientationPatient's two directions, or None when they are not
    two perpendicular directions."""
    if orientation is None:
        return None
    row, column = orientation[:3], orientation[3:]
    lengths = np.linalg.norm(row), np.linalg.norm(column)
    if min(lengths) < 1e-3 or abs(row @ column) > 1e-2 * lengths[0] * lengths[1]:
        return None
    normal = np.cross(row, column)
    return normal / np.linalg.norm(normal)


def _order_by_number(group: list[SliceHeader], problem: str) -> tuple:
    if all(h.instance_number is not None for h in group):
        ordered = sorted(group, key=lambda h: h.instance_number)
        numbers = tuple(float(h.instance_number) for h in ordered)
        _refuse_same([h.file for h in ordered], numbers, "share one InstanceNumber", "{:.0f}")
        how, note = "slices ordered by InstanceNumber", f"Ordered by InstanceNumber: {problem}."
    else:
        ordered = sorted(group, key=lambda h: h.file)
        how = "slices ordered by file name"
        note = f"Ordered by file name: {problem}, and some have no InstanceNumber."
    return ordered, None, how, (note + " The order may not follow the body.",)


def _refuse_same(names: list[str], values: tuple, what: str, shown: str) -> None:
    for index in range(1, len(values)):
        if abs(values[index] - values[index - 1]) < SAME_POSITION_MM:
            raise VolumeError(
                f"Two slices ({names[index - 1]} and {names[index]}) {what} "
                f"({shown.format(values[index])}): the series holds one slice twice, or mixes "
                "two acquisitions. Remove the duplicates and try again."
            )


def _axial_turn(orientation: np.ndarray | None) -> tuple[bool, bool, bool] | None:
    """(transpose, flip rows, flip columns) that shows an axial slice from the feet (columns
    towards the patient's left, rows towards the back), or None for other planes."""
    normal = _normal(orientation)
    if normal is None or int(np.argmax(np.abs(normal))) != 2:
        return None
    row, column = orientation[:3], orientation[3:]
    transpose = abs(row[1]) > abs(row[0])  # the row direction runs front to back
    along_columns, along_rows = (column, row) if transpose else (row, column)
    return transpose, along_rows[1] < 0, along_columns[0] < 0


def _decode_all(
    ordered: list[SliceHeader],
    files: Mapping[str, FileSource],
    rows: int,
    columns: int,
    turn: tuple[bool, bool, bool] | None,
) -> np.ndarray:
    """Every slice decoded into one uint8 array allocated once."""
    height, width = stored_shape(columns, rows)
    if turn is not None and turn[0]:
        height, width = width, height
    pixels = np.empty((len(ordered), height, width), dtype=np.uint8)
    for index, header in enumerate(ordered):
        try:
            decoded = decode_dicom(files[header.file](), LUNG_WINDOW).pixels
        except SliceError as error:
            raise VolumeError(f"Slice {header.file} could not be read: {error}") from None
        stored = stored_slice(_turned(decoded, turn))
        if stored.shape != pixels.shape[1:]:
            raise VolumeError(
                f"Slice {header.file} decodes to {stored.shape[1]} x {stored.shape[0]} pixels, "
                f"not the {width} x {height} of the series."
            )
        pixels[index] = stored
    return pixels


def _turned(pixels: np.ndarray, turn: tuple[bool, bool, bool] | None) -> np.ndarray:
    if turn is None:
        return pixels
    transpose, flip_rows, flip_columns = turn
    pixels = pixels.T if transpose else pixels
    return pixels[:: -1 if flip_rows else 1, :: -1 if flip_columns else 1]


def _spacing_of(
    ordered: list[SliceHeader],
    positions: tuple | None,
    rows: int,
    columns: int,
    turn: tuple[bool, bool, bool] | None,
) -> tuple[float, float, float] | None:
    """(between slices, rows, columns) in mm of the stored slices, when every part is known."""
    pixel = ordered[0].pixel_spacing
    if positions is None or len(positions) < 2 or pixel is None:
        return None
    gap = float(np.median(np.diff(positions)))
    height, width = stored_shape(columns, rows)  # before turning
    row_mm, column_mm = pixel[0] * rows / height, pixel[1] * columns / width
    return (gap, column_mm, row_mm) if turn is not None and turn[0] else (gap, row_mm, column_mm)


def _gap_notes(positions: tuple | None) -> tuple[str, ...]:
    if positions is None or len(positions) < 3:
        return ()
    gaps = np.diff(positions)
    if gaps.max() <= 1.5 * np.median(gaps):
        return ()
    return (
        f"The gaps between slices are uneven ({gaps.min():.2f} to {gaps.max():.2f} mm): "
        "slices may be missing.",
    )
