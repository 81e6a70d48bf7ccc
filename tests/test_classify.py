"""The Classify page's library: decoding uploads, tables, overlays, figures and card tables."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image

from ctdemo.app import classify
from ctdemo.app.catalog import card_sections, shipped_cards
from ctdemo.app.charts import probability_bars, training_curves
from ctdemo.app.classify import SliceResult
from ctdemo.explain.ood import OODResult
from ctdemo.explain.overlay import blend, colourise, grey_to_rgb, image_strip, png_bytes
from ctdemo.models.cards import ModelCard


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_files_keeps_going_past_bad_files():
    good = png(np.full((30, 50), 128, np.uint8))
    results = classify.decode_files(
        [("a.png", good), ("empty.png", b""), ("notes.png", b"just text"), ("b.png", good)]
    )
    assert [r.error is None for r in results] == [True, False, False, True]
    assert "empty" in results[1].error and "not an image" in results[2].error.lower()
    assert results[0].pixels.shape == (30, 50) and results[0].source_format == "PNG"
    assert results[0].digest == results[3].digest != results[1].digest


def test_decode_files_decodes_each_file_once_and_keeps_its_colour(monkeypatch):
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    red = np.zeros((30, 50, 3), np.uint8)
    red[..., 0] = 200
    results = classify.decode_files(
        [("red.png", png(red)), ("grey.png", png(np.full((30, 50), 90, np.uint8)))]
    )
    assert len(opened) == 4  # each file: its header for the batch budget, then one decode
    assert results[0].colour_fraction == 1.0 and results[1].colour_fraction == 0.0


def test_rows_hide_the_verdict_of_an_out_of_distribution_slice():
    probabilities = {"COVID": 0.9, "non-COVID": 0.1}
    flagged = OODResult(distance=40.0, threshold=10.0, flagged=True, reason="far from CT")
    results = [
        SliceResult("ok.png", "1", probabilities=probabilities),
        SliceResult("photo.png", "2", probabilities=probabilities, screening=flagged),
        SliceResult("bad.png", "3", error="The file is empty (0 bytes)."),
    ]
    rows = classify.result_rows(results, ["COVID", "non-COVID"])
    assert [row["class"] for row in rows] == ["COVID", "", ""]
    assert rows[0]["P(COVID)"] == 0.9 and rows[2]["P(COVID)"] is None
    assert rows[1]["status"].startswith("not like a chest CT")
    assert rows[2]["status"] == "error: The file is empty (0 bytes)."
    parsed = list(csv.DictReader(io.StringIO(classify.rows_to_csv(rows))))
    assert [row["file"] for row in parsed] == ["ok.png", "photo.png", "bad.png"]
    assert classify.rows_to_csv([]) == ""


def test_accuracy_statement_says_how_it_was_measured():
    card = shipped_cards()["cnn"]
    text = classify.accuracy_statement(card)
    accuracy = card.validation["accuracy"]
    assert f"{accuracy['value']:.1%}" in text and "grouped split" in text and "95% CI" in text
    card.validation = {}
    assert "unknown" in classify.accuracy_statement(card)


def test_blend_runs_from_the_slice_to_the_heatmap():
    pixels = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    heatmap = np.zeros_like(pixels)
    heatmap[5:10, 5:10] = 1.0
    assert np.array_equal(blend(pixels, heatmap, 0.0), grey_to_rgb(pixels))
    assert np.array_equal(blend(pixels, heatmap, 1.0, "viridis"), colourise(heatmap, "viridis"))
    half = blend(pixels, heatmap, 0.5).astype(int)
    expected = (grey_to_rgb(pixels).astype(int) + colourise(heatmap).astype(int)) / 2
    assert np.abs(half - expected).max() <= 1
    with pytest.raises(ValueError, match="shape"):
        blend(pixels, heatmap.T, 0.5)
    with pytest.raises(ValueError, match="colour map"):
        colourise(heatmap, "rainbow")
    decoded = Image.open(io.BytesIO(png_bytes(half.astype(np.uint8))))
    assert decoded.size == (30, 20) and decoded.mode == "RGB"


def test_probability_bars_highlight_the_most_probable_class():
    figure = probability_bars({"COVID": 0.2, "non-COVID": 0.8})
    bar = figure.data[0]
    assert list(bar.y) == ["COVID", "non-COVID"] and list(bar.text) == ["20.0%", "80.0%"]
    certain = probability_bars({"COVID": 0.99996, "non-COVID": 0.00004}).data[0]
    assert list(certain.text) == [">99.9%", "<0.1%"]
    assert bar.marker.color[1] != bar.marker.color[0]


def test_training_curves_draw_train_and_validation_with_the_best_epoch():
    history = {"loss": [1.0, 0.5, 0.4], "val_loss": [1.1, 0.6, 0.7]}
    figure = training_curves(history, "loss", best_epoch=2)
    assert [trace.name for trace in figure.data] == ["train", "validation"]
    assert list(figure.data[1].y) == [1.1, 0.6, 0.7]
    assert figure.layout.shapes[0].x0 == 2


def test_card_sections_read_like_a_card():
    card = shipped_cards()["cnn"]
    sections = card_sections(card)
    assert list(sections) == ["Model", "Training", "Data and split", "Validation (95% intervals)"]
    model = {row[""]: row["value"] for row in sections["Model"]}
    assert model["parameters"] == f"{card.parameters:,}" and model["architecture"] == "CNN"
    validation = {row[""]: row["value"] for row in sections["Validation (95% intervals)"]}
    assert "95% CI" in validation["accuracy"] and "sensitivity (COVID)" in validation
    training = {row[""]: row["value"] for row in sections["Training"]}
    assert "python -m ctdemo train" in training["rebuilt by"]


def test_an_image_strip_puts_images_side_by_side_with_white_gaps():
    images = [np.full((4, 3), value, dtype=np.float32) for value in (0.0, 0.5)]
    strip = image_strip(images, gap=2)
    assert strip.shape == (4, 3 + 2 + 3)
    assert np.all(strip[:, :3] == 0.0) and np.all(strip[:, 3:5] == 1.0)
    assert np.all(strip[:, 5:] == 0.5)


@pytest.mark.parametrize(
    ("architecture", "says"),
    [
        ({"kind": "mlp", "features": "distribution"}, "not where things are"),
        ({"kind": "cnn", "features": "pixels+distribution"}, "only the convolutions' part"),
        ({"kind": "cnn", "features": "pixels"}, None),
    ],
)
def test_the_heatmap_note_says_what_a_map_cannot_show(architecture, says):
    card = ModelCard("m", ["COVID", "non-COVID"], "COVID", {"image_size": 32}, architecture)
    note = classify.explanation_note(card)
    assert note is None if says is None else says in note
