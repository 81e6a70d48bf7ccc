"""Streamlit's clean-up after each script run must leave Keras alone: it cleared the session
(default graph, TensorFlow's kernel cache, a full garbage collection) after every run of every
page, and with a few visitors polling, a background training stalled at its first batch."""

from __future__ import annotations

import keras
from streamlit.runtime.scriptrunner import script_runner
from streamlit.testing.v1 import AppTest

from conftest import ROOT


def test_a_script_run_does_not_clear_the_keras_session(monkeypatch):
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    assert not app.exception
    cleared = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *_, **__: cleared.append(True))
    script_runner._clean_problem_modules()  # what Streamlit calls after every run
    assert not cleared
