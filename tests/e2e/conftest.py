"""End-to-end fixtures: one Streamlit server and one Chromium per session, a fresh page per test.

On a failed test the page's full-page screenshot, its browser console and the server log are
saved under test-artifacts/ at the repository root.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from conftest import ROOT

HERE = Path(__file__).resolve().parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path(
    os.environ.get("CTDEMO_E2E_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1600}
SERVER_START_TIMEOUT = 60  # seconds until /_stcore/health must answer "ok"
ACTION_TIMEOUT_MS = 30_000
expect.set_options(timeout=ACTION_TIMEOUT_MS)  # expect() waits 5 s by default: too short here

REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this folder e2e, and skip them all, saying why, without Chromium."""
    missing = None
    if not CHROMIUM.is_file():
        missing = pytest.mark.skip(
            reason=f"Chromium not found at {CHROMIUM}: install Debian's chromium "
            "(apt-get install chromium) or set CTDEMO_E2E_CHROMIUM"
        )
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)
            if missing:
                item.add_marker(missing)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item, so the page fixture can tell a failed test."""
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


@dataclass(frozen=True)
class AppServer:
    url: str
    log: Path
    home: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(log: Path, chars: int = 6000) -> str:
    text = log.read_text(errors="replace") if log.exists() else "(no log)"
    return text[-chars:]


def wait_until_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    last_error: Exception | str = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"streamlit exited with code {process.returncode} before it answered "
                f"{url}/_stcore/health; its log:\n{log_tail(log)}",
                pytrace=False,
            )
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                body = response.read().decode().strip()
            if body == "ok":
                return
            last_error = f"answered {body!r}"
        except OSError as error:
            last_error = error
        time.sleep(0.25)
    pytest.fail(
        f"streamlit did not answer {url}/_stcore/health with 'ok' within "
        f"{SERVER_START_TIMEOUT} s (last: {last_error}); its log:\n{log_tail(log)}",
        pytrace=False,
    )


def stop(process: subprocess.Popen) -> None:
    """Terminate the server's whole process group; kill it if it lingers."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def start_server(home: Path, log: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """`streamlit run streamlit_app.py` on a loopback port (a free one unless given), with
    `home` as its CTDEMO_HOME and its output in `log`; returns once it answers as healthy.
    It runs in its own process group: `stop` (or `os.killpg`) ends it as a whole."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CTDEMO_HOME": str(home),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "streamlit_app.py",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
        # No file watcher, as deployed: a source file edited while the tests run would make the
        # next script run evict the app's modules while another session imports them.
        "--server.fileWatcherType",
        "none",
    ]
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole at the end
        )
    try:
        wait_until_healthy(url, process, log)
    except BaseException:
        stop(process)
        raise
    return process, url


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """`streamlit run streamlit_app.py` on a free loopback port, with its own CTDEMO_HOME."""
    home = tmp_path_factory.mktemp("e2e-ctdemo-home")
    log = tmp_path_factory.mktemp("e2e-server") / "streamlit.log"
    process, url = start_server(home, log)
    try:
        yield AppServer(url=url, log=log, home=home)
    finally:
        stop(process)


@pytest.fixture(scope="session")
def app_url(app_server: AppServer) -> str:
    return app_server.url


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


def full_page_screenshot(page: Page, path: Path | str) -> None:
    """The whole app: Streamlit scrolls inside its main block, not the document, so the
    viewport is stretched to the main block's height for the shot and restored after."""
    viewport = page.viewport_size or VIEWPORT
    height = page.evaluate(
        """() => Math.max(
            document.documentElement.scrollHeight,
            ...[...document.querySelectorAll(
                '[data-testid=stMain], [data-testid=stSidebarContent]'
            )].map(element => element.scrollHeight))"""
    )
    try:
        if height > viewport["height"]:
            page.set_viewport_size({"width": viewport["width"], "height": int(height)})
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(viewport)


def save_artifacts(item: pytest.Item, page: Page, console: list[str], server: AppServer) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", item.nodeid).strip("_")
    try:
        full_page_screenshot(page, ARTIFACTS / f"{name}.png")
    except Exception as error:  # a crashed page must not hide the test's own failure
        (ARTIFACTS / f"{name}.screenshot-error.txt").write_text(repr(error))
    (ARTIFACTS / f"{name}.console.txt").write_text("\n".join(console) + "\n")
    if server.log.exists():
        shutil.copyfile(server.log, ARTIFACTS / f"{name}.server.log")


@pytest.fixture
def page(browser: Browser, app_server: AppServer, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context (so a fresh Streamlit session) and page for every test."""
    context = browser.new_context(viewport=VIEWPORT, base_url=app_server.url)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    fresh = context.new_page()
    console: list[str] = []
    fresh.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    fresh.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    fresh.on("requestfailed", lambda req: console.append(f"requestfailed: {req.url} {req.failure}"))
    try:
        yield fresh
        reports = request.node.stash.get(REPORTS, {})
        if any(report.failed for report in reports.values()):
            save_artifacts(request.node, fresh, console, app_server)
    finally:
        context.close()
