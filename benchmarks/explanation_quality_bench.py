"""Which shipped model looks where the disease is: the Compare page's "where the models look".

    python benchmarks/explanation_quality_bench.py [--limit 60] [--repeats 2]

On the embedded demo bundle (patients the models never trained on): `--limit` slices spread
over both classes, as the page samples them (`quality.spread_sample`), each model explaining
its own prediction (`quality.compare_explanations`). Prints the page's table, the warm wall
time of the whole comparison (median of `--repeats`, after one warm-up on 3 slices) and writes
benchmarks/results/explanation_quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent

from ctdemo.config import DEMO_BUNDLE_DIR, WEIGHTS_DIR
from ctdemo.explain import quality
from ctdemo.io.folders import scan_image_folder
from ctdemo.models.saving import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    folder = scan_image_folder(DEMO_BUNDLE_DIR)
    files = [folder.relative(path) for path in folder.files]
    labels = [folder.class_names[label] for label in folder.labels]
    sample = [files[i] for i in quality.spread_sample(labels, args.limit)]
    models = {name: load_model(WEIGHTS_DIR / f"{name}.keras") for name in ("cnn", "mlp")}
    quality.compare_explanations(models, quality.read_slices(DEMO_BUNDLE_DIR, sample[:3]))
    runs = [
        quality.compare_explanations(models, quality.read_slices(DEMO_BUNDLE_DIR, sample))
        for _ in range(max(1, args.repeats))
    ]
    result, seconds = runs[-1], statistics.median(run.seconds for run in runs)
    print(f"{result.n} demo-bundle slices, warm: {seconds:.1f} s for both models\n")
    for row in result.rows():
        flat = row.flat(list(result.models))
        print(
            " | ".join(f"{value:<42}" if i == 0 else value for i, value in enumerate(flat.values()))
        )
    summary = {
        "slices": result.n,
        "seconds_warm": seconds,
        "models": {
            name: {
                "method": looks.method,
                **{
                    m: vars(looks.summary(m) or {})
                    for m in ("lung_share", "lung_area", "faithfulness")
                },
            }
            for name, looks in result.models.items()
        },
        "paired_tests": [vars(test) for test in result.tests],
    }
    out = ROOT / "benchmarks" / "results" / "explanation_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
