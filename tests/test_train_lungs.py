"""Train: the attention timeline's heat inside the lungs, and the final model's over validation."""

from __future__ import annotations

import json
import time

import pytest
from streamlit.testing.v1 import AppTest

from ctdemo.app.timeline import BLIND_LABEL, lung_share_chart

from conftest import ROOT, make_image_folder

pytestmark = pytest.mark.slow
TINY = "Full dataset (CTDEMO_DATA_DIR)"


def test_the_chart_plots_each_epoch_and_the_lungs_area_as_a_dotted_line():
    figure = lung_share_chart([1, 2, 3], [0.2, None, 0.7], 0.35)
    assert list(figure.data[0].x) == [1, 2, 3] and list(figure.data[0].y) == [0.2, None, 0.7]
    line = figure.layout.shapes[0]
    assert line.line.dash == "dot" and line.y0 == line.y1 == 0.35
    assert BLIND_LABEL in figure.layout.annotations[0].text


def finished(app: AppTest) -> bool:
    return "train_page" in app.session_state and app.session_state["train_page"].result is not None


def lung_charts(app: AppTest) -> list[dict]:
    specs = [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]
    return [spec for spec in specs if BLIND_LABEL in json.dumps(spec["layout"])]


def test_a_short_run_shows_the_lung_share_per_epoch_and_the_validation_sentence(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("CTDEMO_DATA_DIR", str(make_image_folder(tmp_path / "tiny", per_class=30)))
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    app.run()
    app.switch_page("app_pages/train/page.py").run()
    app.radio(key="data").set_value(TINY).run()
    app.selectbox(key="set_size").set_value(24)
    app.text_input(key="set_layers").set_value("4, 8")
    app.text_input(key="set_dense").set_value("8")
    app.slider(key="set_epochs").set_value(3)
    app.checkbox(key="set_early").uncheck()
    app.run()
    app.selectbox(key="attention").set_value(0).run()
    app.button(key="train").click().run()
    assert not app.exception and not app.error
    deadline = time.monotonic() + 120
    while not finished(app) and time.monotonic() < deadline:
        time.sleep(0.2)
        app.run()
        assert not app.exception
    assert finished(app), "the run never finished"
    charts = lung_charts(app)
    assert len(charts) == 1
    shares = charts[0]["data"][0]["y"]
    assert len(shares) == 3 and all(0 <= share <= 1 for share in shares)
    assert charts[0]["layout"]["shapes"][0]["line"]["dash"] == "dot"
    captions = " ".join(caption.value for caption in app.caption)
    assert "of the final model's Grad-CAM heat falls inside the lungs (95% CI" in captions
    assert "blind to anatomy" in captions
    labels = {metric.label for metric in app.metric}
    assert {"Heat inside the lungs", "Lungs' area", "Accuracy"} <= labels
