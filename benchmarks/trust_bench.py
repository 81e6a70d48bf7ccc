"""Can the shipped models' heatmaps be trusted? Lungs, faithfulness and sanity on the demo set.

    python benchmarks/trust_bench.py [--limit 60] [--sanity 12] [--repeats 15] [--page-only]

For each shipped model and each of its explanation methods, over the first `--limit` slices of
the embedded demo bundle (patients the models never trained on), each explained for its true
class:
- heat inside the lungs against the lungs' share of the slice (`ctdemo.explain.lungs`), mean and 95%
  bootstrap interval, and the median over slices of their ratio;
- faithfulness: the deletion score against a random order (`ctdemo.explain.faithfulness`);
- sanity: the rank correlation between the trained model's map and the fully randomised
  model's (`ctdemo.explain.sanity`), on the first `--sanity` slices.
Then warm medians of the steps Classify adds: segmentation (at the slice's own size), the
deletion curve, and a whole `trust.assess` (explain, segment, delete); and of each step of the
Classify page's result for a new upload on the shipped CNN with Grad-CAM, uncached as a new
slice is (decode, predict, screen, explain, segment, deletion curve, draw), and their sum.
`--page-only` measures the page's steps alone. Prints tables and writes
benchmarks/results/trust.json (trust-page.json with `--page-only`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent

import numpy as np
from timing import median_seconds

from ctdemo.app import classify
from ctdemo.app.samples import sample_scans
from ctdemo.config import DEMO_BUNDLE_DIR, WEIGHTS_DIR
from ctdemo.explain.faithfulness import deletion_curve
from ctdemo.explain.lungs import segment_lungs
from ctdemo.explain.methods import METHOD_LABELS, to_slice_geometry
from ctdemo.explain.ood_model import feature_extractor, load_detector
from ctdemo.explain.overlay import blend, colourise, outline, png_bytes
from ctdemo.explain.saliency import available_methods, explain
from ctdemo.explain.sanity import cascading_randomisation
from ctdemo.explain.trust import assess, estimate
from ctdemo.io.folders import scan_image_folder
from ctdemo.io.slices import decode_slice
from ctdemo.models.inference import model_input, probabilities
from ctdemo.models.saving import load_model


def interval(values: list) -> str:
    result = estimate(values)
    if result is None:
        return "n/a"
    return f"{result.mean:.3f} ({result.low:.3f}-{result.high:.3f})"


def as_dict(values: list) -> dict | None:
    result = estimate(values)
    return None if result is None else result.__dict__


def page_steps(repeats: int) -> dict[str, float]:
    """Warm medians (ms) of what Classify computes for one new upload on the shipped CNN with
    Grad-CAM, each step uncached, as for a slice the page has not seen; "total" is their sum."""
    model, card = load_model(WEIGHTS_DIR / "cnn.keras")
    extractor, detector = None, load_detector(WEIGHTS_DIR / "cnn.keras", model)
    if detector is not None:
        extractor = feature_extractor(model, detector.layer)
    path = sample_scans()[0].path
    files = [(path.name, path.read_bytes())]
    [result] = classify.decode_files(files)
    classify.predict([result], model, card)
    index = card.class_names.index(result.predicted_class)
    x = model_input(result.pixels, card)
    heatmap = explain(model, x, "gradcam", index)
    on_slice = to_slice_geometry(heatmap, result.pixels.shape)
    mask = segment_lungs(result.pixels).mask

    def draw() -> None:  # the three images, the outline and the PNG for download
        colourise(on_slice, "viridis")
        png_bytes(outline(blend(result.pixels, on_slice, 0.45, "viridis"), mask))

    steps = {
        "decode": lambda: classify.decode_files(files),
        "predict": lambda: classify.predict([result], model, card),
        "explain": lambda: to_slice_geometry(explain(model, x, "gradcam", index), on_slice.shape),
        "segment": lambda: segment_lungs(result.pixels),
        "deletion_curve": lambda: deletion_curve(
            lambda batch: probabilities(model, batch)[:, index], x, heatmap
        ),
        "draw": draw,
    }
    if detector is not None:
        steps["screen"] = lambda: classify.screen([result], extractor, detector, card.image_size)
    timings = {name: 1e3 * median_seconds(step, repeats, warm=True) for name, step in steps.items()}
    timings["total"] = sum(timings.values())
    return timings


def print_timings(title: str, timings: dict[str, float]) -> None:
    print(f"\n{title}:")
    for key, value in timings.items():
        print(f"  {key:<20} {value:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--sanity", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--page-only", action="store_true")
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    page = page_steps(args.repeats)
    print_timings("warm medians of the Classify result for a new upload (CNN, Grad-CAM)", page)
    if args.page_only:
        (out / "trust-page.json").write_text(json.dumps({"classify_page_ms": page}, indent=1))
        print(f"wrote {out / 'trust-page.json'}")
        return
    folder = scan_image_folder(DEMO_BUNDLE_DIR)
    step = max(1, len(folder.files) // args.limit)  # spread over both classes and many blocks
    chosen = list(range(0, len(folder.files), step))[: args.limit]
    slices = [
        (decode_slice(folder.files[i].read_bytes(), folder.files[i].name).pixels, folder.labels[i])
        for i in chosen
    ]
    results: dict = {"slices": len(slices), "models": {}}
    print(f"{len(slices)} demo-bundle slices, each explained for its true class\n")
    print(f"{'model':<5} {'method':<20} {'heat in lungs':>22} {'lung area':>22} {'ratio':>6} "
          f"{'deletion score':>22} {'sanity r':>22}")  # fmt: skip
    for name in ("cnn", "mlp"):
        model, card = load_model(WEIGHTS_DIR / f"{name}.keras")
        results["models"][name] = {}
        for method in available_methods(model):
            reports = [assess(model, card, pixels, method, int(label)) for pixels, label in slices]
            shares = [report.lung_share for report in reports]
            areas = [report.lung_area for report in reports]
            ratios = [s / a for s, a in zip(shares, areas, strict=True) if s is not None and a]
            scores = [report.faithfulness.score for report in reports]
            sanity = []
            for pixels, label in slices[: args.sanity]:
                steps = cascading_randomisation(
                    model, model_input(pixels, card), method, int(label)
                )
                sanity.append(steps[-1].correlation)
            row = {
                "lung_share": as_dict(shares),
                "lung_area": as_dict(areas),
                "median_ratio": statistics.median(ratios) if ratios else None,
                "deletion_score": as_dict(scores),
                "sanity_correlation": as_dict(sanity),
            }
            results["models"][name][method] = row
            ratio = f"{row['median_ratio']:.2f}" if ratios else "n/a"
            print(f"{name:<5} {METHOD_LABELS[method]:<20} {interval(shares):>22} "
                  f"{interval(areas):>22} {ratio:>6} {interval(scores):>22} "
                  f"{interval(sanity):>22}", flush=True)  # fmt: skip

    model, card = load_model(WEIGHTS_DIR / "cnn.keras")
    pixels, label = slices[0]
    x = model_input(pixels, card)
    heatmap = explain(model, x, "gradcam", int(label))

    def warm_ms(run) -> float:
        return 1e3 * median_seconds(run, args.repeats, warm=True)

    def score(batch):
        return probabilities(model, batch)[:, int(label)]

    timings = {
        "segmentation_ms": warm_ms(lambda: segment_lungs(pixels)),
        "deletion_curve_ms": warm_ms(lambda: deletion_curve(score, x, heatmap)),
        "assess_gradcam_ms": warm_ms(lambda: assess(model, card, pixels, "gradcam", int(label))),
    }
    results["timings_shipped_cnn"] = timings
    results["classify_page_ms"] = page
    print_timings("warm medians on the shipped CNN, one slice", timings)
    (out / "trust.json").write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {out / 'trust.json'}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
