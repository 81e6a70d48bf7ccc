"""How fast the Classify page answers, and what classifying costs in memory.

    python benchmarks/classify_bench.py [--repeats 15]

1. For each explanation method, the median time from an uploaded file's bytes to its
   prediction and overlay PNG with the shipped model (warm: models loaded, first call done):
   decode, out-of-distribution screen, predict, explain, map onto the slice, blend, encode.
   These are the steps the page runs (ctdemo.app.classify, ctdemo.explain.saliency and
   ctdemo.explain.overlay).
2. The resident memory of a process running the real page script (Streamlit's AppTest) after
   it classified twenty slices in one batch and explained one: what one server process holds.

Prints a table and writes benchmarks/results/classify.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent

from ctdemo.app import classify
from ctdemo.config import DEMO_SAMPLES_DIR, WEIGHTS_DIR
from ctdemo.explain.methods import METHOD_LABELS, to_slice_geometry
from ctdemo.explain.ood_model import feature_extractor, load_detector
from ctdemo.explain.overlay import blend, png_bytes
from ctdemo.explain.saliency import available_methods, explain
from ctdemo.models.inference import model_input
from ctdemo.models.saving import load_model

MEMORY_PROBE = """
import sys, resource

from pathlib import Path
from streamlit.testing.v1 import AppTest
files = sorted(Path({samples!r}).rglob("*.png"))
files = (files * 2)[:20]
app = AppTest.from_file({app!r}, default_timeout=300).run()
app.file_uploader(key="upload").set_value(
    [(f"{{i}}-{{p.name}}", p.read_bytes(), "image/png") for i, p in enumerate(files)]
).run()
assert not app.exception, app.exception
rows = len(app.dataframe[0].value)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(rows, status["VmRSS"].split()[0], status["VmHWM"].split()[0])
"""


def load_screen() -> tuple:
    """The page's "is this a CT slice?" check: the shipped CNN's features and detector."""
    model, card = load_model(WEIGHTS_DIR / "cnn.keras")
    detector = load_detector(WEIGHTS_DIR / "cnn.keras", model)
    return feature_extractor(model, detector.layer), detector, card.image_size


def bytes_to_overlay(data: bytes, name: str, model, card, screen, method: str) -> bytes:
    (result,) = classify.decode_files([(name, data)])
    classify.screen([result], *screen)
    classify.predict([result], model, card)
    class_index = card.class_names.index(result.predicted_class)
    heatmap = explain(model, model_input(result.pixels, card), method, class_index)
    on_slice = to_slice_geometry(heatmap, result.pixels.shape)
    return png_bytes(blend(result.pixels, on_slice, 0.45))


def time_methods(repeats: int) -> dict:
    samples = sorted(DEMO_SAMPLES_DIR.rglob("*.png"))
    screen = load_screen()
    figures = {}
    for name in ("cnn", "mlp"):
        model, card = load_model(WEIGHTS_DIR / f"{name}.keras")
        for method in available_methods(model):
            bytes_to_overlay(samples[0].read_bytes(), samples[0].name, model, card, screen, method)
            times = []
            for index in range(repeats):
                sample = samples[index % len(samples)]
                started = time.perf_counter()
                bytes_to_overlay(sample.read_bytes(), sample.name, model, card, screen, method)
                times.append(time.perf_counter() - started)
            figures[f"{name} {method}"] = statistics.median(times)
    return figures


def memory_after_twenty_slices() -> dict:
    probe = MEMORY_PROBE.format(samples=str(DEMO_SAMPLES_DIR), app=str(ROOT / "streamlit_app.py"))
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    rows, rss_kb, peak_kb = (int(value) for value in output[-3:])
    return {"slices": rows, "rss_mb": rss_kb / 1024, "peak_rss_mb": peak_kb / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    results = {"seconds_bytes_to_overlay": time_methods(args.repeats)}
    results["memory"] = memory_after_twenty_slices()
    print(f"bytes → prediction + overlay PNG, median of {args.repeats} (warm, 2 threads)")
    for key, seconds in results["seconds_bytes_to_overlay"].items():
        model, method = key.split(" ", 1)
        print(f"  {model:4s} {METHOD_LABELS[method]:22s} {seconds * 1000:7.0f} ms")
    memory = results["memory"]
    print(
        f"page process after classifying {memory['slices']} slices: "
        f"RSS {memory['rss_mb']:.0f} MB (peak {memory['peak_rss_mb']:.0f} MB)"
    )
    out = ROOT / "benchmarks" / "results" / "classify.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
