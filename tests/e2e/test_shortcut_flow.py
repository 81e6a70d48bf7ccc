"""The shortcut lab in a real browser: the one-click lesson on the demo set draws the clean and
the marked validation curves, names what happened, and offers the flipped test."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .conftest import full_page_screenshot
from .test_train_flow import FIRST_EPOCHS_MS, STEP_MS, settle

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SCREENSHOTS = os.environ.get("CTDEMO_E2E_TRAIN_SCREENSHOTS")
LESSON = "What if every COVID slice carried a marker?"


def test_the_lesson_shows_both_curves_and_the_flipped_test(page: Page):
    page.goto("/train")
    expect(page.get_by_role("heading", name="Train a model", level=1)).to_be_visible()
    main = page.get_by_test_id("stMain")
    main.get_by_text("Plant a shortcut", exact=True).click()
    lesson = main.get_by_role("button", name=LESSON)
    expect(lesson).to_be_visible()
    settle(page)
    lesson.click()
    expect(page).to_have_url(re.compile(r"marker=square\b"), timeout=STEP_MS)
    curves = page.get_by_test_id("stPlotlyChart").filter(has_text="marked validation")
    expect(curves.first).to_be_visible(timeout=FIRST_EPOCHS_MS)
    expect(curves.first).to_contain_text("clean validation")
    found = main.get_by_role("heading", name="The planted shortcut")
    expect(found).to_be_visible(timeout=FIRST_EPOCHS_MS)
    expect(main.get_by_text("On clean slices, validation accuracy went from")).to_be_visible()
    labels = page.get_by_test_id("stMetricLabel")
    expect(labels.filter(has_text="Heat on the marker")).to_be_visible()
    expect(labels.filter(has_text="Marked validation")).to_be_visible()
    settle(page)
    if SCREENSHOTS:
        full_page_screenshot(page, Path(SCREENSHOTS) / "e2e-shortcut-lesson.png")
    flipped = main.get_by_role("button", name="Now the flipped test", exact=False)
    expect(flipped).to_be_visible()
    flipped.click()
    expect(page).to_have_url(re.compile(r"marker_validation=flipped\b"), timeout=STEP_MS)
    stop = main.get_by_role("button", name="Stop", exact=True)
    expect(stop.or_(found).first).to_be_visible(timeout=STEP_MS)
