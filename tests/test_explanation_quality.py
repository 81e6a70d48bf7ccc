"""Which model looks where the disease is: explanations of several models scored on the same
slices, on linear models whose maps are known exactly and on the shipped models."""

from __future__ import annotations

import cv2
import keras
import numpy as np
import pytest

from ctdemo.config import DEMO_SAMPLES_DIR, WEIGHTS_DIR
from ctdemo.explain.quality import compare_explanations, read_slices, spread_sample
from ctdemo.models.cards import ModelCard, preprocessing_spec
from ctdemo.models.saving import load_model

from test_lungs import phantom

SIZE = 96


def linear_model(region: np.ndarray) -> tuple[keras.Model, ModelCard]:
    """A model whose class-0 logit is the sum of the pixels in `region` (plus a margin, so
    class 0 is always predicted): its saliency is exactly `region`."""
    inputs = keras.Input((SIZE, SIZE, 1))
    dense = keras.layers.Dense(2)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    kernel = np.zeros((SIZE * SIZE, 2), dtype=np.float32)
    kernel[:, 0] = region.ravel()
    dense.set_weights([kernel, np.array([5.0, 0.0], dtype=np.float32)])
    card = ModelCard("linear", ["COVID", "non-COVID"], "COVID", preprocessing_spec(SIZE), {})
    return model, card


def test_a_model_whose_map_lies_in_the_lungs_beats_one_whose_map_lies_outside():
    pixels, lungs = phantom(size=SIZE)
    tissue = (pixels > 0.5) & ~cv2.dilate(lungs.astype(np.uint8), np.ones((7, 7))).astype(bool)
    inside = cv2.erode(lungs.astype(np.uint8), np.ones((7, 7))).astype(bool)
    models = {"inside": linear_model(inside), "outside": linear_model(tissue)}
    slices = [(f"phantom {seed}", phantom(size=SIZE, seed=seed)[0]) for seed in range(8)]

    result = compare_explanations(models, slices)

    assert result.files == tuple(name for name, _ in slices)
    looks_in, looks_out = result.models["inside"], result.models["outside"]
    assert looks_in.method == looks_out.method == "saliency"
    assert looks_in.summary("lung_share").mean > 0.95
    assert looks_out.summary("lung_share").mean < 0.05
    assert looks_in.summary("lung_area").mean == looks_out.summary("lung_area").mean
    (lung_test,) = [test for test in result.tests if test.measure == "lung_share"]
    assert (lung_test.pairs, lung_test.better) == (8, "inside") and lung_test.p_value < 0.05
    rows = {row.metric: row for row in result.rows()}
    lung_row = rows["Heat inside the lungs"]
    assert lung_row.better == "inside"
    assert lung_row.difference.startswith("inside better than outside (p = 0.0")
    assert rows["Slices scored"].text == {"inside": "8 of 8", "outside": "8 of 8"}


def test_a_model_whose_gradients_cannot_be_read_is_said_so_and_the_other_still_scored():
    pixels, lungs = phantom(size=SIZE)
    inputs = keras.Input((SIZE, SIZE, 1))
    blocked = keras.layers.Lambda(keras.ops.stop_gradient)(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(blocked))
    card = ModelCard("blocked", ["COVID", "non-COVID"], "COVID", preprocessing_spec(SIZE), {})
    models = {"blocked": (keras.Model(inputs, outputs), card), "linear": linear_model(lungs)}

    done = []
    result = compare_explanations(models, [("a", pixels), ("b", pixels)], on_slice=done.append)

    assert done == [1, 2]  # progress after every slice, the failing model's included
    assert "gradients do not reach" in result.models["blocked"].error
    assert result.models["blocked"].summary("lung_share") is None
    assert result.models["linear"].summary("lung_share").n == 2
    rows = {row.metric: row.flat(["blocked", "linear"]) for row in result.rows()}
    assert rows["Explanation"]["blocked"].startswith("SmoothGrad saliency: cannot run")
    assert rows["Slices scored"]["blocked"] == "0 of 2"
    assert all(test.p_value is None and test.better is None for test in result.tests)


def test_spread_sample_is_even_over_classes_and_spread_through_each():
    labels = ["COVID"] * 100 + ["non-COVID"] * 50 + ["other"] * 3
    picked = spread_sample(labels, 30)
    chosen = [labels[i] for i in picked]
    assert (chosen.count("COVID"), chosen.count("non-COVID"), chosen.count("other")) == (14, 13, 3)
    assert picked == sorted(picked) and len(set(picked)) == 30
    assert max(i for i in picked if i < 100) >= 90  # the class's last patients, not its first 14
    assert spread_sample(labels, 1000) == list(range(len(labels)))
    assert spread_sample(labels, 0) == []


def test_read_slices_leaves_out_files_that_cannot_be_read(tmp_path):
    sample = sorted((DEMO_SAMPLES_DIR / "COVID").iterdir())[0]
    (tmp_path / "good.png").write_bytes(sample.read_bytes())
    (tmp_path / "bad.png").write_bytes(b"not an image")
    read = list(read_slices(tmp_path, ["good.png", "bad.png", "gone.png"]))
    assert [name for name, _ in read] == ["good.png"] and read[0][1].ndim == 2


@pytest.mark.slow
def test_the_shipped_models_explanations_are_scored_on_demo_slices():
    models = {name: load_model(WEIGHTS_DIR / f"{name}.keras") for name in ("cnn", "mlp")}
    files = [sorted((DEMO_SAMPLES_DIR / c).iterdir())[0] for c in ("COVID", "non-COVID")]
    result = compare_explanations(
        models, read_slices(DEMO_SAMPLES_DIR, [f"{f.parent.name}/{f.name}" for f in files])
    )

    assert result.n == 2 and result.seconds > 0
    assert (result.models["cnn"].method, result.models["mlp"].method) == ("gradcam", "saliency")
    for looks in result.models.values():
        assert not looks.error
        share, area = looks.summary("lung_share"), looks.summary("lung_area")
        assert share.n == area.n == 2 and 0 <= share.low <= share.mean <= share.high <= 1
        assert 0.1 < area.mean < 0.7
        assert -1 <= looks.summary("faithfulness").mean <= 1
    rows = [row.flat(["cnn", "mlp"]) for row in result.rows()]
    assert [row["metric"] for row in rows][:2] == ["Explanation", "Heat inside the lungs"]
    assert "p n/a" in rows[1]["difference"]  # two slices: no test can reach p < 0.05
    assert "SmoothGrad saliency" in result.note() and "classical segmentation" in result.note()
