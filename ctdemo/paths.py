"""Where ctdemo reads and writes on disk.

The app writes only under one folder (`CTDEMO_HOME`, default `~/.cache/ctdemo`): decoded
array caches, downloaded datasets and unpacked uploads. Everything shipped with the code
(weights, embedded demo set) is read-only.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = PROJECT_ROOT / "weights"
DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_SAMPLES_DIR = DEMO_DIR / "samples"
DEMO_BUNDLE_DIR = DEMO_DIR / "bundle"


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
