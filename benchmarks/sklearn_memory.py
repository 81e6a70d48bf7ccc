"""What do scipy.stats and scikit-learn cost the server? Resident memory and import time.

    pip install scikit-learn  # for this measurement only: the project does not depend on it
    python benchmarks/sklearn_memory.py [--repeats 3]

Each measurement is a fresh interpreter that imports what the Classify page imports and reads
its own VmRSS (/proc/self/status):
  - "paint": the page's own imports (read from app_pages/classify/page.py), as when it paints;
  - "model": those plus the TensorFlow side that classifying and explaining a slice loads.
Variants: "without" is as if scikit-learn were not installed (`sklearn` is an empty package, so
Keras, which imports `sklearn.base` when it can, skips its wrappers; `sklearn.metrics` and
`sklearn.covariance` are stand-ins); the others import scipy.stats or the real scikit-learn
modules on top. Prints a table and writes benchmarks/results/sklearn_memory.json.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "app_pages" / "classify" / "page.py"
MODEL_SIDE = ["ctdemo.models.inference", "ctdemo.explain.ood_model", "ctdemo.explain.trust"]
VARIANTS = {
    "without": ([], True),
    "scipy.stats": (["scipy.stats"], True),
    "sklearn.covariance": (["sklearn.covariance"], False),
    "sklearn.metrics+covariance": (["sklearn.metrics", "sklearn.covariance"], False),
}
"""Each variant: the modules imported after the page's, and whether scikit-learn is absent."""

PROBE = """
import json, sys, time, types
if {stub!r}:  # as if scikit-learn were absent (Keras then skips its wrappers), but for ours
    sys.modules["sklearn"] = types.ModuleType("sklearn")
    sys.modules["sklearn"].__path__ = []  # other submodules: ModuleNotFoundError
    for name in ("sklearn.metrics", "sklearn.covariance"):
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__getattr__ = lambda attribute: object()
start = time.perf_counter()
for statement in {statements!r}:
    exec(statement)
seconds = time.perf_counter() - start
status = open("/proc/self/status").read().splitlines()
rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
real = isinstance(getattr(sys.modules.get("sklearn"), "__file__", None), str)
print(json.dumps({{"rss_mb": rss / 1024, "seconds": seconds, "sklearn_loaded": real}}))
"""


def page_imports() -> list[str]:
    """The import statements at the top of app_pages/classify/page.py (what painting runs)."""
    tree = ast.parse(PAGE.read_text())
    statements = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    return [ast.unparse(node) for node in statements if getattr(node, "module", "") != "__future__"]


def probe(statements: list[str], stub: bool) -> dict:
    """One fresh interpreter's resident memory and import time after running `statements`."""
    code = PROBE.format(stub=stub, statements=statements)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(statements: list[str], repeats: int) -> dict:
    """Median memory and import time of each variant, over `repeats` fresh runs each."""
    row = {}
    for label, (extra, stub) in VARIANTS.items():
        imports = statements + [f"import {name}" for name in extra]
        runs = [probe(imports, stub) for _ in range(repeats)]
        assert all(run["sklearn_loaded"] != stub for run in runs), label
        row[label] = {
            "rss_mb": round(statistics.median(r["rss_mb"] for r in runs), 1),
            "seconds": round(statistics.median(r["seconds"] for r in runs), 2),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    paint = page_imports()
    model = paint + [f"import {name}" for name in MODEL_SIDE]
    rows = {"paint": measure(paint, repeats), "model": measure(model, repeats)}
    print(f"{'case':6} {'variant':28} {'VmRSS MB':>9} {'+MB':>7} {'import s':>9}")
    for case, row in rows.items():
        base = row["without"]["rss_mb"]
        for label, cell in row.items():
            extra = cell["rss_mb"] - base
            rss, seconds = cell["rss_mb"], cell["seconds"]
            print(f"{case:6} {label:28} {rss:>9.1f} {extra:>7.1f} {seconds:>9.2f}")
    out = ROOT / "benchmarks" / "results" / "sklearn_memory.json"
    out.write_text(json.dumps({"repeats": repeats, "python": sys.version.split()[0], **rows}))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
