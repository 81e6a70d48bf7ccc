"""Every module of the library imports: no module is left behind by a move or a cycle."""

import importlib
import pkgutil

import pytest

import ctdemo

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(ctdemo.__path__, "ctdemo.")
    if info.name != "ctdemo.__main__"  # runs the CLI
)


def test_the_layers_are_there():
    assert {"ctdemo.config", "ctdemo.cli"} <= set(MODULES)
    for package in ("io", "evaluation", "models", "explain", "app"):
        assert f"ctdemo.{package}" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_module_imports(module):
    assert importlib.import_module(module).__name__ == module
