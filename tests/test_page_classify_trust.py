"""Classify's "Can I trust this heatmap?" through AppTest: the lung outline and share, the
deletion curve, the one-click sanity check, Layer-CAM and the choice of convolution, each
number checked against the library on the same sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app_pages.classify import explanation
from ctdemo.app.samples import sample_scans
from ctdemo.config import WEIGHTS_DIR
from ctdemo.explain import overlay
from ctdemo.explain.faithfulness import deletion_curve
from ctdemo.explain.lungs import segment_lungs
from ctdemo.explain.saliency import explain
from ctdemo.explain.sanity import cascading_randomisation, verdict
from ctdemo.explain.trust import assess
from ctdemo.io.slices import decode_slice
from ctdemo.models.inference import model_input, probabilities
from ctdemo.models.saving import load_model

from conftest import ROOT

pytestmark = pytest.mark.slow
TIMEOUT = 180
SAMPLE = 0


@pytest.fixture(scope="module")
def cnn():
    return load_model(WEIGHTS_DIR / "cnn.keras")


@pytest.fixture(scope="module")
def sample():
    """The first sample's decoded pixels and the class the shipped CNN predicts for it."""
    path = sample_scans()[SAMPLE].path
    return decode_slice(path.read_bytes(), path.name).pixels


def predicted_index(cnn, pixels) -> int:
    model, card = cnn
    return int(np.argmax(probabilities(model, model_input(pixels, card)[np.newaxis])[0]))


def classified() -> AppTest:
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    app.button(key=f"sample_{SAMPLE}").click().run()
    assert not app.exception
    return app


def paragraphs(app: AppTest) -> list[str]:
    return [element.value for element in app.markdown]


def starting(app: AppTest, prefix: str) -> str:
    found = [text for text in paragraphs(app) if text.startswith(prefix)]
    assert len(found) == 1, paragraphs(app)
    return found[0]


def faithfulness_score(app: AppTest) -> float:
    return float(starting(app, "**Faithfulness: ").split(":")[1].split(".**")[0])


def deletion_figure(app: AppTest) -> dict:
    [chart] = [chart for chart in app.get("plotly_chart") if "deletion_chart" in chart.proto.id]
    return json.loads(chart.proto.spec)


def test_the_lungs_and_the_deletion_curve_match_the_library(cnn, sample):
    app = classified()
    model, card = cnn
    index = predicted_index(cnn, sample)
    expected = assess(model, card, sample, "gradcam", index)
    assert expected.lungs.ok  # the sample's lungs are found, so the share is shown
    assert starting(app, "**Lungs.** ") == f"**Lungs.** {expected.lung_sentence()}"
    assert "Heat inside the lungs" in expected.lung_sentence()
    curve = expected.faithfulness
    assert faithfulness_score(app) == pytest.approx(curve.score, abs=0.006)
    assert curve.sentence() in starting(app, "**Faithfulness: ")
    traces = deletion_figure(app)["data"]
    assert [trace["name"] for trace in traces] == [
        "most-heated pixels first",
        "pixels in random order",
    ]
    np.testing.assert_allclose(traces[0]["y"], curve.heat_order, atol=1e-4)
    np.testing.assert_allclose(traces[1]["y"], curve.random_order, atol=1e-4)
    captions = " ".join(caption.value for caption in app.caption)
    assert "heavily blurred copy" in captions


def test_the_lung_outline_is_drawn_by_default_and_can_be_switched_off(sample, monkeypatch):
    drawn = []
    real_outline = overlay.outline

    def recording(image, mask):
        drawn.append(mask)
        return real_outline(image, mask)

    monkeypatch.setattr(explanation, "outline", recording)  # where the page draws it
    app = classified()
    assert app.toggle(key="lung_outline").value is True
    assert drawn and np.array_equal(drawn[-1], segment_lungs(sample).mask)
    drawn.clear()
    app.toggle(key="lung_outline").set_value(False).run()
    assert not app.exception and not drawn
    assert starting(app, "**Lungs.** ")  # the share stays, with or without the line


def test_one_click_runs_the_sanity_check_and_says_what_it_shows(cnn, sample):
    app = classified()
    assert "sanity_chart" not in " ".join(chart.proto.id for chart in app.get("plotly_chart"))
    app.button(key="sanity_button").click().run()
    assert not app.exception
    model, card = cnn
    steps = cascading_randomisation(
        model, model_input(sample, card), "gradcam", predicted_index(cnn, sample)
    )
    final = steps[-1].correlation
    assert starting(app, "**Sanity check: ") == f"**Sanity check: {final:.2f}.** {verdict(steps)}"
    captions = [caption for image in app.get("image") for caption in image.captions]
    assert "Trained model (Grad-CAM)" in captions
    assert f"Every weight random: rank correlation {final:.2f}" in captions
    app.slider(key="alpha").set_value(70).run()  # the result stays through other changes
    assert starting(app, "**Sanity check: ")
    app.selectbox(key="method").select("Grad-CAM++").run()  # another map: click again
    assert not [text for text in paragraphs(app) if text.startswith("**Sanity check: ")]


def test_layer_cam_and_an_earlier_convolution_are_explained_as_the_library_does(cnn, sample):
    app = classified()
    model, card = cnn
    index = predicted_index(cnn, sample)
    x = model_input(sample, card)

    def library_score(method: str, layer: str | None) -> float:
        heatmap = explain(model, x, method, index, layer=layer)
        return deletion_curve(lambda b: probabilities(model, b)[:, index], x, heatmap).score

    default = faithfulness_score(app)
    layers = app.selectbox(key="cam_layer")
    assert layers.options[0] == "last convolution (12×12 cells)"
    assert "earlier: conv_2_2 (48×48 cells)" in layers.options
    layers.select("earlier: conv_2_2 (48×48 cells)").run()
    assert not app.exception
    finer = faithfulness_score(app)
    assert finer == pytest.approx(library_score("gradcam", "conv_2_2"), abs=0.006)
    assert finer != pytest.approx(default, abs=0.006)

    app.selectbox(key="method").select("Layer-CAM").run()
    assert not app.exception
    captions = [caption for image in app.get("image") for caption in image.captions]
    assert "Layer-CAM" in captions
    assert faithfulness_score(app) == pytest.approx(
        library_score("layercam", "conv_2_2"), abs=0.006
    )
    app.selectbox(key="method").select("SmoothGrad saliency").run()
    assert not app.exception
    assert "cam_layer" not in [selectbox.key for selectbox in app.selectbox]
    assert any("one value per input pixel" in caption.value for caption in app.caption)
