"""Many visitors at once: N browser sessions on one server, all classify, two of them train.

    python benchmarks/load.py               # 6 sessions, 2 of them train (about 2-3 minutes)
    python benchmarks/load.py --short       # CI: 3 sessions, 2 train, at most 90 s of sessions
    python benchmarks/load.py --url http://127.0.0.1:8501 [--pid SERVER_PID]

Starts `streamlit run streamlit_app.py` on a free loopback port with a fresh CTDEMO_HOME and no
file watcher, as deployed (or uses --url, which must be a loopback address), then opens N
sessions at once, each its own browser context of one Debian Chromium:
  - the classifiers upload sample scans (named after their session) on Classify and wait for
    each verdict, round after round (up to 6; 1 in short mode) until the trainers are done;
  - the trainers open Train on the demo set (the page's CNN, 2 epochs; 24 px in short mode) and
    press Train at the same moment: the one training slot takes one, the other must show
    "Waiting in line"; each takes its model to Classify ("Use on Classify");
  - then every session classifies once more and reads its own Model list and page text.
Checks, each failing the run (exit code 1):
  answered     every session got every verdict and every training finished "Done"; no
               exception or error element, page error, crash or timeout;
  queue        with two trainers, one waited in line while the other trained, and the pages
               never showed both training at once (beyond the pages' 1 s polling lag);
  isolation    a trainer's Model list holds its own trained model, no one else's; a classifier's
               holds none; no page shows another session's file names;
  memory       peak RSS of the server and its children, sampled every 0.5 s, within 1 GB.
Prints a table and writes benchmarks/results/load.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, async_playwright, expect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget import CHROMIUM, FLAGS, ROOT, free_port, rss_mb, wait_healthy

from ctdemo.app.samples import sample_scans

RSS_BUDGET_MB = 1024.0  # a free Community Cloud app: 1 GB (MiB, as budget.py counts)
POLL_LAG_S = 3.0  # a page redraws a running job once a second; a rerun under load takes longer
VERDICT = re.compile(r"^(COVID|non-COVID): [<>]?\d+(\.\d+)?%$")
EPOCH = re.compile(r"Epoch \d+ of \d+")
ENDED = re.compile(r"(Done|Stopped|Failed|Cancelled) after \d+ epochs")
ERRORS = "[data-testid=stException], [data-testid=stAlertContentError]"


@dataclass(frozen=True)
class Mode:
    sessions: int
    trainers: int
    max_rounds: int  # classify rounds a session makes while the trainers train
    budget_s: float  # hard limit for all the sessions together
    step_ms: int  # one step (a verdict, a page) may take this long
    train_url: str  # the Train page's CNN on the embedded demo set, 2 epochs


FULL = Mode(6, 2, max_rounds=6, budget_s=420, step_ms=120_000, train_url="/train?epochs=2&early=0")
SHORT = Mode(3, 2, max_rounds=1, budget_s=90, step_ms=60_000, train_url=FULL.train_url + "&size=24")


@dataclass
class Visitor:
    """What one session did and saw."""

    name: str
    role: str  # "classify" or "train"
    uploads: list[str] = field(default_factory=list)
    verdicts: int = 0
    first_verdict_s: float | None = None
    training: str = ""  # the alert that ended the run: "Done after 2 epochs (9 s). …"
    queued_seen: bool = False
    running: list[float] = field(default_factory=list)  # when its page showed a run training
    trained_options: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    timed_out: bool = False
    done: bool = False
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.errors or self.leaks or self.timed_out or not self.done)


class Shared:
    """What the sessions wait on: the trainers' start line, and every trained model in place."""

    def __init__(self, trainers: int):
        self.start_line = asyncio.Barrier(trainers) if trainers else None
        self.trainers_left = trainers
        self.models_ready = asyncio.Event()
        if not trainers:
            self.models_ready.set()

    def trainer_finished(self) -> None:
        self.trainers_left -= 1
        if self.trainers_left <= 0:
            self.models_ready.set()


