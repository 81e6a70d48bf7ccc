"""`python -m ctdemo train | evaluate | predict | download | build-demo`.

Exit codes: 0 success, 1 an error (one line on stderr, never a traceback), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported anywhere

TENSORFLOW_COMMANDS = ("train", "evaluate", "predict")
PRESET_NAMES = ("mlp", "cnn", "cnn-large", "seed-1-mlp", "seed-2-cnn")
MAX_MEMBERS = 8  # an ensemble's training time and memory grow with its members


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ctdemo",
        description="Train, evaluate and use CT slice classifiers (teaching and research only).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model on an image folder and save it")
    train.add_argument("--arch", choices=PRESET_NAMES, required=True, help="model preset")
    train.add_argument("--data", type=Path, required=True, help="image-folder dataset")
    train.add_argument("--out", type=Path, required=True, help="where to save NAME.keras")
    train.add_argument("--epochs", type=int, help="maximum epochs (default: the preset's)")
    train.add_argument("--dropout", type=float, help="dropout rate (default: the preset's)")
    train.add_argument("--lr", type=float, help="initial learning rate (cosine decay)")
    train.add_argument("--batch-size", type=int, help="batch size")
    train.add_argument("--image-size", type=int, help="square input size in pixels")
    train.add_argument(
        "--members",
        type=int,
        help=f"CNNs trained side by side, logits averaged (1-{MAX_MEMBERS}; default: the preset's)",
    )
    train.add_argument("--val-split", type=float, default=0.2, help="validation fraction")
    train.add_argument(
        "--split",
        choices=("grouped", "random"),
        default="grouped",
        help="grouped keeps whole patients on one side (default); random leaks them",
    )
    train.add_argument("--block-size", type=int, default=25, help="file numbers per group")
    train.add_argument("--groups-csv", type=Path, help="CSV with columns file,group")
    train.add_argument("--seed", type=int, default=0, help="random seed (model, split, data)")
    train.add_argument("--patience", type=int, help="early-stopping patience; 0 turns it off")
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

    evaluate = commands.add_parser("evaluate", help="metrics on every image of a folder")
    evaluate.add_argument("--model", type=Path, required=True, help="a .keras file with its card")
    evaluate.add_argument("--data", type=Path, required=True, help="image-folder dataset")
    evaluate.add_argument("--json", action="store_true", help="print JSON")

    predict = commands.add_parser("predict", help="classify image or DICOM files")
    predict.add_argument("--model", type=Path, required=True, help="a .keras file with its card")
    predict.add_argument("files", nargs="+", help="image or DICOM files")
    predict.add_argument("--json", action="store_true", help="print one JSON list")

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
    demo.add_argument("--bundle-size", type=int, default=300, help="slices in the bundle")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {
        "train": _train,
        "evaluate": _evaluate,
        "predict": _predict,
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

    from ctdemo.experiment import save_run, train_on_folder
    from ctdemo.models import PRESETS
    from ctdemo.splits import SplitSpec
    from ctdemo.training import TrainConfig

    if args.out.suffix != ".keras":
        raise CliError(f"--out must end in .keras, not {args.out.name}.")
    preset = PRESETS[args.arch]
    architecture = preset.architecture
    if args.dropout is not None:
        architecture = replace(architecture, dropout=args.dropout)
    if args.image_size is not None:
        architecture = replace(architecture, image_size=args.image_size)
    if args.members is not None:
        if architecture.kind != "cnn" or not 1 <= args.members <= MAX_MEMBERS:
            raise CliError(f"--members takes 1 to {MAX_MEMBERS} and applies to CNN presets only.")
        architecture = replace(architecture, members=args.members)
    config = TrainConfig(
        architecture=architecture,
        epochs=args.epochs or preset.epochs,
        learning_rate=args.lr or preset.learning_rate,
        batch_size=args.batch_size or preset.batch_size,
        patience=preset.patience if args.patience is None else args.patience,
        augment=preset.augment if args.augment is None else args.augment,
        weight_decay=preset.weight_decay,
        weight_averaging=(
            preset.weight_averaging if args.weight_averaging is None else args.weight_averaging
        ),
        seed=args.seed,
    )
    spec = SplitSpec(args.split, args.val_split, args.seed, args.block_size)
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
    ood = card.data.get("ood", {})
    if "threshold" in ood:
        print(
            f"saved {ood['file']} (is-this-CT check: distance limit {ood['threshold']:.1f}, "
            f"accepts {ood['validation_acceptance']:.1%} of the validation slices)"
        )
    else:
        print(f"no is-this-CT check saved: {ood.get('error', 'not fitted')}", file=sys.stderr)
    return 0


def _command_line() -> str:
    return "python -m ctdemo " + shlex.join(sys.argv[1:])


def _evaluate(args: argparse.Namespace) -> int:
    from ctdemo.cards import load_model
    from ctdemo.data import load_arrays
    from ctdemo.experiment import evaluate

    model, card = load_model(args.model)
    dataset = load_arrays(args.data, card.image_size)
    report = evaluate(model, card, dataset)
    report["skipped_files"] = [{"file": f, "reason": r} for f, r in dataset.skipped]
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"{args.model.name} on {args.data}: {report['n']} slices "
        f"({len(dataset.skipped)} files skipped)"
    )
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc"):
        if key in report:
            value = report[key]
            interval = f"[{value['low']:.4f}, {value['high']:.4f}]"
            print(f"  {key:<12} {value['value']:.4f}  95% CI {interval}")
    print(f"  ECE          {report['expected_calibration_error']:.4f}")
    print(
        f"  confusion (rows true, columns predicted: {', '.join(card.class_names)}): "
        f"{report['confusion_matrix']}"
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ctdemo.cards import load_model
    from ctdemo.inference import predict_files

    model, card = load_model(args.model)
    predictions = predict_files(model, card, args.files)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions]))
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


def _download(args: argparse.Namespace) -> int:
    from ctdemo.download import DEFAULT_URL, download_dataset

    dest = download_dataset(
        url=args.url or DEFAULT_URL,
        dest=args.dest,
        sha256=args.sha256,
        force=args.force,
        progress=lambda done, total: _progress_bar("download", done, total),
    )
    sys.stderr.write("\n")
    print(f"dataset ready at {dest}")
    return 0


def _build_demo(args: argparse.Namespace) -> int:
    from ctdemo.demo import build_demo_set
    from ctdemo.paths import DEMO_DIR, WEIGHTS_DIR

    models = args.models or [WEIGHTS_DIR / "cnn.keras", WEIGHTS_DIR / "mlp.keras"]
    summary = build_demo_set(args.data, models, args.out or DEMO_DIR, args.bundle_size)
    print(summary)
    return 0
