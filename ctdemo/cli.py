"""`python -m ctdemo train | evaluate | predict | explain | download | build-demo`.

Exit codes: 0 success, 1 an error (one line on stderr, never a traceback), 2 a usage error
(one line too: every number is checked against its range before anything runs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ctdemo.evaluation.shortcut import Shortcut, ShortcutError, ValidationMarking
from ctdemo.explain.methods import METHODS

if TYPE_CHECKING:  # TensorFlow loads for the commands that need it, not for --help
    from ctdemo.app.train_settings import CostLimits
    from ctdemo.explain.files import ExplainedFile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported anywhere

TENSORFLOW_COMMANDS = ("train", "evaluate", "predict", "explain")
PRESET_NAMES = ("mlp", "cnn", "cnn-large", "seed-1-mlp", "seed-2-cnn")
MAX_MEMBERS = 8  # an ensemble's training time and memory grow with its members
MACHINE_MEMORY_SHARE = 0.75
"""A training from the command line may use up to this share of the machine's memory: the
machine is its user's own, not a shared server's (`train_settings.SHARED_SERVER`)."""
MACHINE_SECONDS = 24 * 3600
"""The longest training the command line starts, at the shared server's speed (a day)."""
UNKNOWN_MEMORY = 8 * 2**30  # where the operating system does not say


class CliError(Exception):
    """Ends the command with one line on stderr and exit code 1."""


class _Parser(argparse.ArgumentParser):
    """A usage error as one line on stderr, then exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (usage: {self.prog} --help)\n")


def _number(kind: type, accept: Callable[[float], bool], wanted: str) -> Callable[[str], float]:
    """An argparse `type` that takes a finite `kind` (int or float) `accept` allows, and
    otherwise says what it wanted."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        finite = value is not None and (kind is int or math.isfinite(value))
        if not finite or not accept(value):
            shown = text if len(text) <= 20 else f"{text[:20]}…"
            raise argparse.ArgumentTypeError(f"give {wanted}, not {shown!r}")
        return value

    return parse


EPOCHS = _number(int, lambda v: 1 <= v <= 1000, "a whole number of epochs from 1 to 1000")
IMAGE_SIZE = _number(
    int,
    lambda v: 8 <= v <= 256,
    "a side from 8 to 256 pixels (below 8 a CNN's blocks have nothing left to pool; the "
    "memory a training needs grows with the square of the side, and the shipped models read "
    "48 to 96)",
)
BATCH_SIZE = _number(int, lambda v: 1 <= v <= 4096, "a batch size from 1 to 4096")
BLOCK_SIZE = _number(int, lambda v: v >= 1, "a whole number of files per group, 1 or more")
VAL_SPLIT = _number(float, lambda v: 0 < v < 1, "a fraction between 0 and 1, such as 0.2")
DROPOUT = _number(float, lambda v: 0 <= v < 1, "a dropout rate from 0 up to (not including) 1")
LEARNING_RATE = _number(float, lambda v: v > 0, "a learning rate above 0, such as 0.001")
PATIENCE = _number(int, lambda v: v >= 0, "a whole number of epochs, 0 (off) or more")
SEED = _number(int, lambda v: 0 <= v < 2**32, "a seed from 0 to 4294967295 (32 bits)")
MEMBERS = _number(int, lambda v: 1 <= v <= MAX_MEMBERS, f"1 to {MAX_MEMBERS} members")
BUNDLE_SIZE = _number(int, lambda v: v >= 1, "a whole number of slices, 1 or more")


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