# ------------------------------------------------------------------ page helpers
def main_block(page: Page):
    return page.get_by_test_id("stMain")


def slices_uploader(page: Page):
    return page.get_by_test_id("stFileUploader").filter(has_text="CT slices")


def verdict(page: Page):
    return main_block(page).locator("h3").filter(has_text=VERDICT)


async def note_errors(page: Page, visitor: Visitor) -> None:
    """Record every exception or error element on the page (once each)."""
    for text in await page.locator(ERRORS).all_inner_texts():
        entry = "error element: " + " ".join(text.split())[:200]
        if entry not in visitor.errors:
            visitor.errors.append(entry)


async def classify(page: Page, visitor: Visitor, tag: str, step_ms: int, started: float) -> None:
    """Upload one sample scan under a name of this session and wait for its verdict."""
    scans = sample_scans()
    scan = scans[
        (int(visitor.name.removeprefix("visitor")) * 5 + len(visitor.uploads)) % len(scans)
    ]
    name = f"{visitor.name}-{tag}-{scan.path.name}"
    old = slices_uploader(page).get_by_test_id("stFileChipDeleteBtn")
    if await old.count():
        await old.first.click()
        await expect(verdict(page)).to_have_count(0, timeout=step_ms)
    await (
        slices_uploader(page)
        .locator("input[type=file]")
        .set_input_files(
            files=[{"name": name, "mimeType": "image/png", "buffer": scan.path.read_bytes()}]
        )
    )
    visitor.uploads.append(name)
    await expect(main_block(page)).to_contain_text(f"{name} · PNG", timeout=step_ms)
    await expect(verdict(page)).to_be_visible(timeout=step_ms)
    visitor.verdicts += 1
    if visitor.first_verdict_s is None:
        visitor.first_verdict_s = time.monotonic() - started
    await note_errors(page, visitor)


def progress(page: Page):
    return main_block(page).get_by_test_id("stProgress").filter(has_text=EPOCH)


async def training_state(page: Page) -> str:
    main = main_block(page)
    if await main.get_by_test_id("stAlert").filter(has_text=ENDED).count():
        return "ended"
    if await main.get_by_text("Waiting in line", exact=False).count():
        return "queued"
    if await progress(page).count():
        return "running"
    return "starting"


async def train(page: Page, visitor: Visitor, shared: Shared, mode: Mode, deadline: float) -> None:
    """Open Train on the demo set, press Train with the other trainers, watch it to the end and
    take the model to Classify."""
    await page.goto(mode.train_url)
    main = main_block(page)
    await expect(
        main.get_by_text("300 slices: COVID 150, non-COVID 150", exact=True)
    ).to_be_visible(timeout=mode.step_ms)
    stale = page.get_by_test_id("stElementContainer").and_(page.locator("[data-stale=true]"))
    await expect(stale).to_have_count(0, timeout=mode.step_ms)
    button = main.get_by_role("button", name="Train", exact=True)
    await expect(button).to_be_enabled(timeout=mode.step_ms)
    if shared.start_line is not None:  # everyone presses at the same moment
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(shared.start_line.wait(), timeout=mode.step_ms / 1000)
    await button.click()
    state, shown = "starting", ""
    while state != "ended":
        if time.monotonic() > deadline:
            raise TimeoutError(f"the training did not end in time (last seen: {state} {shown})")
        state = await training_state(page)
        if state == "queued":
            visitor.queued_seen = True
        elif state == "running":
            visitor.running.append(time.monotonic())
            with contextlib.suppress(PlaywrightError):  # redrawn every second: may be gone
                shown = await progress(page).first.inner_text(timeout=1_000)
        await asyncio.sleep(0.25)
    ended = main.get_by_test_id("stAlert").filter(has_text=ENDED).first
    visitor.training = " ".join((await ended.inner_text()).split())
    await note_errors(page, visitor)
    if not visitor.training.startswith("Done"):
        visitor.errors.append(f"training ended: {visitor.training}")
        return
    await main.get_by_role("button", name="Use on Classify").click()
    await expect(page.get_by_role("heading", name="Classify a CT slice", level=1)).to_be_visible(
        timeout=mode.step_ms
    )
    model = page.get_by_role("combobox", name="Model", exact=True)
    await expect(model).to_have_value(re.compile("^Trained: "), timeout=mode.step_ms)


