"""The shipped models and the embedded demo set: present, documented, fair to evaluate on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctdemo.app.catalog import shipped_cards, shipped_model_summaries
from ctdemo.config import DEMO_BUNDLE_DIR, DEMO_DIR, DEMO_SAMPLES_DIR, WEIGHTS_DIR
from ctdemo.io.folders import load_arrays, scan_image_folder
from ctdemo.models.cards import card_path
from ctdemo.models.experiment import evaluate
from ctdemo.models.inference import predict_files
from ctdemo.models.saving import load_model
from ctdemo.models.specs import LAST_CONV, PRESETS, Architecture

SHIPPED = ("cnn", "mlp")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_card_documents_the_model(name):
    card = shipped_cards()[name]
    assert card.class_names == ["COVID", "non-COVID"] and card.positive_class == "COVID"
    assert card.command.startswith("python -m ctdemo train ")
    assert card.split["method"] == "grouped"
    assert card.split["group_source"].startswith("file-number blocks")
    assert card.validation["split"].startswith("grouped validation split")
    assert card.data["validation_slices"] == len(card.validation["files"]) > 300
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc"):
        interval = card.validation[key]
        assert interval["low"] <= interval["value"] <= interval["high"]
    assert len(card.history["val_loss"]) >= card.best_epoch >= 1
    assert (WEIGHTS_DIR / f"{name}.keras").stat().st_size < 5 * 2**20


def test_summaries_read_cards_only():
    rows = shipped_model_summaries()
    assert {row["model"] for row in rows} >= set(SHIPPED)
    assert all("%" in row["validation accuracy"] for row in rows)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_classifies_the_demo_bundle_it_never_trained_on(name):
    model, card = load_model(WEIGHTS_DIR / f"{name}.keras")
    if name == "cnn":
        assert model.get_layer(LAST_CONV) is not None
    bundle = load_arrays(DEMO_BUNDLE_DIR, card.image_size)
    report = evaluate(model, card, bundle)
    assert report["n"] == len(bundle) >= 200
    # The bundle is most of the validation split, downsampled: it must tell the same story.
    accuracy = report["accuracy"]["value"]
    assert accuracy > 0.6
    assert abs(accuracy - card.validation["accuracy"]["value"]) < 0.07


@pytest.mark.slow
def test_shipped_cnn_predicts_every_sample_slice():
    model, card = load_model(WEIGHTS_DIR / "cnn.keras")
    samples = sorted(str(p) for p in DEMO_SAMPLES_DIR.rglob("*.png"))
    assert len(samples) == 12
    predictions = predict_files(model, card, samples)
    assert all(p.error is None for p in predictions)
    truth = [p.split("/")[-2] for p in samples]
    correct = sum(p.predicted_class == t for p, t in zip(predictions, truth, strict=True))
    assert correct >= 9


def test_demo_set_is_small_credited_and_from_the_validation_split_only():
    size = sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file())
    assert size <= 5 * 2**20
    readme = (DEMO_DIR / "README.md").read_text()
    assert "CC BY-NC-SA 4.0" in readme and "Soares" in readme
    manifest = json.loads((DEMO_DIR / "manifest.json").read_text())
    for name in SHIPPED:
        card = json.loads(card_path(WEIGHTS_DIR / f"{name}.keras").read_text())
        validation = set(card["validation"]["files"])
        assert set(manifest["samples"]) <= validation
        assert set(manifest["bundle"]) <= validation
    bundle = scan_image_folder(DEMO_BUNDLE_DIR)
    assert bundle.class_names == ["COVID", "non-COVID"]
    assert len(bundle.files) == len(manifest["bundle"]) and not bundle.skipped
    counts = np.bincount(bundle.labels)
    assert abs(int(counts[0]) - int(counts[1])) <= 2


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_card_metrics_are_reproduced_from_the_real_files(name, real_train):
    """The card's validation accuracy, recomputed from the original files through the one
    preprocessing path (`predict_files`), comes out exactly the same."""
    model, card = load_model(WEIGHTS_DIR / f"{name}.keras")
    files = card.validation["files"]
    predictions = predict_files(model, card, [str(real_train / f) for f in files])
    assert all(p.error is None for p in predictions)
    correct = sum(
        p.predicted_class == f.split("/")[0] for p, f in zip(predictions, files, strict=True)
    )
    assert correct / len(files) == pytest.approx(card.validation["accuracy"]["value"], abs=1e-9)


def test_shipped_cards_match_the_real_training_data(real_train):
    from ctdemo.io.folders import fingerprint

    folder = scan_image_folder(real_train)
    for card in shipped_cards().values():
        assert card.data["fingerprint"] == fingerprint(folder)
        assert sum(card.data["class_counts"].values()) == len(folder.files)


@pytest.mark.parametrize(("name", "preset"), [("cnn", "cnn-large"), ("mlp", "mlp")])
def test_the_documented_command_rebuilds_the_shipped_architecture(name, preset):
    card = json.loads(card_path(WEIGHTS_DIR / f"{name}.keras").read_text())
    assert f"--arch {preset} " in card["command"]
    assert Architecture.from_dict(card["architecture"]) == PRESETS[preset].architecture
