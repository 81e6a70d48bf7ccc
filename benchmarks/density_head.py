"""Does reading the density quantiles from a histogram, not a sort, change any answer?

    python benchmarks/density_head.py [DATA_DIR] [--splits 0 1 2] [--preset cnn]

`ctdemo.models.features.IntensityEdgeQuantiles` reads its quantiles from a histogram; before
2026-12 it sorted every pixel. This compares the two on DATA_DIR (default: the embedded demo
bundle):
1. the layer alone, warm medians per slice at the shipped CNN's 96 x 96, and how far the
   histogram's quantiles are from the sorted ones (in the shipped CNN's own normalisation);
2. every shipped model that reads the quantiles, the same weights with either head, on every
   slice: the largest change of a probability and the verdicts that change;
3. on each grouped split (seed 0, 1, 2), the Train page's CNN with the density head (`--preset`,
   48 px by default) trained twice, once with each head: validation accuracy on unseen patients.
Prints a table and writes benchmarks/results/density-head.json.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent

import numpy as np
import tensorflow as tf
from timing import median_seconds

import ctdemo.models.architectures as architectures
from ctdemo.app.train_settings import defaults
from ctdemo.config import DEMO_BUNDLE_DIR, WEIGHTS_DIR
from ctdemo.evaluation.splits import make_split
from ctdemo.io.folders import load_arrays
from ctdemo.models.features import EDGE_EPSILON, IntensityEdgeQuantiles, evenly_spaced_ranks
from ctdemo.models.inference import probabilities
from ctdemo.models.saving import load_model
from ctdemo.models.training import predict_logits, train


class SortedQuantiles(IntensityEdgeQuantiles):
    """The head as it was: every pixel and every edge strength sorted."""

    def call(self, slices):
        grey = slices[..., 0]
        height, width = grey.shape[1], grey.shape[2]
        dx = grey[:, :-1, 1:] - grey[:, :-1, :-1]
        dy = grey[:, 1:, :-1] - grey[:, :-1, :-1]
        edges = tf.reshape(
            tf.sqrt(dx * dx + dy * dy + EDGE_EPSILON), (-1, (height - 1) * (width - 1))
        )
        intensities = tf.reshape(grey, (-1, height * width))
        return tf.concat(
            [
                tf.gather(
                    tf.sort(intensities),
                    evenly_spaced_ranks(height * width, self.quantiles),
                    axis=1,
                ),
                tf.gather(
                    tf.sort(edges), evenly_spaced_ranks(edges.shape[1], self.quantiles), axis=1
                ),
            ],
            axis=-1,
        )


def layer_speed(x: np.ndarray) -> dict:
    batch = tf.constant(x[:128])
    histogram = tf.function(IntensityEdgeQuantiles())
    sorted_ = tf.function(SortedQuantiles())

    def ms_per_slice(layer) -> float:
        return 1e3 * median_seconds(lambda: np.asarray(layer(batch)), 7, warm=True) / len(batch)

    return {
        "histogram_ms_per_slice": ms_per_slice(histogram),
        "sort_ms_per_slice": ms_per_slice(sorted_),
    }


def with_sorted_head(model):
    """The same weights, the distribution layer swapped for the sorting one."""
    layer = model.get_layer("distribution")
    layer.call = SortedQuantiles.call.__get__(layer)
    model.make_predict_function(force=True)
    return model


def shipped_models(data_dir: Path) -> dict:
    rows = {}
    for name in ("cnn", "mlp"):
        path = WEIGHTS_DIR / f"{name}.keras"
        model, card = load_model(path)
        if "distribution" not in card.architecture.get("features", ""):
            continue
        x = load_arrays(data_dir, card.image_size).x
        fast = probabilities(model, x)
        exact = probabilities(with_sorted_head(load_model(path)[0]), x)
        norm = model.get_layer("distribution_norm")
        scale = np.sqrt(norm.moving_variance.numpy() + norm.epsilon)
        features = np.asarray(model.get_layer("distribution")(x[:256]))
        sorted_features = np.asarray(SortedQuantiles()(x[:256]))
        rows[name] = {
            "slices": len(x),
            "max_probability_change": float(np.abs(fast - exact).max()),
            "median_probability_change": float(np.median(np.abs(fast - exact))),
            "verdicts_changed": int((fast.argmax(1) != exact.argmax(1)).sum()),
            "max_feature_error_in_norm_units": float(
                (np.abs(features - sorted_features) / scale).max()
            ),
        }
    return rows


def accuracy_per_split(data_dir: Path, preset: str, seeds: list[int]) -> dict:
    base = replace(defaults(preset), density=True)
    data = load_arrays(data_dir, base.size)
    rows = {}
    for seed in seeds:
        settings = replace(base, seed=seed)
        split = make_split(data, settings.split_spec())
        row = {}
        for head, layer in (("sort", SortedQuantiles), ("histogram", IntensityEdgeQuantiles)):
            architectures.IntensityEdgeQuantiles = layer
            result = train(settings.config(), split.train, split.val)
            predicted = np.argmax(predict_logits(result.model, split.val.x), axis=-1)
            row[head] = float(np.mean(predicted == split.val.y))
        architectures.IntensityEdgeQuantiles = IntensityEdgeQuantiles
        rows[seed] = row
        print(seed, json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEMO_BUNDLE_DIR)
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="cnn", help="a CNN preset (ctdemo.models.specs)")
    args = parser.parse_args()
    results = {
        "layer": layer_speed(load_arrays(args.data, 96).x),
        "shipped": shipped_models(args.data),
        "splits": accuracy_per_split(args.data, args.preset, args.splits),
    }
    speed = results["layer"]
    print(
        f"\nthe layer at 96 x 96, warm median per slice: histogram "
        f"{speed['histogram_ms_per_slice']:.3f} ms, sort {speed['sort_ms_per_slice']:.3f} ms "
        f"({speed['sort_ms_per_slice'] / speed['histogram_ms_per_slice']:.1f}x)"
    )
    for name, row in results["shipped"].items():
        print(
            f"shipped {name}, {row['slices']} slices: largest probability change "
            f"{row['max_probability_change']:.4f} (median {row['median_probability_change']:.1e}), "
            f"{row['verdicts_changed']} verdicts changed; features within "
            f"{row['max_feature_error_in_norm_units']:.3f} of their normalisation's unit"
        )
    print(f"\n{args.preset} + density, grouped splits: validation accuracy, sort vs histogram")
    for seed, row in results["splits"].items():
        print(f"  split {seed}: {row['sort']:.1%}  {row['histogram']:.1%}")
    out = ROOT / "benchmarks" / "results" / "density-head.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"data": str(args.data), **results}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