async def model_options(page: Page, step_ms: int) -> list[str]:
    await page.get_by_role("combobox", name="Model", exact=True).click()
    options = page.get_by_role("option")
    await expect(options.first).to_be_visible(timeout=step_ms)
    texts = await options.all_inner_texts()
    await page.keyboard.press("Escape")
    return [" ".join(text.split()) for text in texts]


async def check_isolation(page: Page, visitor: Visitor, others: list[str], step_ms: int) -> None:
    options = await model_options(page, step_ms)
    visitor.trained_options = [option for option in options if option.startswith("Trained:")]
    expected = 1 if visitor.role == "train" else 0
    if len(visitor.trained_options) != expected:
        visitor.leaks.append(
            f"Model list holds {len(visitor.trained_options)} trained models, expected "
            f"{expected}: {visitor.trained_options}"
        )
    text = await page.locator("body").inner_text()
    for other in others:
        if f"{other}-" in text:
            visitor.leaks.append(f"page shows a file of {other}")


# ------------------------------------------------------------------ one session
async def visit(
    browser,
    url: str,
    visitor: Visitor,
    shared: Shared,
    mode: Mode,
    others: list[str],
    artifacts: Path | None,
) -> None:
    started = time.monotonic()
    deadline = started + mode.budget_s - 5
    context = await browser.new_context(viewport={"width": 1400, "height": 1400}, base_url=url)
    context.set_default_timeout(mode.step_ms)
    page = await context.new_page()
    page.on("pageerror", lambda error: visitor.errors.append(f"page error: {error}"))
    page.on("crash", lambda _: visitor.errors.append("page crashed"))
    trained = False
    try:
        if visitor.role == "train":
            try:
                await train(page, visitor, shared, mode, deadline)
                trained = True
            finally:
                shared.trainer_finished()
        else:
            await page.goto("/")
            await expect(
                page.get_by_role("heading", name="Classify a CT slice", level=1)
            ).to_be_visible(timeout=mode.step_ms)
            for round_ in itertools.count():
                await classify(page, visitor, f"r{round_}", mode.step_ms, started)
                if shared.models_ready.is_set() or round_ + 1 >= mode.max_rounds:
                    break
        remaining = max(1.0, deadline - time.monotonic())
        await asyncio.wait_for(shared.models_ready.wait(), timeout=remaining)
        if visitor.role == "classify" or trained:
            await classify(page, visitor, "final", mode.step_ms, started)
            await check_isolation(page, visitor, others, mode.step_ms)
        await note_errors(page, visitor)
        visitor.done = True
    except Exception as error:  # an expectation not met (AssertionError), a timeout, a crash
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        if isinstance(error, TimeoutError) or "Timeout" in str(error):
            visitor.timed_out = True
        visitor.errors.append(f"{type(error).__name__}: {' | '.join(lines[:3])[:400]}")
        with contextlib.suppress(PlaywrightError):
            await note_errors(page, visitor)
            if artifacts is not None:
                artifacts.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=artifacts / f"{visitor.name}.png", full_page=True)
    finally:
        visitor.seconds = time.monotonic() - started
        with contextlib.suppress(PlaywrightError):
            await context.close()


