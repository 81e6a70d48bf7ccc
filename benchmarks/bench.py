"""Speed and memory of ctdemo against the seed projects' ways, measured in one run.

    CTDEMO_DATA_DIR=../shared/data/sarscov2-ct python benchmarks/bench.py [--quick] [--predict-only]

Prints a table and writes benchmarks/results/bench.json. Every figure is a median over
repeats, with its baseline measured in the same run (absolute times on a shared 2-core
machine are noisy; ratios are what to quote).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent

import keras
import numpy as np
import tensorflow as tf
from PIL import Image
from timing import interleaved_median_seconds, median_seconds

from ctdemo.config import WEIGHTS_DIR, split_root
from ctdemo.io.folders import load_arrays, scan_image_folder
from ctdemo.io.slices import decode_slice, read_slice_file
from ctdemo.models.architectures import build_model
from ctdemo.models.inference import predict_files, probabilities, read_model_input
from ctdemo.models.saving import load_model
from ctdemo.models.specs import PRESETS, TrainConfig
from ctdemo.models.training import compile_model, input_pipeline


def seed2_cnn() -> keras.Model:
    """The second seed project's CNN exactly as its README lists it (255x255x3, 325,361
    parameters), with random weights: only its speed is measured."""
    inputs = keras.Input((255, 255, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for width in (128, 64, 32, 16):
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Dropout(0.2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def seed2_predict(model: keras.Model, files: list[str]) -> None:
    """The seed's way: PIL decode to RGB, resize to 255x255, predict in batches of 32."""
    for start in range(0, len(files), 32):
        batch = [
            np.asarray(Image.open(f).convert("RGB").resize((255, 255)), dtype=np.float32)
            for f in files[start : start + 32]
        ]
        model.predict_on_batch(np.stack(batch))


def bench_predict(files: list[str], repeats: int) -> dict:
    """Our predict against its parts and against seed-2, all timed in the same rounds."""
    from concurrent.futures import ThreadPoolExecutor

    model, card = load_model(WEIGHTS_DIR / "cnn.keras")
    seed = seed2_cnn()

    def decode_only(workers: int) -> None:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda f: decode_slice(read_slice_file(f), f), files))

    def inputs_only() -> np.ndarray:
        with ThreadPoolExecutor(2) as pool:
            return np.stack(list(pool.map(lambda f: read_model_input(f, card), files)))

    inputs = inputs_only()
    times = interleaved_median_seconds(
        {
            "ours": lambda: predict_files(model, card, files),
            "ours_1": lambda: predict_files(model, card, files, workers=1),
            "decode_2": lambda: decode_only(2),
            "decode_1": lambda: decode_only(1),
            "inputs_2": inputs_only,
            "model": lambda: probabilities(model, inputs),
            "seed": lambda: seed2_predict(seed, files),
        },
        repeats,
        warm=True,  # traces every function first
    )
    n = len(files)
    return {
        "files": n,
        "ours_ms_per_slice": 1000 * times["ours"] / n,
        "ours_1_thread_ms_per_slice": 1000 * times["ours_1"] / n,
        "decode_only_ms_per_slice": 1000 * times["decode_2"] / n,
        "decode_only_1_thread_ms_per_slice": 1000 * times["decode_1"] / n,
        "inputs_only_ms_per_slice": 1000 * times["inputs_2"] / n,
        "model_only_ms_per_slice": 1000 * times["model"] / n,
        "seed2_ms_per_slice": 1000 * times["seed"] / n,
        "speedup_vs_seed2": times["seed"] / times["ours"],
        "decode_only_speedup_vs_seed2": times["seed"] / times["decode_2"],
        "ours_over_decode_only": times["ours"] / times["decode_2"],
        "ours_1_thread_over_decode_only_1_thread": times["ours_1"] / times["decode_1"],
    }


