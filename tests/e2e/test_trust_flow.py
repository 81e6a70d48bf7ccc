"""Classify's "Can I trust this heatmap?" in a real browser: one click on a sample shows the
lung share and the deletion curve, and one more runs the sanity check."""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import Page, expect

from .conftest import full_page_screenshot
from .test_classify_flow import (
    FIRST_RESULT_MS,
    STEP_MS,
    image_caption,
    open_classify,
    verdict,
    wait_until_idle,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SCREENSHOT = os.environ.get("CTDEMO_E2E_TRUST_SCREENSHOT")  # where to save the result, if set
LUNG_SENTENCE = re.compile(r"Heat inside the lungs: \d+% \(the lungs are \d+% of the slice")


def test_a_sample_shows_how_far_to_trust_its_heatmap(page: Page):
    open_classify(page)
    page.locator(".st-key-sample_0").get_by_role("button", name="Classify").click()
    expect(verdict(page)).to_be_visible(timeout=FIRST_RESULT_MS)
    main = page.get_by_test_id("stMain")

    expect(main.get_by_text(LUNG_SENTENCE)).to_be_visible(timeout=STEP_MS)
    chart = page.locator(".st-key-deletion_chart")
    expect(chart.locator(".js-plotly-plot")).to_be_visible(timeout=STEP_MS)
    expect(chart).to_contain_text("share of pixels deleted")
    expect(chart).to_contain_text("most-heated pixels first")
    expect(main.get_by_text(re.compile(r"^Faithfulness: [+-]\d\.\d\d\.$"))).to_be_visible()
    expect(main).to_contain_text("heavily blurred copy")
    expect(page.get_by_role("switch", name="Lung outline")).to_be_checked()

    page.get_by_role("button", name="Sanity check: randomise the model").click()
    expect(image_caption(page, "Trained model (Grad-CAM)")).to_be_visible(timeout=STEP_MS)
    expect(main.get_by_text(re.compile(r"^Sanity check: -?\d\.\d\d\.$"))).to_be_visible()
    expect(page.locator(".st-key-sanity_chart .js-plotly-plot")).to_be_visible()
    if SCREENSHOT:
        wait_until_idle(page)
        full_page_screenshot(page, SCREENSHOT)
