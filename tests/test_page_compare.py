"""The Compare page through AppTest: the demo set, an empty data folder, tiny models."""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from ctdemo.app.compare import STATE, CompareState
from ctdemo.app.resources import SESSION_MODELS, SessionModel
from ctdemo.evaluation.compare import SortBy
from ctdemo.models.cards import ModelCard, preprocessing_spec

from conftest import ROOT, make_image_folder

pytestmark = pytest.mark.slow
PAIRED = (  # the looks table's paired test, whichever way it goes
    r"(Tiny cnn vs Tiny mlp: no significant difference|Tiny \w+ better than Tiny \w+)"
    r" \(p .*, n = \d+\)"
)
CONFIGURED = "The configured dataset's held-out slices (CTDEMO_DATA_DIR)"


def open_compare(session_models: dict | None = None) -> AppTest:
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=180)
    if session_models:
        app.session_state[SESSION_MODELS] = session_models
    app.run()
    app.switch_page("app_pages/compare/page.py").run()
    assert not app.exception
    return app


def test_fresh_clone_compares_the_shipped_models_on_the_demo_set(monkeypatch):
    monkeypatch.delenv("CTDEMO_DATA_DIR", raising=False)
    app = open_compare()
    table = app.dataframe[0].value
    assert list(table.columns[1:3]) == ["cnn", "mlp"]
    accuracy = table[table["metric"] == "Accuracy"].iloc[0]
    assert "%" in accuracy["cnn"] and "(" in accuracy["cnn"]
    assert "cnn vs mlp: no significant difference (p = 0." in accuracy["difference"]
    auc = table[table["metric"] == "ROC AUC"].iloc[0]
    assert "cnn vs mlp: no significant difference (p = 0.1" in auc["difference"]
    specificity = table[table["metric"] == "Specificity"].iloc[0]
    assert "cnn better than mlp (p < 0.001)" in specificity["difference"]
    assert "300 slices" in " ".join(caption.value for caption in app.caption)
    assert any("disagree" in header.value for header in app.subheader)
    overlays = [c for image in app.get("image") for c in image.captions]
    assert overlays and all(("cnn:" in c or "mlp:" in c) for c in overlays)
    assert len(app.get("plotly_chart")) == 4
    app.slider(key="threshold").set_value(0.9).run()
    assert not app.exception
    assert len(app.get("download_button")) == 3


def test_an_empty_data_folder_gets_a_note_then_the_cards(tmp_path, monkeypatch):
    monkeypatch.setenv("CTDEMO_DATA_DIR", str(tmp_path))
    app = open_compare()
    app.radio(key="compare_data").set_value(CONFIGURED).run()
    assert not app.exception
    assert "from the models' cards" in app.info[0].value
    table = app.dataframe[0].value
    assert list(table.columns[1:3]) == ["cnn", "mlp"] and "Accuracy" in list(table["metric"])
    assert "NOT the same slices" in " ".join(caption.value for caption in app.caption)


def tiny_model(kind: str, size: int, seed: int):
    import keras

    from ctdemo.models.architectures import build_model
    from ctdemo.models.specs import Architecture

    keras.utils.set_random_seed(seed)
    model = (
        build_model(Architecture("cnn", size, 0.0, filters=(4,), hidden_units=(8,)), 2)
        if kind == "cnn"
        else build_model(Architecture("mlp", size, 0.0, hidden_units=(8,)), 2)
    )
    card = ModelCard(f"tiny-{kind}", ["COVID", "non-COVID"], "COVID", preprocessing_spec(size), {})
    return SessionModel(f"Tiny {kind}", model, card)


def test_two_tiny_models_on_a_tiny_dataset_get_the_table_a_p_value_and_a_gallery(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("CTDEMO_DATA_DIR", str(make_image_folder(tmp_path / "tiny", per_class=12)))
    session = {"trained:a": tiny_model("cnn", 24, 1), "trained:b": tiny_model("mlp", 16, 2)}
    app = open_compare(session)
    app.multiselect(key="compare_models").set_value(["trained:a", "trained:b"]).run()
    app.radio(key="compare_data").set_value(CONFIGURED).run()
    assert not app.exception, app.exception
    table = app.dataframe[0].value
    assert "p " in " ".join(table["difference"])  # a p-value (or p n/a) for each paired row
    assert "24 slices" in " ".join(caption.value for caption in app.caption)
    assert any("disagree" in header.value for header in app.subheader)
    app.selectbox(key="disagree_sort").set_value(SortBy.FILE).run()
    assert not app.exception, app.exception
    shown = [c.split(":")[0] for image in app.get("image") for c in image.captions]
    assert shown and set(shown) <= {"Tiny cnn", "Tiny mlp"}


def test_where_the_models_look_is_computed_on_demand_and_kept_across_reruns(tmp_path, monkeypatch):
    monkeypatch.setenv("CTDEMO_DATA_DIR", str(make_image_folder(tmp_path / "tiny", per_class=12)))
    session = {"trained:a": tiny_model("cnn", 24, 1), "trained:b": tiny_model("mlp", 16, 2)}
    app = open_compare(session)
    app.multiselect(key="compare_models").set_value(["trained:a", "trained:b"]).run()
    app.radio(key="compare_data").set_value(CONFIGURED).run()
    assert len(app.dataframe) == 1  # nothing is explained before the visitor asks
    assert any("Where the models look" in header.value for header in app.subheader)

    app.button(key="compare_looks").click().run()
    assert not app.exception, app.exception
    assert app.get("progress") == []  # the pass's progress bar is gone once it is done
    state = app.session_state[STATE]  # the page's one state object
    assert isinstance(state, CompareState)
    assert state.looks_for.model_keys == ("trained:a", "trained:b") and state.looks_for.files
    table = app.dataframe[1].value
    assert list(table.columns) == ["metric", "Tiny cnn", "Tiny mlp", "difference"]
    rows = table.set_index("metric")
    assert rows.loc["Explanation", "Tiny cnn"] == "Grad-CAM"
    assert rows.loc["Explanation", "Tiny mlp"] == "SmoothGrad saliency"
    assert rows.loc["Slices scored", "Tiny cnn"].startswith("24 of 24")
    for measure in ("Heat inside the lungs", "Faithfulness (deletion score against random)"):
        assert re.fullmatch(PAIRED, rows.loc[measure, "difference"]), rows.loc[measure]
    notes = " ".join(caption.value for caption in app.caption)
    assert "On 24 slices" in notes and "classical segmentation" in notes

    app.slider(key="threshold").set_value(0.8).run()  # a rerun keeps the answer
    assert len(app.dataframe) == 2 and app.dataframe[1].value.equals(table)
