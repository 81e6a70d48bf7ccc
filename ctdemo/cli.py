"""`python -m ctdemo train | evaluate | predict | explain | download | build-demo`.

Exit codes: 0 success, 1 an error (one line on stderr, never a traceback), 2 a usage error
(one line too: every number is checked against its range before anything runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ctdemo.cli_parser import build_parser
from ctdemo.evaluation.numbers import shown as shown_number
from ctdemo.evaluation.volume_summary import RULES
from ctdemo.models.training_cost import CostLimits, check_cost, estimate

if TYPE_CHECKING:  # TensorFlow loads for the commands that need it, not for --help
    import tensorflow as tf

    from ctdemo.explain.files import ExplainedFile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported anywhere

TENSORFLOW_COMMANDS = ("train", "evaluate", "predict", "explain")
MACHINE_MEMORY_SHARE = 0.75
"""A training from the command line may use up to this share of the machine's memory: the
machine is its user's own, not a shared server's (`training_cost.SHARED_SERVER`)."""
MACHINE_SECONDS = 24 * 3600
"""The longest training the command line starts, at the shared server's speed (a day)."""
UNKNOWN_MEMORY = 8 * 2**30  # where the operating system does not say


class CliError(Exception):
    """Ends the command with one line on stderr and exit code 1."""


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """TensorFlow prints C++ start-up lines that ignore TF_CPP_MIN_LOG_LEVEL
    (tensorflow/tensorflow#100442); keep stderr for the one line a person needs."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _progress_bar(label: str, done: int, total: int | None, width: int = 30) -> None:
    if not sys.stderr.isatty() and total and done < total:
        return  # one line per epoch in logs, a live bar in a terminal
    if total:
        filled = int(width * done / total)
        bar = "#" * filled + "-" * (width - filled)
        text = f"\r{label} [{bar}] {done}/{total}"
    else:
        text = f"\r{label} {done / 2**20:.1f} MB"
    sys.stderr.write(text + ("\n" if total and done >= total else ""))
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "shortcut_validation", "clean") != "clean" and args.shortcut is None:
        parser.error("--shortcut-validation needs --shortcut")
    handlers = {
        "train": _train,
        "evaluate": _evaluate,
        "predict": _predict,
        "explain": _explain,
        "download": _download,
        "build-demo": _build_demo,
    }
    try:
        if args.command in TENSORFLOW_COMMANDS:
            with _native_stderr_silenced():
                import tensorflow  # noqa: F401
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one line for a person, never a traceback
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1


def _train(args: argparse.Namespace) -> int:
    strategy = _strategy(args.distribute)  # first: before TensorFlow starts its devices
    from dataclasses import replace

    from ctdemo.evaluation.splits import SplitSpec
    from ctdemo.io.folders import scan_image_folder
    from ctdemo.models.experiment import save_run, train_on_folder
    from ctdemo.models.specs import PRESETS, TrainConfig

    if args.out.suffix != ".keras":
        raise CliError(f"--out must end in .keras, not {args.out.name}.")
    preset = PRESETS[args.arch]
    architecture = preset.architecture
    if args.dropout is not None:
        architecture = replace(architecture, dropout=args.dropout)
    if args.image_size is not None:
        architecture = replace(architecture, image_size=args.image_size)
    if args.members is not None:
        if architecture.kind != "cnn":
            raise CliError(f"--members applies to CNN presets only, not {args.arch}.")
        architecture = replace(architecture, members=args.members)
    config = TrainConfig(
        architecture=architecture,
        epochs=preset.epochs if args.epochs is None else args.epochs,
        learning_rate=preset.learning_rate if args.lr is None else args.lr,
        batch_size=preset.batch_size if args.batch_size is None else args.batch_size,
        patience=preset.patience if args.patience is None else args.patience,
        augment=preset.augment if args.augment is None else args.augment,
        weight_decay=preset.weight_decay,
        weight_averaging=(
            preset.weight_averaging if args.weight_averaging is None else args.weight_averaging
        ),
        seed=args.seed,
    )
    spec = SplitSpec(args.split, args.val_split, args.seed, args.block_size)
    shortcut = args.shortcut and replace(args.shortcut, validation=args.shortcut_validation)
    folder = scan_image_folder(args.data)  # lists the files; nothing is decoded yet
    classes = len(folder.class_names)
    cost = estimate(config, len(folder.files), classes, spec.val_fraction, shortcut is not None)
    check_cost(cost, machine_limits(), where="on this machine")
    started = time.perf_counter()

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        shown = " ".join(f"{key}={value:.4f}" for key, value in logs.items())
        print(f"epoch {epoch}/{config.epochs} {shown}", file=sys.stderr, flush=True)

    def on_batch(done: int, total: int) -> None:
        _progress_bar("  batches", done, total)

    result, card = train_on_folder(
        args.data,
        config,
        spec,
        args.out.stem,
        command=_command_line(),
        groups_csv=args.groups_csv,
        on_epoch=on_epoch,
        on_batch=on_batch,
        shortcut=shortcut,
        strategy=strategy,
    )
    if result.stop_reason == "nan":
        raise CliError(result.message)
    save_run(result, card, args.out)
    accuracy = card.validation["accuracy"]
    print(
        f"saved {args.out} (best epoch {result.best_epoch} of {result.epochs_run}, "
        f"{spec.method}-split validation accuracy {accuracy['value']:.3f} "
        f"[{accuracy['low']:.3f}, {accuracy['high']:.3f}], "
        f"{time.perf_counter() - started:.0f} s)"
    )
    if card.shortcut:
        clean, marked = card.shortcut["clean_accuracy"], card.shortcut["marked_accuracy"]
        print(
            f"planted shortcut ({card.shortcut['description']}): validation accuracy "
            f"{clean['value']:.3f} on clean slices, {marked['value']:.3f} on marked slices"
        )
    ood = card.data.get("ood", {})
    if "threshold" in ood:
        print(
            f"saved {ood['file']} (is-this-CT check: distance limit {ood['threshold']:.1f}, "
            f"accepts {ood['validation_acceptance']:.1%} of the validation slices)"
        )
    else:
        print(f"no is-this-CT check saved: {ood.get('error', 'not fitted')}", file=sys.stderr)
    return 0


def _strategy(name: str | None) -> tf.distribute.Strategy | None:
    """The `--distribute` strategy, on `CTDEMO_LOGICAL_CPUS` logical CPUs where that is set
    (a stand-in for several GPUs, used by the tests); None without the option."""
    if name is None:
        return None
    from ctdemo.models.distribution import LOGICAL_CPUS, make_strategy, split_cpu

    if os.environ.get(LOGICAL_CPUS):
        split_cpu(os.environ[LOGICAL_CPUS])
    if name == "multi-worker" and not os.environ.get("TF_CONFIG"):
        print(
            "note: no TF_CONFIG: multi-worker trains with this process as its only worker",
            file=sys.stderr,
        )
    with _native_stderr_silenced():
        return make_strategy(name)


def machine_limits() -> CostLimits:
    """What one command-line training may cost: a share of this machine's memory (its user's
    own, unlike the shared server's) and a day at the shared server's speed."""

    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        memory = UNKNOWN_MEMORY
    return CostLimits(memory_bytes=MACHINE_MEMORY_SHARE * memory, seconds=MACHINE_SECONDS)


def _command_line() -> str:
    return "python -m ctdemo " + shlex.join(sys.argv[1:])


def _evaluate(args: argparse.Namespace) -> int:
    from ctdemo.evaluation.numbers import shown
    from ctdemo.io.folders import load_arrays
    from ctdemo.models.experiment import evaluate
    from ctdemo.models.saving import load_model

    model, card = load_model(args.model)
    dataset = load_arrays(args.data, card.image_size)
    report = evaluate(model, card, dataset)
    report["skipped_files"] = [{"file": f, "reason": r} for f, r in dataset.skipped]
    if args.json:
        print(json.dumps(report, allow_nan=False))
        return 0
    print(
        f"{args.model.name} on {args.data}: {report['n']} slices "
        f"({len(dataset.skipped)} files skipped)"
    )
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc"):
        if key in report:
            value = report[key]
            interval = f"[{shown(value['low'], '{:.4f}')}, {shown(value['high'], '{:.4f}')}]"
            print(f"  {key:<12} {shown(value['value'], '{:.4f}')}  95% CI {interval}")
    print(f"  ECE          {shown(report['expected_calibration_error'], '{:.4f}')}")
    print(
        f"  confusion (rows true, columns predicted: {', '.join(card.class_names)}): "
        f"{report['confusion_matrix']}"
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ctdemo.io.scans import is_scan
    from ctdemo.models.inference import predict_files
    from ctdemo.models.saving import load_model

    model, card = load_model(args.model)
    scans = {path for path in args.files if is_scan(path)}
    plain = iter(predict_files(model, card, [path for path in args.files if path not in scans]))
    records = []
    for path in args.files:
        records += _scan_records(model, card, path) if path in scans else [next(plain).to_dict()]
    if args.json:
        print(json.dumps(records, allow_nan=False))
    else:
        for record in records:
            print(_predicted_line(record))
    failed = sum(_failed(record) for record in records)
    if failed:
        what = "files or volumes" if scans else "files"
        print(f"error: {failed} of {len(records)} {what} could not be classified", file=sys.stderr)
        return 1
    return 0


def _scan_records(model, card, path: str) -> list[dict]:
    """One record per volume in a scan (a series folder, a zip, a NIfTI file), or one error."""
    from ctdemo.io.scans import read_scan
    from ctdemo.io.volumes import RefusedSeries, VolumeError
    from ctdemo.models.volume_inference import classify_volume

    try:
        items = read_scan(path)
    except VolumeError as error:
        return [{"file": path, "error": str(error)}]
    records = []
    for item in items:
        if isinstance(item, RefusedSeries):
            records.append({"file": path, "volume": {"name": item.name}, "error": item.reason})
            continue
        prediction = classify_volume(model, card, item)
        summary = prediction.summary
        records.append(
            {
                "file": path,
                "volume": item.describe(),
                "class": prediction.positive_class,
                "slices": prediction.slice_records(),
                "summary": None if summary is None else summary.to_dict(),
            }
        )
    return records


def _failed(record: dict) -> bool:
    """A file, a series or a slice without a verdict."""
    slices = record.get("slices", [])
    return "error" in record or any("error" in item for item in slices)


def _predicted_line(record: dict) -> str:
    """One line per file or volume, as a person reads it."""
    volume = record.get("volume")
    where = record["file"] + (f" [{volume['name']}]" if volume else "")
    if "error" in record:
        return f"{where}: error: {record['error']}"
    if volume is None:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in record["probabilities"].items())
        return f"{where}: {record['predicted_class']} ({shown})"
    summary = record["summary"]
    scores = "no summary (the model has no positive class)"
    if summary is not None:
        scores = f"{record['class']}: " + ", ".join(
            f"{rule.name} {shown_number(summary[rule.name], '{:.3f}')}" for rule in RULES
        )
    notes = "".join(f"\n  note: {note}" for note in volume["notes"])
    return f"{where}: {volume['slices']} slices; {scores}{notes}"


def _explain(args: argparse.Namespace) -> int:
    from ctdemo.explain.files import explain_files
    from ctdemo.models.saving import load_model

    model, card = load_model(args.model)
    with warnings.catch_warnings():  # Score-CAM's batches trip a Keras input-structure warning
        warnings.filterwarnings("ignore", "The structure of `inputs`", UserWarning)
        records = explain_files(model, card, args.files, args.out, args.method, args.overwrite)
    if args.json:
        print(json.dumps([record.to_dict() for record in records], allow_nan=False))
    else:
        for record in records:
            print(_explained_line(record))
    failed = sum(record.error is not None for record in records)
    if failed:
        print(f"error: {failed} of {len(records)} files could not be explained", file=sys.stderr)
        return 1
    return 0


def _explained_line(record: ExplainedFile) -> str:
    """One file's verdict and the numbers that say how far to trust its heatmap."""
    if record.error is not None:
        return f"{record.file}: error: {record.error}"
    if record.lung_share is None:
        lungs = "lungs not found"
    else:
        lungs = f"heat inside the lungs {record.lung_share:.0%} (lungs {record.lung_area:.0%})"
    return (
        f"{record.file}: {record.predicted_class}, {record.method}, {lungs}, "
        f"deletion score {record.faithfulness:+.2f}"
    )


def _download(args: argparse.Namespace) -> int:
    from ctdemo.io.download import DEFAULT_URL, download_dataset

    try:
        dest = download_dataset(
            url=args.url or DEFAULT_URL,
            dest=args.dest,
            sha256=args.sha256,
            force=args.force,
            progress=lambda done, total: _progress_bar("download", done, total),
        )
    finally:
        sys.stderr.write("\n")  # end the progress line before any error line
    print(f"dataset ready at {dest}")
    return 0


def _build_demo(args: argparse.Namespace) -> int:
    from ctdemo.config import DEMO_DIR, WEIGHTS_DIR
    from ctdemo.io.demo import build_demo_set

    models = args.models or [WEIGHTS_DIR / "cnn.keras", WEIGHTS_DIR / "mlp.keras"]
    summary = build_demo_set(args.data, models, args.out or DEMO_DIR, args.bundle_size)
    print(summary)
    return 0
