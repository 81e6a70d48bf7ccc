"""The app's frame through AppTest: navigation, the shared sidebar, and the About page."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from ctdemo.app.catalog import shipped_cards

from conftest import ROOT


def open_app() -> AppTest:
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    assert not app.exception
    return app


def test_the_app_opens_on_classify_with_the_caution_and_data_source(monkeypatch):
    monkeypatch.delenv("CTDEMO_DATA_DIR", raising=False)
    app = open_app()
    assert app.title[0].value == "Classify a CT slice"
    sidebar = " ".join(caption.value for caption in app.sidebar.caption)
    assert "not for diagnosis" in sidebar and "embedded demo set" in sidebar


def test_about_credits_the_data_and_renders_every_card():
    app = open_app()
    app.switch_page("app_pages/about/page.py").run()
    assert not app.exception
    text = " ".join(block.value for block in app.markdown)
    assert "CC BY-NC-SA 4.0" in text and "Soares" in text and "grouped split" in text
    assert "Not for diagnosis" in app.warning[0].value
    cards = shipped_cards()
    assert {header.value.split(":")[0] for header in app.subheader} == set(cards)
    tables = [str(table.value) for table in app.table]
    assert len(tables) == 4 * len(cards)
    assert any(f"{cards['cnn'].parameters:,}" in table for table in tables)
    assert len(app.get("plotly_chart")) == 2 * len(cards)
