"""Download the full public dataset, atomically.

The archive is fetched to a temporary file, checked (a zip, the expected checksum when one is
given), unpacked safely into a temporary folder, checked again (at least two class folders with
images), and only then renamed into place with a marker file. A download that fails or is
interrupted leaves nothing that looks complete.

A download deletes only what a download made: a destination that holds anything else is
refused before a byte is fetched, and `force` replaces only a folder that carries our marker.
A source that sends more than `MAX_DOWNLOAD_BYTES` (or says it will) is stopped there.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ctdemo import config
from ctdemo.config import is_complete, split_root
from ctdemo.io.archives import ArchiveError, find_dataset_root, remove_tree, safe_extract
from ctdemo.io.folders import DatasetError, scan_image_folder

DEFAULT_URL = (
    "https://www.kaggle.com/api/v1/datasets/download/plameneduardo/sarscov2-ctscan-dataset"
)
"""Kaggle's public download of the SARS-CoV-2 CT-scan dataset (Soares et al., 2020), the
mirror its authors name; a zip of COVID/ and non-COVID/ folders of PNG slices."""

MARKER = config.DOWNLOAD_MARKER
MAX_DOWNLOAD_BYTES = 2 * 1024**3
"""The most a download may fetch: the real archive is about 230 MB, so a wrong URL or a source
that never ends (file:///dev/zero) stops long before it fills the disk."""
ProgressCallback = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


class DownloadError(RuntimeError):
    """A download that failed; the message is written for a person."""


def download_dataset(
    url: str = DEFAULT_URL,
    dest: Path | None = None,
    sha256: str | None = None,
    progress: ProgressCallback | None = None,
    force: bool = False,
    timeout: float = 60.0,
    max_bytes: int | None = None,
) -> Path:
    """Fetch and unpack the dataset at `url` into `dest`; returns `dest`.

    `max_bytes` caps the bytes fetched (default `MAX_DOWNLOAD_BYTES`)."""
    dest = Path(dest) if dest is not None else config.default_download_dest()
    if is_complete(dest) and not force:
        return dest
    _check_replaceable(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    workspace = Path(tempfile.mkdtemp(prefix=".ctdemo-download-", dir=dest.parent))
    try:
        archive = workspace / "archive.zip"
        cap = MAX_DOWNLOAD_BYTES if max_bytes is None else max_bytes
        digest = _fetch(url, archive, progress, timeout, cap)
        if sha256 and digest != sha256.lower():
            raise DownloadError(f"Checksum mismatch: expected {sha256}, got {digest}.")
        unpacked = workspace / "unpacked"
        safe_extract(archive, unpacked)
        root = find_dataset_root(unpacked)
        counts = _check_dataset(root)
        (root / MARKER).write_text(
            json.dumps(
                {
                    "url": url,
                    "sha256": digest,
                    "classes": counts,
                    "completed": datetime.now(UTC).isoformat(timespec="seconds"),
                },
                indent=1,
                allow_nan=False,
            )
        )
        _move_into_place(root, dest, workspace)
        return dest
    except ArchiveError as error:
        raise DownloadError(f"The downloaded archive was refused: {error}") from None
    except DatasetError as error:
        raise DownloadError(f"The downloaded archive is not a usable dataset: {error}") from None
    finally:
        remove_tree(workspace)


def _check_replaceable(dest: Path) -> None:
    """Refuse a destination holding anything a download of ours did not put there."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise DownloadError(f"{dest} exists and is not a folder; choose another destination.")
    if dest.is_dir() and not is_complete(dest) and any(dest.iterdir()):
        raise DownloadError(
            f"{dest} already holds files that no download put there, so nothing was fetched "
            "and they were left as they are; choose a new or empty folder as the destination."
        )


def _move_into_place(root: Path, dest: Path, workspace: Path) -> None:
    """Rename the checked dataset to `dest`. An earlier download there (one with our marker)
    goes into the workspace first, so it is deleted only with the workspace and put back if
    the rename fails; an empty folder is removed with rmdir, which deletes nothing else."""
    previous = workspace / "previous"
    if is_complete(dest):
        os.replace(dest, previous)
    elif dest.is_dir():
        dest.rmdir()
    try:
        os.replace(root, dest)
    except OSError:
        if previous.exists():
            os.replace(previous, dest)
        raise


def _fetch(
    url: str, target: Path, progress: ProgressCallback | None, timeout: float, max_bytes: int
) -> str:
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as sink:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise DownloadError(_too_big(f"{url} says it is {_size(total)}, over", max_bytes))
            done = 0
            while chunk := response.read(min(1 << 20, max_bytes + 1 - done)):
                done += len(chunk)
                if done > max_bytes:
                    raise DownloadError(_too_big(f"{url} kept sending, past", max_bytes))
                sink.write(chunk)
                digest.update(chunk)
                if progress is not None:
                    progress(done, total)
    except urllib.error.HTTPError as error:
        raise DownloadError(f"The server answered {error.code} {error.reason} for {url}.") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"Could not download {url}: {reason}.") from None
    if total is not None and done != total:
        raise DownloadError(f"The download was cut short ({done:,} of {total:,} bytes).")
    return digest.hexdigest()


def _too_big(what: str, max_bytes: int) -> str:
    return (
        f"{what} the {_size(max_bytes)} a download may fetch (the dataset is about 230 MB); "
        "nothing was kept. Check the URL."
    )


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GB" if count >= 2**30 else f"{count / 2**20:.1f} MB"


def _check_dataset(root: Path) -> dict[str, int]:
    train, _ = split_root(root)
    folder = scan_image_folder(train)
    return folder.class_counts()
