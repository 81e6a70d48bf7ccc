"""Sample scans a visitor can classify with one click: the embedded samples, and validation
slices of the configured dataset when there is one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ctdemo.app.catalog import shipped_cards
from ctdemo.config import DEMO_SAMPLES_DIR, resolve_data_source

DATASET_CHOICES = 60
"""Validation slices of the configured dataset offered in the picker."""


@dataclass(frozen=True)
class SampleScan:
    path: Path
    label: str  # the class folder it came from


def sample_scans(folder: Path = DEMO_SAMPLES_DIR) -> list[SampleScan]:
    """The embedded samples, class by class."""
    return [
        SampleScan(path, path.parent.name)
        for path in sorted(folder.glob("*/*"))
        if path.is_file() and not path.name.startswith(".")
    ]


def dataset_choices(limit: int = DATASET_CHOICES) -> list[Path]:
    """Slices of the configured (or downloaded) dataset from the shipped models' validation
    split, so the pick is a patient they never trained on; none for the embedded set."""
    source = resolve_data_source()
    if source.origin == "embedded demo set":
        return []
    cards = list(shipped_cards().values())
    validation = cards[0].validation.get("files", []) if cards else []
    present = [source.train_dir / name for name in validation]
    present = [path for path in present if path.is_file()]
    step = max(1, len(present) // limit)  # spread over patients and both classes
    return present[::step][:limit]


def label(path: Path | str) -> str:
    path = Path(path)
    return f"{path.parent.name} / {path.name}"


def read_file(path: Path | str) -> tuple[str, bytes]:
    path = Path(path)
    return path.name, path.read_bytes()
