"""Many visitors at once, as CI runs it: `benchmarks/load.py --short` must pass every check
(answered, queue, isolation, memory) within its bounded time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ARTIFACTS
from conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_the_short_load_run_passes_every_check(tmp_path: Path):
    out = tmp_path / "load.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "load.py"), "--short", "--out", str(out)]
    command += ["--artifacts", str(ARTIFACTS / "load")]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=220)
    assert out.is_file(), f"no results (exit {run.returncode}):\n{run.stdout}\n{run.stderr[-3000:]}"
    results = json.loads(out.read_text())
    failed = {
        name: check["detail"] for name, check in results["checks"].items() if not check["passed"]
    }
    assert run.returncode == 0 and not failed, f"failed checks {failed}; its report:\n{run.stdout}"
    assert results["sessions_served"] == results["sessions"] == 3
    assert results["trainings_done"] == 2 and results["errors_seen"] == 0
    assert results["rss_peak_mb"] is not None and results["wall_s"] <= 150