async def sample_memory(pid: int | None, peak: dict[str, float]) -> None:
    while pid is not None:
        peak["rss_peak_mb"] = max(peak.get("rss_peak_mb", 0.0), rss_mb(pid))
        peak["samples"] = peak.get("samples", 0) + 1
        await asyncio.sleep(0.5)


async def run_sessions(
    url: str, pid: int | None, mode: Mode, artifacts: Path | None
) -> tuple[list[Visitor], dict]:
    visitors = [
        Visitor(f"visitor{index}", "train" if index < mode.trainers else "classify")
        for index in range(mode.sessions)
    ]
    names = [visitor.name for visitor in visitors]
    shared = Shared(sum(visitor.role == "train" for visitor in visitors))
    memory: dict[str, float] = {}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            sampler = asyncio.create_task(sample_memory(pid, memory))
            tasks = [
                asyncio.create_task(
                    visit(
                        browser, url, v, shared, mode, [n for n in names if n != v.name], artifacts
                    )
                )
                for v in visitors
            ]
            _, pending = await asyncio.wait(tasks, timeout=mode.budget_s)
            for task, visitor in zip(tasks, visitors, strict=True):
                if task in pending:
                    task.cancel()
                    visitor.timed_out = True
                    visitor.errors.append(f"still running after the {mode.budget_s:.0f} s budget")
            await asyncio.gather(*tasks, return_exceptions=True)
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        finally:
            await browser.close()
    return visitors, memory


# ------------------------------------------------------------------ checks and report
def queue_check(visitors: list[Visitor]) -> tuple[bool, str]:
    trainers = [visitor for visitor in visitors if visitor.role == "train"]
    if len(trainers) < 2:
        return True, "fewer than two trainers: nothing to queue"
    waited = sum(visitor.queued_seen for visitor in trainers)
    spans = [(min(v.running), max(v.running)) for v in trainers if v.running]
    overlap = 0.0
    for (start_a, end_a), (start_b, end_b) in itertools.combinations(spans, 2):
        overlap = max(overlap, min(end_a, end_b) - max(start_a, start_b))
    passed = waited >= len(trainers) - 1 and len(spans) == len(trainers) and overlap <= POLL_LAG_S
    detail = (
        f"{waited} of {len(trainers)} trainers seen waiting in line; "
        f"{len(spans)} seen training; longest both-training overlap {max(overlap, 0):.1f} s "
        f"(allowed {POLL_LAG_S:.0f} s of polling lag)"
    )
    return passed, detail


def report(visitors: list[Visitor], memory: dict, wall_s: float, mode: Mode, url: str) -> dict:
    errors = [f"{v.name}: {error}" for v in visitors for error in v.errors]
    leaks = [f"{v.name}: {leak}" for v in visitors for leak in v.leaks]
    queue_ok, queue_detail = queue_check(visitors)
    peak = memory.get("rss_peak_mb")
    checks = {
        "answered": (
            not errors and all(v.done for v in visitors),
            f"{sum(v.verdicts for v in visitors)} verdicts, "
            f"{sum(v.training.startswith('Done') for v in visitors)} trainings done, "
            f"{len(errors)} errors, {sum(v.timed_out for v in visitors)} timeouts",
        ),
        "queue": (queue_ok, queue_detail),
        "isolation": (not leaks, "; ".join(leaks) or "no session saw another's files or models"),
        "memory": (
            peak is None or peak <= RSS_BUDGET_MB,
            "not measured (no server pid)"
            if peak is None
            else f"peak {peak:.0f} MB of {RSS_BUDGET_MB:.0f} MB ({memory['samples']:.0f} samples)",
        ),
    }
    return {
        "url": url,
        "mode": asdict(mode),
        "passed": all(passed for passed, _ in checks.values()),
        "checks": {name: {"passed": ok, "detail": detail} for name, (ok, detail) in checks.items()},
        "sessions": len(visitors),
        "sessions_served": sum(not v.failed for v in visitors),
        "verdicts": sum(v.verdicts for v in visitors),
        "trainings_done": sum(v.training.startswith("Done") for v in visitors),
        "errors_seen": len(errors),
        "timeouts": sum(v.timed_out for v in visitors),
        "rss_peak_mb": peak,
        "rss_budget_mb": RSS_BUDGET_MB,
        "wall_s": wall_s,
        "errors": errors,
        "visitors": [asdict(v) | {"running": len(v.running)} for v in visitors],
    }


