"""The shortcut lab's experiment on a folder: does the page's CNN learn a planted square?

    python benchmarks/shortcut_lab.py [DATA_DIR] [--size 0.3] [--seed 0]

With DATA_DIR (default: the embedded demo bundle), the Train page's default CNN is trained
three times on the same grouped split: with a square on every COVID training slice and clean
validation, the same with flipped validation (the square on the non-COVID validation slices),
and clean. For each: its kept epoch, validation accuracy, the clean and marked validation
accuracy per epoch and at the kept epoch; then the Grad-CAM heat on the square over the marked
COVID validation slices, for the shortcut model against the clean model (paired Wilcoxon).
Prints a table and writes benchmarks/results/shortcut-lab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent

from ctdemo.app.train_settings import TrainSettings
from ctdemo.config import DEMO_BUNDLE_DIR
from ctdemo.evaluation.shortcut import Shortcut, ValidationMarking, plant
from ctdemo.evaluation.splits import make_split
from ctdemo.explain.marker import marker_heat
from ctdemo.explain.trust import estimate, paired_p_value
from ctdemo.io.folders import load_arrays
from ctdemo.models.experiment import train_on_arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEMO_BUNDLE_DIR)
    parser.add_argument("--size", type=float, default=0.3, help="the square's side, of the slice's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = TrainSettings(seed=args.seed)
    config, spec = settings.config(), settings.split_spec()
    data = load_arrays(args.data, config.architecture.image_size)
    square = Shortcut(size=args.size)
    runs = {
        "square, clean validation": square,
        "square, flipped validation": Shortcut(
            size=args.size, validation=ValidationMarking.FLIPPED
        ),
        "clean": None,
    }
    results, models = {}, {}
    for name, shortcut in runs.items():
        started = time.perf_counter()
        result, card = train_on_arrays(data, config, spec, name, shortcut=shortcut)
        models[name] = result.model
        results[name] = {
            "seconds": round(time.perf_counter() - started, 1),
            "kept_epoch": result.best_epoch,
            "epochs": result.epochs_run,
            "validation_accuracy": card.validation["accuracy"]["value"],
            "clean_curve": [round(v, 3) for v in result.history.get("clean_accuracy", [])],
            "marked_curve": [round(v, 3) for v in result.history.get("marked_accuracy", [])],
            "shortcut": {key: value for key, value in card.shortcut.items() if key != "warning"},
        }
    planted = plant(make_split(data, spec), square, args.seed)
    x, y = planted.marked.x[planted.carrying], planted.marked.y[planted.carrying]
    on_marker = marker_heat(models["square, clean validation"], x, y, planted.mask)
    clean_on_marker = marker_heat(models["clean"], x, y, planted.mask)
    heat = {
        "marker_area": float(planted.mask.mean()),
        "shortcut_model": asdict(estimate(on_marker)),
        "clean_model": asdict(estimate(clean_on_marker)),
        "wilcoxon_p": paired_p_value(on_marker, clean_on_marker),
    }
    print(
        f"data: {args.data} ({len(data)} slices), square {args.size} of the side, seed {args.seed}"
    )
    print(f"{'run':28} {'s':>6} {'kept':>5} {'val acc':>8} {'clean':>6} {'marked':>7}")
    for name, row in results.items():
        record = row["shortcut"]
        clean = record.get("clean_accuracy", {}).get("value", row["validation_accuracy"])
        marked = record.get("marked_accuracy", {}).get("value", float("nan"))
        print(
            f"{name:28} {row['seconds']:6.0f} {row['kept_epoch']:5d} "
            f"{row['validation_accuracy']:8.1%} {clean:6.1%} {marked:7.1%}"
        )
    print(
        f"heat on the square (it is {heat['marker_area']:.1%} of the slice): shortcut model "
        f"{heat['shortcut_model']['mean']:.1%}, clean model {heat['clean_model']['mean']:.1%}, "
        f"Wilcoxon p = {heat['wilcoxon_p']:.2g} over {len(on_marker)} slices"
    )
    out = ROOT / "benchmarks" / "results" / "shortcut-lab.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"data": str(args.data), "runs": results, "heat": heat}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
