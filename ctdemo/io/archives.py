"""Unpack zip archives without trusting them.

Every entry is checked before anything is written: no absolute paths, no `..`, no symbolic
links, no nested archives unpacked, caps on the number of files and on the total unpacked
size (declared sizes are checked first, then the bytes actually written, so a lying header
cannot get past the cap), and names the file system can hold (no component over 255 bytes,
bounded length and depth; a name the archive says is UTF-8 must be UTF-8).
"""

from __future__ import annotations

import errno
import lzma
import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO


class ArchiveError(ValueError):
    """An archive we will not unpack; the message is written for a person."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_files: int = 20_000
    max_total_bytes: int = 2 * 1024**3
    max_file_bytes: int = 64 * 1024**2
    max_path_bytes: int = 1024
    """A member's path inside the archive, in bytes: the server's own folders come on top of
    it, and Linux refuses whole paths over 4,096 bytes (PATH_MAX)."""
    max_depth: int = 32
    """Folders within folders above a member: a dataset needs a handful
    (wrapper/train/class/patient/)."""


MAX_NAME_BYTES = 255
"""The longest file or folder name (one path component) Linux file systems hold (NAME_MAX)."""


def _safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"The archive holds an absolute path ({name!r}); refusing to unpack it.")
    if ".." in path.parts:
        raise ArchiveError(f"The archive holds a path that escapes its folder ({name!r}).")
    if not path.parts:
        raise ArchiveError(f"The archive holds an entry with no name ({name!r}).")
    return path


def _check_name_fits(path: PurePosixPath, limits: ArchiveLimits) -> None:
    """Refuse, before anything is written, a name no file system here could hold."""
    sizes = [len(os.fsencode(part)) for part in path.parts]
    if max(sizes) > MAX_NAME_BYTES:
        longest = path.parts[sizes.index(max(sizes))]
        raise ArchiveError(
            f"The archive holds a file or folder name of {max(sizes):,} bytes "
            f"({_shorten(longest)}); names over {MAX_NAME_BYTES} bytes cannot be stored. "
            "Rename it and zip the folder again."
        )
    if len(sizes) - 1 > limits.max_depth:
        raise ArchiveError(
            f"The archive nests folders {len(sizes) - 1:,} deep ({_shorten(str(path))}); "
            f"at most {limits.max_depth} levels are accepted."
        )
    if sum(sizes) + len(sizes) - 1 > limits.max_path_bytes:
        raise ArchiveError(
            f"The archive holds a path of {sum(sizes) + len(sizes) - 1:,} bytes "
            f"({_shorten(str(path))}); at most {limits.max_path_bytes:,} are accepted."
        )


def _shorten(name: str, keep: int = 60) -> str:
    """A name short enough to quote in a message (the hostile ones run to thousands)."""
    return repr(name) if len(name) <= keep else repr(name[:keep]) + "…"


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def safe_extract(
    archive: Path | str | BinaryIO, target: Path | str, limits: ArchiveLimits = ArchiveLimits()
) -> int:
    """Unpack `archive` (a path, or a seekable binary file such as `io.BytesIO`) into `target`
    (created); returns the number of files written."""
    target = Path(target)
    try:
        with zipfile.ZipFile(archive) as bundle:
            # not info.is_dir(): it raises IndexError on an entry with an empty name
            members = [info for info in bundle.infolist() if not info.filename.endswith("/")]
            _check_members(members, limits)
            target.mkdir(parents=True, exist_ok=True)
            written_total = 0
            for info in members:
                destination = target.joinpath(*_safe_member_path(info.filename).parts)
                written_total += _write_member(bundle, info, destination, limits, written_total)
            return len(members)
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError):  # damaged member data
        raise ArchiveError("This file is not a zip archive, or it is damaged.") from None
    except UnicodeDecodeError:  # zipfile decodes names flagged UTF-8 (bit 11) strictly
        raise ArchiveError(
            "The archive marks its file names as UTF-8 but one of them is not; "
            "zip the folder again with another tool."
        ) from None
    except (zipfile.LargeZipFile, NotImplementedError, RuntimeError) as error:
        raise ArchiveError(f"The archive cannot be unpacked ({error}).") from None


def _check_members(members: list[zipfile.ZipInfo], limits: ArchiveLimits) -> None:
    if not members:
        raise ArchiveError("The archive is empty.")
    if len(members) > limits.max_files:
        raise ArchiveError(
            f"The archive holds {len(members):,} files; at most {limits.max_files:,} are accepted."
        )
    declared = 0
    for info in members:
        _check_name_fits(_safe_member_path(info.filename), limits)
        if _is_symlink(info):
            raise ArchiveError(f"The archive holds a symbolic link ({info.filename!r}).")
        if info.file_size > limits.max_file_bytes:
            raise ArchiveError(
                f"{info.filename} unpacks to {info.file_size / 2**20:.0f} MB; "
                f"files over {limits.max_file_bytes // 2**20} MB are refused."
            )
        declared += info.file_size
    files = {_safe_member_path(info.filename) for info in members}
    clashes = files & {parent for path in files for parent in path.parents}
    if clashes:
        raise ArchiveError(
            f"The archive holds {str(min(clashes))!r} both as a file and as a folder."
        )
    if declared > limits.max_total_bytes:
        raise ArchiveError(
            f"The archive unpacks to {declared / 2**30:.1f} GB; "
            f"at most {limits.max_total_bytes / 2**30:.1f} GB is accepted."
        )


def _write_member(
    bundle: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    destination: Path,
    limits: ArchiveLimits,
    written_before: int,
) -> int:
    """Create the member's folders and copy it; a name still too long for this server (its
    own folders count too) is refused like any other bad name."""
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        return _copy_bounded(bundle, info, destination, limits, written_before)
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            raise
        raise ArchiveError(
            f"The archive holds a path too long for this server ({_shorten(info.filename)})."
        ) from None


def _copy_bounded(
    bundle: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    destination: Path,
    limits: ArchiveLimits,
    written_before: int,
) -> int:
    """Copy one member, counting real bytes: a header that under-declares is caught here.

    An OSError while reading the member (a bad offset, a damaged bzip2 stream) means a damaged
    archive and becomes an ArchiveError; one while writing (a full disk) stays an OSError."""
    written = 0
    try:
        source = bundle.open(info)
    except OSError as error:
        raise ArchiveError(f"{info.filename} is damaged in the archive ({error}).") from None
    with source, open(destination, "wb") as sink:
        while True:
            try:
                chunk = source.read(1 << 20)
            except OSError as error:
                raise ArchiveError(
                    f"{info.filename} is damaged in the archive ({error})."
                ) from None
            if not chunk:
                break
            written += len(chunk)
            if written > limits.max_file_bytes or written_before + written > limits.max_total_bytes:
                raise ArchiveError(
                    "The archive expands far beyond its declared size (a zip bomb?)."
                )
            sink.write(chunk)
    return written


def find_dataset_root(folder: Path) -> Path:
    """The folder inside an unpacked archive that holds the class folders (or train/ and
    test/): the archive's top level, or the single folder that wraps everything."""
    current = folder
    for _ in range(5):
        children = [c for c in current.iterdir() if not c.name.startswith((".", "__MACOSX"))]
        directories = [c for c in children if c.is_dir()]
        if len(directories) == 1 and len(children) == 1:
            current = directories[0]
            continue
        return current
    return current


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
