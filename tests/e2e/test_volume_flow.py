"""A whole scan on Classify in a real browser: upload a zipped DICOM series, see the per-slice
strip, move the slice slider, read the summary under the named rules."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import Page, expect
from test_page_classify_volume import hounsfield_slices, series_files, zipped

from ctdemo.evaluation.volume_summary import RULES

from .conftest import full_page_screenshot
from .test_classify_flow import (
    FIRST_RESULT_MS,
    STEP_MS,
    image_caption,
    open_classify,
    slices_input,
    wait_until_idle,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SCREENSHOT = os.environ.get("CTDEMO_E2E_VOLUME_SCREENSHOT")  # where to save the scan view, if set


def test_a_zipped_series_is_scrolled_through_and_summarised(page: Page):
    study = zipped(series_files(hounsfield_slices()))
    open_classify(page)
    slices_input(page).set_input_files(
        files=[{"name": "study.zip", "mimeType": "application/zip", "buffer": study}]
    )

    strip = page.locator(".st-key-slice_strip")
    expect(strip.locator(".js-plotly-plot")).to_be_visible(timeout=FIRST_RESULT_MS)
    expect(page.get_by_test_id("stMain")).to_contain_text("DICOM series · 6 slices")
    expect(image_caption(page, "Slice 4 of 6 · z = 7.5 mm")).to_be_visible()
    expect(page.get_by_role("heading", name="The whole scan")).to_be_visible()
    for rule in RULES:
        expect(page.get_by_text(rule.assumes)).to_be_visible()
    expect(
        page.get_by_text("Not for diagnosis. The models learned from single slices")
    ).to_be_visible()
    if SCREENSHOT:
        wait_until_idle(page)
        full_page_screenshot(page, SCREENSHOT)

    slider = page.get_by_role("slider", name="Slice (feet → head)")
    slider.focus()
    slider.press("ArrowRight")
    expect(image_caption(page, "Slice 5 of 6 · z = 10.0 mm")).to_be_visible(timeout=STEP_MS)
    for _ in range(2):
        slider.press("ArrowLeft")
    expect(image_caption(page, "Slice 3 of 6 · z = 5.0 mm")).to_be_visible(timeout=STEP_MS)
    expect(page.get_by_text("Is this a chest CT slice? Probably not.")).to_be_visible()
