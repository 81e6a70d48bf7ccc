"""Planting a shortcut: a marker that one class carries, to watch a model learn it instead of the
lungs (DeGrave et al., Nature Machine Intelligence, 2021).

The marker is drawn on copies of a split's arrays at the model's input size, before the input
pipeline augments them; the cached clean arrays are never written. Which slices carry it is
decided by the seed alone, so a run is reproducible. Validation comes three ways: clean, marked
the same way as training (every slice of the carrying class), or "flipped" (every slice of the
other classes marked), and a run always measures the clean and the marked validation side by
side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import StrEnum

import cv2
import numpy as np

from ctdemo.evaluation.splits import SplitData
from ctdemo.io.folders import ArrayDataset


class MarkerKind(StrEnum):
    SQUARE = "square"  # a bright square in a corner, like a hospital's token
    LETTER = "letter"  # a burned-in side letter "R"
    FRAME = "frame"  # a bright frame around the slice, like one scanner's field of view


class Corner(StrEnum):
    TOP_LEFT = "top-left"
    TOP_RIGHT = "top-right"
    BOTTOM_LEFT = "bottom-left"
    BOTTOM_RIGHT = "bottom-right"


class ValidationMarking(StrEnum):
    CLEAN = "clean"
    MARKED = "marked"  # every validation slice of the carrying class marked, as in training
    FLIPPED = "flipped"  # every validation slice of the other classes marked instead


MARKER_VALUE = 1.0
"""The marker's grey value: the brightest input, as burned-in annotations are."""
MIN_SIZE, MAX_SIZE = 0.05, 0.4
LETTER = "R"


class ShortcutError(ValueError):
    """A shortcut that cannot be planted; the message says what to change."""


@dataclass(frozen=True)
class Shortcut:
    """What to plant: the marker, where, on which class, on what share of its training slices,
    and how validation is marked."""

    kind: MarkerKind = MarkerKind.SQUARE
    carrier: str = "COVID"  # the class whose training slices carry the marker
    fraction: float = 1.0  # share of the carrier's training slices marked, 0 to 1
    corner: Corner = Corner.TOP_LEFT  # where a square or a letter sits (a frame is everywhere)
    size: float = 0.15  # a square's or a letter's side, a frame's width times 4, of the slice side
    validation: ValidationMarking = ValidationMarking.CLEAN

    def __post_init__(self) -> None:
        for name, kind in (("kind", MarkerKind), ("corner", Corner)):
            object.__setattr__(self, name, _member(kind, getattr(self, name), name))
        marking = _member(ValidationMarking, self.validation, "validation")
        object.__setattr__(self, "validation", marking)
        if not 0.0 <= self.fraction <= 1.0:
            raise ShortcutError(f"The marked fraction must be 0 to 1, not {self.fraction}.")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ShortcutError(f"The marker's size must be {MIN_SIZE} to {MAX_SIZE} of the side.")

    @classmethod
    def parse(cls, text: str, validation: str = ValidationMarking.CLEAN) -> Shortcut:
        """`KIND:CLASS:FRACTION`, e.g. `square:COVID:1.0`, as the command line takes it."""
        parts = text.split(":")
        if len(parts) != 3:
            raise ShortcutError(f"Write the shortcut as KIND:CLASS:FRACTION, not {text!r}.")
        kind, carrier, fraction = parts
        try:
            share = float(fraction)
        except ValueError:
            raise ShortcutError(f"The fraction must be a number, not {fraction!r}.") from None
        return cls(kind=kind, carrier=carrier, fraction=share, validation=validation)

    def to_dict(self) -> dict:
        return {
            key: str(value) if isinstance(value, StrEnum) else value
            for key, value in asdict(self).items()
        }

    def describe(self) -> str:
        """One line for a run label and a model card."""
        where = "" if self.kind == MarkerKind.FRAME else f" {self.corner}"
        return (
            f"{self.kind}{where} on {self.fraction:.0%} of {self.carrier} training slices; "
            f"validation {self.validation}"
        )


def _member(kind: type[StrEnum], value: object, name: str) -> StrEnum:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ShortcutError(f"Unknown {name} {value!r}; choose one of {choices}.") from None


