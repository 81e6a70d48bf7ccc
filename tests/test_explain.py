"""Explanations: every method on the shipped models, geometry, and the sanity check that
heatmaps depend on what the network learned (Adebayo et al.'s model randomisation test)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ctdemo.config import DEMO_SAMPLES_DIR, WEIGHTS_DIR
from ctdemo.explain.methods import to_slice_geometry
from ctdemo.explain.saliency import available_methods, explain
from ctdemo.explain.sanity import rank_correlation
from ctdemo.io.slices import decode_slice, to_model_input
from ctdemo.models.architectures import build_model
from ctdemo.models.saving import load_model
from ctdemo.models.specs import Architecture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cnn():
    return load_model(WEIGHTS_DIR / "cnn.keras")


@pytest.fixture(scope="module")
def covid_slice():
    path = sorted((DEMO_SAMPLES_DIR / "COVID").glob("*.png"))[0]
    return decode_slice(path.read_bytes(), path.name).pixels


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam", "saliency"])
def test_every_method_gives_a_unit_heatmap(cnn, covid_slice, method):
    model, card = cnn
    image = to_model_input(covid_slice, card.image_size)
    heatmap = explain(model, image, method, card.positive_index)
    assert heatmap.shape == (card.image_size, card.image_size)
    assert heatmap.dtype == np.float32
    assert heatmap.min() == 0.0 and heatmap.max() == pytest.approx(1.0)
    assert heatmap.std() > 0.05  # not flat


def test_mlp_is_offered_saliency_only():
    model, card = load_model(WEIGHTS_DIR / "mlp.keras")
    assert available_methods(model) == ("saliency",)
    with pytest.raises(ValueError, match="needs a convolutional layer"):
        explain(model, np.zeros((card.image_size,) * 2 + (1,), np.float32), "gradcam", 0)


def test_heatmap_maps_back_to_the_slice_without_squashing():
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[:, :4] = 1.0  # left half hot
    wide = to_slice_geometry(heatmap, (50, 100))  # padded 25 rows above and below
    assert wide.shape == (50, 100)
    assert wide[:, :40].mean() > 0.95 and wide[:, 60:].mean() < 0.05
    tall = to_slice_geometry(heatmap, (100, 50))  # padding was left and right
    assert tall.shape == (100, 50)
    assert tall[:, :20].mean() > 0.9 and tall[:, 30:].mean() < 0.1


def test_heatmaps_depend_on_the_learned_weights(cnn):
    """Grad-CAM of the trained CNN and of the same architecture re-initialised must differ:
    a method that drew the same picture for both would be showing the input, not the model.
    Measured on the 12 sample slices: median rank correlation about 0.05."""
    model, card = cnn
    random_model = build_model(Architecture.from_dict(card.architecture), len(card.class_names))
    correlations = []
    for path in sorted(DEMO_SAMPLES_DIR.rglob("*.png")):
        image = to_model_input(decode_slice(path.read_bytes()).pixels, card.image_size)
        trained = explain(model, image, "gradcam", card.positive_index)
        randomised = explain(random_model, image, "gradcam", card.positive_index)
        assert rank_correlation(trained, trained) == pytest.approx(1.0)
        correlations.append(rank_correlation(trained, randomised))
    assert len(correlations) == 12
    assert np.median(correlations) < 0.3


def test_an_ensemble_s_grad_cam_reads_every_member():
    """With only member 1 voting (the others' heads zeroed), the ensemble's Grad-CAM is member
    1's; seeking back to the last Conv2D (member 3's) would give a blank map."""
    import keras

    keras.utils.set_random_seed(3)
    single = Architecture("cnn", 32, 0.0, hidden_units=(8,), filters=(4, 8))
    ensemble = build_model(replace(single, members=3), 2)
    member_1 = build_model(single, 2)
    for layer in member_1.layers:  # member 1's weights into the single CNN
        if layer.name == "last_conv_norm":  # the ensemble's normalises every member's channels
            layer.set_weights([w[:8] for w in ensemble.get_layer(layer.name).get_weights()])
        elif layer.weights and not layer.name.startswith(("dense_", "logits")):
            layer.set_weights(ensemble.get_layer(f"m1_{layer.name}").get_weights())
    for name in ("dense_1", "member_logits"):
        kernel, bias = ensemble.get_layer(name).get_weights()
        member_1.get_layer("logits" if name == "member_logits" else name).set_weights(
            [kernel[0], bias[0]]
        )
        kernel[1:], bias[1:] = 0.0, 0.0
        ensemble.get_layer(name).set_weights([kernel, bias])
    image = np.random.default_rng(4).random((32, 32, 1), dtype=np.float32)
    expected = [explain(member_1, image, "gradcam", index) for index in (0, 1)]
    assert max(heatmap.max() for heatmap in expected) > 0  # one class's map is not blank
    for index in (0, 1):
        actual = explain(ensemble, image, "gradcam", index)
        np.testing.assert_allclose(actual, expected[index], atol=1e-4)
