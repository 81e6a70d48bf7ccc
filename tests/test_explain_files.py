"""Explaining files into a folder: 16-bit heatmaps, overlays and their trust numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ctdemo.config import DEMO_SAMPLES_DIR, WEIGHTS_DIR
from ctdemo.explain.files import explain_files
from ctdemo.models.saving import load_model


@pytest.fixture(scope="module")
def cnn():
    return load_model(WEIGHTS_DIR / "cnn.keras")


@pytest.mark.slow
def test_each_file_gets_its_heatmap_overlay_and_numbers(cnn, tmp_path):
    model, card = cnn
    sample = sorted((DEMO_SAMPLES_DIR / "COVID").iterdir())[0]
    other = tmp_path / "elsewhere" / sample.name  # the same stem from another folder
    other.parent.mkdir()
    other.write_bytes(sample.read_bytes())
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    records = explain_files(model, card, [str(sample), str(other), str(broken)], out)

    first, second, bad = (record.to_dict() for record in records)
    assert set(first) == {"file", "predicted_class", "method", "lung_share", "lung_area",
                          "faithfulness"}  # fmt: skip
    assert first["predicted_class"] in card.class_names and first["method"] == "gradcam"
    assert 0 <= first["lung_share"] <= 1 and 0 < first["lung_area"] < 1
    assert second == {**first, "file": str(other)}
    assert set(bad) == {"file", "error"} and "image" in bad["error"]
    json.dumps([record.to_dict() for record in records], allow_nan=False)

    heatmap = Image.open(out / f"{sample.stem}.heatmap.png")
    slice_size = Image.open(sample).size
    assert heatmap.mode.startswith("I") and heatmap.size == slice_size
    values = np.asarray(heatmap)
    assert values.max() > 255  # 16 bits used, not an 8-bit map stored wide
    assert Image.open(out / f"{sample.stem}.overlay.png").size == slice_size
    assert (out / f"{sample.stem}-2.heatmap.png").is_file()


@pytest.mark.slow
def test_an_existing_output_is_never_overwritten_unless_asked(cnn, tmp_path):
    model, card = cnn
    sample = sorted((DEMO_SAMPLES_DIR / "COVID").iterdir())[0]
    out = tmp_path / "out"
    out.mkdir()
    mine = out / f"{sample.stem}.overlay.png"
    mine.write_bytes(b"a person's own file")
    (record,) = explain_files(model, card, [str(sample)], out)
    assert "already exists" in record.error
    assert mine.read_bytes() == b"a person's own file"
    (record,) = explain_files(model, card, [str(sample)], out, overwrite=True)
    assert record.error is None and mine.read_bytes() != b"a person's own file"


def test_a_method_the_model_lacks_is_refused(tmp_path):
    model, card = load_model(WEIGHTS_DIR / "mlp.keras")
    with pytest.raises(ValueError, match="saliency"):
        explain_files(model, card, [], tmp_path, method="gradcam")
