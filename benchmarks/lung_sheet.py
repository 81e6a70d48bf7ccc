"""Check the lung segmentation by eye, and time it: a contact sheet of real training slices.

    python benchmarks/lung_sheet.py [--data DIR] [--per-class 30] [--seed 1]

Draws, for `--per-class` slices of each class drawn at random across the whole folder (so many
file-number blocks, i.e. many patients), the slice with its lung outline: red where the mask is
plausible, orange where `segment_lungs` flagged it. Writes benchmarks/results/lung-sheet.png and
prints how many were flagged and the median time per slice at its own size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

from ctdemo.explain.lungs import segment_lungs
from ctdemo.io.slices import decode_slice

TILE = (200, 150)
COLUMNS = 10


def tile(pixels: np.ndarray, mask: np.ndarray, ok: bool) -> np.ndarray:
    rgb = np.ascontiguousarray(np.dstack([pixels] * 3) * 255, dtype=np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, (230, 0, 0) if ok else (255, 150, 0), 2)
    return cv2.resize(rgb, TILE, interpolation=cv2.INTER_AREA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("CTDEMO_DATA_DIR", ROOT.parent / "shared/data/sarscov2-ct")
    parser.add_argument("--data", type=Path, default=Path(default))
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    train = args.data / "train" if (args.data / "train").is_dir() else args.data
    rng = np.random.default_rng(args.seed)
    files = []
    for folder in sorted(path for path in train.iterdir() if path.is_dir()):
        names = sorted(folder.glob("*.png"))
        files += [names[i] for i in sorted(rng.choice(len(names), args.per_class, replace=False))]

    tiles, seconds, flagged = [], [], []
    for path in files:
        pixels = decode_slice(path.read_bytes(), path.name).pixels
        started = time.perf_counter()
        lungs = segment_lungs(pixels)
        seconds.append(time.perf_counter() - started)
        if not lungs.ok:
            flagged.append(f"{path.parent.name}/{path.name}: {lungs.reason}")
        tiles.append(tile(pixels, lungs.mask, lungs.ok))
    while len(tiles) % COLUMNS:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i : i + COLUMNS]) for i in range(0, len(tiles), COLUMNS)]
    out = ROOT / "benchmarks" / "results" / "lung-sheet.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.vstack(rows)).save(out)
    median_ms = statistics.median(seconds) * 1e3
    print(f"{len(files)} slices, {len(flagged)} flagged; median {median_ms:.1f} ms per slice")
    for line in flagged:
        print("  flagged:", line)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