def _shortcut(text: str) -> Shortcut:
    """`--shortcut KIND:CLASS:FRACTION`, checked before anything runs."""
    try:
        return Shortcut.parse(text)
    except ShortcutError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m ctdemo",
        description="Train, evaluate and use CT slice classifiers (teaching and research only).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model on an image folder and save it")
    train.add_argument("--arch", choices=PRESET_NAMES, required=True, help="model preset")
    train.add_argument("--data", type=Path, required=True, help="image-folder dataset")
    train.add_argument("--out", type=Path, required=True, help="where to save NAME.keras")
    train.add_argument(
        "--epochs", type=EPOCHS, help="maximum epochs, 1-1000 (default: the preset's)"
    )
    train.add_argument("--dropout", type=DROPOUT, help="dropout rate (default: the preset's)")
    train.add_argument("--lr", type=LEARNING_RATE, help="initial learning rate (cosine decay)")
    train.add_argument("--batch-size", type=BATCH_SIZE, help="batch size, 1-4096")
    train.add_argument("--image-size", type=IMAGE_SIZE, help="square input size, 8-256 pixels")
    train.add_argument(
        "--members",
        type=MEMBERS,
        help=f"CNNs trained side by side, logits averaged (1-{MAX_MEMBERS}; default: the preset's)",
    )
    train.add_argument("--val-split", type=VAL_SPLIT, default=0.2, help="validation fraction")
    train.add_argument(
        "--split",
        choices=("grouped", "random"),
        default="grouped",
        help="grouped keeps whole patients on one side (default); random leaks them",
    )
    train.add_argument("--block-size", type=BLOCK_SIZE, default=25, help="file numbers per group")
    train.add_argument("--groups-csv", type=Path, help="CSV with columns file,group")
    train.add_argument("--seed", type=SEED, default=0, help="random seed (model, split, data)")
    train.add_argument("--patience", type=PATIENCE, help="early-stopping patience; 0 turns it off")
    train.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="light augmentation (default: the preset's)",
    )
    train.add_argument(
        "--weight-averaging",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep an exponential moving average of the weights (default: the preset's)",
    )
    train.add_argument(
        "--shortcut",
        type=_shortcut,
        metavar="KIND:CLASS:FRACTION",
        help="plant a marker on a class's training slices, e.g. square:COVID:1.0 "
        "(kinds: square, letter, frame)",
    )
    train.add_argument(
        "--shortcut-validation",
        choices=[marking.value for marking in ValidationMarking],
        default=ValidationMarking.CLEAN.value,
        help="validation slices: clean (default), marked the same way, or flipped",
    )

    evaluate = commands.add_parser("evaluate", help="metrics on every image of a folder")
    evaluate.add_argument("--model", type=Path, required=True, help="a .keras file with its card")
    evaluate.add_argument("--data", type=Path, required=True, help="image-folder dataset")
    evaluate.add_argument("--json", action="store_true", help="print JSON")

    predict = commands.add_parser("predict", help="classify image or DICOM files")
    predict.add_argument("--model", type=Path, required=True, help="a .keras file with its card")
    predict.add_argument("files", nargs="+", help="image or DICOM files")
    predict.add_argument("--json", action="store_true", help="print one JSON list")

    explain = commands.add_parser(
        "explain", help="heatmaps of image or DICOM files, with how far to trust each"
    )
    explain.add_argument("--model", type=Path, required=True, help="a .keras file with its card")
    explain.add_argument("files", nargs="+", help="image or DICOM files")
    explain.add_argument(
        "--method",
        choices=METHODS,
        help="explanation method (default: Grad-CAM, or saliency for a model without convolutions)",
    )
    explain.add_argument("--out", type=Path, required=True, help="folder for the PNGs (created)")
    explain.add_argument("--overwrite", action="store_true", help="replace PNGs already there")
    explain.add_argument("--json", action="store_true", help="print one JSON list")

    download = commands.add_parser("download", help="download the full public dataset")
    download.add_argument("--url", help="archive URL (http, https or file)")
    download.add_argument("--dest", type=Path, help="destination folder")
    download.add_argument("--sha256", help="expected checksum of the archive")
    download.add_argument("--force", action="store_true", help="download again if present")

    demo = commands.add_parser(
        "build-demo", help="build the embedded demo set from the shipped models' validation split"
    )
    demo.add_argument("--data", type=Path, required=True, help="the data the models trained on")
    demo.add_argument("--models", type=Path, nargs="+", default=None, help="model files")
    demo.add_argument("--out", type=Path, default=None, help="demo folder to write")
    demo.add_argument("--bundle-size", type=BUNDLE_SIZE, default=300, help="slices in the bundle")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
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
    from dataclasses import replace

    from ctdemo.app.train_settings import check_cost, estimate
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
    cost = estimate(config, len(folder.files), len(folder.class_names), spec.val_fraction)
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


def machine_limits() -> CostLimits:
    """What one command-line training may cost: a share of this machine's memory (its user's
    own, unlike the shared server's) and a day at the shared server's speed."""
    from ctdemo.app.train_settings import CostLimits

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
    from ctdemo.models.inference import predict_files
    from ctdemo.models.saving import load_model

    model, card = load_model(args.model)
    predictions = predict_files(model, card, args.files)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], allow_nan=False))
    else:
        for p in predictions:
            if p.error:
                print(f"{p.file}: error: {p.error}")
            else:
                shown = ", ".join(f"{k} {v:.3f}" for k, v in p.probabilities.items())
                print(f"{p.file}: {p.predicted_class} ({shown})")
    failed = sum(p.error is not None for p in predictions)
    if failed:
        print(
            f"error: {failed} of {len(predictions)} files could not be classified", file=sys.stderr
        )
        return 1
    return 0


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
