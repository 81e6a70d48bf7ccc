"""What the Train page's job path costs against a bare `model.fit`, measured in one run.

    CTDEMO_DATA_DIR=../shared/data/sarscov2-ct python benchmarks/train_bench.py [--epochs 4]

1. Submit to the first history point: a 'cnn' job on the embedded demo set (300 slices),
   from `TrainingQueue.submit` to the first epoch in `job.snapshot()`; first in the process
   (nothing traced yet, as for the first visitor of a fresh server) and again at the end.
2. Seconds per epoch of the 'cnn' and 'mlp' presets on the shared training data, on the
   grouped training split with validation every epoch:
   - plain: `model.fit` on the same pipelines, optimiser and batch size, no callbacks but a
     clock;
   - job: `TrainingQueue` + `TrainingJob` (progress every batch, stop flag, NaN check, best
     epoch kept, early-stopping watch, a snapshot polled every 50 ms as a page would);
   - job + attention timeline ('cnn' only): the same with a Grad-CAM frame every epoch.
   An epoch is timed from the end of the one before it (validation included), in wall and in
   process CPU seconds; the first epoch (tracing) is left out; medians over all rounds,
   variants interleaved round by round. Since a few percent drown in the noise of a shared
   machine, the job path's own work (its callbacks and the page's polls) is also timed
   directly, piece by piece, and set against a plain epoch.
3. Peak resident memory of the process during each training (VmHWM, reset before each).

Prints a table and writes benchmarks/results/train_bench.json. Absolute times on a shared
2-core machine are noisy; the ratios, measured side by side, are what to quote.
"""

from __future__ import annotations

import argparse
import collections
import functools
import itertools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent

import keras
import tensorflow as tf

from ctdemo.app.jobs import JobStatus, TrainingJob
from ctdemo.app.queue import TrainingQueue
from ctdemo.config import DEMO_BUNDLE_DIR, split_root
from ctdemo.evaluation.splits import SplitSpec, make_split
from ctdemo.io.folders import ArrayDataset, load_arrays
from ctdemo.models import training
from ctdemo.models.architectures import build_model
from ctdemo.models.specs import PRESETS, TrainConfig
from ctdemo.models.training import compile_model, input_pipeline

POLL_SECONDS = 0.05  # how often the page's fragment would read a snapshot


def preset_config(name: str, epochs: int) -> TrainConfig:
    preset = PRESETS[name]
    return TrainConfig(
        preset.architecture,
        epochs=epochs,
        learning_rate=preset.learning_rate,
        batch_size=preset.batch_size,
        patience=preset.patience,
        augment=preset.augment,
        weight_decay=preset.weight_decay,
        weight_averaging=preset.weight_averaging,
    )