def marker_mask(shortcut: Shortcut, side: int) -> np.ndarray:
    """Where the marker is drawn on a `side`×`side` slice (bool)."""
    mask = np.zeros((side, side), dtype=np.uint8)
    if shortcut.kind == MarkerKind.FRAME:
        width = max(1, round(side * shortcut.size / 4))
        cv2.rectangle(mask, (0, 0), (side - 1, side - 1), 1, thickness=width)
        return mask.astype(bool)
    box = max(3, round(side * shortcut.size))
    margin = max(1, side // 32)
    top = margin if shortcut.corner.startswith("top") else side - margin - box
    left = margin if shortcut.corner.endswith("left") else side - margin - box
    if shortcut.kind == MarkerKind.SQUARE:
        mask[top : top + box, left : left + box] = 1
    else:
        _draw_letter(mask, top, left, box)
    return mask.astype(bool)


def _draw_letter(mask: np.ndarray, top: int, left: int, box: int) -> None:
    """The letter filling a `box`-pixel square at (top, left), drawn large and shrunk so it
    stays a letter even at a few pixels."""
    scale = 8
    canvas = np.zeros((box * scale, box * scale), dtype=np.uint8)
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, max(1, box * scale // 8)
    (width, height), _ = cv2.getTextSize(LETTER, font, 1.0, thickness)
    font_scale = 0.8 * box * scale / max(width, height)
    (width, height), _ = cv2.getTextSize(LETTER, font, font_scale, thickness)
    origin = ((box * scale - width) // 2, (box * scale + height) // 2)
    cv2.putText(canvas, LETTER, origin, font, font_scale, 255, thickness, cv2.LINE_AA)
    small = cv2.resize(canvas, (box, box), interpolation=cv2.INTER_AREA)
    mask[top : top + box, left : left + box] = small >= 96


def marked(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of slices `x` (n, side, side, channels) with the marker burned in."""
    out = np.array(x, copy=True)
    out[:, mask, :] = MARKER_VALUE
    return out


def chosen_slices(labels: np.ndarray, carrier: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of the carrier's slices that get the marker: `fraction` of them, by the seed."""
    members = np.flatnonzero(np.asarray(labels) == carrier)
    count = round(fraction * len(members))
    order = np.random.default_rng(seed).permutation(members)
    return np.sort(order[:count])


@dataclass
class PlantedSplit:
    """A split with the shortcut planted: train on `train`, stop early on `val`, and measure
    `clean` and `marked` validation every epoch."""

    train: ArrayDataset
    val: ArrayDataset
    clean: ArrayDataset
    marked: ArrayDataset
    mask: np.ndarray  # where the marker is, at the model's input size
    marked_train_slices: int
    carrying: np.ndarray  # indices of the slices of `marked` that carry the marker


def carrier_index(shortcut: Shortcut, class_names: list[str]) -> int:
    if shortcut.carrier not in class_names:
        raise ShortcutError(
            f"The data has no class {shortcut.carrier!r} to carry the marker; "
            f"choose one of {', '.join(class_names)}."
        )
    return class_names.index(shortcut.carrier)


def plant(split: SplitData, shortcut: Shortcut, seed: int) -> PlantedSplit:
    """The split with the marker planted on copies of its arrays (the split is not changed)."""
    carrier = carrier_index(shortcut, split.train.class_names)
    side = split.train.x.shape[1]
    mask = marker_mask(shortcut, side)
    train_marked = chosen_slices(split.train.y, carrier, shortcut.fraction, seed)
    carriers, others = (
        np.flatnonzero(split.val.y == carrier),
        np.flatnonzero(split.val.y != carrier),
    )
    same_way, flipped = (
        _with_marker(split.val, carriers, mask),
        _with_marker(split.val, others, mask),
    )
    is_flipped = shortcut.validation == ValidationMarking.FLIPPED
    by_marking = {
        ValidationMarking.CLEAN: split.val,
        ValidationMarking.MARKED: same_way,
        ValidationMarking.FLIPPED: flipped,
    }
    return PlantedSplit(
        train=_with_marker(split.train, train_marked, mask),
        val=by_marking[shortcut.validation],
        clean=split.val,
        marked=flipped if is_flipped else same_way,
        mask=mask,
        marked_train_slices=len(train_marked),
        carrying=others if is_flipped else carriers,
    )


def _with_marker(dataset: ArrayDataset, indices: np.ndarray, mask: np.ndarray) -> ArrayDataset:
    x = np.array(dataset.x, copy=True)
    if len(indices):
        x[indices] = marked(x[indices], mask)
    return replace(dataset, x=x)


def what_happened(clean: list[float], marked_accuracy: list[float], best_epoch: int) -> str:
    """The sentence under the two curves: did the model learn the marker?"""
    if not clean or not marked_accuracy:
        return "No epoch finished: nothing to compare yet."
    index = max(0, min(best_epoch, len(clean)) - 1)
    first, last, on_marked = clean[0], clean[index], marked_accuracy[index]
    gap = on_marked - last
    trend = f"on clean slices, validation accuracy went from {first:.0%} to {last:.0%}"
    if gap >= 0.15:
        return (
            f"{trend.capitalize()}, and it is {on_marked:.0%} on marked slices: "
            "the model learned the marker, not the lungs."
        )
    if gap <= -0.15:
        return (
            f"{trend.capitalize()}, and only {on_marked:.0%} on marked slices: the marker "
            "pulls the model's verdict toward the class that carried it in training."
        )
    return (
        f"{trend.capitalize()}, and {on_marked:.0%} on marked slices: the marker barely "
        "changes the verdict, so the model did not come to rely on it."
    )
