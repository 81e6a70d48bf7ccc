"""How much a random split of slices flatters accuracy on this dataset.

    CTDEMO_DATA_DIR=../shared/data/sarscov2-ct python benchmarks/leakage.py

A 1-nearest-neighbour lookup (32x32 pixels, cosine similarity) has no parameters to tune:
whatever it scores comes from near-duplicate slices of the same patient on both sides of the
split. It is scored under ctdemo's random and grouped splits for several seeds and block sizes.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import numpy as np

from ctdemo.config import split_root
from ctdemo.evaluation.splits import SplitSpec, file_number_groups, split_indices
from ctdemo.io.folders import load_arrays


def one_nn_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray) -> float:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    nearest = np.argmax(unit[val] @ unit[train].T, axis=1)
    return float(np.mean(y[train][nearest] == y[val]))


def main() -> None:
    data_dir = os.environ.get("CTDEMO_DATA_DIR")
    if not data_dir:
        sys.exit("error: set CTDEMO_DATA_DIR to the SARS-CoV-2 CT-scan folder")
    train_dir, _ = split_root(Path(data_dir))
    data = load_arrays(train_dir, 32)
    x = data.x.reshape(len(data), -1)
    x = x - x.mean(axis=1, keepdims=True)
    seeds = range(5)
    print(f"1-NN accuracy on {len(data)} slices, median over seeds {list(seeds)} (min-max)")
    rows = [("random", None)] + [("grouped", block) for block in (10, 25, 50)]
    for method, block in rows:
        scores = []
        for seed in seeds:
            groups = file_number_groups(data.files, data.y, block or 25)
            spec = SplitSpec(method, 0.2, seed, block or 25)
            train, val = split_indices(data.y, groups, spec)
            scores.append(one_nn_accuracy(x, data.y, train, val))
        label = method if block is None else f"grouped, blocks of {block}"
        print(
            f"  {label:<24} {statistics.median(scores):.3f} ({min(scores):.3f}-{max(scores):.3f})"
        )


if __name__ == "__main__":
    main()
