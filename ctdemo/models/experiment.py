"""The whole training run: dataset, split, fit, validation metrics, card, OOD detector.

Shared by the CLI and the Train page, so a model trained in the browser carries the same card
(and the same "is this a CT slice?" detector, `ctdemo.explain.ood`) as the shipped ones.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ctdemo.evaluation.metrics import classification_report
from ctdemo.evaluation.shortcut import PlantedSplit, Shortcut, plant
from ctdemo.evaluation.splits import SplitData, SplitSpec, make_split
from ctdemo.explain.marker import marker_heat
from ctdemo.explain.ood import OODDetector, ood_path
from ctdemo.explain.ood_model import detector_layer, fit_detector
from ctdemo.explain.trust import estimate
from ctdemo.io.folders import ArrayDataset, load_arrays
from ctdemo.models.architectures import last_conv_layer
from ctdemo.models.cards import ModelCard, default_positive_class, preprocessing_spec
from ctdemo.models.distribution import record
from ctdemo.models.inference import NOT_A_NUMBER, probabilities, slices_per_batch
from ctdemo.models.saving import save_model
from ctdemo.models.specs import TrainConfig
from ctdemo.models.training import BatchCallback, EpochCallback, ModelCallback, TrainResult, train

NO_DETECTOR = (
    "an MLP has no convolutional features to measure distances in (measured on a pixel MLP, "
    "its hidden units did not separate CT slices from noise or documents), so the app screens "
    "uploads with the shipped CNN"
)


@dataclass
class ExperimentResult(TrainResult):
    """A training run with the out-of-distribution detector fitted on its own split."""

    detector: OODDetector | None = None


def evaluate(model: keras.Model, card: ModelCard, dataset: ArrayDataset) -> dict:
    """Metrics of `model` on every slice of `dataset`, matching classes by name."""
    y_true = align_labels(dataset, card.class_names)
    x = dataset.x if card.channels == 1 else np.repeat(dataset.x, card.channels, axis=-1)
    if card.input_scale != 1.0:  # a model that rescales 0-255 pixels itself
        x = x * np.float32(card.input_scale)
    probs = probabilities(model, x, slices_per_batch(card))
    if not np.isfinite(probs).all():
        raise ValueError(NOT_A_NUMBER)
    return classification_report(y_true, probs, card.class_names, card.positive_index)


def align_labels(dataset: ArrayDataset, model_classes: list[str]) -> np.ndarray:
    unknown = [name for name in dataset.class_names if name not in model_classes]
    if unknown:
        raise ValueError(
            f"The data has classes the model does not know: {', '.join(unknown)} "
            f"(the model knows {', '.join(model_classes)})."
        )
    mapping = np.array([model_classes.index(name) for name in dataset.class_names])
    return mapping[dataset.y]


def train_on_arrays(
    dataset: ArrayDataset,
    config: TrainConfig,
    spec: SplitSpec,
    name: str,
    command: str = "",
    data_path: str = "",
    groups_csv: Path | None = None,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
    stop_event: threading.Event | None = None,
    on_epoch_model: ModelCallback | None = None,
    shortcut: Shortcut | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> tuple[TrainResult, ModelCard]:
    """Split, train, measure on the validation split, and write the card; fit the run's
    out-of-distribution detector (`result.detector`, summary in `card.data["ood"]`).

    With a `shortcut`, its marker is planted on copies of the split (`plant`): the model
    trains and stops early on the marked arrays, every epoch also measures clean and marked
    validation (`clean_accuracy`, `marked_accuracy`), and the card records the shortcut.
    A run whose loss turned NaN is not measured (its weights may be NaN): its card's
    `validation` holds the explanation under "error" and it has no detector. A run under a
    `strategy` says so in `card.training["distribution"]`."""
    split = make_split(dataset, spec, groups_csv)
    planted = plant(split, shortcut, config.seed) if shortcut is not None else None
    if planted is not None:
        split = SplitData(planted.train, planted.val, split.spec)
    probes = {"clean": planted.clean, "marked": planted.marked} if planted else None
    result = train(
        config,
        split.train,
        split.val,
        on_epoch,
        on_batch,
        stop_event,
        on_epoch_model,
        probes,
        strategy,
    )
    card = ModelCard(
        name=name,
        class_names=dataset.class_names,
        positive_class=default_positive_class(dataset.class_names),
        input=preprocessing_spec(
            config.architecture.image_size, in_model=config.architecture.in_model()
        ),
        architecture=config.architecture.to_dict(),
        training=config.to_dict()
        | ({} if strategy is None else {"distribution": record(strategy, config.batch_size)}),
        split=split.spec.to_dict(),
        data={
            "path": data_path,
            "fingerprint": dataset.fingerprint,
            "class_counts": _counts(dataset),
            "train_slices": len(split.train),
            "validation_slices": len(split.val),
            "skipped_files": len(dataset.skipped),
        },
        seed=config.seed,
        command=command,
        history=result.history,
        best_epoch=result.best_epoch,
        stop_reason=result.stop_reason,
        training_seconds=round(result.seconds, 1),
        shortcut=_shortcut_record(shortcut, planted),
    )
    detector = None
    if result.stop_reason == "nan":
        card.validation = {"error": result.message}
    else:
        card.validation = evaluate(result.model, card, split.val)
        card.validation["split"] = (
            f"{split.spec.method} validation split ({split.spec.group_source}); "
            "also used for early stopping and choosing the best epoch"
        )
        card.validation["files"] = split.val.files
        if planted is not None:
            card.shortcut |= measure_shortcut(result.model, card, planted)
        detector = fit_ood(result.model, split, card)
    values = {item.name: getattr(result, item.name) for item in fields(TrainResult)}
    return ExperimentResult(**values, detector=detector), card


def fit_ood(model: keras.Model, split: SplitData, card: ModelCard) -> OODDetector | None:
    """Fit the "is this a CT slice?" detector on the run's training and validation slices and
    record its summary in `card.data["ood"]`; None (and the reason in the card) if it fails."""
    if detector_layer(model) is None:
        card.data["ood"] = {"error": NO_DETECTOR}
        return None
    try:
        detector = fit_detector(model, split.train.x, split.val.x)
    except ValueError as error:
        card.data["ood"] = {"error": str(error)}
        return None
    card.data["ood"] = detector.summary()
    return detector


def save_run(result: TrainResult, card: ModelCard, path: Path | str) -> Path:
    """Save the model and its card (`save_model`) and, beside them, the run's detector
    (`ood_path`); a detector left there by an earlier model is removed. Returns the card's path.
    """
    detector, target = getattr(result, "detector", None), ood_path(path)
    if detector is not None:
        card.data.setdefault("ood", detector.summary())["file"] = target.name
    card_file = save_model(result.model, card, path)
    if detector is None:
        target.unlink(missing_ok=True)
    else:
        detector.save(target)
    return card_file


def train_on_folder(
    data_dir: Path, config: TrainConfig, spec: SplitSpec, name: str, **kwargs
) -> tuple[TrainResult, ModelCard]:
    dataset = load_arrays(data_dir, config.architecture.image_size)
    return train_on_arrays(dataset, config, spec, name, data_path=str(data_dir), **kwargs)


def measure_shortcut(model: keras.Model, card: ModelCard, planted: PlantedSplit) -> dict:
    """Accuracy on clean and on marked validation, and (for a CNN) the Grad-CAM heat on the
    marker over the marked slices, against the marker's share of the slice."""
    measured = {
        "clean_accuracy": evaluate(model, card, planted.clean)["accuracy"],
        "marked_accuracy": evaluate(model, card, planted.marked)["accuracy"],
        "marker_area": float(planted.mask.mean()),
    }
    if last_conv_layer(model) is not None and len(planted.carrying):
        x, y = planted.marked.x[planted.carrying], planted.marked.y[planted.carrying]
        heat = estimate(marker_heat(model, x, y, planted.mask))
        measured["marker_heat"] = asdict(heat) if heat else None
    return measured


def _shortcut_record(shortcut: Shortcut | None, planted: PlantedSplit | None) -> dict:
    """What the card says of a planted shortcut, so a downloaded model says it too."""
    if shortcut is None or planted is None:
        return {}
    return {
        **shortcut.to_dict(),
        "description": shortcut.describe(),
        "marked_train_slices": planted.marked_train_slices,
        "warning": "trained with a planted shortcut: it may read the marker, not the lungs",
    }


def _counts(dataset: ArrayDataset) -> dict[str, int]:
    return {name: int(np.sum(dataset.y == index)) for index, name in enumerate(dataset.class_names)}
