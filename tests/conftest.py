"""Shared fixtures: a tiny generated dataset, the real data when present, an isolated home."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# CI checks a fixed set of generated inputs (reproducible); a developer's run explores new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REAL_DATA = Path(os.environ.get("CTDEMO_DATA_DIR", ROOT.parent / "shared" / "data" / "sarscov2-ct"))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Every test writes caches and downloads under its own temporary CTDEMO_HOME."""
    home = tmp_path_factory.mktemp("ctdemo-home")
    monkeypatch.setenv("CTDEMO_HOME", str(home))
    return home


def real_train_dir() -> Path:
    train = REAL_DATA / "train" if (REAL_DATA / "train").is_dir() else REAL_DATA
    if not (train / "COVID").is_dir():
        pytest.skip(f"real CT data not found at {REAL_DATA} (set CTDEMO_DATA_DIR)")
    return train


@pytest.fixture
def real_train() -> Path:
    return real_train_dir()


def _blob_slice(rng: np.random.Generator, size: int, bright_spots: bool) -> np.ndarray:
    """A fake 'slice': dark ellipse lungs on grey; class 1 has bright blobs in the lungs."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.full((size, size), 0.75)
    for cx in (0.3, 0.7):
        lung = ((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
        image[lung] = 0.15
    if bright_spots:
        for _ in range(4):
            cx, cy = rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.7)
            image += 0.5 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / 0.004))
    image += rng.normal(0, 0.03, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def make_image_folder(
    root: Path, per_class: int = 24, classes=("COVID", "non-COVID"), size: int = 40, seed=0
) -> Path:
    """An image-folder dataset of generated PNGs named like the real one ("Covid (7).png")."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(1, per_class + 1):
            pixels = _blob_slice(rng, size, bright_spots=index == 0)
            Image.fromarray(pixels).save(folder / f"{name} ({number}).png")
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return make_image_folder(tmp_path / "tiny")


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """CTDEMO_DATA_DIR pointing at a tiny generated dataset (fast epochs)."""
    root = make_image_folder(tmp_path / "tiny", per_class=30, size=32)
    monkeypatch.setenv("CTDEMO_DATA_DIR", str(root))
    return root


def zip_bytes(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip holding `entries` (name -> bytes), written in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as bundle:
        for name, payload in entries.items():
            bundle.writestr(zipfile.ZipInfo(name), payload, compress_type=compression)
    return buffer.getvalue()


def zip_folder(root: Path, prefix: str = "") -> bytes:
    """Zip every file under root, as a person zipping a dataset folder would."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                bundle.write(path, prefix + path.relative_to(root).as_posix())
    return buffer.getvalue()