def memory_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def reset_peak_memory() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _marks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _durations(marks: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    steps = [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(marks)]
    return [wall for wall, _ in steps], [cpu for _, cpu in steps]


class _Clock(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.marks = [_marks()]

    def on_epoch_end(self, epoch, logs=None):
        self.marks.append(_marks())


_job_marks: dict[str, list[tuple[float, float]]] = {}
_job_spent: dict[str, list[dict[str, float]]] = {}  # the running sums of _spent at epoch ends
_job_on_epoch = TrainingJob.on_epoch


def _on_epoch_marked(job: TrainingJob, epoch: int, logs: dict[str, float]) -> None:
    """The job's own epoch report, with the process's CPU time noted beside the wall time."""
    _job_marks.setdefault(job.id, []).append(_marks())
    _job_spent.setdefault(job.id, []).append(dict(_spent))
    _job_on_epoch(job, epoch, logs)


TrainingJob.on_epoch = _on_epoch_marked

_spent: collections.Counter[str] = collections.Counter()
"""Seconds spent in each piece of the job path's own work, summed over a run: measured
directly, since a few percent drown in the noise of a shared machine when two trainings'
epoch times are compared."""


def _timed(owner: type, method: str, key: str) -> None:
    original = getattr(owner, method)

    @functools.wraps(original)
    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            _spent[key] += time.perf_counter() - started

    setattr(owner, method, timed)


MACHINERY = {
    "progress + stop/NaN check, per batch": [(training._Reporter, "on_train_batch_end")],
    "history + attention hook, per epoch": [(training._Reporter, "on_epoch_end")],
    "keep the best epoch's weights": [(training._RestoreBest, "on_epoch_end")],
    "early-stopping watch": [(keras.callbacks.EarlyStopping, "on_epoch_end")],
    "weight-averaging swaps": [
        (keras.callbacks.SwapEMAWeights, name)
        for name in ("on_epoch_begin", "on_epoch_end", "on_test_begin", "on_test_end")
    ],
    "page polls (snapshot every 50 ms)": [(TrainingJob, "snapshot")],
}
for _key, _methods in MACHINERY.items():
    for _owner, _method in _methods:
        _timed(_owner, _method, _key)


def plain_fit(data: ArrayDataset, config: TrainConfig) -> dict:
    """The bare baseline: `model.fit` on the split's pipelines, timed per epoch."""
    split = make_split(data, SplitSpec())
    keras.utils.set_random_seed(config.seed)
    model = build_model(config.architecture, len(data.class_names))
    compile_model(model, config, math.ceil(len(split.train) / config.batch_size))
    clock = _Clock()
    reset_peak_memory()
    model.fit(
        input_pipeline(split.train, config.batch_size, config.seed, True, config.augment),
        validation_data=input_pipeline(split.val, 256, config.seed, False, False),
        epochs=config.epochs,
        callbacks=[clock],
        shuffle=False,
        verbose=0,
    )
    wall, cpu = _durations(clock.marks)
    return {
        "epoch_seconds": wall,
        "epoch_cpu_seconds": cpu,
        "peak_rss_mb": memory_kb("VmHWM") / 1024,
    }


def job_fit(queue: TrainingQueue, data: ArrayDataset, config: TrainConfig, attention: bool):
    """The job path, with a page-like poller reading snapshots while it trains."""
    reset_peak_memory()
    _spent.clear()
    started = _marks()
    job = queue.submit("bench", data, config, SplitSpec(), attention_slice=0 if attention else None)
    polls = 0
    while not job.wait(POLL_SECONDS):
        job.snapshot()
        polls += 1
    wall = time.perf_counter() - started[0]
    snapshot = job.snapshot()
    if snapshot.status != JobStatus.DONE:
        raise SystemExit(f"the benchmark job ended {snapshot.status}: {snapshot.message}")
    _, cpu = _durations([started, *_job_marks.pop(job.id)])
    sums = [{}, *_job_spent.pop(job.id)]
    result = {
        "machinery_seconds_by_epoch": {
            key: [b.get(key, 0.0) - a.get(key, 0.0) for a, b in itertools.pairwise(sums)]
            for key in MACHINERY
        },
        "epoch_seconds": list(snapshot.epoch_seconds),
        "epoch_cpu_seconds": cpu,
        "attention_seconds": job.attention_seconds,
        "frames": len(snapshot.frames),
        "job_wall_seconds": wall,
        "snapshots_polled": polls,
        "peak_rss_mb": memory_kb("VmHWM") / 1024,
    }
    queue.forget("bench")
    return result


def first_history_point(queue: TrainingQueue, data: ArrayDataset, epochs: int) -> dict:
    """Seconds from submit to the first batch and to the first epoch in a snapshot."""
    config = preset_config("cnn", epochs)
    started = time.perf_counter()
    job = queue.submit("first", data, config, SplitSpec())
    first_batch = None
    while True:
        snapshot = job.snapshot()
        if first_batch is None and snapshot.batch > 0:
            first_batch = time.perf_counter() - started
        if snapshot.epochs_done >= 1 or snapshot.finished:
            break
        time.sleep(0.005)
    first_epoch = time.perf_counter() - started
    job.stop()
    job.wait(120)
    queue.forget("first")
    return {"first_batch_seconds": first_batch, "first_epoch_seconds": first_epoch}


def median_after_first(runs: list[dict], key: str = "epoch_seconds") -> float:
    return statistics.median(value for run in runs for value in run[key][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per training (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each variant")
    args = parser.parse_args()
    data_dir = os.environ.get("CTDEMO_DATA_DIR")
    if not data_dir:
        sys.exit("error: set CTDEMO_DATA_DIR to the SARS-CoV-2 CT-scan folder")
    train_dir, _ = split_root(Path(data_dir))
    queue = TrainingQueue()
    started = time.perf_counter()

    demo = load_arrays(DEMO_BUNDLE_DIR, PRESETS["cnn"].architecture.image_size)
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "tensorflow": tf.__version__,
            "load_average_at_start": os.getloadavg()[0],
        },
        "epochs": args.epochs,
        "rounds": args.rounds,
        "first_history_point": {"demo_slices": len(demo)},
    }
    first = results["first_history_point"]
    first["cold"] = first_history_point(queue, demo, args.epochs)

    results["presets"] = {}
    for name in ("cnn", "mlp"):
        config = preset_config(name, args.epochs)
        data = load_arrays(train_dir, config.architecture.image_size)
        variants = ["plain", "job", "job+attention"] if name == "cnn" else ["plain", "job"]
        runs: dict[str, list[dict]] = {variant: [] for variant in variants}
        for _ in range(args.rounds):
            for variant in variants:
                if variant == "plain":
                    runs[variant].append(plain_fit(data, config))
                else:
                    runs[variant].append(job_fit(queue, data, config, variant != "job"))
        plain = median_after_first(runs["plain"])
        plain_cpu = median_after_first(runs["plain"], "epoch_cpu_seconds")
        entry = {"slices": len(data), "batch_size": config.batch_size, "variants": {}}
        for variant, variant_runs in runs.items():
            seconds = median_after_first(variant_runs)
            cpu = median_after_first(variant_runs, "epoch_cpu_seconds")
            fastest = min(s for run in variant_runs for s in run["epoch_seconds"][1:])
            entry["variants"][variant] = {
                "seconds_per_epoch": seconds,
                "overhead_vs_plain": seconds / plain - 1,
                "fastest_epoch_seconds": fastest,
                "cpu_seconds_per_epoch": cpu,
                "cpu_overhead_vs_plain": cpu / plain_cpu - 1,
                "peak_rss_mb": max(run["peak_rss_mb"] for run in variant_runs),
                "runs": variant_runs,
            }
        machinery = {  # medians of epochs 2 on: one-off costs (tracing) are left out
            key: statistics.median(
                value for run in runs["job"] for value in run["machinery_seconds_by_epoch"][key][1:]
            )
            for key in MACHINERY
        }
        entry["job_machinery"] = {
            "seconds_per_epoch": machinery,
            "total_over_plain_epoch": sum(machinery.values()) / plain,
        }
        if "job+attention" in runs:
            frame = statistics.median(
                s for run in runs["job+attention"] for s in run["attention_seconds"][1:]
            )
            job, attention = entry["variants"]["job"], entry["variants"]["job+attention"]
            entry["attention"] = {
                "frame_seconds": frame,
                "frame_over_job_epoch": frame / job["seconds_per_epoch"],
                "attention_over_job": attention["seconds_per_epoch"] / job["seconds_per_epoch"] - 1,
                "cpu_attention_over_job": (
                    attention["cpu_seconds_per_epoch"] / job["cpu_seconds_per_epoch"] - 1
                ),
            }
        results["presets"][name] = entry

    first["warm"] = first_history_point(queue, demo, args.epochs)
    results["total_seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    queue.shutdown()
    print_table(results)
    out = ROOT / "benchmarks" / "results" / "train_bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nJSON written to {out.relative_to(ROOT)}")


def print_table(results: dict) -> None:
    cpus, epochs, rounds = results["machine"]["cpus"], results["epochs"], results["rounds"]
    print(
        f"\nseconds per epoch (median of epochs 2-{epochs}, {rounds} rounds, {cpus} cores), "
        "overhead against plain model.fit in the same run"
    )
    print(
        f"  {'preset':<6} {'variant':<14} {'wall s':>7} {'overhead':>9} {'fastest':>8} "
        f"{'CPU s':>7} {'overhead':>9} {'peak RSS':>9}"
    )
    for name, entry in results["presets"].items():
        for variant, v in entry["variants"].items():
            plain = variant == "plain"
            wall = "" if plain else f"{v['overhead_vs_plain']:+.1%}"
            cpu = "" if plain else f"{v['cpu_overhead_vs_plain']:+.1%}"
            print(
                f"  {name:<6} {variant:<14} {v['seconds_per_epoch']:7.2f} {wall:>9} "
                f"{v['fastest_epoch_seconds']:8.2f} {v['cpu_seconds_per_epoch']:7.2f} {cpu:>9} "
                f"{v['peak_rss_mb']:6.0f} MB"
            )
        m = entry["job_machinery"]
        print(
            f"  {name:<6} job path's own work: "
            f"{1000 * sum(m['seconds_per_epoch'].values()):.1f} ms per epoch = "
            f"{m['total_over_plain_epoch']:.2%} of a plain epoch ("
            + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in m["seconds_per_epoch"].items())
            + ")"
        )
        if "attention" in entry:
            a = entry["attention"]
            print(
                f"  {name:<6} Grad-CAM frame: {1000 * a['frame_seconds']:.0f} ms, "
                f"{a['frame_over_job_epoch']:.1%} of a job epoch; job+attention against job: "
                f"{a['attention_over_job']:+.1%} wall, {a['cpu_attention_over_job']:+.1%} CPU"
            )
    f = results["first_history_point"]
    print(f"\nsubmit -> first history point, 'cnn' on the demo set ({f['demo_slices']} slices)")
    for when in ("cold", "warm"):
        print(
            f"  {when:<5} first batch {f[when]['first_batch_seconds']:5.2f} s   "
            f"first epoch {f[when]['first_epoch_seconds']:5.2f} s"
        )
    machine = results["machine"]
    print(
        f"\nwhole benchmark: {results['total_seconds']:.0f} s; load average "
        f"{machine['load_average_at_start']:.1f} at the start, "
        f"{machine['load_average_at_end']:.1f} at the end (other work on the same cores)"
    )


if __name__ == "__main__":
    main()
