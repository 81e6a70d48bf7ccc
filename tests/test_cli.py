"""The command line as a person uses it: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, make_image_folder

pytestmark = pytest.mark.slow
COMMANDS = ("train", "evaluate", "predict", "explain", "download", "build-demo")


def run_cli(*args: str, home=None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m ctdemo ARGS` in a fresh process; `env` adds variables (None removes one)."""
    changes = {"TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    if home is not None:
        changes["CTDEMO_HOME"] = str(home)
    env = {key: value for key, value in (os.environ | changes).items() if value is not None}
    return subprocess.run(
        [sys.executable, "-m", "ctdemo", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line_error(result: subprocess.CompletedProcess) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), result.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MLP trained by the CLI on a generated dataset (shared by this module)."""
    base = tmp_path_factory.mktemp("cli")
    data = make_image_folder(base / "data", per_class=20)
    out = base / "models" / "tiny.keras"
    result = run_cli(
        "train",
        "--arch",
        "mlp",
        "--data",
        data,
        "--out",
        out,
        "--epochs",
        "2",
        "--image-size",
        "24",
        "--val-split",
        "0.25",
        "--block-size",
        "5",
        "--seed",
        "1",
        home=base / "home",
    )
    assert result.returncode == 0, result.stderr
    return data, out, result


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "usage: python -m ctdemo " + command in result.stdout


def test_train_writes_model_card_and_progress(trained):
    _, out, result = trained
    card = json.loads(out.with_name("tiny.card.json").read_text())
    assert card["command"].startswith("python -m ctdemo train --arch mlp")
    assert card["split"]["method"] == "grouped" and card["seed"] == 1
    assert card["architecture"]["image_size"] == 24
    assert len(card["history"]["val_loss"]) == 2
    assert "epoch 1/2" in result.stderr and "epoch 2/2" in result.stderr
    assert "grouped-split validation accuracy" in result.stdout


def test_predict_json_gives_one_object_per_file_and_fails_on_bad_ones(trained, tmp_path):
    data, out, _ = trained
    good = sorted((data / "COVID").glob("*.png"))[:3]
    broken = tmp_path / "broken scan.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    files = [*map(str, good), str(broken), str(tmp_path / "missing.png")]
    result = run_cli("predict", "--model", out, *files, "--json")
    assert result.returncode == 1
    payload = json.loads(result.stdout)
    assert [item["file"] for item in payload] == files
    for item in payload[:3]:
        assert item["predicted_class"] in ("COVID", "non-COVID")
        assert set(item["probabilities"]) == {"COVID", "non-COVID"}
        assert sum(item["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert "error" in payload[3] and "predicted_class" not in payload[3]
    assert "No such file" in payload[4]["error"]
    assert_one_line_error(result)


def test_predict_all_good_exits_zero(trained):
    data, out, _ = trained
    files = sorted((data / "non-COVID").glob("*.png"))[:2]
    result = run_cli("predict", "--model", out, *files)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 2


def test_evaluate_json_on_any_image_folder(trained, tmp_path):
    _, out, _ = trained
    other = make_image_folder(tmp_path / "other", per_class=6, seed=9)
    (other / "COVID" / "notes.txt").write_text("not an image")
    result = run_cli("evaluate", "--model", out, "--data", other, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 12
    assert report["skipped_files"] == [{"file": "COVID/notes.txt", "reason": "not an image file"}]
    assert sum(map(sum, report["confusion_matrix"])) == 12
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        assert 0.0 <= report[key]["low"] <= report[key]["high"] <= 1.0


@pytest.mark.parametrize(
    "args",
    [
        ("evaluate", "--model", "absent.keras", "--data", "."),
        ("predict", "--model", "absent.keras", "x.png"),
        ("download", "--url", "http://127.0.0.1:9/none.zip", "--dest", "{tmp}/dest"),
        ("train", "--arch", "mlp", "--data", "{tmp}/nothing", "--out", "{tmp}/m.keras"),
        ("train", "--arch", "mlp", "--data", "{tmp}", "--out", "{tmp}/m.h5"),
        ("train", "--arch", "mlp", "--data", "{tmp}", "--out", "{tmp}/m.keras", "--members", "3"),
    ],
)
def test_errors_are_one_line_without_traceback(args, tmp_path):
    result = run_cli(*(arg.format(tmp=tmp_path) for arg in args))
    assert result.returncode == 1
    assert_one_line_error(result)


def test_usage_errors_exit_two():
    result = run_cli("train", "--arch", "no-such-model")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    members = run_cli("train", "--arch", "cnn", "--data", ".", "--out", "m.keras", "--members", "0")
    assert members.returncode == 2
    assert members.stderr.strip().startswith("error: argument --members: give 1 to 8 members")
