"""The command line's grammar: every command and option, each number checked against its range
with a sentence before anything runs, and a usage error as one line (exit code 2).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from ctdemo.evaluation.shortcut import Shortcut, ShortcutError, ValidationMarking
from ctdemo.evaluation.splits import SPLIT_METHODS
from ctdemo.explain.methods import METHODS

PRESET_NAMES = ("mlp", "cnn", "cnn-large", "seed-1-mlp", "seed-2-cnn")
MAX_MEMBERS = 8  # an ensemble's training time and memory grow with its members
STRATEGIES = ("mirrored", "multi-worker")  # ctdemo.models.distribution makes them


class Parser(argparse.ArgumentParser):
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


def _shortcut(text: str) -> Shortcut:
    """`--shortcut KIND:CLASS:FRACTION`, checked before anything runs."""
    try:
        return Shortcut.parse(text)
    except ShortcutError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    """Every command and option of `python -m ctdemo`."""
    parser = Parser(
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
        choices=SPLIT_METHODS,
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
    train.add_argument(
        "--distribute",
        choices=STRATEGIES,
        help="fit under tf.distribute: mirrored (this machine's GPUs) or multi-worker "
        "(one worker for now); --batch-size stays the global batch (docs/distributed.md)",
    )

    evaluate = commands.add_parser("evaluate", help="metrics on every image of a folder")
    evaluate.add_argument("--model", type=Path, required=True, help="a .keras file with its card")
    evaluate.add_argument("--data", type=Path, required=True, help="image-folder dataset")
    evaluate.add_argument("--json", action="store_true", help="print JSON")

    predict = commands.add_parser(
        "predict", help="classify image or DICOM files, DICOM series and NIfTI volumes"
    )
    predict.add_argument("--model", type=Path, required=True, help="a .keras file with its card")
    predict.add_argument(
        "files",
        nargs="+",
        help="image or DICOM files; a folder or a .zip of a DICOM series; a .nii or .nii.gz volume",
    )
    predict.add_argument(
        "--json", action="store_true", help="print one JSON list (a volume: its slices and summary)"
    )

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
