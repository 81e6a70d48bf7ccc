"""Does the app fit a free Streamlit Community Cloud app? Start-up time and server memory.

    python benchmarks/budget.py

Starts `streamlit run streamlit_app.py` on a loopback port, drives it in Debian's Chromium as a
person would, and reads the server process's resident memory (VmRSS, /proc) after each step:
  1. from `streamlit run` to the first usable page (the Classify title and uploader painted),
  2. the first verdict after a cold start: a sample scan clicked CLICK_AFTER seconds after the
     first page painted (`--click-after`, default 5: a visitor reading the page first) → its
     verdict, Grad-CAM overlay and trust numbers,
  3. classifying a batch of 20 slices with their heatmaps,
  4. opening Compare (both shipped models on the demo set: table, charts, disagreements),
  5. training the Train page's default CNN for 5 epochs on the demo set.
With `--first-verdict-runs N`, only steps 1 and 2, on N fresh servers one after the other: the
medians and every run (a fresh server's first verdict varies by seconds from run to run here).
Targets: first page ≤ 2 s, ≤ 1 GB through classify and compare (issue 7); the verdict of a
click 5 s after the first paint within 2 s of the click (issue 17).
Prints a table and writes benchmarks/results/budget.json (budget-first-verdict.json).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Browser, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of the server and its children, in MB."""
    total = 0
    for candidate in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{candidate}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(child) for child in found]


def wait_healthy(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("error: the server did not become healthy within 60 s")


def drive(
    page: Page,
    command: list[str],
    env: dict,
    url: str,
    home: str,
    click_after: float,
    first_verdict_only: bool = False,
) -> dict[str, float]:
    """Start the server, walk the flows, and read its memory after each; stop it at the end."""
    results: dict[str, float] = {}
    started = time.monotonic()
    server = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_healthy(url, started + 60)
        results["server_healthy_s"] = time.monotonic() - started
        results["rss_idle_mb"] = rss_mb(server.pid)
        page.goto(url)
        expect(page.get_by_text("CT slices: PNG, JPEG")).to_be_visible()
        results["first_page_s"] = time.monotonic() - started
        results["rss_first_page_mb"] = rss_mb(server.pid)

        results["click_after_first_page_s"] = click_after
        time.sleep(click_after)
        results["rss_before_click_mb"] = rss_mb(server.pid)
        clicked = time.monotonic()
        page.get_by_role("button", name="Classify").first.click()
        expect(page.get_by_text("Overlay (45%)")).to_be_visible()
        expect(page.get_by_text("Computing")).to_have_count(0)
        results["first_prediction_after_click_s"] = time.monotonic() - clicked
        results["first_prediction_from_start_s"] = time.monotonic() - started
        results["rss_after_first_prediction_mb"] = rss_mb(server.pid)
        if first_verdict_only:
            return results

        samples = sorted((ROOT / "ctdemo" / "demo" / "samples").rglob("*.png"))
        batch = []
        for index in range(20):
            sample = samples[index % len(samples)]
            copy = Path(home) / f"{index:02d}-{sample.name}"
            copy.write_bytes(sample.read_bytes())
            batch.append(str(copy))
        page.locator("[data-testid=stFileUploader] input[type=file]").last.set_input_files(batch)
        expect(page.get_by_text("of every slice")).to_be_visible()
        expect(page.get_by_text("Computing")).to_have_count(0)
        results["rss_after_20_slices_mb"] = rss_mb(server.pid)

        opened = time.monotonic()
        page.goto(f"{url}/compare")
        expect(page.get_by_text("Evaluated on 300 slices")).to_be_visible()
        expect(page.get_by_test_id("stPlotlyChart")).to_have_count(4)
        expect(
            page.get_by_test_id("stImageCaption").filter(has_text="Grad-CAM").first
        ).to_be_visible()
        results["compare_page_s"] = time.monotonic() - opened
        results["rss_after_compare_mb"] = rss_mb(server.pid)

        page.goto(f"{url}/train?epochs=5&early=0")
        expect(page.get_by_text("parameters")).to_be_visible()
        page.get_by_role("button", name="Train", exact=True).click()
        peak = 0.0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            peak = max(peak, rss_mb(server.pid))
            if page.get_by_text("Done after").count():
                break
            time.sleep(0.5)
        results["rss_peak_training_mb"] = peak
        results["rss_after_training_mb"] = rss_mb(server.pid)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--click-after", type=float, default=5.0, help="seconds from first paint to first click"
    )
    parser.add_argument(
        "--first-verdict-runs",
        type=int,
        default=0,
        metavar="N",
        help="only steps 1 and 2, on N fresh servers in turn: each run and the medians",
    )
    args = parser.parse_args()
    runs = max(1, args.first_verdict_runs)
    with sync_playwright() as playwright:  # the browser starts first: it is not the app's cost
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        expect.set_options(timeout=120_000)
        results = [
            fresh_server_run(browser, args.click_after, args.first_verdict_runs > 0)
            for _ in range(runs)
        ]
        browser.close()
    if args.first_verdict_runs:
        summary = {key: statistics.median(run[key] for run in results) for key in results[0]}
        print(f"medians of {runs} fresh servers (each run: after a colon)")
        for key, value in summary.items():
            each = ", ".join(f"{run[key]:.1f}" for run in results)
            print(f"  {key:34s} {value:8.1f} {unit_of(key)}: {each}")
        name, saved = "budget-first-verdict.json", {"median": summary, "runs": results}
    else:
        for key, value in results[0].items():
            print(f"  {key:34s} {value:8.1f} {unit_of(key)}")
        name, saved = "budget.json", results[0]
    out = ROOT / "benchmarks" / "results" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(saved, indent=1) + "\n")


def fresh_server_run(browser: Browser, click_after: float, first_verdict_only: bool) -> dict:
    """One walk on a fresh server of its own, port and home, in a new browser page."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home = tempfile.mkdtemp(prefix="ctdemo-budget-")
    env = {**os.environ, "CTDEMO_HOME": home, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("CTDEMO_DATA_DIR", None)  # the hosted app: embedded demo set
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py"]
    command += ["--server.port", str(port), "--server.address", "127.0.0.1"]
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    try:
        return drive(page, command, env, url, home, click_after, first_verdict_only)
    finally:
        page.close()


def unit_of(key: str) -> str:
    return "MB" if key.endswith("_mb") else "s"


if __name__ == "__main__":
    main()
