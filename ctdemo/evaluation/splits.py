"""Train/validation splits that do (grouped) or do not (random) keep patients apart.

The SARS-CoV-2 CT-scan files are numbered patient by patient, so a slice's nearest neighbour
is usually its numbering neighbour: a random split puts the same patient on both sides and
flatters every accuracy. The grouped split keeps each group whole on one side. Groups come,
in order of preference, from DICOM PatientID/StudyInstanceUID, from a groups CSV
(columns `file,group`), or from blocks of `block_size` consecutive file numbers within a class
(the number is the last integer in the file name: "Covid (123).png" is 123) — a proxy for
patients, about one patient per block of 25 on this dataset.
"""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np

from ctdemo.io.folders import ArrayDataset, DatasetError

SPLIT_METHODS = ("grouped", "random")
DEFAULT_BLOCK_SIZE = 25
_NUMBER = re.compile(r"(\d+)")


@dataclass(frozen=True)
class SplitSpec:
    """Everything needed to recompute a split, recorded in every model card."""

    method: str = "grouped"
    val_fraction: float = 0.2
    seed: int = 0
    block_size: int = DEFAULT_BLOCK_SIZE
    group_source: str = "file-number blocks"

    def to_dict(self) -> dict:
        return asdict(self)


def file_number_groups(files: list[str], labels: np.ndarray, block_size: int) -> list[str]:
    """Group by class and block of consecutive file numbers; unnumbered files stand alone."""
    groups = []
    for file, label in zip(files, labels, strict=True):
        numbers = _NUMBER.findall(PurePosixPath(file).stem)
        if numbers:
            groups.append(f"{label}:{int(numbers[-1]) // block_size}")
        else:
            groups.append(f"{label}:{file}")
    return groups


def read_groups_csv(path: Path) -> dict[str, str]:
    """A CSV with columns `file` (relative path or base name) and `group`."""
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        if not reader.fieldnames or not {"file", "group"} <= set(reader.fieldnames):
            raise ValueError(f"{path} needs the columns 'file' and 'group'.")
        return {row["file"]: row["group"] for row in reader}


def assign_groups(
    files: list[str],
    labels: np.ndarray,
    dicom_groups: dict[str, str] | None = None,
    groups_csv: dict[str, str] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[list[str], str]:
    """One group per file, and a description of where the groups came from."""
    dicom_groups = dicom_groups or {}
    if groups_csv:
        missing = [
            f for f in files if f not in groups_csv and PurePosixPath(f).name not in groups_csv
        ]
        if missing:
            raise ValueError(
                f"The groups CSV has no group for {len(missing)} files, e.g. {missing[0]}."
            )
        return [groups_csv.get(f) or groups_csv[PurePosixPath(f).name] for f in files], "groups CSV"
    if dicom_groups and all(f in dicom_groups for f in files):
        return [dicom_groups[f] for f in files], "DICOM PatientID/StudyInstanceUID"
    return file_number_groups(files, labels, block_size), f"file-number blocks of {block_size}"


def split_indices(
    labels: np.ndarray,
    groups: list[str] | None,
    spec: SplitSpec,
    class_names: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic, stratified (train, validation) indices for the split in `spec`.

    Every class has slices on both sides, or a `DatasetError` names the class that is too
    small (a class seen only in training has no validation metrics: they would be undefined).
    """
    labels = np.asarray(labels)
    if not 0 < spec.val_fraction < 1:
        raise ValueError("The validation fraction must be between 0 and 1.")
    if spec.method == "random":
        val = _random_split(labels, spec.val_fraction, spec.seed)
    elif spec.method == "grouped":
        if groups is None:
            raise ValueError("A grouped split needs groups.")
        val = _grouped_split(labels, groups, spec.val_fraction, spec.seed)
    else:
        raise ValueError(f"Unknown split {spec.method!r}; choose one of {SPLIT_METHODS}.")
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val] = True
    _check_both_sides(labels, groups, is_val, spec, class_names)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _check_both_sides(
    labels: np.ndarray,
    groups: list[str] | None,
    is_val: np.ndarray,
    spec: SplitSpec,
    class_names: list[str] | None,
) -> None:
    """Refuse a split that leaves a class out of training or out of validation."""
    for label in np.unique(labels):
        sides = is_val[labels == label]
        if sides.any() and not sides.all():
            continue
        name = class_names[label] if class_names else str(label)
        found = len({groups[i] for i in np.flatnonzero(labels == label)}) if groups else 0
        side = "training" if sides.all() else "validation"
        raise DatasetError(_too_small(name, side, int(sides.size), found, spec))


def _too_small(name: str, side: str, slices: int, groups: int, spec: SplitSpec) -> str:
    """What is missing, and what would make the split work, in words."""
    have = f"{slices} slice{'' if slices == 1 else 's'}"
    if spec.method == "random":
        need, advice = "2 slices", f"Add {name} images."
    else:
        have += (
            f" in {groups} group{'' if groups == 1 else 's'} (groups stand for patients; "
            f"here they are {spec.group_source})"
        )
        need, advice = "2 groups", f"Add {name} images of another patient"
        advice += ", or choose the random split." if slices > 1 else "."
    return (
        f"This split leaves no slices for {side} in the class {name}: it has {have}, and a "
        f"{spec.method} split needs at least {need} of each class, one to train on and one to "
        f"validate on. {advice}"
    )


def _random_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        take = min(len(members) - 1, max(1, round(fraction * len(members))))
        chosen.extend(members[:take])
    return np.sort(np.array(chosen, dtype=int))


def _grouped_split(labels: np.ndarray, groups: list[str], fraction: float, seed: int) -> np.ndarray:
    """Whole groups go to validation, class by class (by each group's majority class),
    until each class has about `fraction` of its slices there."""
    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    by_class: dict[int, list[str]] = defaultdict(list)
    for group in sorted(members):
        majority = Counter(labels[members[group]].tolist()).most_common(1)[0][0]
        by_class[majority].append(group)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label in sorted(by_class):
        class_groups = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        target = fraction * sum(len(members[g]) for g in class_groups)
        taken = 0
        for group in class_groups[:-1]:  # the last group always stays in training
            size = len(members[group])
            if taken and abs(taken + size - target) >= abs(taken - target):
                break
            chosen.extend(members[group])
            taken += size
    return np.sort(np.array(chosen, dtype=int))


@dataclass
class SplitData:
    train: ArrayDataset
    val: ArrayDataset
    spec: SplitSpec  # with group_source filled in


def make_split(dataset: ArrayDataset, spec: SplitSpec, groups_csv: Path | None = None) -> SplitData:
    """The run's split; a `DatasetError` names a class too small to be on both sides."""
    groups, source = assign_groups(
        dataset.files,
        dataset.y,
        dataset.dicom_groups,
        read_groups_csv(groups_csv) if groups_csv else None,
        spec.block_size,
    )
    spec = replace(spec, group_source=source if spec.method == "grouped" else "none")
    train_index, val_index = split_indices(dataset.y, groups, spec, dataset.class_names)
    return SplitData(dataset.subset(train_index), dataset.subset(val_index), spec)
