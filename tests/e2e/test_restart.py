"""Faults: the server dies mid-training (SIGKILL, or SIGTERM as a host stops it) and starts again
on the same port and CTDEMO_HOME: the open tab reconnects to a clean page that trains again, and
a decoded-array cache damaged in between is rebuilt, not trusted."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from .conftest import (
    ARTIFACTS,
    REPORTS,
    VIEWPORT,
    full_page_screenshot,
    log_tail,
    start_server,
    stop,
)
from .test_classify_flow import FIRST_RESULT_MS, verdict
from .test_train_flow import STEP_MS, epoch_shown, progress, settle

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

RECONNECT_MS = 60_000  # the tab retries with a back-off; the new server loads in seconds
SUMMARY = "300 slices: COVID 150, non-COVID 150"
ERRORS = "[data-testid=stException], [data-testid=stAlertContentError]"


class Site:
    """One CTDEMO_HOME and port, its server (started, killed, started again) and browser tabs;
    on a failed test, every tab's screenshot and the server log go to test-artifacts/."""

    def __init__(self, browser: Browser, folder: Path):
        self.browser, self.folder = browser, folder
        self.home, self.log = folder / "home", folder / "streamlit.log"
        self.home.mkdir()
        self.contexts: list[BrowserContext] = []
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        port = urlparse(self.url).port if self.url else None
        self.process, self.url = start_server(self.home, self.log, port)

    def tab(self) -> Page:
        context = self.browser.new_context(viewport=VIEWPORT, base_url=self.url)
        context.set_default_timeout(STEP_MS)
        self.contexts.append(context)
        return context.new_page()

    def save(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        for index, context in enumerate(self.contexts):
            for page in context.pages:
                try:
                    full_page_screenshot(page, ARTIFACTS / f"{name}-tab{index}.png")
                except Exception as error:  # a dead tab must not hide the test's own failure
                    (ARTIFACTS / f"{name}-tab{index}.error.txt").write_text(repr(error))
        if self.log.exists():
            shutil.copyfile(self.log, ARTIFACTS / f"{name}.server.log")

    def close(self) -> None:
        for context in self.contexts:
            context.close()
        if self.process is not None:
            stop(self.process)


@pytest.fixture
def site(browser: Browser, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Site]:
    held = Site(browser, tmp_path)
    try:
        yield held
        if any(report.failed for report in request.node.stash.get(REPORTS, {}).values()):
            held.save(re.sub(r"[^\w.-]+", "_", request.node.nodeid).strip("_"))
    finally:
        held.close()


def no_errors(page: Page) -> None:
    expect(page.locator(ERRORS), "no exception or error on the page").to_have_count(0)


def start_a_long_training(page: Page) -> None:
    page.goto("/train?epochs=60&early=0")
    expect(page.get_by_text(SUMMARY, exact=True)).to_be_visible(timeout=STEP_MS)
    settle(page)
    page.get_by_test_id("stMain").get_by_role("button", name="Train", exact=True).click()
    epoch_shown(page, at_least=2, timeout_ms=FIRST_RESULT_MS)  # one epoch done: deep in fit
    # The curves drawn: the tab has fetched the chart code. A tab that loses the server while
    # it fetches it keeps the failed import, and shows an error for every chart until reloaded.
    charts = page.get_by_test_id("stPlotlyChart").locator(".js-plotly-plot")
    expect(charts.first).to_be_visible(timeout=STEP_MS)


def damage_the_caches(home: Path) -> dict[Path, int]:
    """Cut every decoded-array file in half, garble the fingerprint memos, and leave a temporary
    file as a write cut short would; returns the damaged arrays and their old sizes."""
    arrays = sorted((home / "arrays").glob("*.npy"))
    assert arrays, f"the first server cached no decoded arrays under {home}"
    sizes = {}
    for path in arrays:
        data = path.read_bytes()
        sizes[path] = len(data)
        path.write_bytes(data[: len(data) // 2])
    for memo in (home / "arrays" / "fingerprints").glob("*.txt"):
        memo.write_text("not a digest")
    (home / "arrays" / ".tmp-cut-short.npy").write_bytes(b"\x93NUMPY half a write")
    return sizes


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_the_app_comes_back_clean_after_the_server_dies_mid_training(site: Site, sig):
    site.start()
    page = site.tab()
    start_a_long_training(page)

    os.killpg(site.process.pid, sig)
    try:
        site.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"the server did not exit within 20 s of {sig.name} while training; its log:\n"
            f"{log_tail(site.log)}"
        )
    damaged = damage_the_caches(site.home) if sig == signal.SIGKILL else {}

    site.start()  # same port and home: the open tab reconnects to the new server
    main = page.get_by_test_id("stMain")
    expect(main.get_by_text(SUMMARY, exact=True)).to_be_visible(timeout=RECONNECT_MS)
    settle(page)
    train = main.get_by_role("button", name="Train", exact=True)
    stop_button = main.get_by_role("button", name="Stop", exact=True)
    expect(train, "no stale training: Train is free").to_be_enabled()
    expect(stop_button).to_be_disabled()
    expect(progress(page)).to_have_count(0)
    expect(main.get_by_text("Waiting in line")).to_have_count(0)
    no_errors(page)
    for path, size in damaged.items():  # rebuilt whole, and readable
        assert path.stat().st_size == size, f"{path.name} was not rebuilt"
        assert np.load(path).shape[0] == 300

    train.click()
    epoch_shown(page, at_least=2, timeout_ms=FIRST_RESULT_MS)
    stop_button.click()
    stopped = page.get_by_test_id("stAlert").filter(has_text=re.compile(r"Stopped after \d+"))
    expect(stopped).to_be_visible(timeout=STEP_MS)
    no_errors(page)

    if sig != signal.SIGKILL:
        return
    visitor = site.tab()  # a new visitor: every page opens, Classify answers
    visitor.goto("/")
    visitor.locator(".st-key-sample_0").get_by_role("button", name="Classify").click()
    expect(verdict(visitor)).to_be_visible(timeout=FIRST_RESULT_MS)
    no_errors(visitor)
    for name, heading in (("Compare", "Compare"), ("About", "About ctdemo")):
        visitor.get_by_test_id("stSidebarNav").get_by_role("link", name=name, exact=True).click()
        expect(visitor.get_by_role("heading", name=re.compile(heading), level=1)).to_be_visible()
        no_errors(visitor)
