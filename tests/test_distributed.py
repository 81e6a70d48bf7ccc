"""`train --distribute`: a fit under tf.distribute on two logical CPUs gives a working model and
a card that says how it was trained.

Logical devices must be configured before TensorFlow starts its devices, and this test process
has started them already, so every training here is a fresh `python -m ctdemo` process;
`CTDEMO_LOGICAL_CPUS=2` makes it split the CPU in two (the stand-in for two GPUs).
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from conftest import make_image_folder
from test_cli import run_cli

pytestmark = pytest.mark.slow
EPOCHS = 3
# 48 slices, grouped in blocks of 4, a quarter for validation: 36 training slices, 4 batches
SETTINGS = ("--arch", "cnn", "--image-size", "24", "--epochs", str(EPOCHS), "--batch-size", "8")
ENSEMBLE = ("--members", "2", "--weight-averaging")  # both weight-swapping callbacks


def run_train(base, out: str, *args: str, cpus: str | None = "2", tf_config: str | None = None):
    command = ["train", "--data", base / "data", "--out", base / out, "--val-split", "0.25"]
    variables = {"CTDEMO_LOGICAL_CPUS": cpus, "TF_CONFIG": tf_config}
    return run_cli(*command, "--block-size", "4", *args, home=base / "home", env=variables)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("distributed")
    make_image_folder(base / "data", per_class=24)
    return base


@pytest.fixture(scope="module")
def mirrored(base):
    result = run_train(base, "mirrored.keras", *SETTINGS, *ENSEMBLE, "--distribute", "mirrored")
    assert result.returncode == 0, result.stderr
    return json.loads((base / "mirrored.card.json").read_text()), result


def test_mirrored_card_records_the_strategy(mirrored):
    card, result = mirrored
    assert card["training"]["distribution"] == {
        "strategy": "mirrored",
        "replicas": 2,
        "workers": 1,
        "global_batch": 8,
        "per_replica_batch": 4,
        "learning_rate_scaling": card["training"]["distribution"]["learning_rate_scaling"],
    }
    assert card["training"]["distribution"]["learning_rate_scaling"].startswith("none")
    assert card["architecture"]["members"] == 2
    assert 0.0 <= card["validation"]["accuracy"]["value"] <= 1.0
    assert len(card["history"]["val_loss"]) == EPOCHS
    assert "--distribute mirrored" in card["command"]
    assert "validation accuracy" in result.stdout


def test_mirrored_model_predicts_finite_probabilities(base, mirrored):
    from ctdemo.io.folders import load_arrays
    from ctdemo.models.inference import probabilities
    from ctdemo.models.saving import load_model

    model, card = load_model(base / "mirrored.keras")
    probs = probabilities(model, load_arrays(base / "data", card.image_size).x[:10])
    assert probs.shape == (10, 2) and np.isfinite(probs).all()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_mirrored_and_plain_runs_learn_alike(base, mirrored):
    """The same global batch and learning rate: the same optimisation, up to batch norm's
    statistics (each replica normalises its own 4 slices, a plain run its 8)."""
    plain = run_train(base, "plain.keras", *SETTINGS, *ENSEMBLE, cpus=None)
    assert plain.returncode == 0, plain.stderr
    card = json.loads((base / "plain.card.json").read_text())
    assert "distribution" not in card["training"]
    for key in ("loss", "val_loss"):
        assert mirrored[0]["history"][key][-1] == pytest.approx(
            card["history"][key][-1], abs=0.15
        ), key


def test_multi_worker_without_tf_config_trains_alone(base):
    """No TF_CONFIG: TensorFlow trains with this process as the only worker (one replica on
    the CPU), and the CLI says so; here with the pixels+distribution features."""
    result = run_train(
        base,
        "alone.keras",
        *SETTINGS,
        "--arch",
        "cnn-large",
        "--epochs",
        "1",
        "--distribute",
        "multi-worker",
        cpus=None,
    )
    assert result.returncode == 0, result.stderr
    assert "no TF_CONFIG" in result.stderr
    card = json.loads((base / "alone.card.json").read_text())
    assert card["architecture"]["features"] == "pixels+distribution"
    distribution = card["training"]["distribution"]
    assert (distribution["strategy"], distribution["replicas"], distribution["workers"]) == (
        "multi-worker",
        1,
        1,
    )


def test_unknown_strategy_is_a_usage_error(base):
    result = run_train(base, "m.keras", *SETTINGS, "--distribute", "bogus")
    assert result.returncode == 2
    assert one_line_error(result).startswith("error: argument --distribute: invalid choice")


def test_multi_worker_across_machines_is_refused(base):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    args = (*SETTINGS, "--distribute", "multi-worker")
    result = run_train(base, "m.keras", *args, cpus=None, tf_config=tf_config)
    assert result.returncode == 1
    assert "TF_CONFIG names several workers" in one_line_error(result)


@pytest.mark.parametrize(
    ("cpus", "batch", "wanted"),
    [
        ("two", "8", "CTDEMO_LOGICAL_CPUS must be a whole number"),
        ("2", "7", "--batch-size 7 must be a multiple of the 2 replicas"),
    ],
)
def test_distributed_refusals_are_one_line(base, cpus, batch, wanted):
    args = (*SETTINGS, "--batch-size", batch, "--distribute", "mirrored")
    result = run_train(base, "m.keras", *args, cpus=cpus)
    assert result.returncode == 1
    assert wanted in one_line_error(result)
