"""Build the embedded demo set from the shipped models' own validation split.

The demo set is the app's default data when nothing else is configured: a dozen sample slices
(original PNGs) for the Classify page, and a bundle of a few hundred downsampled slices for
training and comparing live. Every slice comes from the validation split recorded in the
shipped models' cards, so evaluating those models on the demo set never scores them on slices
they trained on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ctdemo.evaluation.splits import DEFAULT_BLOCK_SIZE, file_number_groups
from ctdemo.io.folders import DatasetError, fingerprint, scan_image_folder
from ctdemo.io.slices import decode_slice
from ctdemo.models.cards import ModelCard, card_path

SAMPLES_PER_CLASS = 6
BUNDLE_MAX_SIDE = 128
MAX_DEMO_BYTES = 5 * 1024 * 1024

LICENCE_TEXT = """# Embedded demo set: credit and licence

These CT slices come from the **SARS-CoV-2 CT-scan dataset** by Eduardo Soares, Plamen Angelov,
Sarah Biaso, Michele Higa Froes and Daniel Kanda Abe (2020), "SARS-CoV-2 CT-scan dataset: A
large dataset of real patients CT scans for SARS-CoV-2 identification", medRxiv,
doi:10.1101/2020.04.24.20078584 — real patients of hospitals in São Paulo, Brazil.

As far as we know the dataset is published under **CC BY-NC-SA 4.0** (attribution,
non-commercial, share-alike). These images are **not** under the code's licence: reuse them
only under the dataset's own terms.

- `samples/` — {samples} original slices (PNG), {per_class} per class, from different patients.
- `bundle/` — {bundle} slices downsampled to at most {side} pixels on the long side, grey PNG.

Every slice is from the validation split recorded in the shipped models' cards (the models
never trained on them). Rebuilt by: `{command}` (see `manifest.json`).
For teaching and research only; not for diagnosis.
"""


def _validation_files(models: list[Path]) -> tuple[list[str], str]:
    """The validation files shared by every model's card, and their data fingerprint."""
    cards = [ModelCard.from_json(card_path(model).read_text()) for model in models]
    files = [set(card.validation.get("files", [])) for card in cards]
    if not files[0] or any(f != files[0] for f in files):
        raise DatasetError("The models' cards do not record the same validation files.")
    prints = {card.data.get("fingerprint") for card in cards}
    if len(prints) != 1:
        raise DatasetError("The models were trained on different data.")
    return sorted(files[0]), prints.pop()


def _spread(items: list[str], count: int) -> list[str]:
    """`count` items evenly spaced through `items` (deterministic)."""
    if count >= len(items):
        return list(items)
    positions = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in positions]


def _one_per_group(files: list[str], label: int, count: int) -> list[str]:
    """Up to `count` files from different file-number groups (different patients)."""
    groups = file_number_groups(files, np.full(len(files), label), DEFAULT_BLOCK_SIZE)
    firsts: dict[str, str] = {}
    for file, group in zip(files, groups, strict=True):
        firsts.setdefault(group, file)
    return _spread(sorted(firsts.values()), count)


def build_demo_set(data_dir: Path, models: list[Path], out: Path, bundle_size: int = 300) -> str:
    data_dir, out = Path(data_dir), Path(out)
    folder = scan_image_folder(data_dir)
    val_files, model_print = _validation_files(models)
    if fingerprint(folder) != model_print:
        raise DatasetError(
            f"{data_dir} is not the data the models were trained on (fingerprints differ)."
        )
    by_class = {
        name: sorted(f for f in val_files if f.split("/", 1)[0] == name)
        for name in folder.class_names
    }
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-building-", dir=out.parent))
    try:
        size, count = _write_demo(data_dir, models, model_print, by_class, staging, bundle_size)
        _swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return f"demo set at {out}: {count[0]} samples, {count[1]} bundle slices, {size / 2**20:.2f} MB"


def _check_replaceable(out: Path) -> None:
    """A demo set replaces only a demo set: a folder of anything else is left alone."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a folder; choose another --out.")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise DatasetError(
            f"{out} holds files that are not a demo set (no manifest.json), so nothing was "
            "built and they were left as they are; choose a new or empty folder as --out."
        )


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename the finished set to `out`; an earlier demo set there is moved aside first and
    put back if the rename fails."""
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}-previous-", dir=out.parent))
    try:
        if out.exists():
            os.replace(out, aside / "previous")
        try:
            os.replace(staging, out)
        except OSError:
            if (aside / "previous").exists():
                os.replace(aside / "previous", out)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _write_demo(
    data_dir: Path,
    models: list[Path],
    model_print: str,
    by_class: dict[str, list[str]],
    staging: Path,
    bundle_size: int,
) -> tuple[int, tuple[int, int]]:
    """Write samples, bundle, README and manifest into `staging`: (bytes, (samples, bundle))."""
    per_class_bundle = bundle_size // len(by_class)
    manifest: dict[str, list[str]] = {"samples": [], "bundle": []}
    for label, files in enumerate(by_class.values()):
        for file in _one_per_group(files, label, SAMPLES_PER_CLASS):
            target = staging / "samples" / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data_dir / file, target)
            manifest["samples"].append(file)
        for file in _spread(files, per_class_bundle):
            _write_downsampled(data_dir / file, (staging / "bundle" / file).with_suffix(".png"))
            manifest["bundle"].append(file)
    size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    if size > MAX_DEMO_BYTES:
        raise DatasetError(f"The demo set would be {size / 2**20:.1f} MB; the limit is 5 MB.")
    command = "python -m ctdemo build-demo --data DATA_DIR"
    (staging / "README.md").write_text(
        LICENCE_TEXT.format(
            samples=len(manifest["samples"]),
            per_class=SAMPLES_PER_CLASS,
            bundle=len(manifest["bundle"]),
            side=BUNDLE_MAX_SIDE,
            command=command,
        )
    )
    (staging / "manifest.json").write_text(
        json.dumps(
            {
                "models": [m.name for m in models],
                "source_fingerprint": model_print,
                "command": command,
                **manifest,
            },
            indent=1,
        )
        + "\n"
    )
    return size, (len(manifest["samples"]), len(manifest["bundle"]))


def _write_downsampled(source: Path, target: Path) -> None:
    pixels = decode_slice(source.read_bytes(), source.name).pixels
    image = Image.fromarray(np.round(pixels * 255).astype(np.uint8), mode="L")
    image.thumbnail((BUNDLE_MAX_SIDE, BUNDLE_MAX_SIDE), Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, optimize=True)
