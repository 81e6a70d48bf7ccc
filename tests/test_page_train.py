"""The Train page through AppTest: settings, live training, stop, results, zips, shared URLs."""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from ctdemo.app.text import plain

from conftest import ROOT, zip_bytes

pytestmark = pytest.mark.slow
TINY = "Full dataset (CTDEMO_DATA_DIR)"


def open_train(query: dict | None = None) -> AppTest:
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    for key, value in (query or {}).items():
        app.query_params[key] = value
    app.run()
    app.switch_page("app_pages/train/page.py").run()
    assert not app.exception
    return app


def small_cnn(app: AppTest, epochs: int) -> AppTest:
    app.radio(key="data").set_value(TINY).run()
    app.selectbox(key="set_size").set_value(24)
    app.text_input(key="set_layers").set_value("4, 8")
    app.text_input(key="set_dense").set_value("8")
    app.slider(key="set_dropout").set_value(0.3)
    app.slider(key="set_epochs").set_value(epochs)
    app.checkbox(key="set_early").uncheck()
    return app.run()


def run_until(app: AppTest, done, seconds: float = 90) -> AppTest:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        app.run()
        assert not app.exception
        if done(app):
            return app
        time.sleep(0.1)
    raise AssertionError("the page never got there")


def finished(app: AppTest) -> bool:
    """Whether the page has collected a finished run (its state's `result`)."""
    return "train_page" in app.session_state and app.session_state["train_page"].result is not None


def epochs_drawn(app: AppTest) -> int:
    charts = [chart for chart in app.get("plotly_chart") if "loss" in chart.proto.spec]
    if not charts:
        return 0
    import json

    spec = json.loads(charts[0].proto.spec)
    return max(len(trace.get("y", [])) for trace in spec["data"])


def test_fresh_page_shows_the_demo_set_the_settings_and_their_cost(monkeypatch):
    monkeypatch.delenv("CTDEMO_DATA_DIR", raising=False)
    app = open_train()
    assert app.title[0].value == "Train a model"
    captions = " ".join(caption.value for caption in app.caption)
    assert "300 slices" in captions and "parameters" in captions and "per epoch" in captions
    assert app.radio(key="set_split").value == "grouped"
    assert not app.button(key="train").disabled and app.button(key="stop").disabled


def test_training_grows_the_curves_and_ends_with_metrics(tiny_data):
    app = small_cnn(open_train(), epochs=40)
    assert app.query_params["dropout"] == "0.3" and app.query_params["epochs"] == "40"
    app.button(key="train").click().run()
    assert not app.exception and not app.error
    seen = set()
    run_until(app, lambda a: seen.add(epochs_drawn(a)) or finished(a))
    assert len(seen - {0}) >= 2, f"the curve never grew step by step: {seen}"
    assert "Done" in app.success[0].value
    assert {metric.label for metric in app.metric} >= {"Accuracy", "Specificity", "ROC AUC"}
    assert app.get("download_button") and app.button(key="use_model")
    app.button(key="add_compare").click().run()
    assert any("Compare" in message.value for message in app.success)
    app.switch_page("app_pages/compare/page.py").run()
    assert any("Trained:" in label for label in app.multiselect(key="compare_models").options)
    app.switch_page("app_pages/train/page.py").run()
    app.button(key="use_model").click().run()
    assert not app.exception
    assert app.selectbox(key="model").value.startswith("trained:")


def test_stop_ends_the_run_and_keeps_what_was_learned(tiny_data):
    app = small_cnn(open_train(), epochs=60)
    app.button(key="train").click().run()
    run_until(app, lambda a: epochs_drawn(a) >= 1)
    assert not app.button(key="stop").disabled
    app.button(key="stop").click().run()
    run_until(app, finished)
    assert "Stopped" in app.warning[0].value
    assert app.metric, "a stopped run still reports its validation metrics"


def test_the_split_lesson_trains_the_other_split_and_explains(tiny_data):
    app = small_cnn(open_train(), epochs=2)
    app.button(key="train").click().run()
    run_until(app, finished)
    app.button(key="lesson").click().run()
    assert app.radio(key="set_split").value == "random"
    run_until(app, lambda a: any("Random against grouped" in h.value for h in a.subheader))
    assert any("leak" in block.value for block in app.markdown)
    assert len(app.multiselect(key="overlay_runs").value) == 2


def test_an_ensemble_that_reads_the_density_trains_as_one_model_and_says_so(tiny_data):
    app = small_cnn(open_train(), epochs=2)
    single = parameters_shown(app)
    app.number_input(key="set_members").set_value(2).run()
    assert app.query_params["members"] == "2"
    assert parameters_shown(app) == 2 * single
    app.checkbox(key="set_density").check().run()
    assert app.query_params["density"] == "1"
    assert parameters_shown(app) > 2 * single
    app.button(key="train").click().run()
    run_until(app, finished)
    assert not app.error and app.metric
    model = app.session_state["train_page"].result.model
    assert model.get_layer("member_logits").output.shape[1:] == (2, 2)
    assert model.get_layer("features_and_distribution").output.shape[1] == 2
    app.selectbox(key="set_arch").set_value("mlp").run()
    assert app.number_input(key="set_members").disabled
    assert app.checkbox(key="set_density").disabled


def parameters_shown(app: AppTest) -> int:
    captions = " ".join(caption.value for caption in app.caption)
    return int(re.search(r"\*\*([\d,]+) parameters\*\*", captions).group(1).replace(",", ""))


def test_a_shared_url_opens_with_its_settings():
    query = {"arch": "mlp", "dropout": "0.5", "epochs": "7", "seed": "42", "split": "random"}
    app = open_train(query)
    assert app.selectbox(key="set_arch").value == "mlp"
    assert app.slider(key="set_dropout").value == 0.5
    assert app.slider(key="set_epochs").value == 7
    assert app.number_input(key="set_seed").value == 42
    assert app.radio(key="set_split").value == "random"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("escape.zip", zip_bytes({"../evil.png": png(), "a/x.png": png(), "b/y.png": png()}), ".."),
        ("one.zip", zip_bytes({"COVID/a.png": png(), "COVID/b.png": png()}), "at least two"),
        ("text.zip", zip_bytes({"a/notes.txt": b"hi", "b/more.txt": b"ho"}), "image"),
        ("notazip.zip", b"this is not a zip file at all", "zip"),
    ],
    ids=["path-traversal", "one-class", "no-images", "not-a-zip"],
)
def test_a_malformed_zip_gets_a_clear_error_and_writes_nothing_outside(
    name, data, message, isolated_home, tmp_path
):
    app = open_train()
    app.radio(key="data").set_value("Upload a .zip of class folders").run()
    app.file_uploader(key="data_zip").set_value((name, data, "application/zip")).run()
    assert not app.exception
    assert len(app.error) == 1 and plain(message) in app.error[0].value
    assert not (tmp_path / "evil.png").exists() and not (isolated_home.parent / "evil.png").exists()
    assert app.button(key="train").disabled


def test_settings_survive_a_visit_to_another_page():
    app = open_train()
    app.slider(key="set_dropout").set_value(0.45).run()
    app.switch_page("app_pages/classify/page.py").run()
    app.switch_page("app_pages/train/page.py").run()
    assert not app.exception
    assert app.slider(key="set_dropout").value == 0.45