def epoch_seconds(name: str, train_dir: Path, epochs: int) -> tuple[float, int]:
    preset = PRESETS[name]
    data = load_arrays(train_dir, preset.architecture.image_size)
    config = TrainConfig(
        preset.architecture,
        epochs=epochs,
        batch_size=preset.batch_size,
        augment=preset.augment,
        weight_averaging=preset.weight_averaging,
    )
    model = build_model(preset.architecture, len(data.class_names))
    compile_model(model, config, len(data) // config.batch_size)
    pipeline = input_pipeline(data, config.batch_size, 0, True, config.augment)
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.fit(pipeline, epochs=1, verbose=0, shuffle=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]), model.count_params()


def seed_feeding_epoch_seconds(train_dir: Path, epochs: int) -> float:
    """The seeds' way: decode the files every epoch (image_dataset_from_directory, 150x150)
    into the first seed's MLP (4 hidden ReLU layers, dropout 0.5)."""
    dataset = keras.utils.image_dataset_from_directory(
        train_dir, image_size=(150, 150), batch_size=32, seed=0, verbose=False
    )
    inputs = keras.Input((150, 150, 3))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    for units in (256, 128, 64, 32):
        x = keras.layers.Dropout(0.5)(keras.layers.Dense(units, activation="relu")(x))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile("adam", "binary_crossentropy")
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def matmul_gflops() -> float:
    """Float32 matmul throughput of TensorFlow on this machine: the practical peak."""
    a = tf.random.normal((2048, 2048))
    b = tf.random.normal((2048, 2048))
    tf.matmul(a, b).numpy()
    seconds = median_seconds(lambda: tf.matmul(a, b).numpy(), 5)
    return 2 * 2048**3 / seconds / 1e9


def training_gflop_per_epoch(name: str, slices: int) -> float:
    """Forward FLOPs of the convolutions and dense layers, times 3 for forward + backward."""
    preset = PRESETS[name]
    model = build_model(preset.architecture, 2)
    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, out_channels = layer.output.shape
            in_channels = layer.input.shape[-1]
            flops += 2 * height * width * out_channels * in_channels * 9
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return 3 * flops * slices / 1e9


PEAK_MEMORY_PROBE = (
    "import sys\n"
    "from ctdemo.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "peak = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0]\n"
    "print(peak.split()[1], file=sys.stderr)\n"
    "sys.exit(code)\n"
)
"""Runs the CLI and reports its own high-water resident memory (VmHWM, in kB). Not
ru_maxrss of children: that counts the benchmark's own pages copied at fork time."""


