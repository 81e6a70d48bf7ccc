"""Download the full public dataset, atomically.

The archive is fetched to a temporary file, checked (a zip, the expected checksum when one is
given), unpacked safely into a temporary folder, checked again (at least two class folders with
images), and only then renamed into place with a marker file. A download that fails or is
interrupted leaves nothing that looks complete.
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

from ctdemo import paths
from ctdemo.archives import ArchiveError, find_dataset_root, remove_tree, safe_extract
from ctdemo.data import DatasetError, scan_image_folder, split_root

DEFAULT_URL = (
    "https://www.kaggle.com/api/v1/datasets/download/plameneduardo/sarscov2-ctscan-dataset"
)
"""Kaggle's public download of the SARS-CoV-2 CT-scan dataset (Soares et al., 2020), the
mirror its authors name; a zip of COVID/ and non-COVID/ folders of PNG slices."""

MARKER = ".ctdemo-complete.json"
ProgressCallback = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


class DownloadError(RuntimeError):
    """A download that failed; the message is written for a person."""


def is_complete(dest: Path) -> bool:
    return (Path(dest) / MARKER).is_file()


def download_dataset(
    url: str = DEFAULT_URL,
    dest: Path | None = None,
    sha256: str | None = None,
    progress: ProgressCallback | None = None,
    force: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Fetch and unpack the dataset at `url` into `dest`; returns `dest`."""
    dest = Path(dest) if dest is not None else paths.default_download_dest()
    if is_complete(dest) and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    workspace = Path(tempfile.mkdtemp(prefix=".ctdemo-download-", dir=dest.parent))
    try:
        archive = workspace / "archive.zip"
        digest = _fetch(url, archive, progress, timeout)
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
            )
        )
        if dest.exists():
            remove_tree(dest)
        os.replace(root, dest)
        return dest
    except ArchiveError as error:
        raise DownloadError(f"The downloaded archive was refused: {error}") from None
    except DatasetError as error:
        raise DownloadError(f"The downloaded archive is not a usable dataset: {error}") from None
    finally:
        remove_tree(workspace)


def _fetch(url: str, target: Path, progress: ProgressCallback | None, timeout: float) -> str:
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as sink:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            while chunk := response.read(1 << 20):
                sink.write(chunk)
                digest.update(chunk)
                done += len(chunk)
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


def _check_dataset(root: Path) -> dict[str, int]:
    train, _ = split_root(root)
    folder = scan_image_folder(train)
    return folder.class_counts()
