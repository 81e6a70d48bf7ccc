"""The app starts and shows the essentials (AppTest: the script logic, no browser)."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from conftest import ROOT


def test_home_page_renders_with_caution_and_data_source(monkeypatch):
    monkeypatch.delenv("CTDEMO_DATA_DIR", raising=False)
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    assert not app.exception
    assert "How neural networks read chest CT" in app.title[0].value
    assert "not for diagnosis" in app.caption[0].value
    assert any("embedded demo set" in block.value for block in app.markdown)


def test_home_page_lists_the_shipped_models_from_their_cards():
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    table = app.dataframe[0].value
    assert set(table["model"]) == {"cnn", "mlp"}
    assert all("grouped" in split for split in table["validation split"])
