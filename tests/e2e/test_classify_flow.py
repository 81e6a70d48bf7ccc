"""Classify and About in a real browser, as a visitor uses them: upload, read, explore, recover."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from ctdemo.app.samples import sample_scans

from .conftest import full_page_screenshot
from conftest import REAL_DATA

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FIRST_RESULT_MS = 60_000  # the first prediction of the session loads TensorFlow
STEP_MS = 30_000
VERDICT = re.compile(r"^(COVID|non-COVID): [<>]?\d+(\.\d+)?%$")
SCREENSHOT = os.environ.get("CTDEMO_E2E_SCREENSHOT")  # where to save the Classify page, if set


def a_real_scan() -> Path:
    """A COVID slice of the shared dataset when it is here, else an embedded sample."""
    for folder in (REAL_DATA / "train" / "COVID", REAL_DATA / "COVID"):
        scans = sorted(folder.glob("*.png"))
        if scans:
            return scans[min(5, len(scans) - 1)]
    return sample_scans()[0].path


def open_classify(page: Page) -> None:
    page.goto("/")
    expect(page.get_by_role("heading", name="Classify a CT slice", level=1)).to_be_visible()


def slices_input(page: Page) -> Locator:
    """The slices uploader's file input (the model uploader in the expander has one too)."""
    uploader = page.get_by_test_id("stFileUploader").filter(has_text="CT slices")
    return uploader.locator("input[type=file]")


def verdict(page: Page) -> Locator:
    return page.get_by_test_id("stMain").locator("h3").filter(has_text=VERDICT)


def image_caption(page: Page, text: str) -> Locator:
    return page.get_by_test_id("stImageCaption").filter(has_text=re.compile(f"^{re.escape(text)}$"))


def choose(page: Page, label: str, option: str) -> None:
    """Open a selectbox and click one of its options, as a visitor does."""
    page.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def wait_until_idle(page: Page) -> None:
    expect(page.get_by_test_id("stStatusWidgetRunningIcon")).to_have_count(0, timeout=STEP_MS)


def test_an_uploaded_scan_is_classified_and_its_explanation_explored(page: Page):
    scan = a_real_scan()
    open_classify(page)
    slices_input(page).set_input_files(scan)

    expect(verdict(page)).to_be_visible(timeout=FIRST_RESULT_MS)
    expect(page.get_by_test_id("stMain")).to_contain_text(f"{scan.name} · PNG")
    expect(image_caption(page, "Scan")).to_be_visible()
    expect(image_caption(page, "Grad-CAM")).to_be_visible()
    expect(image_caption(page, "Overlay (45%)")).to_be_visible(timeout=STEP_MS)
    if SCREENSHOT:
        wait_until_idle(page)
        full_page_screenshot(page, SCREENSHOT)

    opacity = page.get_by_role("slider", name="Opacity")
    opacity.focus()
    for _ in range(3):
        opacity.press("ArrowRight")
    expect(image_caption(page, "Overlay (60%)")).to_be_visible(timeout=STEP_MS)
    expect(image_caption(page, "Overlay (45%)")).to_have_count(0)

    for method in ("Grad-CAM++", "SmoothGrad saliency"):
        choose(page, "Explanation", method)
        expect(image_caption(page, method)).to_be_visible(timeout=STEP_MS)
        expect(image_caption(page, "Overlay (60%)")).to_be_visible()
    expect(page.get_by_role("button", name="Download the overlay (PNG)")).to_be_visible()


def test_removing_the_upload_brings_back_the_samples_and_one_click_classifies(page: Page):
    uploaded, picked = sample_scans()[0], sample_scans()[6]
    open_classify(page)
    slices_input(page).set_input_files(uploaded.path)
    expect(verdict(page)).to_be_visible(timeout=FIRST_RESULT_MS)
    expect(page.get_by_test_id("stMain")).to_contain_text(uploaded.path.name)

    page.get_by_test_id("stFileUploader").filter(has_text="CT slices").get_by_test_id(
        "stFileChipDeleteBtn"
    ).click()
    expect(page.get_by_text("Upload a slice or pick a sample scan")).to_be_visible(timeout=STEP_MS)
    expect(verdict(page)).to_have_count(0)
    expect(page.get_by_role("button", name="Classify", exact=True)).to_have_count(
        len(sample_scans())
    )

    page.locator(".st-key-sample_6").get_by_role("button", name="Classify").click()
    expect(verdict(page)).to_be_visible(timeout=FIRST_RESULT_MS)
    expect(page.get_by_test_id("stMain")).to_contain_text(f"{picked.path.name} · PNG")
    expect(image_caption(page, "Overlay (45%)")).to_be_visible(timeout=STEP_MS)


def test_a_text_file_named_png_gets_an_error_naming_it(page: Page):
    open_classify(page)
    notes = b"These are my notes, not a scan.\n" * 20
    slices_input(page).set_input_files(
        files=[{"name": "notes.png", "mimeType": "image/png", "buffer": notes}]
    )
    error = page.get_by_test_id("stAlert").filter(has_text="notes.png")
    expect(error).to_be_visible(timeout=STEP_MS)
    expect(error).to_contain_text("not an image")
    expect(page.get_by_role("alert").filter(has_text="notes.png")).to_have_count(1)
    expect(verdict(page)).to_have_count(0)


def test_the_sidebar_leads_to_about_with_the_data_licence(page: Page):
    open_classify(page)
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="About").click()
    expect(page.get_by_role("heading", name="About ctdemo", level=1)).to_be_visible()
    expect(page).to_have_url(re.compile(r"/about$"))
    expect(page.get_by_text("CC BY-NC-SA 4.0")).to_be_visible()
    expect(page.get_by_text("Not for diagnosis.", exact=True)).to_be_visible()