def peak_memory_of_predict(files: list[str]) -> dict:
    """Peak resident memory of `python -m ctdemo predict` on the files, in its own process."""
    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        finished = subprocess.run(
            [
                sys.executable,
                "-c",
                PEAK_MEMORY_PROBE,
                "predict",
                "--model",
                str(WEIGHTS_DIR / "cnn.keras"),
                "--json",
                *files,
            ],
            cwd=ROOT,
            env=dict(os.environ, CTDEMO_HOME=home),
            check=True,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
    peak_kb = int(finished.stderr.strip().splitlines()[-1])
    return {"peak_rss_mb": peak_kb / 1024, "cli_seconds": seconds}


def model_load_seconds(repeats: int) -> dict:
    return {
        name: median_seconds(lambda n=name: load_model(WEIGHTS_DIR / f"{n}.keras"), repeats)
        for name in ("cnn", "mlp")
        if (WEIGHTS_DIR / f"{name}.keras").is_file()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and presets")
    parser.add_argument("--predict-only", action="store_true", help="only the predict figures")
    args = parser.parse_args()
    data_dir = os.environ.get("CTDEMO_DATA_DIR")
    if not data_dir:
        sys.exit("error: set CTDEMO_DATA_DIR to the SARS-CoV-2 CT-scan folder")
    train_dir, _ = split_root(Path(data_dir))
    folder = scan_image_folder(train_dir)
    rng = np.random.default_rng(0)
    files = [str(folder.files[i]) for i in sorted(rng.choice(len(folder.files), 200, False))]
    repeats, epochs = (2, 2) if args.quick else (5, 3)
    presets = ("cnn", "mlp") if args.quick else tuple(PRESETS)

    results: dict = {"machine": {"cpus": os.cpu_count(), "tensorflow": tf.__version__}}
    results["predict"] = bench_predict(files, repeats)
    if args.predict_only:
        print_predict(results["predict"])
        return
    results["memory"] = peak_memory_of_predict(files)
    results["model_load_seconds"] = model_load_seconds(repeats)
    results["matmul_gflops"] = matmul_gflops()
    results["epochs"] = {}
    for name in presets:
        seconds, parameters = epoch_seconds(name, train_dir, epochs)
        gflop = training_gflop_per_epoch(name, len(folder.files))
        results["epochs"][name] = {
            "seconds": seconds,
            "parameters": parameters,
            "achieved_gflops": gflop / seconds,
            "fraction_of_matmul_peak": gflop / seconds / results["matmul_gflops"],
        }
    results["seed_feeding_epoch_seconds"] = seed_feeding_epoch_seconds(train_dir, epochs)
    print_table(results)
    out = ROOT / "benchmarks" / "results" / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nJSON written to {out.relative_to(ROOT)}")


def print_table(results: dict) -> None:
    print_predict(results["predict"])
    print_memory_and_training(results)


def print_predict(p: dict) -> None:
    print(f"\npredict, {p['files']} files (median ms per slice, all timed in the same rounds)")
    rows = [
        ("ctdemo CNN, decode+preprocess+predict", "ours_ms_per_slice"),
        ("ctdemo CNN, one decoding thread", "ours_1_thread_ms_per_slice"),
        ("decode only (same 2 threads)", "decode_only_ms_per_slice"),
        ("decode only (1 thread)", "decode_only_1_thread_ms_per_slice"),
        ("decode+preprocess, no model (2 threads)", "inputs_only_ms_per_slice"),
        ("the model alone, on those inputs", "model_only_ms_per_slice"),
        ("seed-2 CNN at 255x255x3", "seed2_ms_per_slice"),
    ]
    for label, key in rows:
        print(f"  {label:<40} {p[key]:8.2f}")
    print(
        f"  speed-up over seed-2: {p['speedup_vs_seed2']:.1f}x   "
        f"ours / decode-only: {p['ours_over_decode_only']:.2f}x "
        f"(1 thread: {p['ours_1_thread_over_decode_only_1_thread']:.2f}x)"
    )
    print(
        f"  ceiling: decoding alone is {p['decode_only_speedup_vs_seed2']:.1f}x seed-2 "
        "(what a model costing nothing would reach)"
    )


def print_memory_and_training(results: dict) -> None:
    m = results["memory"]
    print(
        f"\npeak RSS of `ctdemo predict` on 200 files: {m['peak_rss_mb']:.0f} MB "
        f"({m['cli_seconds']:.1f} s including TensorFlow import)"
    )
    for name, seconds in results["model_load_seconds"].items():
        print(f"model load {name}: {1000 * seconds:.0f} ms")
    print(
        f"\ntraining, {results['machine']['cpus']} cores, matmul peak "
        f"{results['matmul_gflops']:.0f} GFLOP/s (median s per epoch on all slices)"
    )
    for name, e in results["epochs"].items():
        print(
            f"  {name:<12} {e['seconds']:7.2f} s  {e['parameters']:>9,} params  "
            f"{e['achieved_gflops']:6.1f} GFLOP/s ({e['fraction_of_matmul_peak']:.0%} of peak)"
        )
    print(
        f"  seeds' feeding (decode every epoch, 150x150 MLP) "
        f"{results['seed_feeding_epoch_seconds']:.2f} s"
    )


if __name__ == "__main__":
    main()
