"""Issue 20: one visitor's worst upload of each kind stays within a stated memory bound.

Each case runs in a fresh process (`tests/memory_budget.py`), which reports how far its peak
resident memory rose above what it held before the upload. The hosted app shares about 1 GB
among all its visitors; one upload may cost at most UPLOAD_BOUND_MB of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

UPLOAD_BOUND_MB = 250
"""Peak growth allowed for the worst single upload of any kind: a quarter of the hosted app's
shared gigabyte, so three visitors at their worst still leave the app room to run."""

EXPECTED = {
    "slice": "ok,refused,refused",  # 25 MP decodes at reduced size; strips past 8:1 are refused
    "batch": None,  # checked below: part of it classified, the rest refused by the pixel budget
    "dicom": "ok,refused",  # 25 MP decodes at reduced size; the deflate bomb is refused
    "zip": None,  # refused by the dataset's pixel budget
    "model": None,  # refused before Keras builds it
    "settings": None,  # refused by the training budget, without building a model
}


def run_case(kind: str, home) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "memory_budget.py"), kind, str(home)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_the_worst_upload_of_each_kind_stays_within_the_bound(kind, tmp_path):
    report = run_case(kind, tmp_path / "home")
    print(
        f"\n{kind}: {report['outcome']}; peak growth {report['growth_mb']:.0f} MB "
        f"(from {report['rss_before_mb']:.0f} MB), {report['seconds']:.1f} s"
    )
    assert report["growth_mb"] < UPLOAD_BOUND_MB, report
    if EXPECTED[kind] is not None:
        assert report["outcome"] == EXPECTED[kind], report
    elif kind == "batch":
        classified, total = report["outcome"].split(" classified")[0].split(" of ")
        assert 0 < int(classified) < int(total), report
    else:
        assert report["outcome"].startswith("refused: "), report
