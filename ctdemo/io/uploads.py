"""A visitor's own dataset: a `.zip` of class folders, unpacked safely under the app's home.

    import_zip_dataset(data, owner)  ->  ImageFolder under home/uploads/<owner>/<digest>/

The archive is never trusted (`ctdemo.io.archives.safe_extract`: no absolute paths, no `..`, no
symbolic links, caps on file count and unpacked bytes, real bytes counted as they are
written). It is unpacked into a private temporary folder beside its final place, checked as a
dataset (`ctdemo.io.folders.scan_image_folder`: at least two class folders, none empty, files
that are not images skipped and counted) and only then renamed into place, so a failed import leaves
nothing behind and a finished one is whole. The folder is named by a digest of the bytes: the
same upload again reuses it. Each image's pixel count is capped later, when it is decoded
(`ctdemo.io.limits.MAX_PIXELS`; an oversized image is skipped with its reason).

A zip holding `train/` (and `test/`) folders is accepted too: `train/` is the dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
import time
from pathlib import Path

from ctdemo import config
from ctdemo.config import split_root
from ctdemo.io.archives import (
    ArchiveError,
    ArchiveLimits,
    find_dataset_root,
    remove_tree,
    safe_extract,
)
from ctdemo.io.folders import DatasetError, ImageFolder, scan_image_folder

UPLOAD_LIMITS = ArchiveLimits(
    max_files=10_000, max_total_bytes=512 * 1024**2, max_file_bytes=32 * 1024**2
)
"""An upload is at most `server.maxUploadSize` (50 MB in `.streamlit/config.toml`) and images
barely compress, so 512 MB unpacked is far beyond an honest archive of slices. (The whole
SARS-CoV-2 CT-scan set is 2,481 files, 190 MB.)"""
MAX_UPLOADS_PER_OWNER = 3
"""Older uploads of the same owner are removed beyond this many (disk on a shared server)."""
STALE_AFTER_S = 2 * 3600
"""An upload nobody has used for this long is deleted at the next import (of anyone's): a
session's page re-imports (and so touches) its dataset on every run, and Streamlit offers no
hook when a session ends."""
MARKER = ".ctdemo-upload.json"
WORKSPACE_PREFIX = ".tmp-"
_SAFE_OWNER = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DIGEST_NAME = re.compile(r"[0-9a-f]{32}")


def uploads_dir() -> Path:
    return config.home_dir() / "uploads"


def owner_dir(owner: str) -> Path:
    """An owner's upload folder; an owner id that is not a plain name is hashed."""
    if not owner:
        raise ValueError("An upload needs an owner (a session id).")
    name = owner if _SAFE_OWNER.fullmatch(owner) else _digest(owner.encode())
    return uploads_dir() / name


def import_zip_dataset(
    data: bytes,
    owner: str,
    limits: ArchiveLimits = UPLOAD_LIMITS,
    keep: int = MAX_UPLOADS_PER_OWNER,
) -> ImageFolder:
    """Unpack a zip of class folders for `owner` and return its (scanned) image folder.

    Raises `ArchiveError` for an archive we will not unpack and `DatasetError` for one that is
    not a usable dataset; both messages are written for a person."""
    if not data:
        raise ArchiveError("The upload is empty (0 bytes).")
    if len(data) > limits.max_total_bytes:
        raise ArchiveError(
            f"The upload is {_size(len(data))}; at most {_size(limits.max_total_bytes)} "
            "is accepted."
        )
    remove_stale_uploads()
    folder = owner_dir(owner)
    final = folder / _digest(data)
    if (final / MARKER).is_file():
        os.utime(final)  # most recently used: kept longest
        return _scan(final)
    folder.mkdir(parents=True, exist_ok=True)
    workspace = Path(tempfile.mkdtemp(prefix=WORKSPACE_PREFIX, dir=folder))
    try:
        count = safe_extract(io.BytesIO(data), workspace, limits)
        dataset = _scan(workspace)
        (workspace / MARKER).write_text(
            json.dumps(
                {"files": count, "bytes": len(data), "classes": dataset.class_counts()},
                indent=1,
                allow_nan=False,
            )
        )
        if _made_here(final) and not (final / MARKER).is_file():
            remove_tree(final)  # the remains of an import cut short
        try:
            os.replace(workspace, final)
        except OSError:  # the same bytes imported at the same moment: use theirs
            if not (final / MARKER).is_file():
                raise
    finally:
        remove_tree(workspace)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty: a failed first import leaves no owner folder
    _remove_oldest(folder, keep, final)
    return _scan(final)


def _scan(unpacked: Path) -> ImageFolder:
    root, _ = split_root(find_dataset_root(unpacked))
    classes = sorted(c.name for c in root.iterdir() if c.is_dir() and not c.name.startswith("."))
    if len(classes) < 2:
        if classes:
            found = f"it has only one, {classes[0]}"
        elif root != unpacked:
            found = f"it has one folder, {root.name}, and no class folders inside it"
        else:
            found = "it has no folders"
        raise DatasetError(
            "The zip needs one folder per class (at least two), each holding that class's "
            f"images, e.g. COVID/ and non-COVID/; {found}."
        )
    try:
        return scan_image_folder(root)
    except DatasetError as error:
        message = str(error).replace(str(unpacked), "the zip")  # no server paths
        raise DatasetError(f"The zip is not a usable dataset. {message}") from None


def remove_stale_uploads(max_age_s: float = STALE_AFTER_S, now: float | None = None) -> None:
    """Delete every upload (and import cut short) untouched for `max_age_s`, and the owner
    folders that leaves empty: ended sessions' datasets do not fill the server's disk. Only
    what an import made is deleted (`_made_here`)."""
    now = time.time() if now is None else now
    for entry in uploads_dir().glob("*/*"):
        with contextlib.suppress(OSError):
            if _made_here(entry) and now - entry.stat().st_mtime > max_age_s:
                remove_tree(entry)
    for owner in uploads_dir().glob("*"):
        with contextlib.suppress(OSError):
            owner.rmdir()  # only if empty


def _made_here(entry: Path) -> bool:
    """A real folder (not a link) named as an import names its folders: the digest of the
    bytes, or the private workspace's prefix. Nothing else under uploads/ is ever deleted."""
    if entry.is_symlink() or not entry.is_dir():
        return False
    return bool(_DIGEST_NAME.fullmatch(entry.name)) or entry.name.startswith(WORKSPACE_PREFIX)


def _is_upload(entry: Path) -> bool:
    """A finished import: a folder of ours with the marker inside."""
    return _made_here(entry) and (entry / MARKER).is_file()


def _remove_oldest(folder: Path, keep: int, current: Path) -> None:
    kept = sorted(
        (entry for entry in folder.iterdir() if _is_upload(entry) and entry != current),
        key=lambda entry: entry.stat().st_mtime,
        reverse=True,
    )
    for entry in kept[max(0, keep - 1) :]:
        remove_tree(entry)


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MB" if count >= 2**20 else f"{count / 2**10:.0f} KB"


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()
