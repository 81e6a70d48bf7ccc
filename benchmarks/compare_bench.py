"""How long the Compare page's evaluation takes: both shipped models on the embedded demo set.

    python benchmarks/compare_bench.py

Times, in one fresh process:
1. loading the two shipped models (TensorFlow import included), as the page's
   `st.cache_resource` does once per server;
2. `models.evaluate.evaluate_models` on the 300-slice demo bundle, twice: the first call (cold: the
   models have never predicted, so Keras traces them) and a second call of the library
   function itself (decode and predict again; warm models). The page caches the comparison
   (`st.cache_data`), so a cached call there is a dictionary lookup, not this second figure;
3. `evaluation.table.metrics_table` (1,000 bootstrap resamples), which the page also caches.

Also prints the median milliseconds per slice each model reports. Writes
benchmarks/results/compare.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent

from ctdemo.config import DEMO_BUNDLE_DIR, WEIGHTS_DIR
from ctdemo.evaluation.table import metrics_table
from ctdemo.models.evaluate import evaluate_models

SHIPPED = ("mlp", "cnn")


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    def load_both():
        from ctdemo.models.saving import load_model

        return {name: load_model(WEIGHTS_DIR / f"{name}.keras") for name in SHIPPED}

    models, load_seconds = timed(load_both)
    files = {name: WEIGHTS_DIR / f"{name}.keras" for name in SHIPPED}
    first, first_seconds = timed(evaluate_models, models, DEMO_BUNDLE_DIR, model_files=files)
    _, second_seconds = timed(evaluate_models, models, DEMO_BUNDLE_DIR, model_files=files)
    table, table_seconds = timed(metrics_table, first)
    accuracy = {row.key: row for row in table}["accuracy"]
    results = {
        "slices": first.n,
        "cpu_count": os.cpu_count(),
        "seconds_load_models": load_seconds,
        "seconds_evaluate_first_call": first_seconds,
        "seconds_evaluate_second_call": second_seconds,
        "seconds_metrics_table": table_seconds,
        "ms_per_slice": {name: r.footprint.ms_per_slice for name, r in first.models.items()},
        "accuracy": {name: value.value for name, value in accuracy.values.items()},
        "mcnemar_p": accuracy.comparisons[0].p_value,
    }
    print(f"both shipped models on the demo bundle ({first.n} slices), {os.cpu_count()} CPUs")
    print(f"  load the two models (TensorFlow import included)  {load_seconds:6.2f} s")
    print(f"  evaluate_models, first call (cold models)          {first_seconds:6.2f} s")
    print(f"  evaluate_models, second call (library, warm)       {second_seconds:6.2f} s")
    print(f"  metrics_table (1,000 bootstrap resamples)          {table_seconds:6.2f} s")
    print("  on the page both are cached: a repeat visit is a dictionary lookup")
    for name, ms in results["ms_per_slice"].items():
        print(f"  {name}: {ms:.2f} ms per slice, accuracy {results['accuracy'][name]:.1%}")
    print(f"  McNemar p (mlp vs cnn, accuracy): {results['mcnemar_p']:.2g}")
    out = ROOT / "benchmarks" / "results" / "compare.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