def print_table(results: dict) -> None:
    print(f"{'session':10s} {'role':8s} {'verdicts':>8s} {'1st s':>6s} {'total s':>7s}  training")
    for v in results["visitors"]:
        first = f"{v['first_verdict_s']:.1f}" if v["first_verdict_s"] is not None else "-"
        training = v["training"][:40] + (" (waited in line)" if v["queued_seen"] else "")
        print(
            f"{v['name']:10s} {v['role']:8s} {v['verdicts']:8d} {first:>6s} "
            f"{v['seconds']:7.1f}  {training or '-'}"
        )
    peak = results["rss_peak_mb"]
    print(
        f"\n{results['sessions_served']}/{results['sessions']} sessions served, "
        f"{results['verdicts']} verdicts, {results['trainings_done']} trainings, "
        f"{results['errors_seen']} errors, peak RSS "
        + ("n/a" if peak is None else f"{peak:.0f} MB")
        + f", {results['wall_s']:.1f} s"
    )
    for name, check in results["checks"].items():
        print(f"  {'PASS' if check['passed'] else 'FAIL'}  {name:10s} {check['detail']}")
    for error in results["errors"]:
        print(f"  error: {error}")


def start_server(home: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CTDEMO_HOME": home, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("CTDEMO_DATA_DIR", None)  # the hosted app: embedded demo set
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless"]
    command += ["true", "--server.port", str(port), "--server.address", "127.0.0.1"]
    # As deployed: no file watcher. With one, a source file edited during the run makes the next
    # script run evict the app's modules while other sessions import them (KeyError).
    command += ["--server.fileWatcherType", "none"]
    with log.open("wb") as output:
        server = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return server, url


def stop_server(server: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        try:
            server.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="CI: 3 sessions, 90 s at most")
    parser.add_argument("--sessions", type=int, help="sessions at once (default 6, short 3)")
    parser.add_argument("--trainers", type=int, help="of them, how many train (default 2)")
    parser.add_argument("--url", help="a running server on loopback, instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid, for its memory")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load.json")
    parser.add_argument("--artifacts", type=Path, help="save a failed session's screenshot here")
    args = parser.parse_args(argv)
    mode = SHORT if args.short else FULL
    sessions = args.sessions or mode.sessions
    trainers = mode.trainers if args.trainers is None else args.trainers
    mode = replace(mode, sessions=sessions, trainers=min(trainers, sessions))
    if args.url and urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be a loopback address")

    started = time.monotonic()
    server, log = None, Path(tempfile.mkdtemp(prefix="ctdemo-load-log-")) / "streamlit.log"
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
    else:
        home = tempfile.mkdtemp(prefix="ctdemo-load-")
        server, url = start_server(home, log)
        pid = server.pid

    def give_up(*_) -> None:  # the hard limit: nothing outlives it, the server least of all
        print(f"error: the load run passed its hard limit; server log: {log}", file=sys.stderr)
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
        os._exit(3)

    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(int(mode.budget_s + 120))
    try:
        if server is not None:
            wait_healthy(url, time.monotonic() + 60)
        expect.set_options(timeout=mode.step_ms)
        visitors, memory = asyncio.run(run_sessions(url, pid, mode, args.artifacts))
    finally:
        if server is not None:
            stop_server(server)
        signal.alarm(0)
    results = report(visitors, memory, time.monotonic() - started, mode, url)
    print_table(results)
    if not results["passed"] and server is not None:
        print(f"server log: {log}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
