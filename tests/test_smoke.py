import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "imaging",
        "data",
        "splits",
        "metrics",
        "archives",
        "download",
        "models",
        "training",
        "cards",
        "inference",
        "experiment",
        "demo",
        "cli",
    ],
)
def test_module_imports(module):
    assert importlib.import_module(f"ctdemo.{module}")
