"""The whole training run: dataset, split, fit, validation metrics, card.

Shared by the CLI and the Train page, so a model trained in the browser carries the same card
as the shipped ones.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np

from ctdemo.cards import ModelCard, default_positive_class, preprocessing_spec
from ctdemo.data import ArrayDataset, load_arrays
from ctdemo.inference import probabilities
from ctdemo.metrics import classification_report
from ctdemo.splits import SplitSpec, assign_groups, read_groups_csv, split_indices
from ctdemo.training import BatchCallback, EpochCallback, TrainConfig, TrainResult, train


@dataclass
class SplitData:
    train: ArrayDataset
    val: ArrayDataset
    spec: SplitSpec  # with group_source filled in


def make_split(dataset: ArrayDataset, spec: SplitSpec, groups_csv: Path | None = None) -> SplitData:
    groups, source = assign_groups(
        dataset.files,
        dataset.y,
        dataset.dicom_groups,
        read_groups_csv(groups_csv) if groups_csv else None,
        spec.block_size,
    )
    train_index, val_index = split_indices(dataset.y, groups, spec)
    spec = replace(spec, group_source=source if spec.method == "grouped" else "none")
    return SplitData(dataset.subset(train_index), dataset.subset(val_index), spec)


def evaluate(model: keras.Model, card: ModelCard, dataset: ArrayDataset) -> dict:
    """Metrics of `model` on every slice of `dataset`, matching classes by name."""
    y_true = align_labels(dataset, card.class_names)
    x = dataset.x if card.channels == 1 else np.repeat(dataset.x, card.channels, axis=-1)
    probs = probabilities(model, x)
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
) -> tuple[TrainResult, ModelCard]:
    """Split, train, measure on the validation split, and write the card."""
    split = make_split(dataset, spec, groups_csv)
    result = train(config, split.train, split.val, on_epoch, on_batch, stop_event)
    card = ModelCard(
        name=name,
        class_names=dataset.class_names,
        positive_class=default_positive_class(dataset.class_names),
        input=preprocessing_spec(config.architecture.image_size),
        architecture=config.architecture.to_dict(),
        training=config.to_dict(),
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
    )
    card.validation = evaluate(result.model, card, split.val)
    card.validation["split"] = (
        f"{split.spec.method} validation split ({split.spec.group_source}); "
        "also used for early stopping and choosing the best epoch"
    )
    card.validation["files"] = split.val.files
    return result, card


def train_on_folder(
    data_dir: Path, config: TrainConfig, spec: SplitSpec, name: str, **kwargs
) -> tuple[TrainResult, ModelCard]:
    dataset = load_arrays(data_dir, config.architecture.image_size)
    return train_on_arrays(dataset, config, spec, name, data_path=str(data_dir), **kwargs)


def _counts(dataset: ArrayDataset) -> dict[str, int]:
    return {name: int(np.sum(dataset.y == index)) for index, name in enumerate(dataset.class_names)}
