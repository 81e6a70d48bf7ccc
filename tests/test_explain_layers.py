"""Finer maps and how they are drawn: Layer-CAM, the choice of convolution, the lung outline,
the default colour map and the trust charts."""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
import pytest
from test_hostile_models import IMAGE, small_cnn

from ctdemo.app.charts import deletion_chart, sanity_chart
from ctdemo.config import DEMO_SAMPLES_DIR, WEIGHTS_DIR
from ctdemo.explain.faithfulness import DeletionCurve
from ctdemo.explain.methods import METHOD_LABELS, ExplanationError, grid_label
from ctdemo.explain.overlay import COLOUR_MAPS, DEFAULT_COLOUR_MAP, OUTLINE_COLOUR, outline
from ctdemo.explain.saliency import available_methods, cam_layers, explain
from ctdemo.io.slices import decode_slice, to_model_input
from ctdemo.models.architectures import build_model
from ctdemo.models.saving import load_model
from ctdemo.models.specs import Architecture


@pytest.fixture(scope="module")
def cnn_and_image():
    model, card = load_model(WEIGHTS_DIR / "cnn.keras")
    path = sorted((DEMO_SAMPLES_DIR / "COVID").glob("*.png"))[0]
    image = to_model_input(decode_slice(path.read_bytes(), path.name).pixels, card.image_size)
    return model, card, image


def roughness(heatmap: np.ndarray) -> float:
    """Mean absolute step between neighbouring pixels: an upsampled coarse grid is smooth."""
    return float(np.abs(np.diff(heatmap, axis=0)).mean() + np.abs(np.diff(heatmap, axis=1)).mean())


def test_the_shipped_cnn_offers_its_last_convolution_then_each_finer_grid(cnn_and_image):
    model, _, _ = cnn_and_image
    assert cam_layers(model) == {"last_conv": 12, "conv_3_2": 24, "conv_2_2": 48, "conv_1_2": 96}
    assert grid_label(12) == "12×12 cells"
    assert "layercam" in available_methods(model) and METHOD_LABELS["layercam"] == "Layer-CAM"


@pytest.mark.slow
def test_layer_cam_gives_a_unit_map_and_an_earlier_layer_a_finer_one(cnn_and_image):
    model, card, image = cnn_and_image
    coarse = explain(model, image, "layercam", card.positive_index)
    assert coarse.shape == (card.image_size,) * 2 and coarse.dtype == np.float32
    assert coarse.min() == 0.0 and coarse.max() == pytest.approx(1.0) and coarse.std() > 0.05
    assert not np.allclose(coarse, explain(model, image, "gradcam", card.positive_index))
    for method in ("gradcam", "layercam"):
        last = explain(model, image, method, card.positive_index)
        fine = explain(model, image, method, card.positive_index, layer="conv_2_2")
        assert np.array_equal(last, explain(model, image, method, card.positive_index, layer=None))
        assert roughness(fine) > 2 * roughness(last)


def test_a_layer_that_is_not_offered_is_refused(cnn_and_image):
    model, _, image = cnn_and_image
    with pytest.raises(ValueError, match="reads one of last_conv, conv_3_2"):
        explain(model, image, "gradcam", 0, layer="logits")


def test_an_ensemble_offers_only_the_layer_every_member_shares():
    keras.utils.set_random_seed(3)
    single = Architecture("cnn", 32, 0.0, hidden_units=(8,), filters=(4, 8))
    ensemble = build_model(replace(single, members=2), 2)
    assert list(cam_layers(ensemble)) == ["last_conv"]
    assert len(cam_layers(build_model(single, 2))) == 2


def test_layer_cam_on_a_stop_gradient_model_says_why_it_cannot():
    with pytest.raises(ExplanationError, match="Layer-CAM cannot show where it looks"):
        explain(small_cnn(stop_gradient=True, head="linear"), IMAGE, "layercam", 0)


def test_the_outline_follows_the_mask_edge_and_leaves_the_rest_alone():
    image = np.full((64, 64, 3), 128, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    drawn = outline(image, mask)
    assert np.array_equal(image, np.full((64, 64, 3), 128, np.uint8))  # a copy is drawn on
    red, green, blue = drawn[16, 30].astype(int)  # on the edge: magenta (anti-aliased)
    assert red > 200 and blue > 200 and green < 120 and OUTLINE_COLOUR[1] < 128
    assert tuple(drawn[32, 32]) == (128, 128, 128) and tuple(drawn[2, 2]) == (128, 128, 128)
    assert (drawn[14, 30] < 128).all()  # the dark edge beside the line
    with pytest.raises(ValueError, match="differs"):
        outline(image, mask[:32])


def test_the_default_colour_map_is_uniform_and_jet_stays_a_choice():
    assert DEFAULT_COLOUR_MAP in ("viridis", "cividis", "inferno")
    assert next(iter(COLOUR_MAPS)) == DEFAULT_COLOUR_MAP and "jet" in COLOUR_MAPS


def test_the_deletion_chart_draws_both_orders_and_escapes_the_class_name():
    curve = DeletionCurve(
        np.linspace(0, 1, 3), np.array([0.9, 0.3, 0.1]), np.array([0.9, 0.7, 0.1])
    )
    figure = deletion_chart(curve, "<b>COVID</b>")
    assert [list(trace.y) for trace in figure.data] == [[0.9, 0.3, 0.1], [0.9, 0.7, 0.1]]
    assert "<b>" not in figure.layout.yaxis.title.text
    chart = sanity_chart(["logits", "dense"], [0.4, 0.1], 0.5)
    assert list(chart.data[0].y) == [0.4, 0.1]
