"""Where ctdemo reads and writes on disk, and where its data comes from.

The app writes only under one folder (`CTDEMO_HOME`, default `~/.cache/ctdemo`): decoded
array caches, downloaded datasets and unpacked uploads. Everything shipped with the code
(weights, embedded demo set) is read-only. The data is `CTDEMO_DATA_DIR` when set, else a
completed download, else the embedded demo set. This module imports nothing of ctdemo's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = PROJECT_ROOT / "weights"
DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_SAMPLES_DIR = DEMO_DIR / "samples"
DEMO_BUNDLE_DIR = DEMO_DIR / "bundle"


def warm_up_enabled() -> bool:
    """Whether the Classify page loads TensorFlow and the model after its first paint
    (`ctdemo.app.warmup`); CTDEMO_WARM_UP=0 keeps a server light until a visitor needs a model."""
    return os.environ.get("CTDEMO_WARM_UP", "1").strip() != "0"


def home_dir() -> Path:
    """The one folder ctdemo writes to."""
    configured = os.environ.get("CTDEMO_HOME")
    if configured:
        return Path(configured).expanduser()
    cache_root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_root) / "ctdemo"


def cache_dir() -> Path:
    return home_dir() / "arrays"


def downloads_dir() -> Path:
    return home_dir() / "datasets"


def default_download_dest() -> Path:
    return downloads_dir() / "sarscov2-ct"


DOWNLOAD_MARKER = ".ctdemo-complete.json"
"""Written last into a downloaded dataset: without it, a download is not complete."""


def is_complete(dest: Path) -> bool:
    """Whether `dest` holds a finished download."""
    return (Path(dest) / DOWNLOAD_MARKER).is_file()


@dataclass(frozen=True)
class DataSource:
    """Where the app's data comes from, and why that one."""

    train_dir: Path
    test_dir: Path | None
    origin: str  # "CTDEMO_DATA_DIR", "downloaded" or "embedded demo set"


def split_root(root: Path) -> tuple[Path, Path | None]:
    """A folder holding train/ (and maybe test/), or an image-folder root itself."""
    if (root / "train").is_dir():
        test = root / "test"
        return root / "train", test if test.is_dir() else None
    return root, None


def resolve_data_source() -> DataSource:
    """`CTDEMO_DATA_DIR`, else the downloaded dataset, else the embedded demo set."""
    configured = os.environ.get("CTDEMO_DATA_DIR")
    if configured:
        train, test = split_root(Path(configured).expanduser())
        return DataSource(train, test, "CTDEMO_DATA_DIR")
    downloaded = default_download_dest()
    if is_complete(downloaded):
        train, test = split_root(downloaded)
        return DataSource(train, test, "downloaded")
    return DataSource(DEMO_BUNDLE_DIR, None, "embedded demo set")
