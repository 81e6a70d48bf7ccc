"""Does cutting slices to the body change the shipped models; does the screen accept uncropped CT?

    CTDEMO_DATA_DIR=/work/shared/data/sarscov2-ct python benchmarks/body_crop.py

1. On every training slice: the share of the slice the crop (`ctdemo.io.body.crop_to_body`)
   cuts away, and how many it leaves exactly as they are.
2. The shipped CNN's and MLP's accuracy on their own grouped validation split (the files their
   card lists) without and with the crop, and McNemar's exact p on the paired answers.
3. The "is this CT?" screen (the shipped CNN's detector) on uncropped versions of the CNN's
   validation slices: each slice put off-centre in a black field twice its longer side, alone
   and with a bright table line under it; the share accepted without and with the crop.
Prints a table and the JSON, and writes benchmarks/results/body-crop.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent

import numpy as np

from ctdemo.config import WEIGHTS_DIR
from ctdemo.evaluation.metrics import mcnemar_exact
from ctdemo.explain.ood_model import extract_features, feature_extractor, load_detector
from ctdemo.io.body import MIN_REMOVED, crop_to_body
from ctdemo.io.slices import decode_slice, to_model_input
from ctdemo.models.inference import probabilities
from ctdemo.models.saving import load_model

TABLE_LEVEL = 0.9
"""The table line's grey level: as bright as soft tissue in the lung window."""


def train_dir() -> Path:
    data = os.environ.get("CTDEMO_DATA_DIR")
    if not data:
        raise SystemExit("Set CTDEMO_DATA_DIR to the SARS-CoV-2 CT dataset (train/ inside it).")
    return Path(data) / "train"


def decoded(root: Path, files: list[str]) -> list[np.ndarray]:
    return [decode_slice((root / name).read_bytes(), name).pixels for name in files]


def crop_changes(slices: list[np.ndarray]) -> dict:
    """How much of each slice the crop cuts away, and how many it leaves as they are."""
    start = time.perf_counter()
    crops = [crop_to_body(pixels) for pixels in slices]
    seconds = time.perf_counter() - start
    removed = np.array([1 - c.size / p.size for c, p in zip(crops, slices, strict=True)])
    return {
        "slices": len(slices),
        "unchanged": int(sum(c is p for c, p in zip(crops, slices, strict=True))),
        "near_identity": int(np.sum(removed < MIN_REMOVED)),
        "mean_removed": float(removed.mean()),
        "max_removed": float(removed.max()),
        "ms_per_slice": 1000 * seconds / len(slices),
    }


def accuracy_with_and_without(name: str, root: Path) -> dict:
    """The shipped model `name` on its validation files, without and with the crop."""
    model, card = load_model(WEIGHTS_DIR / f"{name}.keras")
    files = card.validation["files"]
    labels = np.array([card.class_names.index(file.split("/")[0]) for file in files])
    slices = decoded(root, files)
    correct = {}
    for crop in (False, True):
        x = np.stack([to_model_input(p, card.image_size, card.channels, crop) for p in slices])
        correct[crop] = np.argmax(probabilities(model, x), axis=1) == labels
    only_without, only_with, p_value = mcnemar_exact(correct[False], correct[True])
    return {
        "model": name,
        "validation_slices": len(files),
        "accuracy_without": float(correct[False].mean()),
        "accuracy_with": float(correct[True].mean()),
        "right_only_without": only_without,
        "right_only_with": only_with,
        "mcnemar_p": p_value,
    }


def uncropped(pixels: np.ndarray, table: bool, seed: int) -> np.ndarray:
    """`pixels` off-centre in a black field twice its longer side; `table`: a bright line
    under it, as wide as the field's middle half, as the scanner's table shows."""
    rng = np.random.default_rng(seed)
    height, width = pixels.shape
    side = 2 * max(height, width)
    field = np.zeros((side, side), dtype=np.float32)
    top = int(rng.integers(side // 16, side - height - side // 8))
    left = int(rng.integers(side // 16, side - width - side // 16))
    field[top : top + height, left : left + width] = pixels
    if table:
        line = top + height + max(3, side // 100)
        field[line : line + max(2, side // 200), side // 4 : 3 * side // 4] = TABLE_LEVEL
    return field


def screen_acceptance(root: Path) -> list[dict]:
    """The share of the CNN's validation slices the screen accepts, as they are and uncropped."""
    model, card = load_model(WEIGHTS_DIR / "cnn.keras")
    detector = load_detector(WEIGHTS_DIR / "cnn.keras", model)
    extractor = feature_extractor(model, detector.layer)
    slices = decoded(root, card.validation["files"])
    variants = {
        "as shipped (cut to the body)": slices,
        "in a black field": [uncropped(p, False, i) for i, p in enumerate(slices)],
        "in a black field, table line": [uncropped(p, True, i) for i, p in enumerate(slices)],
    }
    rows = []
    for variant, images in variants.items():
        row = {"slices": variant, "n": len(images)}
        for crop in (False, True):
            x = np.stack([to_model_input(p, card.image_size, body_crop=crop) for p in images])
            results = detector.assess(extract_features(extractor, x), x.reshape(len(x), -1).std(1))
            row["accepted_with" if crop else "accepted_without"] = float(
                np.mean([not result.flagged for result in results])
            )
        rows.append(row)
    return rows


def main() -> None:
    root = train_dir()
    files = sorted(path.relative_to(root).as_posix() for path in root.rglob("*.png"))
    report = {
        "crop": crop_changes(decoded(root, files)),
        "accuracy": [accuracy_with_and_without(name, root) for name in ("cnn", "mlp")],
        "screen": screen_acceptance(root),
    }
    crop = report["crop"]
    print(
        f"training slices {crop['slices']}: left as they are {crop['unchanged']}, "
        f"near-identity (< {MIN_REMOVED:.0%} cut) {crop['near_identity']}, mean cut away "
        f"{crop['mean_removed']:.4%}, most {crop['max_removed']:.1%}, "
        f"{crop['ms_per_slice']:.1f} ms a slice"
    )
    print(
        f"\n{'model':6} {'n':>4} {'without':>8} {'with':>8} {'only w/o':>9} {'only w/':>8} {'p':>6}"
    )
    for row in report["accuracy"]:
        print(
            f"{row['model']:6} {row['validation_slices']:4d} {row['accuracy_without']:8.2%} "
            f"{row['accuracy_with']:8.2%} {row['right_only_without']:9d} "
            f"{row['right_only_with']:8d} {row['mcnemar_p']:6.3f}"
        )
    print(f"\n{'screened slices':32} {'n':>4} {'accepted w/o crop':>18} {'with crop':>10}")
    for row in report["screen"]:
        print(
            f"{row['slices']:32} {row['n']:4d} {row['accepted_without']:18.1%} "
            f"{row['accepted_with']:10.1%}"
        )
    text = json.dumps(report, indent=1)
    print(text)
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "body-crop.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
