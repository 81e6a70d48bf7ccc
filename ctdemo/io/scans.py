"""Paths and uploads to volumes: a folder or a zip of DICOM files (`ctdemo.io.series`), or a
NIfTI file (`ctdemo.io.nifti`). A folder is walked and a zip is read one member at a time, each
member no larger than MAX_FILE_BYTES and the whole no larger than VolumeLimits allow."""

from __future__ import annotations

import io
import os
import stat
import zipfile
import zlib
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from ctdemo.io.decoded import SliceError, UnreadableFileError
from ctdemo.io.limits import MAX_FILE_BYTES
from ctdemo.io.nifti import is_nifti, read_nifti
from ctdemo.io.series import FileSource, read_series
from ctdemo.io.slices import read_slice_file
from ctdemo.io.volumes import VOLUME_LIMITS, RefusedSeries, Volume, VolumeError, VolumeLimits

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
ScanItems = list[Volume | RefusedSeries]


def is_scan(path: str | os.PathLike) -> bool:
    """Whether `path` is read as a whole scan (a folder, a zip, a NIfTI file), not a slice."""
    if os.path.isdir(path):
        return True
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block `open`
            return False
        with open(path, "rb") as stream:
            start = stream.read(4)
    except OSError:
        return False
    return start.startswith(ZIP_MAGIC) or is_nifti(start, os.fspath(path))


def read_scan(path: str | os.PathLike, limits: VolumeLimits = VOLUME_LIMITS) -> ScanItems:
    """The volumes in a folder of DICOM files, a zip of them, or a NIfTI file."""
    path = Path(path)
    if path.is_dir():
        return read_series(_folder_sources(path, limits), limits)
    with _open_regular(path, limits) as stream:
        start = stream.read(4)
        stream.seek(0)
        if start.startswith(ZIP_MAGIC):
            return _read_zip(stream, limits)
        return [read_nifti(stream, path.name, limits)]


def read_upload(files: Mapping[str, bytes], limits: VolumeLimits = VOLUME_LIMITS) -> ScanItems:
    """The volumes in uploaded files: one zip, one NIfTI file, or the files of DICOM series."""
    if len(files) == 1:
        name, data = next(iter(files.items()))
        if data.startswith(ZIP_MAGIC):
            return _read_zip(io.BytesIO(data), limits)
        if is_nifti(data[:4], name):
            return [read_nifti(io.BytesIO(data), name, limits)]
    return read_series({name: partial(_given, data) for name, data in files.items()}, limits)


def _given(data: bytes) -> bytes:
    return data


def _open_regular(path: Path, limits: VolumeLimits):
    """A regular file no larger than `limits.max_file_bytes`, opened for reading."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block `open`
            raise VolumeError("Only a regular file is read as a scan.")
        stream = open(path, "rb")  # noqa: SIM115 - returned to the caller's `with`
    except FileNotFoundError:
        raise VolumeError("No such file.") from None
    except OSError as error:
        raise VolumeError(f"Could not be read ({error.strerror}).") from None
    status = os.fstat(stream.fileno())
    if not stat.S_ISREG(status.st_mode) or status.st_size > limits.max_file_bytes:
        stream.close()
        raise VolumeError(
            f"Only a regular file of at most {limits.max_file_bytes // 2**20} MB is read as a scan."
        )
    return stream


def _folder_sources(folder: Path, limits: VolumeLimits) -> dict[str, FileSource]:
    """Every file under `folder` (hidden ones left out), by its path inside it."""
    sources: dict[str, FileSource] = {}
    for root, directories, names in os.walk(folder):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            path = Path(root) / name
            sources[path.relative_to(folder).as_posix()] = partial(read_slice_file, path)
            if len(sources) > limits.max_files:
                raise VolumeError(
                    f"The folder holds more than {limits.max_files:,} files; "
                    "give the folder of one series."
                )
    if not sources:
        raise VolumeError("The folder holds no files.")
    return sources


def _read_zip(stream, limits: VolumeLimits) -> ScanItems:
    try:
        with zipfile.ZipFile(stream) as bundle:
            return read_series(_zip_sources(bundle, limits), limits)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError):
        raise VolumeError("This file is not a zip archive, or it is damaged.") from None


def _zip_sources(bundle: zipfile.ZipFile, limits: VolumeLimits) -> dict[str, FileSource]:
    """The archive's files (folders, hidden files and __MACOSX left out), checked on their
    declared sizes; `_member` counts what each really inflates to."""
    members = [
        info
        for info in bundle.infolist()
        if not info.filename.endswith("/")
        and not any(part.startswith((".", "__MACOSX")) for part in info.filename.split("/"))
    ]
    if not members:
        raise VolumeError("The zip archive holds no files.")
    if len(members) > limits.max_files:
        raise VolumeError(
            f"The zip archive holds {len(members):,} files; at most {limits.max_files:,} are read."
        )
    declared = sum(info.file_size for info in members)
    if declared > limits.max_unpacked_bytes:
        raise VolumeError(
            f"The zip archive unpacks to {declared / 2**20:,.0f} MB; at most "
            f"{limits.max_unpacked_bytes // 2**20:,} MB are read."
        )
    return {info.filename: partial(_member, bundle, info) for info in members}


def _member(bundle: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """One member's bytes, never more than MAX_FILE_BYTES of them."""
    if info.file_size > MAX_FILE_BYTES:
        raise SliceError(f"unpacks to {info.file_size / 2**20:,.0f} MB, over a slice's limit")
    try:
        with bundle.open(info) as source:
            data = source.read(MAX_FILE_BYTES + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError) as error:
        raise UnreadableFileError(f"damaged in the zip archive ({error})") from None
    if len(data) > MAX_FILE_BYTES:
        raise SliceError("inflates past its declared size (a zip bomb?)")
    return data
