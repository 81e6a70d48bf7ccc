"""Building the embedded demo set from the models' own validation split."""

from __future__ import annotations

import json

import pytest

from ctdemo.evaluation.splits import SplitSpec
from ctdemo.io.demo import build_demo_set
from ctdemo.io.folders import DatasetError, scan_image_folder
from ctdemo.models.experiment import train_on_folder
from ctdemo.models.saving import save_model
from ctdemo.models.specs import Architecture, TrainConfig

from conftest import make_image_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory):
    """A tiny MLP and CNN trained on the same generated data and grouped split."""
    base = tmp_path_factory.mktemp("demo")
    data = make_image_folder(base / "data", per_class=40, size=48)
    spec = SplitSpec("grouped", 0.3, 0, block_size=5)
    paths = []
    for name, architecture in (
        ("mlp", Architecture("mlp", 24, 0.1, hidden_units=(8,))),
        ("cnn", Architecture("cnn", 24, 0.1, hidden_units=(4,), filters=(4,))),
    ):
        config = TrainConfig(architecture, epochs=1, batch_size=16, patience=0)
        result, card = train_on_folder(data, config, spec, name)
        paths.append(base / f"{name}.keras")
        save_model(result.model, card, paths[-1])
    return data, paths


def test_demo_set_holds_only_validation_slices(trained_pair, tmp_path):
    data, models = trained_pair
    out = tmp_path / "demo"
    summary = build_demo_set(data, models, out, bundle_size=20)
    assert "demo set at" in summary
    manifest = json.loads((out / "manifest.json").read_text())
    card = json.loads(models[0].with_name("mlp.card.json").read_text())
    validation = set(card["validation"]["files"])
    assert set(manifest["samples"]) <= validation and set(manifest["bundle"]) <= validation
    assert len(manifest["bundle"]) == 20
    bundle = scan_image_folder(out / "bundle")
    assert bundle.class_counts() == {"COVID": 10, "non-COVID": 10}
    samples = scan_image_folder(out / "samples")
    assert len(samples.files) == len(manifest["samples"]) > 0
    assert "CC BY-NC-SA 4.0" in (out / "README.md").read_text()


def test_demo_set_refuses_other_data(trained_pair, tmp_path):
    _, models = trained_pair
    other = make_image_folder(tmp_path / "other", per_class=40, size=48, seed=5)
    with pytest.raises(DatasetError, match="not the data the models were trained on"):
        build_demo_set(other, models, tmp_path / "demo")
    assert not (tmp_path / "demo").exists()


def test_a_folder_of_other_files_is_never_replaced(trained_pair, tmp_path):
    data, models = trained_pair
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("a person's own work")
    with pytest.raises(DatasetError, match="not a demo set"):
        build_demo_set(data, models, out, bundle_size=20)
    assert [path.name for path in out.iterdir()] == ["thesis.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine"]  # no staging left


def test_a_demo_set_is_rebuilt_in_place_leaving_nothing_beside_it(trained_pair, tmp_path):
    data, models = trained_pair
    out = tmp_path / "demo"
    build_demo_set(data, models, out, bundle_size=20)
    (out / "manifest.json").write_text("{}")  # an older build
    build_demo_set(data, models, out, bundle_size=10)
    assert len(json.loads((out / "manifest.json").read_text())["bundle"]) == 10
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo"]
