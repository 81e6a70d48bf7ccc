"""Explain slice files into a folder, with the numbers that say how far to trust each map.

    records = explain_files(model, card, files, out_dir, method="gradcam")

For each file: `<stem>.heatmap.png`, the heatmap at the slice's own size as a 16-bit grey PNG
(0 to 65535 for the map's 0 to 1), and `<stem>.overlay.png`, the slice with the map laid over
it; and a record with the predicted class, the share of the heat inside the lungs, the lungs'
share of the slice and the deletion score (`ctdemo.explain.trust`). A file that cannot be read or
explained gets an error record and never stops the others. Nothing that exists is overwritten
unless asked: two inputs with one stem get `<stem>-2`, and a name already in the folder is an
error for that file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from ctdemo.explain.overlay import blend, png_bytes
from ctdemo.explain.saliency import available_methods
from ctdemo.explain.trust import assess
from ctdemo.io.decoded import SliceError
from ctdemo.io.slices import decode_slice, read_slice_file
from ctdemo.models.cards import ModelCard
from ctdemo.models.inference import NOT_A_NUMBER, is_number, model_input, probabilities

OVERLAY_ALPHA = 0.45


@dataclass(frozen=True)
class ExplainedFile:
    file: str
    predicted_class: str | None = None
    method: str | None = None
    lung_share: float | None = None
    lung_area: float | None = None
    faithfulness: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {key: value for key, value in self.__dict__.items() if key != "error"}


def explain_files(
    model: keras.Model,
    card: ModelCard,
    files: Sequence[str],
    out_dir: Path,
    method: str | None = None,
    overwrite: bool = False,
) -> list[ExplainedFile]:
    """One record per file, in order; the PNGs are written under `out_dir` (created)."""
    method = method or available_methods(model)[0]
    if method not in available_methods(model):
        raise ValueError(f"This model offers {', '.join(available_methods(model))}, not {method}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    stems: set[str] = set()
    records = []
    for file in files:
        stem = _free_stem(Path(file).stem or "slice", stems)
        try:
            records.append(_explain_one(model, card, file, out_dir, stem, method, overwrite))
        except (SliceError, OSError, ValueError) as error:
            records.append(ExplainedFile(file, error=str(error)))
    return records


def _explain_one(
    model: keras.Model,
    card: ModelCard,
    file: str,
    out_dir: Path,
    stem: str,
    method: str,
    overwrite: bool,
) -> ExplainedFile:
    targets = out_dir / f"{stem}.heatmap.png", out_dir / f"{stem}.overlay.png"
    taken = [target.name for target in targets if target.exists()]
    if taken and not overwrite:
        verb = "exists" if len(taken) == 1 else "exist"
        raise ValueError(f"{' and '.join(taken)} already {verb} in {out_dir} (use --overwrite).")
    pixels = decode_slice(read_slice_file(file), os.path.basename(file)).pixels
    probs = probabilities(model, model_input(pixels, card)[np.newaxis])[0]
    if not is_number(probs):
        raise ValueError(NOT_A_NUMBER)
    class_index = int(np.argmax(probs))
    report = assess(model, card, pixels, method, class_index)
    heat16 = np.round(np.clip(report.on_slice, 0, 1) * 65535).astype(np.uint16)
    Image.fromarray(heat16).save(targets[0], format="PNG")
    targets[1].write_bytes(png_bytes(blend(pixels, report.on_slice, OVERLAY_ALPHA)))
    return ExplainedFile(
        file=file,
        predicted_class=card.class_names[class_index],
        method=method,
        lung_share=_rounded(report.lung_share),
        lung_area=_rounded(report.lung_area),
        faithfulness=_rounded(report.faithfulness.score),
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _free_stem(stem: str, taken: set[str]) -> str:
    candidate, number = stem, 1
    while candidate in taken:
        number += 1
        candidate = f"{stem}-{number}"
    taken.add(candidate)
    return candidate
