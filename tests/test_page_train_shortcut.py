"""The shortcut lab on the Train page through AppTest: the panel's settings in the URL and the
cost, the one-click lesson on the demo set, its two curves, findings and the flipped test."""

from __future__ import annotations

import json
import re

import pytest
from test_page_train import (
    finished,
    open_train,
    parameters_shown,
    run_until,
    small_cnn,
)

pytestmark = pytest.mark.slow


def seconds_in_all(app) -> float:
    """The cost line's "up to N seconds in all"."""
    cost = next(caption.value for caption in app.caption if "parameters**" in caption.value)
    return float(re.search(r"up to ([\d.]+) seconds in all", cost).group(1))


def curve_names(app) -> set[str]:
    """The trace names of every chart on the page."""
    specs = [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]
    return {trace.get("name") for spec in specs for trace in spec["data"]}


def test_the_panel_is_off_by_default_and_its_settings_go_into_the_url_and_the_cost(tiny_data):
    app = small_cnn(open_train(), epochs=2)
    assert app.radio(key="set_marker").value == ""
    assert app.selectbox(key="set_marker_class").disabled
    assert not any(key.startswith("marker") for key in app.query_params)
    before, parameters = seconds_in_all(app), parameters_shown(app)
    app.radio(key="set_marker").set_value("letter").run()
    app.selectbox(key="set_marker_class").set_value("non-COVID")
    app.slider(key="set_marker_share").set_value(0.5)
    app.radio(key="set_marker_validation").set_value("flipped").run()
    assert app.query_params["marker"] == "letter"
    assert app.query_params["marker_class"] == "non-COVID"
    assert app.query_params["marker_share"] == "0.5"
    assert app.query_params["marker_validation"] == "flipped"
    assert seconds_in_all(app) > before and parameters_shown(app) == parameters
    assert any(caption.value.startswith("As the model sees it: letter") for caption in app.caption)
    app.radio(key="set_marker").set_value("frame").run()
    assert app.selectbox(key="set_marker_corner").disabled


def test_a_shared_url_opens_with_its_shortcut():
    query = {"marker": "square", "marker_class": "COVID", "marker_share": "0.75",
             "marker_size": "0.3", "marker_corner": "bottom-right"}  # fmt: skip
    app = open_train(query)
    assert app.radio(key="set_marker").value == "square"
    assert app.slider(key="set_marker_share").value == 0.75
    assert app.selectbox(key="set_marker_corner").value == "bottom-right"
    hostile = open_train({"marker": "<b>x</b>", "marker_share": "nan", "marker_size": "9"})
    assert hostile.radio(key="set_marker").value == ""
    assert not hostile.error


def test_a_run_with_a_shortcut_draws_two_curves_and_its_card_says_so(tiny_data):
    app = small_cnn(open_train(), epochs=2)
    app.radio(key="set_marker").set_value("square").run()
    app.button(key="train").click().run()
    run_until(app, finished)
    assert not app.exception and not app.error
    assert {"clean validation", "marked validation"} <= curve_names(app)
    card = app.session_state["train_page"].result.card
    assert card.shortcut["kind"] == "square" and card.shortcut["carrier"] == "COVID"
    assert any("The planted shortcut" in header.value for header in app.subheader)
    labels = [metric.label for metric in app.metric]
    assert "Clean validation" in labels and "Marked validation" in labels


def test_the_lesson_runs_on_the_demo_set_and_offers_the_flipped_test(monkeypatch):
    """The lesson with the page's CNN on the demo set (about 20 s here)."""
    monkeypatch.delenv("CTDEMO_DATA_DIR", raising=False)
    app = open_train()
    app.button(key="shortcut_lesson").click().run()
    assert app.radio(key="set_marker").value == "square"
    assert app.radio(key="data").value.startswith("Embedded demo set")
    run_until(app, finished, seconds=240)
    assert not app.exception and not app.error
    card = app.session_state["train_page"].result.card
    assert card.shortcut["marked_accuracy"]["value"] >= 0.95
    assert card.shortcut["marker_heat"]["mean"] > card.shortcut["marker_area"]
    sentences = " ".join(block.value for block in app.markdown)
    assert "On clean slices, validation accuracy went from" in sentences
    assert app.session_state["train_page"].result.snapshot.frames[-1].marker_share is not None
    app.button(key="shortcut_flipped").click().run()
    assert app.radio(key="set_marker_validation").value == "flipped"
    run_until(app, lambda a: finished(a) and a.session_state["train_page"].result.card.shortcut
              .get("validation") == "flipped", seconds=240)  # fmt: skip
    flipped = app.session_state["train_page"].result.card
    assert min(flipped.history["marked_accuracy"]) < 0.5
