"""The library's layers, enforced: what each package may import; first paints without TensorFlow.

- `ctdemo.config`, `ctdemo.io`, `ctdemo.evaluation` and the plain-data model modules import
  neither TensorFlow nor Streamlit (checked in a fresh interpreter);
- nothing outside `ctdemo.app` and the pages imports Streamlit (checked in the source);
- every page paints its controls without importing TensorFlow: a fresh process runs the app
  on each page, up to where the page needs a model, and TensorFlow is still not loaded; with
  the warm-up on (the default), the Classify page loads it only after its page is laid out.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys

import pytest

import ctdemo

from conftest import ROOT

TENSORFLOW_FREE = ["ctdemo.config", "ctdemo.io", "ctdemo.evaluation"]
PLAIN_DATA_MODULES = [
    "ctdemo.models.specs",
    "ctdemo.models.cards",
    "ctdemo.models.training_cost",
    "ctdemo.explain.ood",
    "ctdemo.explain.methods",
    "ctdemo.explain.lungs",
    "ctdemo.explain.faithfulness",
    "ctdemo.explain.overlay",
]
HEAVY = ("tensorflow", "keras", "tf_keras_vis", "streamlit")


def modules_under(names: list[str]) -> list[str]:
    found = []
    for name in names:
        module = __import__(name, fromlist=["_"])
        found.append(name)
        if hasattr(module, "__path__"):
            found += [info.name for info in pkgutil.walk_packages(module.__path__, name + ".")]
    return found


def heavy_imports_after(modules: list[str]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_config_io_and_evaluation_import_neither_tensorflow_nor_streamlit():
    modules = modules_under(TENSORFLOW_FREE)
    assert {"ctdemo.io.slices", "ctdemo.io.folders", "ctdemo.evaluation.metrics"} <= set(modules)
    assert heavy_imports_after(modules) == []


def test_the_plain_data_modules_of_models_and_explain_need_no_tensorflow():
    assert heavy_imports_after(PLAIN_DATA_MODULES) == []


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_app_package_and_the_pages_import_streamlit():
    package = ROOT / "ctdemo"
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted(package.rglob("*.py"))
        if "app" not in path.relative_to(package).parts[:1]
        and "streamlit" in imported_modules(path)
    ]
    assert offenders == []
    assert "streamlit" in imported_modules(package / "app" / "resources.py")  # the check bites


FIRST_PAINT = """
import json, sys, traceback
from streamlit.testing.v1 import AppTest

class FirstImportOfTensorFlow:  # records who imports TensorFlow first; finds nothing itself
    callers = None
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" and FirstImportOfTensorFlow.callers is None:
            FirstImportOfTensorFlow.callers = [f.name for f in traceback.extract_stack()]
        return None

sys.meta_path.insert(0, FirstImportOfTensorFlow())
app = AppTest.from_file({script!r}, default_timeout=120)
for key, value in {state!r}.items():
    app.session_state[key] = value
app.run()
if {page!r}:
    app.switch_page({page!r}).run()
print(json.dumps({{"exception": [e.value for e in app.exception],
                   "title": [t.value for t in app.title],
                   "info": [i.value for i in app.info],
                   "tensorflow": "tensorflow" in sys.modules,
                   "imported_by": FirstImportOfTensorFlow.callers or []}}))
"""

PAGES = {
    # page: session state that stops the page where it would first need a model
    "app_pages/classify/page.py": {},  # no upload, no sample picked yet
    "app_pages/train/page.py": {},  # the demo set, the default CNN's settings and cost
    "app_pages/compare/page.py": {"compare_models": []},  # no models chosen yet
    "app_pages/about/page.py": {},
}


def first_paint(page: str, home, warm_up: bool) -> dict:
    """What a fresh process's first run of `page` shows and imports (`FIRST_PAINT`)."""
    code = FIRST_PAINT.format(script=str(ROOT / "streamlit_app.py"), state=PAGES[page], page=page)
    env = dict(os.environ, CTDEMO_HOME=str(home), CTDEMO_WARM_UP="1" if warm_up else "0")
    env.pop("CTDEMO_DATA_DIR", None)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["exception"] == [] and report["title"], report
    return report


@pytest.mark.slow
@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_paints_without_importing_tensorflow(page, isolated_home):
    """With the warm-up off (CTDEMO_WARM_UP=0), nothing loads TensorFlow before a model is
    needed; the first run is always Classify's, so the warm-up would load it for every page."""
    report = first_paint(page, isolated_home, warm_up=False)
    assert report["tensorflow"] is False, f"{page} imported TensorFlow before it needed a model"


@pytest.mark.slow
def test_classify_loads_tensorflow_only_in_the_warm_up_after_its_page(isolated_home):
    report = first_paint("app_pages/classify/page.py", isolated_home, warm_up=True)
    assert report["info"] and "pick a sample" in report["info"][0], report
    assert report["tensorflow"] is True, "the Classify page no longer warms up"
    assert "warm_up" in report["imported_by"], report["imported_by"]


def test_ctdemo_is_installed_with_its_console_script():
    """The package installs (`pip install -e .`, in requirements-dev.txt): a `ctdemo` command
    runs the CLI, and the tests import that installed package."""
    from importlib.metadata import distribution

    scripts = {entry.name: entry.value for entry in distribution("ctdemo").entry_points}
    assert scripts.get("ctdemo") == "ctdemo.cli:main"
    assert ctdemo.__file__.startswith(str(ROOT / "ctdemo"))
