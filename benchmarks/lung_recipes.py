"""Ask the models: does a recipe made to look at the lungs change accuracy and where the CNN looks?

    python benchmarks/lung_recipes.py [DATA_DIR] [--splits 0 1 2] [--epochs 20]
        [--preset cnn] [--recipes "whole slice" "lung crop"]

On each grouped split (seed 0, 1, 2) of DATA_DIR (default: the embedded demo bundle), the Train
page's default CNN (48 px; `--preset cnn-large` for the shipped CNN's architecture, with the
page's settings for it: batches of 16) is trained four ways (or the `--recipes` named), with
the rough lung mask of every slice (`ctdemo.explain.lungs.segment_lungs` at the model's input
size):
- whole slice: as today;
- masked in training: training slices with everything outside the lungs set to black,
  validated on whole slices (does it learn to look at the lungs, and does it still work?);
- lungs only: everything outside the lungs black in training and validation (how much of the
  signal lies inside the lungs at all);
- lung crop: each slice cropped to its lungs' bounding box (a margin of 2 px) and resized back,
  in training and validation (the context near the lungs kept, the rest of the body dropped).
For each: grouped-split validation accuracy, and over the validation slices the Grad-CAM heat
inside the lungs (for the true class, on the input as the model saw it) against the lungs'
share of that input: the mean share, the mean area and the median of their ratio.
Prints a table and writes benchmarks/results/lung-recipes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent

import cv2
import numpy as np

from ctdemo.app.train_settings import TrainSettings, defaults
from ctdemo.config import DEMO_BUNDLE_DIR
from ctdemo.evaluation.splits import make_split
from ctdemo.explain.lungs import heat_share, segment_lungs
from ctdemo.explain.saliency import gradcam_batch
from ctdemo.io.folders import ArrayDataset, load_arrays
from ctdemo.models.training import predict_logits, train

RECIPES = ("whole slice", "masked in training", "lungs only", "lung crop")
CROP_MARGIN = 2


def lung_masks(x: np.ndarray) -> np.ndarray:
    """(n, side, side) bool: each slice's lungs; a slice where none were found keeps all."""
    masks = []
    for image in x[..., 0]:
        lungs = segment_lungs(image)
        masks.append(lungs.mask if lungs.ok and lungs.mask.any() else np.ones_like(lungs.mask))
    return np.stack(masks)


def masked(data: ArrayDataset, masks: np.ndarray) -> ArrayDataset:
    return replace(data, x=data.x * masks[..., np.newaxis])


def cropped(data: ArrayDataset, masks: np.ndarray) -> tuple[ArrayDataset, np.ndarray]:
    """Each slice cut to its lungs' box (plus a margin) and resized back; the masks likewise."""
    side = data.x.shape[1]
    images, boxes = [], []
    for image, mask in zip(data.x[..., 0], masks, strict=True):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        top, bottom = max(0, rows[0] - CROP_MARGIN), min(side, rows[-1] + 1 + CROP_MARGIN)
        left, right = max(0, cols[0] - CROP_MARGIN), min(side, cols[-1] + 1 + CROP_MARGIN)
        size = (side, side)
        images.append(cv2.resize(image[top:bottom, left:right], size, interpolation=cv2.INTER_AREA))
        box = mask[top:bottom, left:right].astype(np.uint8)
        boxes.append(cv2.resize(box, size, interpolation=cv2.INTER_NEAREST).astype(bool))
    return replace(data, x=np.stack(images)[..., np.newaxis].astype(np.float32)), np.stack(boxes)


def recipe_data(recipe: str, train_data, val_data, train_masks, val_masks):
    """(training data, validation data, validation masks in the validation input's frame)."""
    if recipe == "whole slice":
        return train_data, val_data, val_masks
    if recipe == "masked in training":
        return masked(train_data, train_masks), val_data, val_masks
    if recipe == "lungs only":
        return masked(train_data, train_masks), masked(val_data, val_masks), val_masks
    train_crop, _ = cropped(train_data, train_masks)
    val_crop, val_crop_masks = cropped(val_data, val_masks)
    return train_crop, val_crop, val_crop_masks


def heat_inside(model, data: ArrayDataset, masks: np.ndarray) -> dict[str, float]:
    shares = []
    for start in range(0, len(data), 64):
        maps = gradcam_batch(model, data.x[start : start + 64], data.y[start : start + 64])
        shares += [heat_share(h, m) for h, m in zip(maps, masks[start : start + 64], strict=True)]
    areas = masks.reshape(len(masks), -1).mean(axis=1)
    ratios = [share / area for share, area in zip(shares, areas, strict=True) if area > 0]
    return {
        "heat_inside": float(np.mean(shares)),
        "lung_area": float(areas.mean()),
        "median_ratio": float(statistics.median(ratios)),
    }


def run(data: ArrayDataset, settings: TrainSettings, recipes: list[str]) -> dict[str, dict]:
    split = make_split(data, settings.split_spec())
    train_masks, val_masks = lung_masks(split.train.x), lung_masks(split.val.x)
    rows = {}
    for recipe in recipes:
        started = time.perf_counter()
        train_data, val_data, masks = recipe_data(
            recipe, split.train, split.val, train_masks, val_masks
        )
        result = train(settings.config(), train_data, val_data)
        predicted = np.argmax(predict_logits(result.model, val_data.x), axis=-1)
        rows[recipe] = {
            "accuracy": float(np.mean(predicted == val_data.y)),
            "best_epoch": result.best_epoch,
            "seconds": round(time.perf_counter() - started, 1),
            **heat_inside(result.model, val_data, masks),
        }
        print(settings.seed, recipe, json.dumps(rows[recipe]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEMO_BUNDLE_DIR)
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="default: the preset's (at most 60)")
    parser.add_argument("--preset", default="cnn", help="a CNN preset (ctdemo.models.specs)")
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    args = parser.parse_args()
    base = defaults(args.preset)
    if args.epochs:
        base = replace(base, epochs=args.epochs)
    data = load_arrays(args.data, base.size)
    results = {seed: run(data, replace(base, seed=seed), args.recipes) for seed in args.splits}
    print(f"\n{args.data}: {len(data)} slices, grouped splits {args.splits}, {args.preset}")
    print(
        f"{'recipe':20} {'accuracy (per split)':28} {'heat inside':>11} {'lungs':>6} {'ratio':>6}"
    )
    for recipe in args.recipes:
        rows = [results[seed][recipe] for seed in args.splits]
        accuracies = " ".join(f"{row['accuracy']:.1%}" for row in rows)
        heat = np.mean([row["heat_inside"] for row in rows])
        area = np.mean([row["lung_area"] for row in rows])
        ratio = np.median([row["median_ratio"] for row in rows])
        print(f"{recipe:20} {accuracies:28} {heat:11.1%} {area:6.1%} {ratio:6.2f}")
    out = ROOT / "benchmarks" / "results" / "lung-recipes.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"data": str(args.data), "results": results}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
