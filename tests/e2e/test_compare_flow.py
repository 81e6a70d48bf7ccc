"""Compare in a real browser: the shipped models side by side on the demo set."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FIRST_RESULT_MS = 90_000  # loads TensorFlow and both models, evaluates 300 slices


def test_compare_shows_the_table_the_charts_and_the_disagreements(page: Page):
    page.goto("/")
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Compare").click()
    expect(page.get_by_role("heading", name="Compare models", level=1)).to_be_visible()
    expect(page.get_by_role("heading", name="Metrics")).to_be_visible(timeout=FIRST_RESULT_MS)
    table = page.get_by_test_id("stDataFrame").first
    expect(table).to_be_visible()
    expect(page.get_by_text("Evaluated on 300 slices")).to_be_visible()
    charts = page.get_by_test_id("stPlotlyChart")
    expect(charts).to_have_count(4, timeout=30_000)
    expect(page.get_by_role("heading", name="Where cnn and mlp disagree")).to_be_visible()
    expect(page.get_by_test_id("stImageCaption").filter(has_text="Grad-CAM").first).to_be_visible()
